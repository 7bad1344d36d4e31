"""Errors and signals: how a stage fails or stops, and the one line its user reads.

An error the user can fix is a UserError (or a FileNotFoundError, or a ValueError naming a config key:
is_user_error); a full file system becomes one (disk_full, naming the path and its free space; check_free_space
refuses before a long write). user_errors, around a stage's command line, prints such an error as
`fattag <stage>: error: ...` (exit 2), and turns Ctrl-C or SIGTERM into an unwinding KeyboardInterrupt that prints
`fattag <stage>: interrupted at <position>` (exit 130 / 143); position and set_position name where a stage is.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """An error the user can fix (config, data, a missing earlier stage); the message says what and where."""


# A ValueError whose message starts by naming a config key (a section of configs/base.yaml) or "config" is the
# user's too: the stages name the key they refuse.
_NAMES_CONFIG = re.compile(
    r"(config\b|(run|data|features|folds|model|loss|augment|train|warmup|teacher_student|ssl|"
    r"infer|ensemble)\.\w)"
)


def is_user_error(e: BaseException) -> bool:
    """UserError, FileNotFoundError (a missing input or earlier stage), or a ValueError that names a config key."""
    return isinstance(e, (UserError, FileNotFoundError)) or (
        type(e) is ValueError and bool(_NAMES_CONFIG.match(str(e)))
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send before they kill), raised in the main thread so that a stage unwinds from
    it as from a Ctrl-C: atomic writes drop their temporaries, locks are released, nothing half-written stays."""


_POSITION: dict = {}  # where the running stage is (fold, epoch, split): named by an interruption's line


_OWNER = [0]  # the process whose stage installed the handler


_SIGNALLED: list = []  # the signal that interrupted this process, once one has


@contextmanager
def position(**where):
    """Name where a stage is for the line an interruption prints (`interrupted at fold 1, epoch 7`): the block's
    keys are added to the enclosing blocks' and removed after it (not when it raises: the line names where it
    stopped); set_position updates them inside the block."""
    saved = dict(_POSITION)
    _POSITION.update(where)
    yield
    _POSITION.clear()
    _POSITION.update(saved)


def set_position(**where):
    _POSITION.update(where)


def _on_signal(signum, frame):
    if os.getpid() != _OWNER[0]:  # a forked worker (multiprocessing.Pool) inherited the handler: die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def _signals_unwind():
    """SIGINT and SIGTERM raise KeyboardInterrupt / Terminated in the main thread while the block runs (and note
    the signal, so that an error it causes in a collective of a data-parallel run reads as the interruption)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGNALLED.clear()
    _POSITION.clear()
    _OWNER[0] = os.getpid()
    before = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@contextmanager
def user_errors(stage: str):
    """Around a stage's command line: a user's error (is_user_error; a full disk, disk_full) prints
    `fattag <stage>: error: <message>` and exits with status 2; Ctrl-C (SIGINT) or SIGTERM prints
    `fattag <stage>: interrupted at <position>; run the same command to resume` (rank 0 of a torchrun job only)
    and exits with 130 / 143; anything else (a bug) propagates with its traceback, and so does every error when the
    environment sets FATTAG_DEBUG=1."""
    debug = os.environ.get("FATTAG_DEBUG", "") not in ("", "0")
    try:
        with _signals_unwind():
            yield
    except (KeyboardInterrupt, Exception) as e:
        if debug:
            raise
        if isinstance(e, KeyboardInterrupt) or _SIGNALLED:
            signum = _SIGNALLED[0] if _SIGNALLED else (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
            if os.environ.get("RANK", "0") in ("", "0"):
                where = ", ".join(f"{k} {v}" for k, v in _POSITION.items())
                print(
                    f"fattag {stage}: interrupted{' at ' + where if where else ''}; run the same command to resume",
                    file=sys.stderr,
                )
            raise SystemExit(128 + signum) from None
        if not isinstance(e, UserError) and is_disk_full(e):  # a write outside atomic_path
            e = disk_full(getattr(e, "filename", None) or "(a file)", cause=e)
        if not is_user_error(e):
            raise
        print(f"fattag {stage}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException | None) -> bool:
    """An OSError of a full file system (or quota), shutil's Error (copytree's list of errors) holding one, or an
    error raised while handling one (torch.save's zip writer fails on its way out after the write that failed)."""
    for _ in range(8):  # along the chain of causes
        if e is None:
            return False
        if isinstance(e, shutil.Error):
            errors = e.args[0] if e.args and isinstance(e.args[0], list) else []
            if any(os.strerror(errno.ENOSPC) in str(x) or os.strerror(errno.EDQUOT) in str(x) for x in errors):
                return True
        elif isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path) -> int | None:
    """Free bytes on the file system that holds `path` (its nearest existing folder), or None when unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(path, need: int | None = None, cause: OSError | None = None) -> UserError:
    """The one-line error of a write that found its file system full: the path, its free space, what was needed."""
    free = free_bytes(path)
    what = f"{size_text(free)} free" if free is not None else "free space unknown"
    if need:
        what += f", {size_text(need)} needed"
    quota = " (disk quota exceeded)" if getattr(cause, "errno", None) == errno.EDQUOT else ""
    return UserError(
        f"{path}: no space left on the device{quota} while writing it ({what}); nothing half-written "
        f"was kept: free some space and run the same command again"
    )


def check_free_space(folder, need: int, what: str, hint: str = "free some space"):
    """Refuse (UserError) before a long write when `folder`'s file system has less than `need` bytes free."""
    free = free_bytes(folder)
    if need and free is not None and free < need:
        raise UserError(
            f"{folder}: {what} need about {size_text(need)} but its file system has {size_text(free)} free; {hint}"
        )
