"""Run logging: where a stage's run writes (run_dir: runs/<run>/<stage>/), its log (get_logger: stderr and
<folder>/log.txt), its progress bars (progress: tqdm), and the commit of the code it ran (git_commit, of the
repository at ROOT)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.utils.errors import DISK_FULL

ROOT = Path(__file__).resolve().parents[2]  # pipeline/utils/runlog.py -> the repository


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
