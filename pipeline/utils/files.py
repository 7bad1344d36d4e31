"""Files written atomically: atomic_path (a temporary beside the target, renamed over it on success, removed on
an error or an interruption; a full disk reported in one line) and its text, JSON and CSV forms; the temporaries a
killed writer left (remove_stale_temps); the completion marker a stage writes last (mark_done, is_done).

    with atomic_path("runs/x/oof.npy", suffix=".npy") as tmp:
        np.save(tmp, p)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipeline.utils.checksums import checksum_path
from pipeline.utils.errors import disk_full, is_disk_full

_UMASK = os.umask(0)
os.umask(_UMASK)


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
