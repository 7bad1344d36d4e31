"""Building the cache: build_cache brings every split up to date (what `make features` runs). Per split,
build_split checks the split's files against its record, reuses the previous build's rows of unchanged clips,
extracts the others into parts (pipeline/cache/shards.py), and the process that completes the last part merges
(pipeline/cache/merge.py); before any work, the bytes it will write are estimated against the free space."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cache.layout import (
    INDEX_COLUMNS,
    SPLIT_ORDER,
    _read_index,
    cache_dir,
    damage,
    feature_params,
    file_record,
    split_key,
)
from pipeline.cache.merge import _merge, _sweep
from pipeline.cache.shards import Part, _complete_count, _extract_part, _plan
from pipeline.config import save_config
from pipeline.data import dataset
from pipeline.utils import atomic_write_json, check_free_space, file_lock, get_logger, position, read_json


def clip_table(ds, split: str) -> pd.DataFrame:
    """fname, path, size, mtime_ns of a split's clips, in the CSV's order: what decides whether a clip's rows of an
    earlier build can be reused."""
    df = ds.split(split)
    paths = [ds.wav_dirs[split] / f for f in df["fname"]]
    stats = [os.stat(p) for p in paths]
    return pd.DataFrame(
        {
            "fname": list(df["fname"]),
            "path": paths,
            "size": [st.st_size for st in stats],
            "mtime_ns": [st.st_mtime_ns for st in stats],
        }
    )


def _previous(out: Path, split: str, params: dict, log=None):
    """(meta, index) of the split's last completed build when its rows can be reused (same feature parameters,
    its files consistent), else None. A merge removes the json before it replaces the files, so a json here
    describes the .f16 and index beside it."""
    meta_path, bin_path = out / f"{split}.json", out / f"{split}.f16"
    if not meta_path.exists():
        return None
    try:
        meta, index = read_json(meta_path), _read_index(out / f"{split}.index.csv")
        ok = (
            meta.get("params") == params
            and set(INDEX_COLUMNS) <= set(index.columns)
            and int(index["frames"].sum()) == meta["shape"][0]
            and bin_path.stat().st_size == 2 * meta["shape"][0] * meta["shape"][1]
        )
    except (OSError, ValueError, KeyError):
        ok = False
    if not ok:
        if log:
            log.info(f"{split}: the previous build's rows cannot be reused (older layout or incomplete files)")
        return None
    return meta, index


def _check_split(out: Path, split: str, meta: dict, verify: bool, log) -> dict:
    """The split's json record when its files are whole (checksums recorded now where an older build kept none),
    else {} with the json removed: readers refuse the split and the build extracts it again, reusing nothing."""
    if not meta or meta.get("stale"):
        return meta
    why = damage(out, split, meta, verify)
    if why:
        log.warning(f"{why}; rebuilding the '{split}' split")
        (out / f"{split}.json").unlink(missing_ok=True)
        return {}
    if "files" not in meta:
        meta = {**meta, "files": {n: file_record(out / n) for n in (f"{split}.f16", f"{split}.index.csv")}}
        atomic_write_json(out / f"{split}.json", meta)
        log.info(f"{split}: recorded the byte lengths and checksums of its files")
    elif verify:
        log.info(f"{split}: every file's sha256 is the one recorded when it was written")
    return meta


def _reuse_mask(prev, clips: pd.DataFrame) -> np.ndarray:
    """Which clips keep their rows from the previous build (same fname, size and mtime)."""
    if prev is None:
        return np.zeros(len(clips), bool)
    old = prev[1].set_index("fname")
    known = clips["fname"].isin(old.index).to_numpy()
    at = old.reindex(clips["fname"])
    return (
        known
        & (at["size"].to_numpy() == clips["size"].to_numpy())
        & (at["mtime_ns"].to_numpy() == clips["mtime_ns"].to_numpy())
    )


def build_split(
    out: Path, split: str, clips: pd.DataFrame, params: dict, cfg, shard=None, log=None, verify: bool = False
) -> bool:
    """Bring one split of the cache up to date; True when it is complete afterwards. Rows of the previous build are
    reused for clips with the same fname, size and mtime; the others are extracted, all of them (shard None: into
    the parts that a sharded run left missing, or one part) or shard (i, n)'s share; the process that completes
    the last part merges. Splits that are already valid (and whole: _check_split) are left alone."""
    key = split_key(params, clips)
    meta_path = out / f"{split}.json"
    lock = out / f"{split}.lock"
    with file_lock(lock, log, f"the '{split}' split"):
        meta = _check_split(out, split, read_json(meta_path) if meta_path.exists() else {}, verify, log)
        if meta.get("key") == key:
            if meta.get("stale"):  # the data went back to what these files hold
                atomic_write_json(meta_path, {k: v for k, v in meta.items() if k != "stale"})
            _sweep(out, split, log)  # parts a merge killed before its sweep left behind
            return True
        prev = _previous(out, split, params, log)
        if meta and not meta.get("stale"):  # readers stop trusting it; its rows stay for reuse
            atomic_write_json(meta_path, {**meta, "stale": True})
    reused = _reuse_mask(prev, clips)
    todo = clips[~reused]
    plan = _plan(key, prev, todo)
    n = shard[1] if shard else _complete_count(out, split, plan)
    parts = [Part(out, split, plan, i, n) for i in range(n)]
    log.info(
        f"{split}: {len(todo)} of {len(clips)} clips to extract, {int(reused.sum())} reused from the previous "
        f"build" + (f"; shard {shard[0]}/{n}" if shard else "")
    )
    with position(split=split):
        for part in [parts[shard[0]]] if shard else parts:
            _extract_part(part, todo, params, cfg, log, wait=shard is None)
    with file_lock(lock, log, f"the '{split}' split"):
        if meta_path.exists() and read_json(meta_path).get("key") == key:
            _sweep(out, split, log)  # another shard merged first: a part it could not sweep
            return True
        waiting = [p.i for p in parts if not p.done()]
        if waiting:
            log.info(f"{split}: shard(s) {waiting} of {n} not finished; the last one (or `make features`) merges")
            return False
        now = read_json(meta_path) if meta_path.exists() else {}
        replaced = prev is not None and reused.any() and not _same_build(prev[0], now)
        if not replaced:
            _merge(out, split, clips, key, params, prev if reused.any() else None, parts, log)
            _sweep(out, split, log)
            return True
    # another process merged a different build while this one extracted: the rows this plan would reuse no longer
    # lie where prev's index says; plan again on top of the build now on disk (this plan's parts get swept)
    log.info(f"{split}: another build was merged while this one extracted; planning again on top of it")
    return build_split(out, split, clips, params, cfg, shard, log)


def _same_build(a: dict, b: dict) -> bool:
    """Whether two of a split's json records describe the same files (the stale mark aside)."""
    return all(a.get(k) == b.get(k) for k in ("key", "shape", "sum", "sumsq"))


