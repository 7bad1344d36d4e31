"""File locks: file_lock, an exclusive lock on a file held while a block runs, for processes that share a run or
a cache (flock's, through the filelock package: dropped by the system when its process dies)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from pipeline.utils.errors import UserError


@contextmanager
def file_lock(path, log=None, what: str | None = None, wait: bool = True):
    """Hold an exclusive lock on the file `path` (made when missing) while the block runs, for processes that share
    a run or a cache: a process that asks while another holds it waits (saying so in `log`), or, with wait=False,
    gets a UserError naming the file. The lock is flock's (the filelock package): the system drops it when its
    process dies, so a killed run never leaves a stale lock. It holds across machines only on a shared file system
    whose locks work (NFS v4, Lustre mounted with flock)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise UserError(f"{path}: {what or 'this'} is held by another process") from None
        if log:
            log.info(f"waiting for {what or path}: another process holds {path}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
