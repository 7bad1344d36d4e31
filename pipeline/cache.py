"""The log-mel feature cache: building it (incremental, sharded, merged, checked) and reading it. One float16 array
per split on disk, memory-mapped when read; the log-mels themselves come from pipeline.extractor.

    out = build_cache(cfg)                          # what `make features` runs (pipeline/features.py)
    out = build_cache(cfg, shard=(i, n))            # shard i of n's share of each split; the last shard merges
    out = build_cache(cfg, verify=True)             # also recompute every file's checksum, rebuild what differs
    cache = FeatureCache.open(cfg, "curated")       # normalised (F, T) float32 arrays by fname
    cache.get("0a1b2c3d.wav"), cache.frames, cache.fnames

Layout: <features.cache_dir>/<dataset>-<hash of the feature parameters and dataset path>/
    params.json, config.yaml, log.txt
    <split>.f16          float16 (total_frames, n_mels), clips one after another in the CSV's order
    <split>.index.csv    fname, offset, frames, note (why a clip was kept untrimmed or padded), the wav's size and
                         mtime_ns, and the clip's log-mel sum and sum of squares
    <split>.json         shape, sums for the normalisation statistics, the parameters, each file's byte length and
                         sha256 as written ("files"), and the completion key (written last; "stale": true while the
                         split is rebuilt, and then it is refused)
    <split>.lock         the file lock of the split's merges

A split is valid only when its <split>.json holds the key for these parameters and these clips (fnames, sizes,
mtimes) and its files have the lengths it records; everything is written under temporary names first, so an
interrupted run leaves nothing read as valid, and a rerun with the same parameters does nothing. Damage after the
fact (a copy cut short, a full disk, flipped bits): every build compares each file's length with the record and
rebuilds a split whose files differ, `--verify` also compares the checksums, and every reader (FeatureCache) checks
the lengths before it maps a file and refuses a damaged one, naming it and `make features`.

Incremental and sharded builds: a rebuild reuses the previous build's rows of every clip whose fname, size and
mtime are unchanged and extracts only the others (new or changed clips). Those are extracted into parts,
<split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock} (plan: a hash of what is reused and what is extracted, so
shards that saw different data never mix): one part in a plain build, shard i's share with `--shard i/n`
(parse_shard). The process that completes the last part merges the reused rows and the parts into the split's
files in the CSV's order, the same bytes as a one-process build of every clip, then removes the parts and what
killed shards left; a plain build after a sharded one extracts only the parts still missing. Before extracting,
the build estimates the bytes it will write (untrimmed clip lengths from the wav headers) and refuses when the
cache's file system has less free space.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import save_config
from pipeline.data import dataset
from pipeline.extractor import logmels
from pipeline.utils import (
    UserError,
    atomic_path,
    atomic_to_csv,
    atomic_write_json,
    check_free_space,
    file_lock,
    get_logger,
    position,
    progress,
    read_json,
    remove_stale_temps,
    sha256_file,
)

PARAM_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "trim_db", "log_floor")
SPLIT_ORDER = ("noisy", "curated", "test")
REPAIR = "run `make features` (the same CONFIG and OVERRIDES) to rebuild it"


def feature_params(cfg) -> dict:
    return {k: cfg.features[k] for k in PARAM_KEYS}


def cache_dir(cfg) -> Path:
    root = Path(cfg.data.root).resolve()
    key = {"params": feature_params(cfg), "root": str(root)}
    if cfg.data.single_label_csv is not None:  # its clips fill the splits: never mixed with the FSD layout's
        key["single_label_csv"] = cfg.data.single_label_csv
    key = json.dumps(key, sort_keys=True)
    return Path(cfg.features.cache_dir) / f"{root.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def split_key(params: dict, clips: pd.DataFrame) -> str:
    """What makes a split's cache valid: the feature parameters, and each clip's fname, size and mtime, in order."""
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    for f, size, mtime in zip(clips["fname"], clips["size"], clips["mtime_ns"]):
        h.update(f"{f}\0{size}\0{mtime}\0".encode())
    return h.hexdigest()


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


# --------------------------------------------------------------------------- extraction into one file
def extract_split(paths, fnames, out_dir: Path, split: str, params: dict, workers: int, show=True, log=None):
    """Write <split>.f16 / .index.csv for the given wav paths (the index holds each clip's offset, frames, note and
    its log-mel sum and sum of squares, the normalisation statistics' terms); returns the split's json record,
    with the .f16's byte length and sha256 (computed as it is written) under "f16"."""
    rows, total, s1, s2 = [], 0, 0.0, 0.0
    bin_path = out_dir / f"{split}.f16"
    remove_stale_temps(bin_path, log)  # a killed build's partial file: never read, now reclaimed
    digest = hashlib.sha256()
    names = iter(fnames)
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fout:
        bar = progress(total=len(paths), enabled=show, desc=f"features {split}", unit="clip")
        for results in logmels(list(paths), params, workers):
            for arr, note, a, b in results:
                fname = next(names)
                data = arr.tobytes()
                fout.write(data)
                digest.update(data)
                rows.append((fname, total, len(arr), note, a, b))
                if note and log:
                    log.info(f"{split} {fname}: {note}")
                total += len(arr)
                s1 += a
                s2 += b
            bar.update(len(results))
        bar.close()
    index = pd.DataFrame(rows, columns=["fname", "offset", "frames", "note", "sum", "sumsq"])
    atomic_to_csv(index, out_dir / f"{split}.index.csv", index=False)
    return {
        "split": split,
        "shape": [total, params["n_mels"]],
        "dtype": "float16",
        "clips": len(rows),
        "sum": s1,
        "sumsq": s2,
        "count": total * params["n_mels"],
        "f16": {"bytes": 2 * total * params["n_mels"], "sha256": digest.hexdigest()},
    }


# --------------------------------------------------------------------------- shards
SHARD_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))
INDEX_COLUMNS = ["fname", "offset", "frames", "note", "size", "mtime_ns", "sum", "sumsq"]
COPY_FRAMES = 1 << 18  # frames per write when a merge copies rows (64 MB at 128 mels)


