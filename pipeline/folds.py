"""Multi-label stratified K folds of the curated set (iterative stratification), written once to a CSV.

Grouped folds (folds.group_by): clips made from one recording belong on one side of a fold, or validation measures
memory of recordings instead of generalisation. The recordings come from train_curated.csv where it names each
clip's source recordings (the real-sound set's `sources` column, `;`-separated), else from the clips' audio
(`audio`: pipeline/audio_groups.py finds them in the feature cache, so `make features` comes first); `auto` takes the
column when present, else the audio. The recordings are dealt to the folds class by class (each class's recordings
spread over the folds, the folds' clip counts balanced) and a clip goes to the fold of most of its recordings. A clip
that mixes recordings of two folds still leaks its other ones; the share of such clips is logged and kept in
done.json. Where a recording found in the audio holds most of a class, the dataset's classes come from single
sources and the folds are label-stratified (one line says so).

Single-label datasets (data.single_label_csv) keep the folds their CSV gives (its fold column, e.g. UrbanSound8K's
10 folds; folds.n_splits is then ignored), or get sklearn's StratifiedKFold.

    make folds CONFIG=configs/demo.yaml          # or: python -m pipeline.folds --config FILE [key=value ...]

Output: runs/<run.name>/folds/folds.csv (fname, fold, and where grouped each clip's `groups`, the largest first:
the unit pipeline.intervals resamples), deterministic from run.seed and folds.n_splits, beside its config.yaml;
with audio grouping also shared_audio.csv (the noisy and test clips sharing a loud stretch with curated clips, and
those clips' folds). A rerun with the same data and settings does nothing.

    folds = read_folds(cfg)       # DataFrame fname, fold[, groups] in the curated CSV's order
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
    """What folds.group_by groups by: a column of the curated CSV, "audio" (the recordings found in the clips'
    audio, pipeline.audio_groups), or None. auto: `sources` where present, else audio."""
    g = cfg.folds.group_by
    if g == "none":
        return None
    if g == "auto":
        return "sources" if "sources" in ds.curated.columns else "audio"
    if g != "audio" and g not in ds.curated.columns:
        raise ValueError(
            f"folds.group_by={g}: train_curated.csv has no column {g!r} "
            f"(its columns: {', '.join(c for c in ds.curated.columns if c != 'labels')}; or audio, auto, none)"
        )
    return g


def audio_groups(cfg, ds, log):
    """(each curated clip's recordings found in the audio, or None for label-stratified folds; what was found)."""
    from pipeline import audio_groups as ag
    from pipeline.cache import cache_dir

    folder = cache_dir(cfg)
    if not (folder / "curated.json").exists():
        raise FileNotFoundError(
            f"{folder}: no feature cache of the curated clips; folds.group_by={cfg.folds.group_by} finds the "
            f"recordings in it: run `make features` first (or folds.group_by=none)"
        )
    p = cfg.features
    found = ag.find(folder, cfg.folds.audio.min_match, p.sample_rate / p.hop_length, cfg.run.progress, log)
    au = cfg.folds.audio
    groups, info = ag.clip_groups(found, ds.targets(ds.curated), au.purity, au.max_class_share, ds.classes)
    info["seconds"] = {k: v for k, v in found.stats.items() if k.endswith("_s")}
    log.info(
        f"audio groups: {info['kept']} recordings heard in {100 * info['grouped_share']:.1f}% of the "
        f"{len(groups)} curated clips ({info['background']} backgrounds heard under several labels left out); the "
        f"largest holds {100 * info['largest_share']:.1f}% of the clips"
    )
    if info["fallback"]:
        log.info(
            f"audio groups: one recording holds most of the clips of {', '.join(info['whole_class'])}: this "
            f"dataset's classes come from single sources, so the folds are label-stratified, not grouped"
        )
    return (None if info["fallback"] else groups), info, (found, au.foreground_db)


def shared_audio(ds, found, foreground_db: float, fold: np.ndarray, log) -> pd.DataFrame:
    """The noisy and test clips that share a foreground stretch of audio with curated clips (within foreground_db
    of both clips' loudest bins: quiet background beds are not counted): split, fname, the curated clips and their
    folds. A test clip's is a leak that inflates a leaderboard; a noisy clip's leaks that fold's validation through
    the warm-up."""
    names = {"noisy": ds.noisy["fname"].tolist(), "test": ds.test["fname"].tolist()}
    cur = ds.curated["fname"].tolist()
    rows = []
    for split, shared in sorted(found.shared.items()):
        hits: dict[int, list] = {}
        for (q, c), level in zip(shared.tolist(), found.shared_level[split].tolist()):
            if level <= foreground_db:
                hits.setdefault(q, []).append(c)
        for q in sorted(hits):
            cs = sorted(set(hits[q]))
            rows.append((split, names[split][q], ";".join(cur[c] for c in cs), ";".join(str(int(fold[c])) for c in cs)))
        log.info(f"audio groups: {len(hits)} of {len(names[split])} {split} clips share audio with curated clips")
    return pd.DataFrame(rows, columns=["split", "fname", "curated", "folds"])


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
    if "groups" in folds_df.columns:  # what `folds` grouped by, whatever its source
        groups = split_groups(folds_df.set_index("fname").loc[ds.curated["fname"], "groups"], ds.curated["fname"])
    else:  # folds written before the groups column, or not grouped
        gcol = None if ds.folds is not None else group_column(cfg, ds)
        if gcol is None or gcol == "audio":
            return None
        groups = split_groups(ds.curated[gcol], ds.curated["fname"])
    fold = folds_df.set_index("fname").loc[ds.curated["fname"], "fold"].to_numpy()
    clean = np.zeros(len(fold), bool)
    for k in np.unique(fold):
        clean |= unheard(groups, fold, int(k))
    return pd.Series(clean, index=ds.curated["fname"]).loc[list(fnames)].to_numpy()


def units(folds_df: pd.DataFrame, fnames) -> np.ndarray:
    """(N,) the bootstrap unit of each clip of fnames (pipeline.intervals): its largest group in folds.csv's
    `groups` column, the clip itself where the folds are not grouped."""
    from pipeline.intervals import units_of

    if "groups" not in folds_df.columns:
        return np.arange(len(fnames))
    return units_of(list(folds_df.set_index("fname").loc[list(fnames), "groups"]))


def units_for(cfg, fnames):
    """Bootstrap units of out-of-fold clips: this run's fold groups (units), None where it has no folds.csv."""
    path = folds_path(cfg)
    if not path.exists():
        return None
    return units(pd.read_csv(path, dtype={"fname": str, "groups": str}), fnames)


def folds_path(cfg):
    return run_dir(cfg, "folds") / "folds.csv"


def _grouping(cfg, ds, log):
    """(what the folds group by or None, each clip's groups or None, the audio grouping's record or None, and
    what the audio pass found or None)."""
    src = None if ds.folds is not None else group_column(cfg, ds)
    if src == "audio":
        groups, info, found = audio_groups(cfg, ds, log)
        return src, groups, info, found
    return src, (None if src is None else split_groups(ds.curated[src], ds.curated["fname"])), None, None


def _deal(cfg, ds, src, groups, log) -> tuple[pd.DataFrame, float | None]:
    """folds.csv's frame (fname, fold[, given_fold]) and the share of clips that mix groups of two folds."""
    if ds.folds is not None:  # predefined: fold names in sorted order become 0..K-1
        names, fold = np.unique(ds.folds, return_inverse=True)
        if len(names) < 2:
            raise ValueError(
                f"{cfg.data.single_label_csv}: its fold column names one fold ({names[0]}); "
                f"cross-validation needs two or more"
            )
        log.info(f"folds from {cfg.data.single_label_csv}: {names.tolist()} (folds.n_splits is not used)")
        return pd.DataFrame({"fname": ds.curated["fname"], "fold": fold, "given_fold": ds.folds}), None
    if groups is not None:
        fold, leak = make_group_folds(groups, ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed)
        log.info(
            f"folds grouped by {src}: {len({g for gs in groups for g in gs})} groups; {100 * leak:.1f}% of "
            f"the clips mix groups of two folds"
        )
        return pd.DataFrame({"fname": ds.curated["fname"], "fold": fold}), leak
    fold = make_folds(ds.targets(ds.curated), cfg.folds.n_splits, cfg.run.seed, ds.single_label)
    return pd.DataFrame({"fname": ds.curated["fname"], "fold": fold}), None


def main(cfg) -> pd.DataFrame:
    out = run_dir(cfg, "folds")
    ds = dataset(cfg)
    log = get_logger(folder=out)
    given = None if ds.folds is None else ds.folds.tolist()
    src, groups, info, audio = _grouping(cfg, ds, log)
    key = hashlib.sha1(
        (
            "|".join(ds.curated["fname"])
            + f"|{cfg.folds.n_splits}|{cfg.run.seed}|{given}|{src}:{groups}|"
            + ("" if audio is None else f"{dict(cfg.folds.audio)}|{sorted(audio[0].shared)}|")
            + "|".join(",".join(labs) for labs in ds.curated["labels"])
        ).encode()
    ).hexdigest()
    if is_done(out, key):
        log.info(f"folds up to date: {folds_path(cfg)}")
        return read_folds(cfg)
    df, leak = _deal(cfg, ds, src, groups, log)
    if groups is not None:  # each clip's groups, the largest first (the unit pipeline.intervals resamples)
        size = pd.Series([g for gs in groups for g in gs]).value_counts()
        df["groups"] = [";".join(sorted(gs, key=lambda g: (-size[g], g))) for gs in groups]
    if audio is not None:
        shared = shared_audio(ds, *audio, df["fold"].to_numpy(), log)
        atomic_to_csv(shared, out / "shared_audio.csv", index=False)
    atomic_to_csv(df, folds_path(cfg), index=False)
    save_config(cfg, out)
    mark_done(
        out,
        key,
        n_splits=int(df["fold"].max()) + 1,
        group_by=src if groups is not None or src is None else f"{src} (fallback: label-stratified)",
        group_leak=None if leak is None else round(leak, 4),
        audio=info,
    )
    log.info(f"wrote {folds_path(cfg)}: {len(df)} clips, sizes {np.bincount(df['fold']).tolist()}")
    return df


def read_folds(cfg) -> pd.DataFrame:
    path = folds_path(cfg)
    if not (path.parent / "done.json").exists():  # written after folds.csv: a stray csv alone is not valid
        raise FileNotFoundError(f"{path}: no completed folds; run `make folds`")
    return pd.read_csv(path, dtype={"fname": str, "groups": str})


if __name__ == "__main__":
    cli("folds", "Write multi-label stratified K folds of the curated set.", main=main)
