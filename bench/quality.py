"""Ablation of the reference system on the demo data, every variant with the same training budget.

    .venv/bin/python bench/quality.py [--config demo.yaml] [--epochs N] [--rows a,b] [key=value ...]
    (needs `make demo-data features folds`; writes its table into docs/results.md; about 15 minutes on 2 cores)

Rows, each trained on folds 1-2 and validated on fold 0 with the same epochs and optimiser steps (train.steps_per_epoch
fixed), then scored on the test set:
  curated only            supervised, from scratch
  + noisy labels as-is    supervised on curated + noisy with their noisy labels, from scratch
  + noisy warm-up         supervised on curated, from the stage-1 warm-up
  + teacher-student       the reference stage 2, from the same warm-up
  + TTA                   the teacher-student model with length-adaptive TTA at test time
  fold ensemble           the teacher-student models of all folds averaged (with TTA)
and the pseudo-labels' precision, recall and kept share over the teacher-student epochs. Two probe rows follow the
reference rows: ArcFace at the reference weight 1 (the demo config uses 0.1), a lower pseudo-label threshold, and
teacher-student trained with BCE instead of focal loss (are g's sigmoids better calibrated?).
Finished runs are reused (runs/q_*), so adding a row costs only that row. `--rows ts,ts_bce` runs only those variants
(by run name: cur, noisy, warm_sup, ts, warm_sup_arc1, ts_eta02, ts_bce) and writes them, with each teacher-student
row's pseudo-label precision and recall, into a separate section (quality_probes) of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import cfg_for, markdown_table, test_lwlrap, train_seconds, write_section

from pipeline import folds, infer, train, warmup  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per epoch, the same for every variant")
    ap.add_argument("--rows", default="", help="comma-separated run names: only these variants (a probe table)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    base = [f"train.epochs={a.epochs}", f"train.steps_per_epoch={a.steps}", "run.progress=false", *a.overrides]

    def run(name, stage, *ov, fn=None):
        cfg = cfg_for(a.config, [f"run.name=q_{name}", *base, *ov], stage)
        folds.main(cfg_for(a.config, [f"run.name=q_{name}", *base, *ov], "folds"))
        return fn(cfg), cfg

    run("warm", "warmup", fn=warmup.main)
    t_warm = train_seconds(Path("runs/q_warm/warmup"))
    warm = "train.init_from=runs/q_warm/warmup/last.pt"
    variants = [
        ("curated only", "cur", ["train.mode=supervised", "train.init_from=null"]),
        ("+ noisy labels as-is", "noisy", ["train.mode=supervised", "train.init_from=null",
                                           "train.noisy_labelled=true"]),
        ("+ noisy warm-up", "warm_sup", ["train.mode=supervised", warm]),
        ("+ teacher-student", "ts", ["train.mode=teacher_student", warm]),
        # probes of why the reference settings behave as they do at this budget (see docs/results.md)
        ("+ noisy warm-up, ArcFace weight 1 (reference)", "warm_sup_arc1", ["train.mode=supervised", warm,
                                                                          "loss.arcface=1.0"]),
        ("+ teacher-student, eta 0.2", "ts_eta02", ["train.mode=teacher_student", warm, "teacher_student.eta=0.2"]),
        ("+ teacher-student, BCE instead of focal", "ts_bce", ["train.mode=teacher_student", warm, "loss.focal=0",
                                                               "loss.bce=1"]),
    ]
    if a.rows:
        return probes(a, run, [v for v in variants if v[1] in a.rows.split(",")], t_warm)
    rows = []
    for label, name, ov in variants[:-1]:        # the BCE probe came later: it runs with --rows (quality_probes)
        res, cfg = run(name, "train", "train.folds=[0]", *ov, fn=train.main)
        fdir = Path(f"runs/q_{name}/train/fold_0")
        rows.append([label, res["oof_lwlrap"], test_lwlrap(cfg, fdir, tta=False), f"{train_seconds(fdir):.0f}"])
        print(rows[-1], flush=True)
    ts_cfg = cfg_for(a.config, ["run.name=q_ts", *base, "train.mode=teacher_student", warm, "train.folds=[0]"],
                     "train")
    rows.insert(4, ["+ TTA", float("nan"), test_lwlrap(ts_cfg, "runs/q_ts/train/fold_0", tta=True), "-"])
    # the fold ensemble: all folds of the teacher-student run, inference with TTA, averaged
    run("ts", "train", "train.mode=teacher_student", warm, fn=train.main)
    out = infer.main(cfg_for(a.config, ["run.name=q_ts", *base, "train.mode=teacher_student", warm], "infer"))
    t_all = sum(train_seconds(p) for p in Path("runs/q_ts/train").glob("fold_*"))
    rows.insert(5, [f"fold ensemble ({len(out['folds'])} folds, TTA)", out.get("oof_lwlrap", float("nan")),
                    out.get("test_lwlrap", float("nan")), f"{t_all:.0f}"])
    m = pd.concat([pd.read_csv(p) for p in Path("runs/q_ts/train").glob("fold_*/metrics.csv")])
    pl = {k: float(np.nanmean(m[k])) for k in ("pl_precision", "pl_recall", "pl_kept") if k in m}
    first, last = m[m.epoch == 1], m[m.epoch == m.epoch.max()]
    header = ["variant", "fold-0 val lwlrap", "test lwlrap", "training seconds"]
    table = markdown_table(header, rows)
    pl_line = (f"Teacher-student pseudo-labels on the noisy set (against train_noisy_truth.csv), mean over epochs and "
               f"folds: precision {pl.get('pl_precision', float('nan')):.3f}, recall "
               f"{pl.get('pl_recall', float('nan')):.3f}, share of the noisy labels kept "
               f"{pl.get('pl_kept', float('nan')):.3f}; first epoch precision {first['pl_precision'].mean():.3f} / "
               f"recall {first['pl_recall'].mean():.3f}, last epoch {last['pl_precision'].mean():.3f} / "
               f"{last['pl_recall'].mean():.3f}.")
    print(table)
    print(pl_line)
    body = (f"## Reference-system ablation (bench/quality.py)\n\n`.venv/bin/python bench/quality.py "
            f"--epochs {a.epochs} --steps {a.steps} {' '.join(a.overrides)}` on configs/{a.config} (the demo data); "
            f"every variant trains {a.epochs} epochs of {a.steps} steps; warm-up {t_warm:.0f} s.\n\n{table}\n\n"
            f"{pl_line}\n")
    write_section("quality", body)
    Path("runs/q_summary.json").write_text(json.dumps({"rows": rows, "pseudo_labels": pl}, default=str, indent=1))


def probes(a, run, variants, t_warm):
    """The chosen variants only, with the last epoch's pseudo-label figures of teacher-student rows."""
    rows = []
    for label, name, ov in variants:
        res, cfg = run(name, "train", "train.folds=[0]", *ov, fn=train.main)
        fdir = Path(f"runs/q_{name}/train/fold_0")
        m = pd.read_csv(fdir / "metrics.csv").iloc[-1]
        pl = [float(m[k]) if k in m else float("nan") for k in ("pl_precision", "pl_recall", "pl_pos")]
        rows.append([label, res["oof_lwlrap"], test_lwlrap(cfg, fdir, tta=False), *pl, f"{train_seconds(fdir):.0f}"])
        print(rows[-1], flush=True)
    header = ["variant", "fold-0 val lwlrap", "test lwlrap", "PL precision", "PL recall", "PL positives per clip",
              "training seconds"]
    table = markdown_table(header, rows)
    print(table)
    body = (f"## Reference-system probes (bench/quality.py --rows)\n\n`.venv/bin/python bench/quality.py --epochs "
            f"{a.epochs} --steps {a.steps} --rows {a.rows} {' '.join(a.overrides)}` on configs/{a.config}; the same "
            f"budget and warm-up ({t_warm:.0f} s) as the ablation; pseudo-label columns: the last epoch, against "
            f"train_noisy_truth.csv.\n\n{table}\n")
    write_section("quality_probes", body)


if __name__ == "__main__":
    main()
