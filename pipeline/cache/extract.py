"""Extraction into one file: extract_split writes the log-mels of a list of wavs (pipeline.extractor's logmels,
in worker processes) as one .f16 and its index, with the normalisation statistics' terms and the file's sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from pipeline.extractor import logmels
from pipeline.utils import atomic_path, atomic_to_csv, progress, remove_stale_temps


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