def parse_shard(text: str | None, env=None) -> tuple[int, int] | None:
    """(i, n) for `--shard i/n`; `--shard auto` takes torchrun's RANK / WORLD_SIZE, else a SLURM array's
    SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT. Without --shard, a torchrun launch
    (WORLD_SIZE > 1) shards by its ranks, anything else builds whole splits (None)."""
    env = os.environ if env is None else env
    if text is None:
        world = env.get("WORLD_SIZE", "") or "1"
        if not world.isdigit():
            raise UserError(f"WORLD_SIZE={world!r} in the environment is not an integer (torchrun sets it)")
        if int(world) <= 1:
            return None
        text = "auto"
    if text == "auto":
        i, n, source = _shard_from_env(env)
    else:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(
                f"--shard {text}: expected i/n (shard i of n, counted from 0), e.g. --shard 0/4, or auto"
            ) from None
        source = f"--shard {text}"
    if not 0 <= i < n:
        raise UserError(
            f"{source}: shard {i} of {n} is outside 0..{n - 1} (shards are counted from 0; a SLURM "
            f"array with gaps needs --shard i/n)"
        )
    return i, n


def _shard_from_env(env) -> tuple[int, int, str]:
    """(i, n, where they came from) of `--shard auto`: torchrun's variables, else a SLURM array's."""
    for rank, size in SHARD_ENV:
        if env.get(size):
            try:
                first = int(env.get("SLURM_ARRAY_TASK_MIN") or 0) if rank.startswith("SLURM") else 0
                i, n = int(env[rank]) - first, int(env[size])
            except (KeyError, ValueError):
                raise UserError(
                    f"--shard auto: {rank}={env.get(rank)!r} / {size}={env[size]!r} are not integers; give --shard i/n"
                ) from None
            return i, n, f"{rank}={env.get(rank)} {size}={n}"
    raise UserError(
        "--shard auto: neither torchrun's RANK / WORLD_SIZE nor a SLURM array's "
        "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT is set; give --shard i/n"
    )


class Part:
    """Shard i of n of one split's extraction plan: <split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock}; the json,
    written last, marks it complete. The lock makes one process at a time write it."""

    def __init__(self, out: Path, split: str, plan: str, i: int, n: int):
        self.out, self.i, self.n = out, i, n
        self.stem = f"{split}.{plan}.part{i}of{n}"

    def path(self, ext: str) -> Path:
        return self.out / f"{self.stem}.{ext}"

    def done(self) -> bool:
        """Complete: its json (written last) and its rows (a one-part merge moves the .f16 into place: killed
        before the split's json, the part is extracted again)."""
        return self.path("json").exists() and self.path("f16").exists()

    def rows(self) -> pd.DataFrame:
        return _read_index(self.path("index.csv"))


