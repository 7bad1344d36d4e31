"""Shared plumbing: atomic writes, completion markers, run directories, logging, seeding, precision, and how a
stage reports an error its user caused (UserError, user_errors). It stands on nothing of the project (no pipeline or
models import; tests/test_imports.py): what needs the process world (device choice, the rank-aware logger) lives in
pipeline/distributed.py, above it."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import tempfile
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


@contextmanager
def user_errors(stage: str):
    """Around a stage's command line: a user's error (is_user_error) prints `fattag <stage>: error: <message>` and
    exits with status 2; anything else (a bug) propagates with its traceback, and so does every error when the
    environment sets FATTAG_DEBUG=1."""
    try:
        yield
    except Exception as e:
        if not is_user_error(e) or os.environ.get("FATTAG_DEBUG", "") not in ("", "0"):
            raise
        print(f"fattag {stage}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; on success rename it over `path`, on error remove it.

    The temporary name keeps the final suffix so that writers that add one (np.save, savefig) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temps(path, log=None) -> int:
    """Remove the temporary siblings atomic_path left for `path` when a run was killed (.<stem>.tmp-XXXXXXXX<suffix>,
    XXXXXXXX being mkstemp's 8 characters; also the form before the tmp- marker); one writer per path at a time is
    assumed. Only those names match, so the temporaries of `<stem>.x<suffix>` are not touched. Returns the number
    of bytes reclaimed (logged when any)."""
    path = Path(path)
    mine = re.compile(re.escape(f".{path.stem}.") + r"(tmp-)?[a-z0-9_]{8}" + re.escape(path.suffix))
    freed, n = 0, 0
    for tmp in path.parent.glob(f".{path.stem}.*{path.suffix}"):
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
        fh = logging.FileHandler(path)
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
