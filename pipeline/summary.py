"""The train stage's summary, rebuilt from its fold folders: pooled out-of-fold predictions and scores of every fold
finished for this config, whichever process finished it.

    make summary CONFIG=configs/demo.yaml          # or: python -m pipeline.summary --config FILE [key=value ...]

`make train` runs it after its folds; processes that train one fold each (`train.folds=[k]`, fold-parallel runs,
README) each run it when their fold is done, and the last one's summary holds every fold. A fold counts when its
runs/<run>/train/fold_<k>/done.json was written for this config's training key (pipeline.engine.train_key, which
leaves out train.folds) and its oof.csv is there. Writes, atomically and under a file lock (train/.summary.lock),
so that two processes finishing together cannot leave the one that saw fewer folds last:
    train/oof.csv        pooled out-of-fold predictions, folds in order
    train/summary.json   OOF lwlrap overall and per class (single-label: accuracy, weighted AUC, per-fold accuracy),
                         the folds it pools ("folds") and the run's mode
    train/curves.png     loss and validation curves of every finished fold (and train.full's model)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import cli
from pipeline.data import dataset, labels_to_matrix
from pipeline.folds import read_folds, unheard_mask, units
from pipeline.intervals import ci_text, interval
from pipeline.metrics import accuracy, lwlrap, single_label_scores
from pipeline.utils import (
    UserError,
    atomic_to_csv,
    atomic_write_json,
    file_lock,
    get_logger,
    is_done,
    remove_stale_outputs,
    run_dir,
)


def finished_folds(cfg, out: Path) -> list:
    """The folds under `out` (train/) finished for this config: ints in order, then "full" when its model is done."""
    from pipeline.engine import train_key

    key, found = train_key(cfg), []
    for fdir in out.glob("fold_*"):
        name = fdir.name[len("fold_") :]
        k = int(name) if name.isdigit() else name
        if is_done(fdir, key) and (k == "full" or (fdir / "oof.csv").exists()):
            found.append(k)
    return sorted(k for k in found if k != "full") + (["full"] if "full" in found else [])


def rebuild(cfg, ds=None, log=None) -> dict:
    """Rewrite oof.csv, summary.json and curves.png from every finished fold; returns {"dir", **summary}."""
    from pipeline.curves import plot_curves

    out = run_dir(cfg, "train")
    log = log or get_logger(folder=out)
    ds = ds or dataset(cfg)
    with file_lock(out / ".summary.lock", log, "the summary"):
        remove_stale_outputs(out, ("oof.csv", "summary.json", "curves.png"), log)  # a killed rebuild's temporaries
        folds = finished_folds(cfg, out)
        if folds:
            plot_curves(
                {f"fold {k}": pd.read_csv(out / f"fold_{k}" / "metrics.csv") for k in folds},
                out / "curves.png",
                f"{cfg.run.name} train",
            )
        oof_parts = {k: pd.read_csv(out / f"fold_{k}" / "oof.csv", dtype={"fname": str}) for k in folds if k != "full"}
        if not oof_parts:
            return {"dir": out, "folds": folds}
        return summarise(cfg, out, ds, oof_parts, log)


def summarise(cfg, out, ds, oof_parts: dict, log) -> dict:
    """oof_parts: fold -> its oof.csv (fname + one column per class)."""
    oof = pd.concat(list(oof_parts.values()), ignore_index=True)
    atomic_to_csv(oof, out / "oof.csv", index=False)
    truth = ds.curated.set_index("fname").loc[oof["fname"]]
    y, p = labels_to_matrix(truth["labels"], ds.classes), oof[ds.classes].to_numpy()
    folds = list(oof_parts)
    if ds.single_label:
        return summarise_single_label(cfg, out, ds, oof_parts, y, p, log)
    overall, per_class = lwlrap(y, p)
    folds_df = read_folds(cfg)
    clean = unheard_mask(cfg, ds, folds_df, oof["fname"])
    unit = units(folds_df, oof["fname"])
    ci = interval(y, p, unit)
    ci_clean = None if clean is None or not clean.any() else interval(y[clean], p[clean], unit[clean])
    summary = {
        "oof_lwlrap": overall,
        "oof_lwlrap_ci": [ci["lo"], ci["hi"]],
        "n_clips": len(oof),
        # grouped folds: lwlrap of the clips none of whose recordings their fold's training clips hold
        "oof_lwlrap_unheard": None if ci_clean is None else ci_clean["lwlrap"],
        "oof_lwlrap_unheard_ci": None if ci_clean is None else [ci_clean["lo"], ci_clean["hi"]],
        "n_unheard": None if clean is None else int(clean.sum()),
        # 95% intervals: bootstrap resampling the folds' groups (recordings, audio groups) or clips
        "ci": {"level": ci["level"], "resamples": ci["resamples"], "units": ci["units"]},
        "mode": cfg.train.mode,
        "folds": folds,
        "per_class": {c: (None if np.isnan(v) else float(v)) for c, v in zip(ds.classes, per_class)},
    }
    atomic_write_json(out / "summary.json", summary)
    unheard_note = ""
    if ci_clean is not None:
        unheard_note = f"; on the {summary['n_unheard']} clips of unheard recordings: {ci_text(ci_clean)}"
    log.info(
        f"OOF lwlrap ({len(oof)} clips, folds {folds}; 95% intervals over {ci['units']} groups): "
        f"{ci_text(ci)}{unheard_note}"
    )
    print(f"OOF lwlrap: {overall:.4f}")
    return {"dir": out, **summary}


def summarise_single_label(cfg, out, ds, oof_parts: dict, y, p, log) -> dict:
    """Pooled OOF accuracy and weighted AUC, per-class accuracy, and the per-fold accuracies' mean and std."""
    scores = single_label_scores(y, p)
    truth = ds.curated.set_index("fname")["labels"]
    per_fold = [
        accuracy(labels_to_matrix(truth.loc[part["fname"]], ds.classes), part[ds.classes].to_numpy())
        for part in oof_parts.values()
    ]
    summary = {
        "oof_accuracy": scores["accuracy"],
        "oof_weighted_auc": scores["weighted_auc"],
        "fold_accuracy": per_fold,
        "fold_accuracy_mean": float(np.mean(per_fold)),
        "fold_accuracy_std": float(np.std(per_fold)),
        "n_clips": len(p),
        "mode": cfg.train.mode,
        "folds": list(oof_parts),
        "per_class_accuracy": {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(ds.classes, scores["per_class_accuracy"])
        },
    }
    atomic_write_json(out / "summary.json", summary)
    log.info(
        f"OOF accuracy ({len(p)} clips, folds {list(oof_parts)}): {scores['accuracy']:.4f}, weighted AUC "
        f"{scores['weighted_auc']:.4f}; per fold {np.mean(per_fold):.4f} +- {np.std(per_fold):.4f}"
    )
    print(f"OOF accuracy: {scores['accuracy']:.4f}  weighted AUC: {scores['weighted_auc']:.4f}")
    return {"dir": out, **summary}


def main(cfg) -> dict:
    out = run_dir(cfg, "train")
    if not finished_folds(cfg, out):
        there = sorted(p.name for p in out.glob("fold_*")) if out.exists() else []
        raise UserError(
            f"{out}: no fold finished for this config; "
            + (
                f"{', '.join(there)} are unfinished or were trained with other settings (give the CONFIG and "
                f"OVERRIDES they were trained with)"
                if there
                else "run `make train` first"
            )
        )
    return rebuild(cfg)


if __name__ == "__main__":
    cli("summary", "Rebuild the train stage's oof.csv, summary.json and curves.png from its fold folders.", main=main)
