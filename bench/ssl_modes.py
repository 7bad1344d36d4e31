"""Every training mode on the demo data with 10% of the curated set labelled, the same budget for each.

    .venv/bin/python bench/ssl_modes.py [--config demo.yaml] [--epochs N] [--steps N] [--modes a,b] [key=value ...]
    .venv/bin/python bench/ssl_modes.py --config demo_single.yaml --fraction 0.25    # single-label forms
    (needs `make demo-data features folds`; writes its table into docs/results.md)

Each row trains on folds 1-2 of the curated set, keeping a stratified 10% of those clips labelled and using the
other 90% as unlabelled clips (their labels are only used to measure pseudo-label quality), validates on fold 0 with
its full labels, and scores the test set. Rows: supervised on the 10%, every semi-supervised mode, supervised on
100%. All start from scratch with the same epochs, optimiser steps and labelled batch size; the unlabelled batch is
mu x the labelled one (each mode's default mu). fmuc needs dropout: its row sets model.dropout=0.3.

With a single-label config (data.single_label_csv, e.g. configs/demo_single.yaml: the demo set's one-label clips and
their 5 predefined folds) every mode runs in its single-label form, and the table gives the fold-0 validation
accuracy and weighted AUC (no test split); teacher_student, which has no single-label form, is left out.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from common import cfg_for, markdown_table, test_lwlrap, train_seconds, write_section

from pipeline import folds, train  # noqa: E402  (common puts the repository on sys.path)
from pipeline.modes import list_modes, mode_class  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--modes", default="", help="comma-separated subset of the modes")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    base = [f"train.epochs={a.epochs}", f"train.steps_per_epoch={a.steps}", "train.batch_size=16",
            "train.init_from=null", "train.folds=[0]", "run.progress=false", *a.overrides]
    single = cfg_for(a.config, a.overrides, "train").data.single_label_csv is not None
    ssl_modes = [m for m in list_modes() if mode_class(m).uses_unlabelled and (mode_class(m).single_label_ok
                                                                                or not single)]
    if a.modes:
        ssl_modes = [m for m in ssl_modes if m in a.modes.split(",")]
    rows_spec = ([(f"supervised {a.fraction:.0%}", "supervised", [f"data.labelled_fraction={a.fraction}"])]
                 + [(m, m, [f"data.labelled_fraction={a.fraction}"] + (["model.dropout=0.3"] if m == "fmuc" else []))
                    for m in ssl_modes]
                 + [("supervised 100%", "supervised", [])])
    rows = []
    for label, mode, ov in rows_spec:
        name = f"s{'sl' if single else ''}_{label.replace(' ', '_').replace('%', 'pct')}"
        ovs = [f"run.name={name}", *base, f"train.mode={mode}", *ov]
        folds.main(cfg_for(a.config, ovs, "folds"))
        cfg = cfg_for(a.config, ovs, "train")
        try:
            res = train.main(cfg)
        except Exception as e:  # a failing mode is a row, not the end of the table
            rows.append([label, float("nan"), float("nan"), "-", "-", "-", f"failed: {type(e).__name__}"])
            print(rows[-1], flush=True)
            continue
        m = pd.read_csv(Path(f"runs/{name}/train/fold_0/metrics.csv"))
        last = m.iloc[-1]
        pl = [f"{last[k]:.3f}" if k in m and not math.isnan(last[k]) else "-"
              for k in ("pl_precision", "pl_recall", "pl_used")]
        scores = ([res["oof_accuracy"], res["oof_weighted_auc"]] if single
                  else [res["oof_lwlrap"], test_lwlrap(cfg, f"runs/{name}/train/fold_0", tta=False)])
        rows.append([label, *scores, *pl, f"{train_seconds(f'runs/{name}/train/fold_0'):.0f}"])
        print(rows[-1], flush=True)
    header = ["mode", *(["fold-0 val accuracy", "fold-0 val weighted AUC"] if single
                        else ["fold-0 val lwlrap", "test lwlrap"]), "PL precision", "PL recall", "PL entries used",
              "training seconds"]
    table = markdown_table(header, rows)
    print(table)
    body = (f"## Semi-supervised modes{' (single-label forms)' if single else ''} at {a.fraction:.0%} labelled "
            f"(bench/ssl_modes.py)\n\n`.venv/bin/python bench/ssl_modes.py --config {a.config} --fraction "
            f"{a.fraction} --epochs {a.epochs} --steps {a.steps} {' '.join(a.overrides)}` on configs/{a.config}: {a.epochs} "
            f"epochs of {a.steps} steps, labelled batch 16, from scratch, fold 0 held out. Pseudo-label columns: "
            f"last epoch, against the true labels of the unlabelled clips; '-' where a mode selects none.\n\n"
            f"{table}\n")
    write_section("ssl_single" if single else "ssl", body)


if __name__ == "__main__":
    main()
