"""Shared plumbing: atomic writes, completion markers, run directories, logging, seeding, precision, and how a
stage reports an error its user caused (UserError, user_errors). It stands on nothing of the project (no pipeline or
models import; tests/test_imports.py): what needs the process world (device choice, the rank-aware logger) lives in
pipeline/distributed.py, above it."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


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


# --------------------------------------------------------------------------- writing: atomic, checked, full disks
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


@contextmanager
def atomic_path(path, suffix=None, need: int | None = None):
    """Yield a temporary path beside `path`; on success rename it over `path`, on error (or an interruption)
    remove it. A full file system (ENOSPC, EDQUOT) becomes disk_full's UserError naming `path`, its free space and
    `need` (bytes, where the caller knows them): one line, exit status 2, no partial file left.

    The temporary name keeps the final suffix so that writers that add one (np.save, savefig) behave.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if is_disk_full(e):
            raise disk_full(path, need, e) from e
        raise


def remove_stale_temps(path, log=None) -> int:
    """Remove the temporary siblings atomic_path left for `path` when a run was killed (.<stem>.tmp-XXXXXXXX<suffix>,
    XXXXXXXX being mkstemp's 8 characters; also the form before the tmp- marker); one writer per path at a time is
    assumed. Only those names match, so the temporaries of `<stem>.x<suffix>` are not touched. Returns the number
    of bytes reclaimed (logged when any)."""
    path = Path(path)
    freed, n = 0, 0
    for p in (path, checksum_path(path)):  # and those of its checksum sidecar (save_torch)
        mine = re.compile(re.escape(f".{p.stem}.") + r"(tmp-)?[a-z0-9_]{8}" + re.escape(p.suffix))
        for tmp in p.parent.glob(f".{p.stem}.*{p.suffix}"):
            if mine.fullmatch(tmp.name) and tmp.is_file():
                freed += tmp.stat().st_size
                tmp.unlink()
                n += 1
    if n and log:
        log.info(f"removed {n} temporary file(s) of an interrupted run beside {path} ({freed / 1e6:.1f} MB)")
    return freed


def remove_stale_outputs(folder, names, log=None) -> int:
    """remove_stale_temps for each of a stage's output files `names` in `folder` (the next run of the stage)."""
    return sum(remove_stale_temps(Path(folder) / n, log) for n in names)


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


