"""Multi-label stratified K folds of the curated set (iterative stratification), written once to a CSV.

Single-label datasets (data.single_label_csv) keep the folds their CSV gives (its fold column, e.g. UrbanSound8K's
10 folds; folds.n_splits is then ignored), or get sklearn's StratifiedKFold.

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
from sklearn.model_selection import StratifiedKFold

from pipeline.config import cli, save_config
from pipeline.data import dataset
from pipeline.utils import atomic_to_csv, get_logger, is_done, mark_done, run_dir


def make_folds(y: np.ndarray, n_splits: int, seed: int, single_label: bool = False) -> np.ndarray:
    """(N,) fold index for a (N, C) multi-hot matrix (one-hot and StratifiedKFold when single_label)."""
    if n_splits < 2:
        raise ValueError(f"folds.n_splits must be >= 2, got {n_splits}")
    if len(y) < n_splits:
        raise ValueError(f"folds.n_splits={n_splits} exceeds the {len(y)} curated clips")
    fold = np.full(len(y), -1, int)
    if single_label:
        splitter, target = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed), y.argmax(1)
    else:
        splitter, target = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed), y
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(y)), target)):
        fold[val] = k
    return fold


def folds_path(cfg):
    return run_dir(cfg, "folds") / "folds.csv"


def main(cfg) -> pd.DataFrame:
    out = run_dir(cfg, "folds")
    ds = dataset(cfg)
    given = None if ds.folds is None else ds.folds.tolist()
    key = hashlib.sha1(("|".join(ds.curated["fname"]) + f"|{cfg.folds.n_splits}|{cfg.run.seed}|{given}|"
                        + "|".join(",".join(labs) for labs in ds.curated["labels"])).encode()).hexdigest()
    log = get_logger(folder=out)
    if is_done(out, key):
        log.info(f"folds up to date: {folds_path(cfg)}")
        return read_folds(cfg)
    if ds.folds is not None:                       # predefined: fold names in sorted order become 0..K-1
        names, fold = np.unique(ds.folds, return_inverse=True)
        if len(names) < 2:
            raise ValueError(f"{cfg.data.single_label_csv}: its fold column names one fold ({names[0]}); "
                             f"cross-validation needs two or more")
        log.info(f"folds from {cfg.data.single_label_csv}: {names.tolist()} (folds.n_splits is not used)")
        df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold, "given_fold": ds.folds})
    else:
        fold = make_folds(ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed, ds.single_label)
        df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold})
    atomic_to_csv(df, folds_path(cfg), index=False)
    save_config(cfg, out)
    mark_done(out, key, n_splits=int(df["fold"].max()) + 1)
    log.info(f"wrote {folds_path(cfg)}: {len(df)} clips, sizes {np.bincount(fold).tolist()}")
    return df


def read_folds(cfg) -> pd.DataFrame:
    path = folds_path(cfg)
    if not (path.parent / "done.json").exists():  # written after folds.csv: a stray csv alone is not valid
        raise FileNotFoundError(f"{path}: no completed folds; run `make folds`")
    return pd.read_csv(path, dtype={"fname": str})


if __name__ == "__main__":
    cli("folds", "Write multi-label stratified K folds of the curated set.", main=main)
