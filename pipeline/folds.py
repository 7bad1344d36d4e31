"""Multi-label stratified K folds of the curated set (iterative stratification), written once to a CSV.

Grouped folds (folds.group_by): clips made from one recording belong on one side of a fold, or validation measures
memory of recordings instead of generalisation. Where train_curated.csv names each clip's source recordings (the
real-sound set's `sources` column, `;`-separated; `auto` uses it when present), the recordings are dealt to the folds
class by class (each class's recordings spread over the folds, the folds' clip counts balanced) and a clip goes to the
fold of most of its recordings. A clip that mixes recordings of two folds still leaks its other ones; the share of
such clips is logged and kept in done.json.

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


def make_group_folds(groups: list[list[str]], y: np.ndarray, n_splits: int, seed: int) -> tuple[np.ndarray, float]:
    """(N,) fold index keeping each group (recording) in one fold, and the share of clips whose groups span folds.

    groups: each clip's recordings; y: (N, C) multi-hot. A recording's class is the label most of its clips carry;
    class by class (the rarest first), its recordings (the most used first) go to the fold with the fewest of that
    class's recordings, then the fewest clips."""
    rng = np.random.default_rng(seed)
    clips_of: dict[str, list[int]] = {}
    for i, gs in enumerate(groups):
        for g in gs:
            clips_of.setdefault(g, []).append(i)
    if len(clips_of) < n_splits:
        raise ValueError(f"folds.group_by: {len(clips_of)} groups, fewer than folds.n_splits={n_splits}")
    names = sorted(clips_of)
    cls = {g: int(np.argmax(y[clips_of[g]].sum(axis=0) + 1e-3 * rng.random(y.shape[1]))) for g in names}
    by_class = {c: [g for g in names if cls[g] == c] for c in sorted(set(cls.values()))}
    fold_of, per_class, total = {}, np.zeros((y.shape[1], n_splits)), np.zeros(n_splits)
    for c in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        order = sorted(by_class[c], key=lambda g: (-len(clips_of[g]), rng.random()))
        for g in order:
            k = min(range(n_splits), key=lambda f: (per_class[c, f], total[f], rng.random()))
            fold_of[g] = k
            per_class[c, k] += 1
            total[k] += len(clips_of[g])
    fold = np.array([np.bincount([fold_of[g] for g in gs], minlength=n_splits).argmax() for gs in groups])
    leak = float(np.mean([len({fold_of[g] for g in gs}) > 1 for gs in groups]))
    return fold, leak


def group_column(cfg, ds) -> str | None:
    """The curated CSV's column that folds.group_by names (auto: `sources` where present), or None."""
    g = cfg.folds.group_by
    if g == "none" or (g == "auto" and "sources" not in ds.curated.columns):
        return None
    g = "sources" if g == "auto" else g
    if g not in ds.curated.columns:
        raise ValueError(
            f"folds.group_by={g}: train_curated.csv has no column {g!r} "
            f"(its columns: {', '.join(c for c in ds.curated.columns if c != 'labels')})"
        )
    return g


def split_groups(cells, fnames) -> list[list[str]]:
    """Each clip's groups from a `;`-separated column; a clip with none is a group of its own."""
    out = []
    for cell, f in zip(cells, fnames):
        gs = sorted({g.strip() for g in str(cell).split(";") if g.strip()}) if isinstance(cell, str) else []
        out.append(gs or [f"clip:{f}"])
    return out


def unheard(groups: list[list[str]], fold: np.ndarray, k: int) -> np.ndarray:
    """(N,) which clips of fold k share no group (recording) with any clip outside fold k: the validation clips
    whose recordings fold k's model never heard in training. groups: each clip's groups (split_groups)."""
    heard = {g for gs, f in zip(groups, fold) if f != k for g in gs}
    return np.array([f == k and not (set(gs) & heard) for gs, f in zip(groups, fold)])


def unheard_mask(cfg, ds, folds_df: pd.DataFrame, fnames) -> np.ndarray | None:
    """For out-of-fold predictions of the curated clips `fnames` (each predicted by the model of its fold in
    folds_df): which were validated on recordings its model never heard; None where the folds are not grouped."""
    gcol = None if ds.folds is not None else group_column(cfg, ds)
    if gcol is None:
        return None
    groups = split_groups(ds.curated[gcol], ds.curated["fname"])
    fold = folds_df.set_index("fname").loc[ds.curated["fname"], "fold"].to_numpy()
    clean = np.zeros(len(fold), bool)
    for k in np.unique(fold):
        clean |= unheard(groups, fold, int(k))
    return pd.Series(clean, index=ds.curated["fname"]).loc[list(fnames)].to_numpy()


def folds_path(cfg):
    return run_dir(cfg, "folds") / "folds.csv"


def main(cfg) -> pd.DataFrame:
    out = run_dir(cfg, "folds")
    ds = dataset(cfg)
    given = None if ds.folds is None else ds.folds.tolist()
    gcol = None if ds.folds is not None else group_column(cfg, ds)
    groups = None if gcol is None else split_groups(ds.curated[gcol], ds.curated["fname"])
    key = hashlib.sha1(
        (
            "|".join(ds.curated["fname"])
            + f"|{cfg.folds.n_splits}|{cfg.run.seed}|{given}|{gcol}:{groups}|"
            + "|".join(",".join(labs) for labs in ds.curated["labels"])
        ).encode()
    ).hexdigest()
    log = get_logger(folder=out)
    if is_done(out, key):
        log.info(f"folds up to date: {folds_path(cfg)}")
        return read_folds(cfg)
    if ds.folds is not None:  # predefined: fold names in sorted order become 0..K-1
        names, fold = np.unique(ds.folds, return_inverse=True)
        if len(names) < 2:
            raise ValueError(
                f"{cfg.data.single_label_csv}: its fold column names one fold ({names[0]}); "
                f"cross-validation needs two or more"
            )
        log.info(f"folds from {cfg.data.single_label_csv}: {names.tolist()} (folds.n_splits is not used)")
        df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold, "given_fold": ds.folds})
    elif groups is not None:
        fold, leak = make_group_folds(groups, ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed)
        log.info(
            f"folds grouped by {gcol}: {len({g for gs in groups for g in gs})} groups; {100 * leak:.1f}% of "
            f"the clips mix groups of two folds"
        )
        df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold})
    else:
        fold = make_folds(ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed, ds.single_label)
        df = pd.DataFrame({"fname": ds.curated["fname"], "fold": fold})
    atomic_to_csv(df, folds_path(cfg), index=False)
    save_config(cfg, out)
    mark_done(
        out,
        key,
        n_splits=int(df["fold"].max()) + 1,
        group_by=gcol,
        group_leak=None if groups is None else round(leak, 4),
    )
    log.info(f"wrote {folds_path(cfg)}: {len(df)} clips, sizes {np.bincount(fold).tolist()}")
    return df


def read_folds(cfg) -> pd.DataFrame:
    path = folds_path(cfg)
    if not (path.parent / "done.json").exists():  # written after folds.csv: a stray csv alone is not valid
        raise FileNotFoundError(f"{path}: no completed folds; run `make folds`")
    return pd.read_csv(path, dtype={"fname": str})


if __name__ == "__main__":
    cli("folds", "Write multi-label stratified K folds of the curated set.", main=main)