PART_RE = re.compile(r"^\.?(?P<split>\w+)\.(?P<plan>[0-9a-f]{12})\.part(?P<i>\d+)of(?P<n>\d+)\.")


def _plan(key: str, prev, todo: pd.DataFrame) -> str:
    """Names an extraction: the target key, the build whose rows are reused, the clips to extract. Shards that
    saw the same dataset and cache agree on it; parts of another plan are never merged."""
    h = hashlib.sha1(f"{key}\0{prev[0]['key'] if prev else ''}\0".encode())
    for f in todo["fname"]:
        h.update(f.encode() + b"\0")
    return h.hexdigest()[:12]


def _complete_count(out: Path, split: str, plan: str) -> int:
    """The n of this plan's complete parts already on disk (the most common one), or 1 when there are none."""
    counts = {}
    for p in out.glob(f"{split}.{plan}.part*of*.json"):
        m = PART_RE.match(p.name)
        if m:
            counts[int(m["n"])] = counts.get(int(m["n"]), 0) + 1
    return max(counts, key=counts.get) if counts else 1


def _extract_part(part: Part, todo: pd.DataFrame, params: dict, cfg, log, wait: bool):
    """Extract the part's share of `todo` unless it is done. Another process writing it: wait=True waits for it,
    wait=False (an explicit --shard: the same shard started twice) is a UserError naming the lock file."""
    if part.done():
        return
    with file_lock(part.path("lock"), log, f"shard {part.i}/{part.n} of {part.stem.split('.')[0]}", wait=wait):
        if part.done():  # finished by the process we waited for
            return
        m = len(todo)
        share = todo.iloc[part.i * m // part.n : (part.i + 1) * m // part.n]
        log.info(f"extracting {part.stem}: {len(share)} of the {m} clips to extract with {cfg.run.workers} process(es)")
        record = extract_split(
            list(share["path"]),
            list(share["fname"]),
            part.out,
            part.stem,
            params,
            cfg.run.workers,
            show=cfg.run.progress,
            log=log,
        )
        atomic_write_json(
            part.path("json"),
            {"clips": record["clips"], "frames": record["shape"][0], "shard": [part.i, part.n], "f16": record["f16"]},
        )


# --------------------------------------------------------------------------- merge and sweep
def _merge(out: Path, split: str, clips: pd.DataFrame, key: str, params: dict, prev, parts: list, log) -> dict:
    """Write <split>.f16, .index.csv and .json from the previous build's reused rows and the parts' rows, in the
    CSV's order: the same bytes as a build that extracted every clip in one process. Caller holds the split lock."""
    n_mels = params["n_mels"]
    sources, tables = [], []
    if prev is not None:
        meta, index = prev
        sources.append(_open_f16(out / f"{split}.f16", meta["shape"][0], n_mels))
        tables.append(index.assign(src=0))
    for part in parts:
        rows = part.rows()
        sources.append(_open_f16(part.path("f16"), int(rows["frames"].sum()), n_mels))
        tables.append(rows.assign(src=len(sources) - 1))
    table = pd.concat(tables, ignore_index=True).drop_duplicates("fname", keep="last").set_index("fname")
    missing = [f for f in clips["fname"] if f not in table.index]
    if missing:
        raise RuntimeError(f"{out}: the parts of '{split}' lack {len(missing)} clip(s), e.g. {missing[0]}")
    rows = table.loc[clips["fname"]].reset_index()
    (out / f"{split}.json").unlink(missing_ok=True)  # no longer describes the files about to be replaced
    f16 = _write_rows(out / f"{split}.f16", sources, rows, parts if prev is None else None)
    frames = rows["frames"].to_numpy()
    index = pd.DataFrame(
        {
            "fname": rows["fname"],
            "offset": np.cumsum(frames) - frames,
            "frames": frames,
            "note": rows["note"],
            "size": clips["size"].to_numpy(),
            "mtime_ns": clips["mtime_ns"].to_numpy(),
            "sum": rows["sum"],
            "sumsq": rows["sumsq"],
        }
    )
    atomic_to_csv(index, out / f"{split}.index.csv", index=False)
    total = int(frames.sum())
    record = {
        "split": split,
        "shape": [total, n_mels],
        "dtype": "float16",
        "clips": len(rows),
        "sum": math.fsum(rows["sum"]),
        "sumsq": math.fsum(rows["sumsq"]),
        "count": total * n_mels,
        "params": params,
        "key": key,
        "files": {f"{split}.f16": f16, f"{split}.index.csv": file_record(out / f"{split}.index.csv")},
    }
    counts = note_counts(rows["note"])
    if counts:
        record["notes"] = counts
        if log:
            log.info(f"{split}: " + ", ".join(f"{n} clip(s) {what}" for what, n in counts.items()))
    atomic_write_json(out / f"{split}.json", record)  # the completion mark, written last
    return record


def _write_rows(bin_path: Path, sources: list, rows: pd.DataFrame, parts) -> dict:
    """Write the split's .f16 from `rows` (src, offset, frames) of `sources`; returns its byte length and sha256.
    One part holding every clip in order (parts given, no reuse) is the file: it is moved into place."""
    src, start, frames = rows["src"].to_numpy(), rows["offset"].to_numpy(), rows["frames"].to_numpy()
    if parts and len(parts) == 1 and len(rows) and (start == np.cumsum(frames) - frames).all():
        part = read_json(parts[0].path("json"))
        os.replace(parts[0].path("f16"), bin_path)
        return part["f16"] if "f16" in part else file_record(bin_path)  # a part of an older build: hash it
    digest = hashlib.sha256()
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fout:
        run = 0
        for j in range(1, len(rows) + 1):  # copy runs of rows that lie one after another in a source
            if j < len(rows) and src[j] == src[run] and start[j] == start[j - 1] + frames[j - 1]:
                continue
            a, b = int(start[run]), int(start[j - 1] + frames[j - 1])
            for c in range(a, b, COPY_FRAMES):
                data = sources[src[run]][c : min(b, c + COPY_FRAMES)].tobytes()
                fout.write(data)
                digest.update(data)
            run = j
        size = fout.tell()
    return {"bytes": size, "sha256": digest.hexdigest()}


NOTE_KINDS = {
    "non-finite samples": "with non-finite samples (set to 0)",
    "shorter than one frame": "shorter than one FFT frame (zero-padded)",
    "silent": "silent (kept untrimmed)",
}


def note_counts(notes) -> dict:
    """How many clips of a split each kind of extraction note concerns (an all-NaN clip is non-finite and silent)."""
    counts = {what: sum(key in str(n) for n in notes) for key, what in NOTE_KINDS.items()}
    return {what: n for what, n in counts.items() if n}


def _sweep(out: Path, split: str, log=None):
    """After a merge (split lock held): remove every part of the split whose lock is free (this plan's, merged now,
    and those of killed or outdated shards) and the temporaries killed writers left (pipeline.utils
    remove_stale_temps' names)."""
    stems = set()
    for p in [*out.glob(f"{split}.*"), *out.glob(f".{split}.*")]:
        m = PART_RE.match(p.name)
        if m and m["split"] == split:
            stems.add(f"{split}.{m['plan']}.part{m['i']}of{m['n']}")
    freed = 0
    for stem in sorted(stems):
        try:
            with file_lock(out / f"{stem}.lock", wait=False):
                for ext in ("f16", "index.csv", "json"):
                    (out / f"{stem}.{ext}").unlink(missing_ok=True)
                    freed += remove_stale_temps(out / f"{stem}.{ext}")
                (out / f"{stem}.lock").unlink(missing_ok=True)
        except UserError:  # being written right now: not ours to remove
            continue
    for name in (f"{split}.f16", f"{split}.index.csv", f"{split}.json"):  # the split's own temporaries
        freed += remove_stale_temps(out / name)
    if freed and log:
        log.info(f"{split}: removed parts and temporary files of earlier or killed shards ({freed / 1e6:.1f} MB)")


# --------------------------------------------------------------------------- damage checks
def file_record(path: Path) -> dict:
    """What a split's json records of one of its files: byte length and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def recorded_files(split: str, meta: dict) -> dict:
    """{file name: {"bytes": n[, "sha256": hex]}} a split's json vouches for (a record written before checksums
    were kept: the .f16's length from its shape)."""
    if "files" in meta:
        return meta["files"]
    return {f"{split}.f16": {"bytes": 2 * int(meta["shape"][0]) * int(meta["shape"][1])}}


def damage(folder: Path, split: str, meta: dict, verify: bool = False) -> str | None:
    """Why a split's files are not what its json recorded (a missing file, another length; with verify, another
    sha256), or None when they are."""
    for name, want in recorded_files(split, meta).items():
        path = Path(folder) / name
        size = path.stat().st_size if path.exists() else None
        if size is None:
            return f"{path}: missing"
        if size != want["bytes"]:
            return f"{path}: {size} bytes where {want['bytes']} were written (a copy cut short or extended)"
        if verify and want.get("sha256") and sha256_file(path) != want["sha256"]:
            return f"{path}: its sha256 differs from the one recorded when it was written (changed bytes)"
    return None


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


# --------------------------------------------------------------------------- building
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


# --------------------------------------------------------------------------- reading
def read_meta(path: Path) -> dict:
    """A split's json record; a missing or stale one (a rebuild under way) is a FileNotFoundError naming it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no completed '{path.stem}' features here; run `make features`")
    meta = read_json(path)
    if meta.get("stale"):
        raise FileNotFoundError(
            f"{path}: the '{path.stem}' features are out of date for the dataset and being "
            f"rebuilt; run `make features` (or let the running shards finish)"
        )
    return meta


def _read_index(path: Path) -> pd.DataFrame:
    # pandas >= 3 reads floats back exactly (round trip): the per-clip sums of a reused row are the extracted ones
    return pd.read_csv(path, dtype={"fname": str, "note": str}, keep_default_na=False)


def _open_f16(path: Path, frames: int, n_mels: int) -> np.ndarray:
    if frames == 0:  # np.memmap cannot map an empty file
        return np.empty((0, n_mels), np.float16)
    return np.memmap(path, dtype=np.float16, mode="r", shape=(frames, n_mels))


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


class FeatureCache:
    """Read one split of the cache: memory-mapped, normalised on the fly. Arrays are (n_mels, frames) float32.
    Opening checks the files' lengths against the split's record: a damaged cache is a UserError naming the file."""

    def __init__(self, folder, split: str, mean=0.0, std=1.0):
        folder = Path(folder)
        self.meta = read_meta(folder / f"{split}.json")
        why = damage(folder, split, self.meta)
        if why:
            raise UserError(f"{why}: the '{split}' feature cache is damaged; {REPAIR}")
        self.folder, self.split = folder, split
        self.index = _read_index(folder / f"{split}.index.csv")
        self.fnames = self.index["fname"].tolist()
        self.offsets = self.index["offset"].to_numpy()
        self.frames = self.index["frames"].to_numpy()
        if len(self.index) != self.meta["clips"] or int(self.frames.sum()) != self.meta["shape"][0]:
            raise UserError(
                f"{folder / f'{split}.index.csv'}: its rows disagree with {split}.json (a damaged index); {REPAIR}"
            )
        self._pos = {f: i for i, f in enumerate(self.fnames)}
        self.mean, self.std = float(mean), float(std)
        self._arr = None

    @property
    def arr(self):
        if self._arr is None:  # opened lazily so that forked loader workers each map it themselves
            self._arr = np.memmap(
                self.folder / f"{self.split}.f16", dtype=np.float16, mode="r", shape=tuple(self.meta["shape"])
            )
        return self._arr

    def __len__(self):
        return len(self.fnames)

    def position(self, fname) -> int:
        try:
            return self._pos[fname]
        except KeyError:
            raise KeyError(f"{fname}: not in the '{self.split}' feature cache {self.folder}") from None

    def get(self, key, start=0, length=None) -> np.ndarray:
        """Clip `key` (fname or position) as (n_mels, frames) float32, optionally frames [start, start+length)."""
        i = key if isinstance(key, (int, np.integer)) else self.position(key)
        off, n = int(self.offsets[i]), int(self.frames[i])
        stop = n if length is None else min(n, start + length)
        x = np.asarray(self.arr[off + start : off + stop], dtype=np.float32).T
        return (x - self.mean) / self.std

    @classmethod
    def open(cls, cfg, split: str) -> FeatureCache:
        folder = cache_dir(cfg)
        mean, std = norm_stats(cfg, folder)
        return cls(folder, split, mean, std)


def norm_stats(cfg, folder=None):
    """(mean, std) of the log-mels of features.norm_split (falls back to curated when that split is empty)."""
    split = cfg.features.norm_split
    if split in (None, "none"):
        return 0.0, 1.0
    folder = Path(folder or cache_dir(cfg))
    path = folder / f"{split}.json"
    if not path.exists() and split == "noisy":
        path = folder / "curated.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no statistics for features.norm_split={split}; run `make features`")
    m = read_meta(path)
    mean = m["sum"] / m["count"]
    std = max(np.sqrt(max(m["sumsq"] / m["count"] - mean**2, 0.0)), 1e-6)
    return mean, std