def atomic_write_text(path, text: str):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_to_csv(df, path, **kw):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path) -> Path:
    """The checksum sidecar of a file save_torch writes: <name>.sha256, in sha256sum's format."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _sums(side: Path) -> list[str]:
    try:
        return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]
    except (OSError, IndexError):
        return []


def save_torch(obj, path):
    """torch.save(obj) to `path` atomically, and its sha256 to the sidecar checksum_path(path), which load_torch
    checks. The bytes depend on obj alone (written through a file object, the archive's inner folder is always
    "archive", not the temporary's random name), so the same state gives the same file. While the file is
    replaced the sidecar lists the new and the old sums: killed at any moment, the pair on disk checks."""
    import torch

    path, side = Path(path), checksum_path(path)
    old = _sums(side) if path.exists() else []
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        digest = sha256_file(tmp)
        atomic_write_text(side, "".join(f"{h}  {path.name}\n" for h in dict.fromkeys([digest, *old])))
    atomic_write_text(side, f"{digest}  {path.name}\n")


class DamagedFile(UserError):
    """A file whose contents are not the ones recorded when it was written (a copy cut short, flipped bytes)."""


def verify_checksum(path, repair: str = "write it again"):
    """Raise DamagedFile naming `path` when its sidecar (checksum_path) records other contents; a file without a
    sidecar (written before checksums were kept, or brought from elsewhere) is taken as it is."""
    side = checksum_path(path)
    sums = _sums(side) if side.exists() else None
    if sums is not None and sha256_file(path) not in sums:
        raise DamagedFile(
            f"{path}: damaged: its sha256 is not the one {side.name} recorded when it was written "
            f"(a copy cut short or changed bytes); {repair}"
        )


class NotPlainWeights(UserError):
    """A model file whose unpickling would call code (a class, a function): refused unread, nothing in it run."""


CONVERT_COMMAND = "python -m pipeline.model_files convert"  # the one-time conversion of a trusted old file


def _refused(path, e: BaseException) -> NotPlainWeights:
    """The one-line refusal of a file weights-only unpickling stopped at, naming what it would have called."""
    needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    what = f"it calls {needs.group(1)}" if needs else "it holds pickle instructions beyond plain data"
    return NotPlainWeights(
        f"{path}: not a plain weights file: loading it would run code ({what}), so nothing in it was read or run; "
        f"a fattag checkpoint written before weights-only loading (or another file from a source you trust) is "
        f"converted once with `{CONVERT_COMMAND} {path}`"
    )


def load_weights_only(path):
    """torch.load(path, weights_only=True) on the CPU: tensors, plain containers, numbers and strings come back; a
    file whose unpickling would call anything else (a crafted file, or a checkpoint pickling numpy or other
    objects) is refused with NotPlainWeights before any of it runs. Other unreadable files raise as torch does."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise _refused(path, e) from None
        raise


def load_torch(path, repair: str = "write it again"):
    """load_weights_only of a file save_torch wrote, after verify_checksum."""
    verify_checksum(path, repair)
    return load_weights_only(path)


def move_with_checksum(src, dst):
    """os.replace a file and its checksum sidecar (when it has one)."""
    os.replace(src, dst)
    if checksum_path(src).exists():
        os.replace(checksum_path(src), checksum_path(dst))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def is_done(folder, key: str) -> bool:
    """True when `folder` holds a completion marker written for this key (a config hash)."""
    marker = Path(folder) / "done.json"
    if not marker.exists():
        return False
    try:
        return read_json(marker).get("key") == key
    except (OSError, ValueError):
        return False


def mark_done(folder, key: str, **info):
    """Write the completion marker last: a folder without it is never read as finished."""
    atomic_write_json(Path(folder) / "done.json", {"key": key, **info})


def run_dir(cfg, stage: str) -> Path:
    """runs/<run.name>/<stage>/ (relative paths resolve from the current directory)."""
    return Path("runs") / cfg.run.name / stage


class _LogFile(logging.FileHandler):
    """log.txt: a line that a full disk refuses is dropped (the write that matters fails and says so, in one line)
    instead of logging's traceback on stderr."""

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], OSError) and sys.exc_info()[1].errno in DISK_FULL:
            return
        super().handleError(record)


def get_logger(name="fattag", folder=None) -> logging.Logger:
    """A logger that prints to stderr and, when `folder` is given, appends to folder/log.txt."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    if folder is not None:
        path = str(Path(folder) / "log.txt")
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
        Path(folder).mkdir(parents=True, exist_ok=True)
        fh = _LogFile(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    log.propagate = False
    return log


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


AMP_CHOICES = ("bf16", "fp16", "off")


def amp_dtype(choice: str, device):
    """The autocast dtype of train.amp on this device: bf16 -> torch.bfloat16, fp16 -> torch.float16 (T4 / P100
    GPUs have no fast bf16), off -> None; None on the CPU (mixed precision is a CUDA feature here)."""
    import torch

    if choice not in AMP_CHOICES:
        raise UserError(f"train.amp={choice!r}: one of {list(AMP_CHOICES)}")
    if choice == "off" or getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.bfloat16 if choice == "bf16" else torch.float16


def make_scaler(choice: str, device):
    """The gradient scaler fp16 needs (enabled only for fp16 autocast on CUDA; a no-op otherwise)."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=amp_dtype(choice, device) == torch.float16)


def progress(iterable=None, enabled=True, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kw)


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def keep_freed_memory() -> bool:
    """Ask glibc to keep memory that is freed in the process instead of unmapping it (M_MMAP_MAX = 0, a trim
    threshold of 2 GB). A training step frees and reallocates GBs of activation blocks; with glibc's defaults each
    step unmaps them and page-faults them back in, zeroed: 1.14-1.8x a step at full width, depending on the
    machine (docs/benchmarks.md).
    The cost is that the process keeps its peak heap until it exits, as a training process does anyway. A no-op
    (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
