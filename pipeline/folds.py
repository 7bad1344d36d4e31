"""Multi-label stratified K folds of the curated set (iterative stratification), written once to a CSV.

    make folds CONFIG=configs/demo.yaml          # or: python -m pipeline.folds --config FILE [key=value ...]

Output: runs/<run.name>/folds/folds.csv (fname, fold), deterministic from run.seed and folds.n_splits, beside its
config.yaml; a rerun with the same data and settings does nothing.

    folds = read_folds(cfg)       # DataFrame fname, fold in the curated CSV's order
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from pipeline.config import cli, save_config
from pipeline.data import load_dataset
from pipeline.utils import atomic_to_csv, get_logger, is_done, mark_done, run_dir


def make_folds(y: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """(N,) fold index for a (N, C) multi-hot matrix."""
    if n_splits < 2:
        raise ValueError(f"folds.n_splits must be >= 2, got {n_splits}")
    if len(y) < n_splits:
        raise ValueError(f"folds.n_splits={n_splits} exceeds the {len(y)} curated clips")
    fold = np.full(len(y), -1, int)
    mskf = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(mskf.split(np.zeros(len(y)), y)):
        fold[val] = k
    return fold


def folds_path(cfg):
    return run_dir(cfg, "folds") / "folds.csv"


def main(cfg) -> pd.DataFrame:
    out = run_dir(cfg, "folds")
    ds = load_dataset(cfg.data.root, check_audio=False)
    key = hashlib.sha1(("|".join(ds.curated["fname"]) + f"|{cfg.folds.n_splits}|{cfg.run.seed}|"
                        + "|".join(",".join(labs) for labs in ds.curated["labels"])).encode()).hexdigest()
    log = get_logger(folder=out)
    if is_done(out, key):
        log.info(f"folds up to date: {folds_path(cfg)}")
        return read_folds(cfg)
    fold = make_folds(ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed)
    df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold})
    atomic_to_csv(df, folds_path(cfg), index=False)
    save_config(cfg, out)
    mark_done(out, key, n_splits=cfg.folds.n_splits)
    log.info(f"wrote {folds_path(cfg)}: {len(df)} clips, sizes {np.bincount(fold).tolist()}")
    return df


def read_folds(cfg) -> pd.DataFrame:
    path = folds_path(cfg)
    if not (path.parent / "done.json").exists():  # written after folds.csv: a stray csv alone is not valid
        raise FileNotFoundError(f"{path}: no completed folds; run `make folds`")
    return pd.read_csv(path, dtype={"fname": str})


if __name__ == "__main__":
    main(cli("folds", "Write multi-label stratified K folds of the curated set.")[0])