def estimate_bytes(clips: pd.DataFrame, params: dict) -> int:
    """The most bytes the .f16 rows of `clips` take (untrimmed lengths, from the wav headers)."""
    import soundfile as sf

    frames = 0
    for path in clips["path"]:
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError):  # unreadable: the extraction names it
            continue
        samples = math.ceil(info.frames * params["sample_rate"] / info.samplerate)
        frames += 1 + max(samples, params["n_fft"]) // params["hop_length"]
    return 2 * frames * params["n_mels"]


def space_needed(out: Path, split: str, clips: pd.DataFrame, params: dict, shard=None) -> int:
    """The most bytes a build of the split adds to the cache's file system: its new rows, and when the merge
    copies (reused rows, or several parts) the whole new .f16 beside the old one and the parts. 0 when valid."""
    meta_path = out / f"{split}.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
    if meta.get("key") == split_key(params, clips) and not damage(out, split, meta):
        return 0
    prev = _previous(out, split, params)
    reused = _reuse_mask(prev, clips)
    new = estimate_bytes(clips[~reused], params)
    if not (reused.any() or shard or any(out.glob(f"{split}.*.part*of*.json"))):
        return new  # one part, moved into place
    kept = int(prev[1].set_index("fname").loc[clips["fname"][reused], "frames"].sum()) if reused.any() else 0
    return 2 * new + 2 * kept * params["n_mels"]


def _state(out: Path, split: str):
    """What tells that a build wrote a split: its key and its .f16's modification time."""
    meta, f16 = out / f"{split}.json", out / f"{split}.f16"
    return (read_json(meta).get("key") if meta.exists() else None, f16.stat().st_mtime_ns if f16.exists() else None)


def build_cache(cfg, ds=None, log=None, shard=None, verify: bool = False) -> Path:
    """Bring every split of the cache up to date (shard (i, n): extract only this shard's share, merging the splits
    whose parts it completes; verify: also compare every file's sha256 with its record); return the cache folder.
    Refuses before any work when the estimated size exceeds the free space."""
    ds = ds or dataset(cfg, check_audio=True)
    out = cache_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    log = log or get_logger(folder=out)
    params = feature_params(cfg)
    tables = {split: clip_table(ds, split) for split in SPLIT_ORDER}
    tables = {split: clips for split, clips in tables.items() if len(clips)}
    check_free_space(
        out,
        sum(space_needed(out, s, c, params, shard) for s, c in tables.items()),
        "the feature cache's new files (at most, untrimmed)",
        hint="free some space, or set features.cache_dir to a folder on a larger disk",
    )
    atomic_write_json(out / "params.json", {"params": params, "root": str(Path(cfg.data.root).resolve())})
    did, pending = [], []
    for split, clips in tables.items():
        was = _state(out, split)
        if not build_split(out, split, clips, params, cfg, shard, log, verify):
            pending.append(split)
        elif was != _state(out, split):
            did.append(split)
    save_config(cfg, out)
    state = f"built {', '.join(did)}" if did else "nothing to merge" if pending else "up to date, nothing to do"
    log.info(f"feature cache {out}: {state}" + (f"; {', '.join(pending)} wait(s) for other shards" if pending else ""))
    return out
