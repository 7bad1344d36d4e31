"""Stage 2: K-fold training on the curated set, in the mode that train.mode names.

    make train CONFIG=configs/demo.yaml [OVERRIDES="train.mode=teacher_student"]
    python -m pipeline.train --config FILE [key=value ...]

For each fold k (train.folds, [] = all) a model is trained on the other folds and validated every
train.eval_every epochs on fold k with sliding-window predictions over whole clips; train.full adds one model on the
whole curated set (the reference's third submission). Models start from the warm-up (train.init_from: warmup), a
checkpoint path, or from scratch (null). Modes that use unlabelled clips take the noisy set, or, with
data.labelled_fraction < 1, the curated training clips left unlabelled (a stratified share stays labelled). A mode
whose pseudo-label rule is class_threshold holds out train.calib_fraction of the labelled clips (stratified, never
trained on) to choose its per-class thresholds at each epoch start.
train.noisy_labelled adds the noisy clips, labels taken as they are, to the labelled set.

Single-label datasets (data.single_label_csv, see pipeline/data.py): softmax models and losses, the CSV's folds when
it has them, the unlabelled rows (empty label) as the unlabelled clips, validation and summary by accuracy and
weighted AUC (summary.json also gives the mean and std of the per-fold accuracies, as ESC-10 / UrbanSound8K results
are reported). They need model.time_reversal=false and no warm-up (configs/demo_single.yaml).

Output: runs/<run.name>/train/fold_<k>/{best.pt, last.pt, metrics.csv, oof.csv, done.json}, and in train/:
oof.csv (pooled out-of-fold predictions), summary.json (OOF lwlrap overall and per class), curves.png, config.yaml.
A finished fold is never retrained; an interrupted one resumes from its last.pt. The summary files are
rebuilt from every fold folder finished for this config (pipeline/summary.py, `make summary`).

Fold-parallel runs: processes that each train their own folds of one run share it, e.g. one GPU each:
    CUDA_VISIBLE_DEVICES=0 python -m pipeline.train --config FILE train.folds=[0] &
    CUDA_VISIBLE_DEVICES=1 python -m pipeline.train --config FILE train.folds=[1] &
The warm-up runs once (the first process trains it, the others wait on its lock and start from its
last.pt), and whichever process finishes last leaves oof.csv and summary.json over every finished fold. Each fold
has its own lock (fold_<k>/.fold.lock): processes given the same fold, or `make train` started twice, train it once;
the others wait, then find it done.

Data-parallel (pipeline/distributed.py): `torchrun --nproc_per_node=N -m pipeline.train ...` or `make train NPROC=N`
trains each fold (and the warm-up it needs) on N processes; rank 0 writes the folds and every file here.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import distributed, summary, warmup
from pipeline import folds as folds_stage
from pipeline.cache import FeatureCache
from pipeline.config import cli, load_config, save_config
from pipeline.data import dataset
from pipeline.engine import (
    build_model,
    checkpoint_state,
    concat_clipsets,
    fit,
    init_from_checkpoint,
    load_model,
    make_clipset,
    train_key,
)
from pipeline.modes import mode_class
from pipeline.utils import atomic_to_csv, file_lock, is_done, position, run_dir


def warmup_config(cfg):
    """This run's config as the warm-up stage resolves it (the `warmup` overlay)."""
    meta = cfg.get("_meta", {})
    return load_config(meta.get("config_file"), meta.get("overrides", []), stage="warmup")


def init_path(cfg) -> Path | None:
    src = cfg.train.init_from
    if src is None:
        return None
    path = run_dir(cfg, "warmup") / "last.pt" if src == "warmup" else Path(src)
    if src == "warmup" and not (path.parent / "done.json").exists():
        raise FileNotFoundError(
            f"train.init_from=warmup but {path.parent} holds no finished warm-up; run "
            f"`make warmup` first, or set train.init_from=null to train from scratch"
        )
    if not path.exists():
        raise FileNotFoundError(f"train.init_from: {path} does not exist")
    return path


