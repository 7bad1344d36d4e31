"""The cache's layout: the folder a dataset's features live in (cache_dir, named by a hash of the feature
parameters and the dataset path), the key that makes a split valid (split_key), and what a split's json record
vouches for: its files' byte lengths and sha256 (damage says why files are not those it recorded), its index
(<split>.index.csv). Readers (pipeline/cache/reader.py) and the build (pipeline/cache/build.py) both stand on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from pipeline.utils import read_json, sha256_file

PARAM_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "trim_db", "log_floor")


SPLIT_ORDER = ("noisy", "curated", "test")


REPAIR = "run `make features` (the same CONFIG and OVERRIDES) to rebuild it"


INDEX_COLUMNS = ["fname", "offset", "frames", "note", "size", "mtime_ns", "sum", "sumsq"]


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
