"""Merging a split: the previous build's reused rows and the parts' rows written as the split's .f16, index and
json, in the CSV's order (the same bytes as a one-process build of every clip); then the parts swept away, with
what killed shards left."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cache.layout import file_record
from pipeline.cache.shards import PART_RE
from pipeline.utils import (
    UserError,
    atomic_path,
    atomic_to_csv,
    atomic_write_json,
    file_lock,
    read_json,
    remove_stale_temps,
)

COPY_FRAMES = 1 << 18  # frames per write when a merge copies rows (64 MB at 128 mels)


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


def _open_f16(path: Path, frames: int, n_mels: int) -> np.ndarray:
    if frames == 0:  # np.memmap cannot map an empty file
        return np.empty((0, n_mels), np.float16)
    return np.memmap(path, dtype=np.float16, mode="r", shape=(frames, n_mels))


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
