"""CPU training threads: the cores the augmentation workers and the node's other training processes
leave, never more than torch was given, and restored afterwards."""
import torch

from sabnet.training import distributed
from sabnet.training.distributed import DistributedContext, cpu_training_threads, training_threads


def _cores(monkeypatch, n):
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def test_threads_are_the_cores_left_by_workers_and_other_processes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    _cores(monkeypatch, 2)
    assert cpu_training_threads(1) == 1 and cpu_training_threads(0) == 2 and cpu_training_threads(3) == 1
    _cores(monkeypatch, 16)
    assert cpu_training_threads(2) == 14
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4: 4 cores each
    assert cpu_training_threads(1) == 3


def test_training_threads_lowers_and_restores_and_never_raises(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _cores(monkeypatch, 4)
    before = torch.get_num_threads()
    cpu = DistributedContext(torch.device("cpu"))
    try:
        torch.set_num_threads(4)
        with training_threads(cpu, n_workers=1):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 4
        torch.set_num_threads(2)  # never raised above what torch was given
        with training_threads(cpu, n_workers=1):
            assert torch.get_num_threads() == 2
        with training_threads(DistributedContext(torch.device("meta")), n_workers=3):  # not the CPU
            assert torch.get_num_threads() == 2
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # asked for explicitly: left as it is
        with training_threads(cpu, n_workers=1):
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
