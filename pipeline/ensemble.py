"""Ensemble: average the fold predictions of one or more runs into submissions/<run.name>.csv.

    make ensemble CONFIG=configs/demo.yaml [OVERRIDES="infer.runs=[other_run]"]     (also the last step of make infer)
    python -m pipeline.ensemble --config FILE [key=value ...]

Averages runs/<run>/infer/fold_*/test.csv over folds and over this run plus infer.runs (ensemble.mean: arithmetic
or geometric), in exactly sample_submission.csv's format, checked before it is written. Beside it,
submissions/<run.name>.json holds the pooled OOF lwlrap (overall and per class, from the inference OOF predictions
with TTA), the test lwlrap when the dataset has test_labels.csv, each with its 95% bootstrap interval (resampling
the folds' groups, pipeline.intervals; the test clips one by one), config hashes, the fold list and the git commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import cli, config_hash
from pipeline.data import dataset, labels_to_matrix
from pipeline.exports import infer_folder
from pipeline.folds import units_for
from pipeline.intervals import ci_text, interval
from pipeline.metrics import lwlrap
from pipeline.score import check_submission
from pipeline.utils import atomic_to_csv, atomic_write_json, get_logger, git_commit, remove_stale_outputs

SUBMISSIONS = Path("submissions")


def average(frames: list[pd.DataFrame], classes, mean="arithmetic", weights=None) -> pd.DataFrame:
    """Average fname-indexed prediction frames (rows aligned by fname, in the first frame's order); weights: one
    per frame (None: equal), as a bundle's manifest gives them."""
    fnames = frames[0]["fname"]
    stack = np.stack([f.set_index("fname").loc[fnames, classes].to_numpy(np.float64) for f in frames])
    if mean == "geometric":
        avg = np.exp(np.average(np.log(np.clip(stack, 1e-7, 1.0)), 0, weights))
    elif mean == "arithmetic":
        avg = np.average(stack, 0, weights)
    else:
        raise ValueError(f"ensemble.mean must be arithmetic or geometric, got {mean!r}")
    out = pd.DataFrame(np.clip(avg, 0.0, 1.0), columns=classes)
    out.insert(0, "fname", fnames.to_numpy())
    return out


def run_folds(run: str, folder: Path | None = None) -> list[Path]:
    """The finished fold predictions of `run` in `folder` (default runs/<run>/infer; an export's: exports.py)."""
    folder = folder or Path("runs") / run / "infer"
    dirs = sorted(p for p in folder.glob("fold_*") if (p / "done.json").exists())
    if not dirs:
        raise FileNotFoundError(f"{folder}: no finished fold predictions; run `make infer` for run {run}")
    return dirs


def per_class_dict(classes, values):
    return {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, values)}


def main(cfg) -> dict:
    log = get_logger()
    ds = dataset(cfg)
    if ds.single_label:
        raise ValueError(
            f"data.single_label_csv is set: single-label datasets have no test split to ensemble; they are "
            f"scored by cross-validation (runs/{cfg.run.name}/train/summary.json, `make train`)"
        )
    runs = [cfg.run.name] + [r for r in cfg.infer.runs if r != cfg.run.name]
    tests, oofs, info = [], {}, {}
    for run in runs:
        dirs = run_folds(run, infer_folder(cfg, run))  # an export folder's: predicted by make infer (exports.py)
        tests += [pd.read_csv(d / "test.csv", dtype={"fname": str}) for d in dirs]
        oof_frames = [pd.read_csv(d / "oof.csv", dtype={"fname": str}) for d in dirs if (d / "oof.csv").exists()]
        if oof_frames:
            oofs[run] = pd.concat(oof_frames, ignore_index=True)
        run_cfg = infer_folder(cfg, run) / "config.yaml"
        info[run] = {
            "folds": [d.name for d in dirs],
            "config_hash": run_cfg.read_text().split("\n")[0].split(": ")[-1] if run_cfg.exists() else None,
        }
    sub = average(tests, ds.classes, cfg.ensemble.mean)
    sub = sub.set_index("fname").loc[ds.test["fname"]].reset_index()
    check_submission(sub, ds.test["fname"], ds.classes, source=f"ensemble of {runs}")
    path = SUBMISSIONS / f"{cfg.run.name}.csv"
    remove_stale_outputs(SUBMISSIONS, (path.name, f"{cfg.run.name}.json"), log)  # a killed run's temporaries
    atomic_to_csv(sub, path, index=False, float_format="%.6f")
    meta = {
        "submission": str(path),
        "runs": info,
        "n_models": len(tests),
        "mean": cfg.ensemble.mean,
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(),
    }
    if len(oofs) == len(runs):  # pooled OOF over the runs' folds, averaged across runs
        oof = average(list(oofs.values()), ds.classes, cfg.ensemble.mean)
        truth = labels_to_matrix(ds.curated.set_index("fname").loc[oof["fname"], "labels"], ds.classes)
        overall, per = lwlrap(truth, oof[ds.classes].to_numpy())
        ci = interval(truth, oof[ds.classes].to_numpy(), units_for(cfg, oof["fname"]))
        meta.update(oof_lwlrap=overall, oof_lwlrap_ci=[ci["lo"], ci["hi"]], oof_ci_units=ci["units"])
        meta.update(oof_clips=len(oof), oof_per_class=per_class_dict(ds.classes, per))
        log.info(f"OOF lwlrap (with TTA, {len(oof)} clips; 95% interval over {ci['units']} groups): {ci_text(ci)}")
    if ds.has_test_labels:
        overall, per = lwlrap(ds.targets(ds.test), sub[ds.classes].to_numpy())
        ci = interval(ds.targets(ds.test), sub[ds.classes].to_numpy())
        meta.update(test_lwlrap=overall, test_lwlrap_ci=[ci["lo"], ci["hi"]], test_ci_units=ci["units"])
        meta.update(test_per_class=per_class_dict(ds.classes, per))
    atomic_write_json(SUBMISSIONS / f"{cfg.run.name}.json", meta)
    log.info(
        f"wrote {path} ({len(tests)} models from {len(runs)} run(s))"
        + (f"; test lwlrap {ci_text(ci)} (95% interval over clips)" if "test_lwlrap" in meta else "")
    )
    return {"submission": path, **{k: v for k, v in meta.items() if k.endswith("lwlrap")}}


if __name__ == "__main__":
    cli("ensemble", "Average fold predictions into submissions/<run.name>.csv.", main=main)