def labelled_split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask keeping a stratified `fraction` of the rows labelled."""
    if fraction >= 1:
        return np.ones(len(y), bool)
    if not 0 < fraction < 1:
        raise ValueError(f"data.labelled_fraction must be in (0, 1], got {fraction}")
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n_keep = min(len(y) - 1, max(1, round(fraction * len(y))))  # counts, not shares: no rounding overlap
    split = MultilabelStratifiedShuffleSplit(
        n_splits=1, train_size=n_keep, test_size=len(y) - n_keep, random_state=seed
    )
    keep, _ = next(split.split(np.zeros(len(y)), y))
    mask = np.zeros(len(y), bool)
    mask[keep] = True
    return mask


def fold_names(cfg, n_splits: int) -> list:
    names = list(cfg.train.folds) or list(range(n_splits))
    bad = [k for k in names if not 0 <= int(k) < n_splits]
    if bad:
        raise ValueError(f"train.folds: {bad} outside 0..{n_splits - 1}")
    return [int(k) for k in names] + (["full"] if cfg.train.full else [])


def main(cfg) -> dict:
    out = run_dir(cfg, "train")
    mode_cls = mode_class(cfg.train.mode)
    ds = dataset(cfg)
    check_train_config(cfg, ds, mode_cls)
    # inputs checked before anything is written: the feature cache and a given init_from checkpoint
    curated_cache = FeatureCache.open(cfg, "curated")
    noisy_cache = FeatureCache.open(cfg, "noisy") if len(ds.noisy) else None
    if cfg.train.init_from not in (None, "warmup"):
        checkpoint_state(init_path(cfg))
    world = distributed.setup(cfg)
    # stages run in order: each is a no-op when already done (rank 0 writes the folds, the other ranks read them)
    folds = distributed.on_main(lambda: folds_stage.main(cfg), lambda: folds_stage.read_folds(cfg))
    if cfg.train.init_from == "warmup":
        warmup.main(warmup_config(cfg))
    log = distributed.logger(out)
    if world.main:
        save_config(cfg, out)
    fold = folds["fold"].to_numpy()
    init = init_path(cfg)
    key = train_key(cfg)

    def fit_fold(k, fdir, tr, val):
        """Train fold k (k == "full": every curated clip) from its labelled, unlabelled and held-out clips."""
        if world.main:  # an earlier config's predictions: never pooled with this fold's model
            (fdir / "oof.csv").unlink(missing_ok=True)
        labelled, unlabelled, calib = fold_clips(cfg, ds, mode_cls, curated_cache, noisy_cache, tr)
        if unlabelled is not None:
            unlabelled = mode_cls.select_unlabelled(cfg, k, unlabelled, log, load_model=load_model)
        seed_offset = 1000 * (1 + (k if k != "full" else 99))
        model = build_model(
            cfg,
            ds.n_classes,
            heads=mode_cls.heads,
            seed=cfg.run.seed + seed_offset,
            dropout=mode_cls.model_dropout(cfg),
            block_dropout=mode_cls.model_block_dropout(cfg),
        )
        if init is not None:
            init_from_checkpoint(model, init, log)
        log.info(
            f"fold {k}: {len(labelled)} labelled, {0 if unlabelled is None else len(unlabelled)} "
            f"unlabelled, {0 if val is None else len(val)} validation"
            f"{'' if calib is None else f', {len(calib)} held-out threshold'} clips; mode {cfg.train.mode}"
        )
        fit(cfg, fdir, model, cfg.train.mode, ds.classes, labelled, unlabelled, val, log, seed_offset, calib)

    for k in fold_names(cfg, int(fold.max()) + 1):
        fdir = out / f"fold_{k}"
        tr = np.ones(len(fold), bool) if k == "full" else fold != k
        val = None if k == "full" else make_clipset(curated_cache, ds.curated[fold == k], ds.classes)
        # one process per fold at a time: a second `make train` of the same run (or overlapping fold-parallel
        # processes) waits here, then finds the fold done
        with file_lock(fdir / ".fold.lock", log, f"fold {k}") if world.main else nullcontext(), position(fold=k):
            if not distributed.from_main(is_done(fdir, key)):  # data-parallel: the ranks decide together
                fit_fold(k, fdir, tr, val)
            if val is not None and distributed.from_main(not (fdir / "oof.csv").exists()):
                write_fold_oof(cfg, fdir, val, ds.classes)  # also when a kill fell between done.json and oof.csv
    if not world.main:
        return {"dir": out}
    return summary.rebuild(cfg, ds, log)  # every finished fold, whichever process trained it


def check_train_config(cfg, ds, mode_cls):
    """Refuse (ValueError naming the key) train settings that contradict each other or the dataset."""
    if ds.single_label:
        check_single_label(cfg, mode_cls)
    if (
        cfg.train.mode == "teacher_student"
        and cfg.teacher_student.rule == "noisy_aware"
        and cfg.data.labelled_fraction < 1
    ):
        raise ValueError(
            "teacher_student.rule=noisy_aware keeps the noisy clips' given labels, and "
            "data.labelled_fraction < 1 makes the unlabelled clips curated ones without labels: use "
            "another rule (threshold, class_threshold, topk) or data.labelled_fraction=1"
        )


def fold_clips(cfg, ds, mode_cls, curated_cache, noisy_cache, tr) -> tuple:
    """(labelled, unlabelled, calib) ClipSets of a fold that trains on the curated clips ds.curated[tr]: the
    data.labelled_fraction of them that keep their labels (stratified), less the held-out clips whose predictions
    set a calibrating mode's thresholds (calib, else None), plus the noisy clips with train.noisy_labelled; the
    unlabelled clips (None unless the mode uses them): the rest of the curated ones (and the noisy ones without their
    labels with data.unlabelled_noisy), else the noisy ones."""
    lab_mask = labelled_split(ds.targets(ds.curated)[tr], cfg.data.labelled_fraction, cfg.run.seed)
    tr_df = ds.curated[tr].reset_index(drop=True)
    lab_df, calib = tr_df[lab_mask], None
    if mode_cls.needs_calibration(cfg):  # held out for the pseudo-label thresholds, never trained on
        keep = labelled_split(ds.targets(lab_df), 1 - cfg.train.calib_fraction, cfg.run.seed + 1)
        calib = make_clipset(curated_cache, lab_df[~keep], ds.classes)
        lab_df = lab_df[keep]
    labelled = make_clipset(curated_cache, lab_df, ds.classes)
    if cfg.train.noisy_labelled and noisy_cache is not None:
        labelled = concat_clipsets(labelled, make_clipset(noisy_cache, ds.noisy, ds.classes))
    unlabelled = None
    if mode_cls.uses_unlabelled:
        if cfg.data.labelled_fraction < 1:  # the rest of the curated training clips, labels kept as truth
            rest = tr_df[~lab_mask]
            unlabelled = make_clipset(curated_cache, rest, ds.classes, truth_df=rest)
            if cfg.data.unlabelled_noisy and noisy_cache is not None:  # the noisy clips too, their labels dropped
                unlabelled = concat_clipsets(
                    unlabelled, make_clipset(noisy_cache, ds.noisy, ds.classes, ds.noisy_truth)
                )
            unlabelled.y[:] = 0  # unlabelled: no given labels (only pl_* stats see the truth)
        elif noisy_cache is not None:
            unlabelled = make_clipset(noisy_cache, ds.noisy, ds.classes, ds.noisy_truth)
    return labelled, unlabelled, calib


def check_single_label(cfg, mode_cls):
    """Config errors of a single-label run, each naming the key to change, before any long work."""
    problems = []
    if cfg.model.time_reversal:
        problems.append("model.time_reversal must be false (reversed clips as new classes are a multi-label device)")
    if cfg.train.init_from == "warmup":
        problems.append("train.init_from=warmup: there is no labelled noisy set to warm up on; use null or a path")
    if not mode_cls.single_label_ok:
        problems.append(f"train.mode={cfg.train.mode} has no single-label form")
    if cfg.train.noisy_labelled:
        problems.append("train.noisy_labelled: the unlabelled clips of a single-label CSV have no labels to take")
    if problems:
        raise ValueError(f"data.single_label_csv={cfg.data.single_label_csv}: " + "; ".join(problems))


def write_fold_oof(cfg, fdir, val, classes):
    """Predictions of the fold's best model on its held-out clips, as fdir/oof.csv (data-parallel: every rank
    predicts its share, rank 0 writes)."""
    from pipeline.engine import validate

    model, _ = load_model(fdir / "best.pt")
    device = distributed.get_device(cfg)
    _, p = validate(model.to(device), cfg, val, device, len(classes))
    if not distributed.world().main:
        return
    df = pd.DataFrame(p, columns=classes)
    df.insert(0, "fname", val.fnames)
    atomic_to_csv(df, fdir / "oof.csv", index=False)


if __name__ == "__main__":
    cli("train", "Stage 2: K-fold training on the curated set.", main=main)
