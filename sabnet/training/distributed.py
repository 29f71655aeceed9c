"""Devices and multi-process training (DistributedDataParallel).

Launched by `torchrun --nproc_per_node N` (WORLD_SIZE > 1), each process joins a process group
(NCCL on CUDA, gloo on CPU), trains on its own data seed with the plan's batch size (a step sees
N x batch_size samples), and DistributedDataParallel averages the gradients so every process keeps
identical weights. Only rank 0 writes checkpoints, logs and plots.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from sabnet.errors import SabnetError

DEVICES = ("cuda", "mps", "cpu")
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place: rank among world_size processes, and its device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(name: str | None, local_rank: int = 0) -> torch.device:
    """'cuda', 'mps', 'cpu', or None: cuda if available, else mps if available, else cpu."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name not in DEVICES:
        raise SabnetError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SabnetError("--device cuda: no CUDA GPU is available to PyTorch here; use --device cpu "
                              "(or check the driver and CUDA_VISIBLE_DEVICES)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "mps" and not _mps_available():
        raise SabnetError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def start(device_name: str | None) -> DistributedContext:
    """The context of this process; joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank)
    if world_size > 1:
        if device.type == "mps":
            raise SabnetError("training on several processes needs CUDA (NCCL) or the CPU (gloo), not MPS")
        if not dist.is_initialized():
            # rank 0 alone predicts the validation cases at the end of a fold while the others wait
            # for the next fold: a generous timeout keeps them from giving up
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(device, rank, world_size, local_rank)


def stop(ctx: DistributedContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistributedContext, find_unused_parameters: bool = True) -> nn.Module:
    """`module` itself on one process, else wrapped in DistributedDataParallel.

    find_unused_parameters: prompt parts (point, box embeddings) get no gradient in a batch of
    automatic samples, so the segmentation phases need it.
    """
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum a tensor over all processes (itself on one process)."""
    if not ctx.distributed:
        return values
    values = values.to(ctx.device if ctx.device.type == "cuda" else "cpu").clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def all_reduce_max(value: float, ctx: DistributedContext) -> float:
    """The largest of one number over all processes (the number itself on one process)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([float(value)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def weights_digest(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names and bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_digests(module: nn.Module, ctx: DistributedContext) -> list[str]:
    """Every process's `weights_digest` (rank order)."""
    own = weights_digest(module)
    if not ctx.distributed:
        return [own]
    digests: list = [None] * ctx.world_size
    dist.all_gather_object(digests, own)
    return digests


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_training_threads(n_workers: int) -> int:
    """Compute threads for one CPU training process: the cores this machine lets it use, shared with
    the other training processes of this node, less one per augmentation worker process, at least one.

    The workers need a core only part of the time, but a thread that waits for a worker's core at
    every parallel region waits for the slowest: on two cores with one worker, a training step of
    the demo's model took 0.18 s with one thread and 0.21 s with two (docs/benchmarks.md, Demo)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - n_workers)


@contextlib.contextmanager
def training_threads(ctx: DistributedContext, n_workers: int):
    """On the CPU, train with at most `cpu_training_threads` threads and give the previous number back
    after. Never raises torch's thread count (a lower torch.set_num_threads stays), and an explicit
    OMP_NUM_THREADS is left as it is."""
    if ctx.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, cpu_training_threads(n_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
