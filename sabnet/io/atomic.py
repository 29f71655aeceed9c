"""Atomic writes: write to a temporary name beside the target, then rename.

A crash or kill leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name in the same folder as `path` that keeps its extension(s).

    Keeping the extension matters: ITK chooses the file format from it (`.nii.gz`, `.nrrd`).
    """
    path = Path(path)
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to `path`.

    On an exception the temporary file (or folder) is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = temporary_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path | str) -> Any:
    """Read a JSON file; a missing or malformed file raises SabnetError naming it."""
    from sabnet.errors import SabnetError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SabnetError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise SabnetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or delete the file") from None
