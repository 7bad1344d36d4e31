"""Ablation of the reference system on the demo data over several seeds, every variant with the same training budget.

    .venv/bin/python bench/quality.py [--config demo.yaml] [--seeds 3] [--epochs N] [--steps N] [key=value ...]
    (needs `make demo-data features`; writes its tables into docs/results.md; about an hour on 2 cores)

Every row trains on folds 1-2 and is validated on fold 0 with the same epochs and optimiser steps per epoch
(train.steps_per_epoch fixed), then its best model is scored on the test set, once per seed (run.seed = 42 + i,
which also redraws the folds, the warm-up and every initialisation). The table gives mean and standard deviation
over the seeds. Choices are made on the validation means, never on the test split:

  phase 1  curated only; noisy labels as-is; noisy warm-up + supervised (and with per-pair mixup lambdas);
           teacher-student with each g-pass option (separate, frozen_stats, joint) and the paper's threshold rule
  phase 2  teacher-student with the best g-pass (by validation) and each pseudo-label rule (class_threshold, topk,
           noisy_aware)
  phase 2b the best of those with curated / noisy clips per batch (N_V / N_W) of 16 / 16 and 24 / 8
  phase 3  the plateau check: curated only with twice the epochs (is the budget where supervised training on 100%
           of the labels stops gaining?)
  phase 3b the best warm-up + supervised row and the best teacher-student row with twice the epochs too
  phase 4  the recipe for noisy data (the best of warm-up + supervised and the teacher-student rows, by validation):
           its fold ensemble (all folds, inference with TTA), and its fold-0 model's test lwlrap without TTA, with
           TTA counted as the paper does (infer.tta_count_windows=paper) and counting every window (all)

Finished runs are reused (runs/q_*), so a rerun costs only what is missing; runs/q_summary.json holds every figure.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import cfg_for, markdown_table, mean_std, test_lwlrap, train_seconds, write_section

from pipeline import infer, train, warmup  # noqa: E402

G_PASSES = ("separate", "frozen_stats", "joint")
RULES = ("class_threshold", "topk", "noisy_aware")
BATCHES = ((16, 16), (24, 8))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per epoch, the same for every variant")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    seeds = [42 + i for i in range(a.seeds)]
    # mixup with one lambda per batch unless a row says otherwise (the measured key; its default may change)
    base = [f"train.steps_per_epoch={a.steps}", "augment.mixup_per_pair=false", "run.progress=false", *a.overrides]
    results: dict = {}            # row name -> list of per-seed dicts

    def warm(seed):
        name = f"q_warm_s{seed}"
        warmup.main(cfg_for(a.config, [f"run.name={name}", f"run.seed={seed}", *base], "warmup"))
        return f"train.init_from=runs/{name}/warmup/last.pt"

    def row(label, name, ov, seed, epochs=a.epochs):
        run = f"q_{name}_s{seed}"
        cfg = cfg_for(a.config, [f"run.name={run}", f"run.seed={seed}", f"train.epochs={epochs}", *base,
                                 "train.folds=[0]", *ov], "train")
        res = train.main(cfg)
        fdir = Path(f"runs/{run}/train/fold_0")
        last = pd.read_csv(fdir / "metrics.csv").iloc[-1]
        r = {"label": label, "seed": seed, "val": res["oof_lwlrap"], "test": test_lwlrap(cfg, fdir, tta=False),
             "seconds": train_seconds(fdir), "overrides": ov,
             **{k: float(last[k]) for k in ("pl_precision", "pl_recall", "pl_pos") if k in last}}
        results.setdefault(name, []).append(r)
        print(f"{name} seed {seed}: val {r['val']:.4f} test {r['test']:.4f} ({r['seconds']:.0f} s)", flush=True)
        return r

    def best(names):
        return max(names, key=lambda n: np.mean([r["val"] for r in results[n]]))

    ts = lambda g_pass, rule="threshold": ["train.mode=teacher_student", f"teacher_student.g_pass={g_pass}",
                                           f"teacher_student.rule={rule}", "teacher_student.n_curated=8",
                                           "teacher_student.n_noisy=24"]     # phase 2b changes N_V / N_W
    # phase 1
    for seed in seeds:
        w = warm(seed)
        row("curated only", "cur", ["train.mode=supervised", "train.init_from=null"], seed)
        row("noisy labels as-is", "noisy", ["train.mode=supervised", "train.init_from=null",
                                            "train.noisy_labelled=true"], seed)
        row("noisy warm-up + supervised", "warm_sup", ["train.mode=supervised", w], seed)
        row("noisy warm-up + supervised, mixup lambda per pair", "warm_sup_pp",
            ["train.mode=supervised", w, "augment.mixup_per_pair=true"], seed)
        for gp in G_PASSES:
            row(f"teacher-student, g pass {gp}, threshold eta", f"ts_{gp}", [*ts(gp), w], seed)
    g_best = best([f"ts_{gp}" for gp in G_PASSES])[3:]
    # phase 2
    for seed in seeds:
        w = warm(seed)
        for rule in RULES:
            row(f"teacher-student, g pass {g_best}, rule {rule}", f"ts_{g_best}_{rule}", [*ts(g_best, rule), w], seed)
    rule_best = best([f"ts_{g_best}"] + [f"ts_{g_best}_{r}" for r in RULES])
    rule = "threshold" if rule_best == f"ts_{g_best}" else rule_best[len(f"ts_{g_best}_"):]
    # phase 2b: the batch composition (the demo's N_V / N_W of 8 / 24 sees curated clips a quarter as often as
    # supervised training does at the same steps)
    for seed in seeds:
        w = warm(seed)
        for n_v, n_w in BATCHES:
            row(f"teacher-student, g pass {g_best}, rule {rule}, N_V / N_W {n_v} / {n_w}",
                f"ts_{g_best}_{rule}_b{n_v}", [*ts(g_best, rule), f"teacher_student.n_curated={n_v}",
                                               f"teacher_student.n_noisy={n_w}", w], seed)
    # phase 3
    for seed in seeds:
        row(f"curated only, {2 * a.epochs} epochs (plateau check)", "cur_x2",
            ["train.mode=supervised", "train.init_from=null"], seed, epochs=2 * a.epochs)
    ts_rows = [n for n in results if n.startswith("ts_")]
    recipe = best(["warm_sup", "warm_sup_pp"] + ts_rows)
    # phase 3b: does the ranking of warm-up + supervised and teacher-student hold at twice the budget?
    for seed in seeds:
        w = warm(seed)
        for name in (best(["warm_sup", "warm_sup_pp"]), best(ts_rows)):
            ov = [o if not o.startswith("train.init_from=") else w for o in results[name][0]["overrides"]]
            row(f"{results[name][0]['label']}, {2 * a.epochs} epochs", f"{name}_x2", ov, seed, epochs=2 * a.epochs)
    # phase 4
    extra = []
    for seed in seeds:
        ov = [o if not o.startswith("train.init_from=") else warm(seed) for o in results[recipe][0]["overrides"]]
        run = f"q_{recipe}_s{seed}"
        cfg = cfg_for(a.config, [f"run.name={run}", f"run.seed={seed}", f"train.epochs={a.epochs}", *base, *ov],
                      "train")
        train.main(cfg)
        out = infer.main(cfg_for(a.config, [f"run.name={run}", f"run.seed={seed}", f"train.epochs={a.epochs}",
                                            *base, *ov], "infer"))
        fdir = f"runs/{run}/train/fold_0"
        seconds = sum(train_seconds(p) for p in Path(f"runs/{run}/train").glob("fold_*"))
        extra.append({"seed": seed, "ensemble_val": out.get("oof_lwlrap"), "ensemble_test": out.get("test_lwlrap"),
                      "ensemble_seconds": seconds,
                      "tta_paper": test_lwlrap(cfg, fdir, tta=True, count_windows="paper"),
                      "tta_all": test_lwlrap(cfg, fdir, tta=True, count_windows="all")})
        print(extra[-1], flush=True)
    Path("runs/q_summary.json").write_text(json.dumps({"rows": results, "recipe": recipe, "g_pass": g_best,
                                                        "phase4": extra}, default=str, indent=1))
    report(a, results, recipe, g_best, extra, len(seeds))


def report(a, results, recipe, g_best, extra, n_seeds):
    rows = []
    for name, rs in results.items():
        pl = [mean_std([r.get(k, float("nan")) for r in rs], 3) for k in ("pl_precision", "pl_recall", "pl_pos")]
        rows.append([rs[0]["label"] + (" **(recipe)**" if name == recipe else ""),
                     mean_std([r["val"] for r in rs]), mean_std([r["test"] for r in rs]), *pl,
                     f"{np.mean([r['seconds'] for r in rs]):.0f}"])
    e = {k: [x[k] for x in extra] for k in extra[0]} if extra else {}
    if extra:
        lab = results[recipe][0]["label"]
        rows.append([f"{lab}: fold ensemble (3 folds, TTA)", mean_std(e["ensemble_val"]),
                     mean_std(e["ensemble_test"]), "-", "-", "-", f"{np.mean(e['ensemble_seconds']):.0f}"])
        rows.append([f"{lab}: fold 0, TTA k counted as the paper", "-", mean_std(e["tta_paper"]), "-", "-", "-", "-"])
        rows.append([f"{lab}: fold 0, TTA k counting every window", "-", mean_std(e["tta_all"]), "-", "-", "-", "-"])
    header = ["variant", "fold-0 val lwlrap", "test lwlrap", "PL precision", "PL recall", "PL positives per clip",
              "training seconds"]
    table = markdown_table(header, rows)
    cur, cur2 = (np.mean([r["val"] for r in results[n]]) for n in ("cur", "cur_x2"))

    def diff(a_name, b_name, key):
        x, y = (np.array([r[key] for r in results[n]]) for n in (a_name, b_name))
        return f"{x.mean() - y.mean():+.4f} (pooled std {np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2):.4f})"
    ts_rows = [n for n in results if n.startswith("ts_") and not n.endswith("_x2")]
    ts_best = max(ts_rows, key=lambda n: np.mean([r["val"] for r in results[n]]))
    ws_best = max(("warm_sup", "warm_sup_pp"), key=lambda n: np.mean([r["val"] for r in results[n]]))
    text = (f"Choices on the validation means: g pass `{g_best}`; best teacher-student row `{ts_best}`; recipe for "
            f"noisy data `{recipe}`. Plateau check: curated only gains {cur2 - cur:+.4f} val lwlrap from doubling "
            f"the epochs ({'within' if abs(cur2 - cur) <= 0.01 else 'NOT within'} 0.01). Best teacher-student row "
            f"against `{ws_best}`: val {diff(ts_best, ws_best, 'val')}, test {diff(ts_best, ws_best, 'test')}")
    if f"{ts_best}_x2" in results and f"{ws_best}_x2" in results:
        text += (f"; at twice the epochs: val {diff(ts_best + '_x2', ws_best + '_x2', 'val')}, test "
                 f"{diff(ts_best + '_x2', ws_best + '_x2', 'test')}")
    text += "."
    print(table)
    print(text)
    body = (f"## Reference-system ablation over seeds (bench/quality.py)\n\n`.venv/bin/python bench/quality.py "
            f"--seeds {n_seeds} --epochs {a.epochs} --steps {a.steps} {' '.join(a.overrides)}` on configs/{a.config}: "
            f"every variant trains {a.epochs} epochs of {a.steps} steps on folds 1-2, validated on fold 0, for "
            f"{n_seeds} seeds (each seed also redraws the folds and the warm-up); mean +- std over the seeds. "
            f"Pseudo-label columns: the last epoch, against train_noisy_truth.csv.\n\n{table}\n\n{text}\n")
    write_section("quality", body)


if __name__ == "__main__":
    main()
