"""Run a function over many cases in worker processes, with one tqdm bar and per-case errors."""
from __future__ import annotations

import multiprocessing
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tqdm import tqdm

from sabnet.errors import SabnetError


@dataclass
class CaseOutcome:
    case_id: str
    result: Any = None
    error: str | None = None


def _call(fn: Callable, case_id: str, arg: Any) -> CaseOutcome:
    try:
        return CaseOutcome(case_id, fn(arg))
    except SabnetError as e:
        return CaseOutcome(case_id, error=str(e))
    except Exception as e:  # one bad case must not stop the others; keep the cause for the report
        last = traceback.extract_tb(e.__traceback__)[-1]
        return CaseOutcome(case_id, error=f"{type(e).__name__}: {e} (at {last.filename.split('/')[-1]}:{last.lineno})")


def _worker_init() -> None:
    """Forked workers compute with one thread each (as torch's DataLoader workers do): an OpenMP
    pool inherited from the parent can deadlock, and the workers already share the cores."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def map_cases(fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]], n_workers: int = 1,
              desc: str = "cases") -> list[CaseOutcome]:
    """Apply `fn(arg)` to each (case_id, arg); returns outcomes in input order.

    Errors are caught per case (SabnetError keeps its message; anything else gets its type and
    place) so the good cases finish. `n_workers` > 1 uses forked worker processes.
    """
    items = list(items)
    outcomes: dict[str, CaseOutcome] = {}
    bar = tqdm(total=len(items), desc=desc, unit="case", dynamic_ncols=True)
    if n_workers <= 1 or len(items) <= 1:
        for case_id, arg in items:
            outcomes[case_id] = _call(fn, case_id, arg)
            bar.update()
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(_call, fn, case_id, arg): case_id for case_id, arg in items}
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                bar.update()
    bar.close()
    return [outcomes[case_id] for case_id, _ in items]
