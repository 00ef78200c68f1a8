"""Writing training checkpoints so that an interruption never leaves a broken file, and
finding the newest intact one to resume from (detection and classification share these).

A checkpoint is written to a hidden temporary file in the same folder, flushed to disk
(``fsync``) and renamed over the final name (``os.replace``, atomic on POSIX): a process killed
at any point leaves either the previous file or the new one, never half of one. A temporary
file left by a killed write is ignored (and replaced by the next write).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import torch

from .reader import CheckpointReadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def temporary_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_save` writes ``path`` before renaming it: a hidden file beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _fsync_dir(directory: Path) -> None:
    # the rename itself is made durable by syncing the folder (POSIX; not possible on Windows)
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed over ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over ``path``."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def checkpoint_candidates(directory: str | os.PathLike, pattern: str,
                          preferred: str | os.PathLike | None = None) -> list[Path]:
    """Checkpoints to resume from, best first: ``preferred`` (the one the run names as its last),
    then the files of ``directory`` matching the glob ``pattern``, newest first (by time of
    writing). Temporary files of interrupted writes are never candidates."""
    found = [p for p in Path(directory).glob(pattern) if p.is_file() and not p.name.startswith(".")]
    found.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if preferred:
        preferred = Path(preferred)
        found = [preferred] + [p for p in found if p.resolve() != preferred.resolve()]
    return found


def load_newest_intact(candidates: Iterable[Path], read: Callable[[Path], T],
                       errors: tuple[type[BaseException], ...] = (CheckpointReadError, OSError,
                                                                  ValueError),
                       ) -> tuple[Path, T]:
    """``(path, read(path))`` of the first candidate that reads (``read`` raises one of
    ``errors`` for one that does not); each one that does not is logged as a warning with the
    reason, and the fallback is said.

    Raises:
        CheckpointReadError: no candidate reads (the message lists each one and why).
    """
    problems = []
    for path in candidates:
        try:
            data = read(path)
        except errors as e:
            logger.warning("checkpoint %s cannot be used: %s", path, e)
            problems.append(f"{path}: {e}")
            continue
        if problems:
            logger.warning("resuming from %s, the newest intact checkpoint (%d newer one(s) "
                           "skipped)", path, len(problems))
        return path, data
    raise CheckpointReadError("no intact checkpoint to resume from: "
                              + ("; ".join(problems) or "none found"))
