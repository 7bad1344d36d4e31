"""Ablation of the reference system on the demo data over several seeds, every variant with the same training budget.

    .venv/bin/python bench/quality.py [--config demo.yaml] [--seeds 3] [--epochs N] [--steps N] [--evals N]
                                      [--rows a,b] [--prefix q_] [--section quality] [--title T] [key=value ...]
    .venv/bin/python bench/quality.py --config real.yaml --section quality_real --prefix qr_ --epochs 16 \
        --rows cur,noisy,mix,mix_boot,mix_head,mix_sel,warm_sup,ts_joint_noisy_aware     # the real-sound rows
    (needs `make demo-data features`, or `make real-data` and features for real.yaml; writes its table into
    docs/results.md)

Every row trains on folds 1-2 and is validated on fold 0 with the same epochs and optimiser steps per epoch
(train.steps_per_epoch fixed), then its best model is scored on the test set, once per seed (run.seed = 42 + i,
which also redraws the folds, the warm-up and every initialisation). The table gives mean and standard deviation
over the seeds. Choices are made on the validation means, never on the test split. The config's defaults hold for
every key a row does not name (mixup lambda per pair; teacher-student's N_V / N_W from the config):

  phase 1  curated only; noisy labels as-is; noisy warm-up + supervised; teacher-student with each g-pass option
           (separate, frozen_stats, joint) and the paper's threshold rule
  phase 2  teacher-student with the best g-pass (by validation) and each other pseudo-label rule (class_threshold,
           topk, noisy_aware)
  phase 3  the plateau check: curated only and noisy warm-up + supervised (supervised training on 100% of the
           labels) with twice the epochs: is the budget within 0.01 val lwlrap of their plateau?
  phase 4  the recipe for noisy data (the best of warm-up + supervised and the teacher-student rows, by validation):
           its fold ensemble (all folds, inference with TTA), and its fold-0 model's test lwlrap with TTA counted
           as the paper does (infer.tta_count_windows=paper) and counting every window (all)

--rows runs phase 1 only, with the rows named (PHASE1 below: the noisy-clip recipes of train.mode=noisy_mix among
them, their oracles (noisy_oracle, mix_oracle: the noisy clips with their true labels, from a <data.root>_truth
folder that common.truth_root builds of symlinks), the warm-up length (warm18_sup), the batch composition
(mix_sel_24) and the levers of the curated-only recipe (cur_*: loss, ArcFace weight, time reversal, crop length, mel
bands, width, backbone: cnn_skip, cnn14, wrn28_2, WRN-16-2 with and without BN momentum 0.1); ts_<g pass> (the
threshold rule) and ts_joint_<rule> for teacher-student), and gives each row's paired per-seed difference to curated
only (row cur), the comparison issue 18's first target asks for, and how fold-0 val and unheard val rank the rows
against test.
--title names such a table's section.

Finished runs are reused (runs/<prefix>*), so a rerun costs only what is missing; runs/<prefix>summary.json (phases
1-4) or runs/<prefix>rows.json (--rows) holds every figure.
bench/plateau.py finds the budget (docs/results.md gives the one measured).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import (
    cfg_for,
    fold_lwlrap,
    markdown_table,
    mean_std,
    paired_diff,
    test_lwlrap,
    titled,
    train_seconds,
    truth_root,
    unheard_lwlrap,
    write_section,
)

from pipeline import features, infer, train, warmup  # noqa: E402

G_PASSES = ("separate", "frozen_stats", "joint")
RULES = ("class_threshold", "topk", "noisy_aware")


WARM = "<warm-up>"  # stands for train.init_from=<this seed's warm-up>; "<warm-up:N>": one of N epochs
SUP = "train.mode=supervised"
MIX = "train.mode=noisy_mix"
WRN = [SUP, "train.init_from=null", "model.name=wrn28_2"]  # the WideResNet rows, curated only from scratch
TRUTH = "<noisy truth>"  # stands for data.root=<the dataset with train_noisy_truth.csv as its noisy labels>
PHASE1 = {  # name -> (label, overrides); <prefix> and <seed> are filled in per run
    "cur": ("curated only", [SUP, "train.init_from=null"]),
    "noisy": ("noisy labels as-is", [SUP, "train.init_from=null", "train.noisy_labelled=true"]),
    "warm_sup": ("noisy warm-up + supervised", [SUP, WARM]),
    "mix": ("curated + noisy in every batch (noisy_mix 16 / 16)", [MIX, "train.init_from=null"]),
    "mix_w": ("noisy_mix, noisy clips weighted 0.3", [MIX, "train.init_from=null", "ssl.noisy_mix={weight: 0.3}"]),
    "mix_boot": (
        "noisy_mix, soft bootstrapping beta 0.7 (Lsoft)",
        [MIX, "train.init_from=null", "ssl.noisy_mix={beta: 0.7}"],
    ),
    "mix_head": (
        "noisy_mix, noisy clips on their own head",
        [MIX, "train.init_from=null", "ssl.noisy_mix={noisy_head: true}"],
    ),
    "mix_sel": (
        "noisy_mix, staged selection by the curated-only model (top 1)",
        [MIX, "train.init_from=null", "ssl.noisy_mix={select_from: <prefix>cur_s<seed>}"],
    ),
    "warm_mix": ("noisy warm-up + noisy_mix", [MIX, WARM]),
    # oracles: the noisy clips with their true labels (train_noisy_truth.csv), what any label cleaning can reach
    "noisy_oracle": (
        "oracle: curated + noisy clips with their true labels, one labelled set",
        [SUP, "train.init_from=null", "train.noisy_labelled=true", TRUTH],
    ),
    "mix_oracle": ("oracle: noisy_mix 16 / 16 with the noisy clips' true labels", [MIX, "train.init_from=null", TRUTH]),
    "warm18_sup": ("noisy warm-up of 18 epochs (3x) + supervised", [SUP, "<warm-up:18>"]),
    "mix_sel_24": (
        "staged selection, batches of 24 curated / 8 noisy clips",
        [MIX, "train.init_from=null", "ssl.noisy_mix={select_from: <prefix>cur_s<seed>, n_curated: 24, n_noisy: 8}"],
    ),
    # levers on the curated-only recipe (configs/real.yaml)
    "cur_mixup1": ("curated only, mixup alpha 1.0", [SUP, "train.init_from=null", "augment.mixup_alpha=1.0"]),
    "cur_spec2": (
        "curated only, SpecAugment masks twice as wide (0.2)",
        [SUP, "train.init_from=null", "augment.freq_width=0.2", "augment.time_width=0.2"],
    ),
    "cur_bce": ("curated only, BCE instead of focal", [SUP, "train.init_from=null", "loss.focal=0", "loss.bce=1"]),
    "cur_arc0": ("curated only, no ArcFace (weight 0)", [SUP, "train.init_from=null", "loss.arcface=0"]),
    "cur_arc1": ("curated only, ArcFace weight 1 (the reference's)", [SUP, "train.init_from=null", "loss.arcface=1"]),
    "cur_norev": (
        "curated only, no time reversal as classes",
        [SUP, "train.init_from=null", "model.time_reversal=false"],
    ),
    "cur_crop4": ("curated only, 4 s crops (256 frames)", [SUP, "train.init_from=null", "train.frames=256"]),
    "cur_crop3": ("curated only, 3 s crops (192 frames)", [SUP, "train.init_from=null", "train.frames=192"]),
    "cur_crop2": ("curated only, 2 s crops (128 frames)", [SUP, "train.init_from=null", "train.frames=128"]),
    "cur_crop1": ("curated only, 1 s crops (64 frames)", [SUP, "train.init_from=null", "train.frames=64"]),
    "cur_mels128": ("curated only, 128 mel bands", [SUP, "train.init_from=null", "features.n_mels=128"]),
    "cur_w05": ("curated only, vgg8 at half width", [SUP, "train.init_from=null", "model.params={width: 0.5}"]),
    "cur_skip": ("curated only, cnn_skip backbone", [SUP, "train.init_from=null", "model.name=cnn_skip"]),
    "cur_cnn14": (
        "curated only, cnn14 backbone at quarter width (16..512 channels)",
        [SUP, "train.init_from=null", "model.name=cnn14", "model.params={width: 0.25}"],
    ),
    "cur_wrn": ("curated only, wrn28_2 backbone", [*WRN, "model.params={}"]),
    "cur_wrn16": (
        "curated only, WRN-16-2 (wrn28_2 at depth 16: 2 blocks a group instead of 4)",
        [*WRN, "model.params={depth: 16}"],
    ),
    "cur_wrn16_bn1": (
        "curated only, WRN-16-2 with BN momentum 0.1 (its running statistics follow a short run)",
        [*WRN, "model.params={depth: 16, bn_momentum: 0.1}"],
    ),
}
TS_RULE_ROWS = {f"ts_joint_{rule}": ("joint", rule) for rule in RULES}  # g pass joint: the best on real sound
DEMO_ROWS = ("cur", "noisy", "warm_sup", "ts_separate", "ts_frozen_stats", "ts_joint")


def warm_epochs(override: str) -> int | None:
    """N of a "<warm-up:N>" placeholder, None for anything else."""
    return int(override[len(WARM) : -1]) if override.startswith(WARM[:-1] + ":") else None


def needs_warm(name: str) -> bool:
    return name.startswith("ts_") or any(o == WARM or warm_epochs(o) for o in PHASE1.get(name, ("", []))[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per epoch, the same for every variant")
    ap.add_argument(
        "--evals", type=int, default=0, help="validations per run (train.eval_every = epochs / evals; 0: every epoch)"
    )
    ap.add_argument("--section", default="quality", help="docs/results.md section (quality_real for data/real)")
    ap.add_argument("--rows", default="", help=f"phase-1 rows, comma-separated (default: {','.join(DEMO_ROWS)})")
    ap.add_argument("--prefix", default="q_", help="run-name prefix (qr_ for data/real, so the two sets' runs differ)")
    ap.add_argument("--title", default="", help="--rows: the section's title (default: noisy-clip recipes on ...)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    seeds = [42 + i for i in range(a.seeds)]
    t_start = time.time()
    base = [f"train.steps_per_epoch={a.steps}", "run.progress=false", *a.overrides]

    def every(epochs):
        return [f"train.eval_every={max(1, epochs // a.evals)}"] if a.evals else []

    results: dict = {}  # row name -> list of per-seed dicts

    def warm(seed, epochs=None):
        name = f"{a.prefix}warm{epochs or ''}_s{seed}"
        length = [f"warmup.epochs={epochs}"] if epochs else []
        warmup.main(cfg_for(a.config, [f"run.name={name}", f"run.seed={seed}", *base, *length], "warmup"))
        return f"train.init_from=runs/{name}/warmup/last.pt"

    def row(label, name, ov, seed, epochs=a.epochs):
        run = f"{a.prefix}{name}_s{seed}"
        cfg = cfg_for(
            a.config,
            [
                f"run.name={run}",
                f"run.seed={seed}",
                f"train.epochs={epochs}",
                *base,
                *every(epochs),
                "train.folds=[0]",
                *ov,
            ],
            "train",
        )
        features.main(cfg_for(a.config, [*base, *ov], "features"))  # a lever may need its own cache (n_mels)
        train.main(cfg)
        fdir = Path(f"runs/{run}/train/fold_0")
        last = pd.read_csv(fdir / "metrics.csv").iloc[-1]
        r = {
            "label": label,
            "seed": seed,
            "val": fold_lwlrap(cfg, fdir),
            "unheard": unheard_lwlrap(cfg, run, [fdir]),
            "test": test_lwlrap(cfg, fdir, tta=False),
            "seconds": train_seconds(fdir),
            "overrides": ov,
            **{k: float(last[k]) for k in ("pl_precision", "pl_recall", "pl_pos") if k in last},
        }
        results.setdefault(name, []).append(r)
        print(f"{name} seed {seed}: val {r['val']:.4f} test {r['test']:.4f} ({r['seconds']:.0f} s)", flush=True)
        return r

    def best(names):
        return max(names, key=lambda n: np.mean([r["val"] for r in results[n]]))

    def ts(g_pass, rule="threshold"):
        return ["train.mode=teacher_student", f"teacher_student.g_pass={g_pass}", f"teacher_student.rule={rule}"]

    rows = [r.strip() for r in a.rows.split(",") if r.strip()] if a.rows else list(DEMO_ROWS)
    known = [*PHASE1, *(f"ts_{gp}" for gp in G_PASSES), *TS_RULE_ROWS]
    unknown = sorted(set(rows) - set(known))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; rows: {known}")
    # phase 1 (seed by seed, so that a seed's whole comparison is on disk before the next seed starts)
    for seed in seeds:
        w = warm(seed) if any(needs_warm(n) for n in rows) else None
        for name in rows:
            if name.startswith("ts_"):
                gp, rule = TS_RULE_ROWS.get(name, (name[3:], "threshold"))
                label = f"teacher-student, g pass {gp}, " + ("threshold eta" if rule == "threshold" else f"rule {rule}")
                row(label, name, [*ts(gp, rule), w], seed)
            else:
                label, ov = PHASE1[name]
                ov = [o.replace("<prefix>", a.prefix).replace("<seed>", str(seed)) for o in ov]
                ov = [
                    f"data.root={truth_root(cfg_for(a.config, base, None).data.root)}" if o == TRUTH else o for o in ov
                ]
                row(
                    label,
                    name,
                    [w if o == WARM else warm(seed, warm_epochs(o)) if warm_epochs(o) else o for o in ov],
                    seed,
                )
    if a.rows:  # a chosen set of rows: phase 1 only, each row paired with curated only
        Path(f"runs/{a.prefix}rows.json").write_text(json.dumps(results, default=str, indent=1))
        report_rows(a, results, len(seeds), (time.time() - t_start) / 60)
        return
    g_best = best([f"ts_{gp}" for gp in G_PASSES])[3:]
    # phase 2
    for seed in seeds:
        w = warm(seed)
        for rule in RULES:
            row(f"teacher-student, g pass {g_best}, rule {rule}", f"ts_{g_best}_{rule}", [*ts(g_best, rule), w], seed)
    # phase 3
    for seed in seeds:
        w = warm(seed)
        row(
            f"curated only, {2 * a.epochs} epochs (plateau check)",
            "cur_x2",
            ["train.mode=supervised", "train.init_from=null"],
            seed,
            epochs=2 * a.epochs,
        )
        row(
            f"noisy warm-up + supervised, {2 * a.epochs} epochs (plateau check)",
            "warm_sup_x2",
            ["train.mode=supervised", w],
            seed,
            epochs=2 * a.epochs,
        )
    recipe = best(["warm_sup"] + [n for n in results if n.startswith("ts_")])
    # phase 4
    extra = []
    for seed in seeds:
        ov = [o if not o.startswith("train.init_from=") else warm(seed) for o in results[recipe][0]["overrides"]]
        run = f"{a.prefix}{recipe}_s{seed}"
        ovs = [f"run.name={run}", f"run.seed={seed}", f"train.epochs={a.epochs}", *base, *every(a.epochs), *ov]
        cfg = cfg_for(a.config, ovs, "train")
        train.main(cfg)
        out = infer.main(cfg_for(a.config, ovs, "infer"))
        fdir = f"runs/{run}/train/fold_0"
        seconds = sum(train_seconds(p) for p in Path(f"runs/{run}/train").glob("fold_*"))
        extra.append(
            {
                "seed": seed,
                "ensemble_val": out.get("oof_lwlrap"),
                "ensemble_test": out.get("test_lwlrap"),
                "ensemble_seconds": seconds,
                "tta_paper": test_lwlrap(cfg, fdir, tta=True, count_windows="paper"),
                "tta_all": test_lwlrap(cfg, fdir, tta=True, count_windows="all"),
            }
        )
        print(extra[-1], flush=True)
    Path(f"runs/{a.prefix}summary.json").write_text(
        json.dumps({"rows": results, "recipe": recipe, "g_pass": g_best, "phase4": extra}, default=str, indent=1)
    )
    report(a, results, recipe, g_best, extra, len(seeds), (time.time() - t_start) / 60)


def paired(results, name, base, key):
    """Per-seed difference of two rows (same seeds: same folds and warm-up): 'mean +- sd (mean / sd)'."""
    by_seed = {r["seed"]: r[key] for r in results[base]}
    both = [(r[key], by_seed[r["seed"]]) for r in results[name] if r["seed"] in by_seed]
    return paired_diff([x for x, _ in both], [y for _, y in both])


def ranking_note(results) -> str:
    """How each validation figure ranks the rows against test: Spearman's rho over the rows' means, and the test
    rank of the row it would choose ('' with fewer than 3 rows)."""
    from scipy.stats import spearmanr

    names = list(results)
    if len(names) < 3:
        return ""
    mean = {k: np.array([np.nanmean([r[k] for r in results[n]]) for n in names]) for k in ("val", "unheard", "test")}
    test_rank = {n: i + 1 for i, n in enumerate(sorted(names, key=lambda n: -mean["test"][names.index(n)]))}
    parts = []
    for key, label in (("val", "fold-0 val"), ("unheard", "unheard val")):
        if np.isnan(mean[key]).any():
            continue
        pick = names[int(np.argmax(mean[key]))]
        parts.append(
            f"{label} rho {spearmanr(mean[key], mean['test']).statistic:+.2f}, its choice "
            f"({results[pick][0]['label']}) ranks {test_rank[pick]} of {len(names)} on test"
        )
    return "\n\nThe rows ranked by their means, against test (Spearman): " + "; ".join(parts) + "." if parts else ""


def report_rows(a, results, n_seeds, minutes):
    """The table of a --rows run: each row's figures and its paired difference to curated only."""
    header = ["variant", "fold-0 val lwlrap", "unheard val", "test lwlrap", "val - test", "unheard val - test"]
    header += ["paired val - cur", "paired unheard val - cur", "paired test - cur"]
    header += ["PL precision", "PL recall", "training seconds"]
    rows = []
    for name, rs in results.items():
        vs = [
            paired(results, name, "cur", k) if "cur" in results and name != "cur" else "-"
            for k in ("val", "unheard", "test")
        ]
        pl = [mean_std([r.get(k, float("nan")) for r in rs], 3) for k in ("pl_precision", "pl_recall")]
        rows.append(
            [
                rs[0]["label"],
                mean_std([r["val"] for r in rs]),
                mean_std([r["unheard"] for r in rs]),
                mean_std([r["test"] for r in rs]),
                mean_std([r["val"] - r["test"] for r in rs]),
                mean_std([r["unheard"] - r["test"] for r in rs]),
                *vs,
                *pl,
                f"{np.mean([r['seconds'] for r in rs]):.0f}",
            ]
        )
    table = markdown_table(header, rows)
    ts_note = "".join(
        f"\n\n{results[n][0]['label']} against noisy warm-up + supervised, paired per seed: "
        + ", ".join(f"{k} {paired(results, n, 'warm_sup', k)}" for k in ("val", "unheard", "test"))
        + "."
        for n in results
        if n.startswith("ts_") and "warm_sup" in results
    ) + ranking_note(results)
    print(table + ts_note)
    title = a.title or (
        f"Noisy-clip recipes on configs/{a.config}, {a.epochs} x {a.steps} steps, {n_seeds} seed"
        f"{'s' if n_seeds > 1 else ''}"
    )
    body = (
        f"## {titled(a.config, a.overrides, title)} (bench/quality.py --rows)\n\n`.venv/bin/python bench/quality.py "
        f"--config {a.config} --section {a.section} --prefix {a.prefix} --rows {a.rows} --seeds {n_seeds} "
        f"{f'--title {shlex.quote(a.title)} ' if a.title else ''}"
        f"--epochs {a.epochs} --steps {a.steps} --evals {a.evals} {shlex.join(a.overrides)}`: every row trains "
        f"{a.epochs} epochs of {a.steps} steps on folds 1-2 and is validated on fold 0, for {n_seeds} seeds (each "
        f"seed redraws the folds, the warm-up and every initialisation); test lwlrap of the fold-0 model without "
        f"TTA; unheard val: fold 0's clips none of whose recordings a training clip holds; mean +- std over the "
        f"seeds; paired: the per-seed difference to curated only. Its runs trained "
        f"{sum(r['seconds'] for rs in results.values() for r in rs) / 60:.0f} minutes in all (warm-ups not "
        f"counted; this invocation took {minutes:.0f}).\n\n{table}{ts_note}\n"
    )
    write_section(a.section, body)


def report(a, results, recipe, g_best, extra, n_seeds, minutes):
    rows = []
    for name, rs in results.items():
        pl = [mean_std([r.get(k, float("nan")) for r in rs], 3) for k in ("pl_precision", "pl_recall", "pl_pos")]
        rows.append(
            [
                rs[0]["label"] + (" **(recipe)**" if name == recipe else ""),
                mean_std([r["val"] for r in rs]),
                mean_std([r["test"] for r in rs]),
                mean_std([r["val"] - r["test"] for r in rs]),
                *pl,
                f"{np.mean([r['seconds'] for r in rs]):.0f}",
            ]
        )
    e = {k: [x[k] for x in extra] for k in extra[0]} if extra else {}
    if extra:
        lab = results[recipe][0]["label"]
        rows.append(
            [
                f"{lab}: fold ensemble (3 folds, TTA)",
                mean_std(e["ensemble_val"]),
                mean_std(e["ensemble_test"]),
                mean_std([v - t for v, t in zip(e["ensemble_val"], e["ensemble_test"]) if None not in (v, t)]),
                "-",
                "-",
                "-",
                f"{np.mean(e['ensemble_seconds']):.0f}",
            ]
        )
        rows.append([f"{lab}: fold 0, TTA k counted as the paper", "-", mean_std(e["tta_paper"]), *"-" * 5])
        rows.append([f"{lab}: fold 0, TTA k counting every window", "-", mean_std(e["tta_all"]), *"-" * 5])
    header = [
        "variant",
        "fold-0 val lwlrap",
        "test lwlrap",
        "val - test",
        "PL precision",
        "PL recall",
        "PL positives per clip",
        "training seconds",
    ]
    table = markdown_table(header, rows)
    gain = {
        n: np.mean([r["val"] for r in results[f"{n}_x2"]]) - np.mean([r["val"] for r in results[n]])
        for n in ("cur", "warm_sup")
    }

    def diff(a_name, b_name, key):
        x, y = (np.array([r[key] for r in results[n]]) for n in (a_name, b_name))
        sd = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
        return f"{x.mean() - y.mean():+.4f} ({(x.mean() - y.mean()) / sd:+.1f} pooled sd)"

    ts_rows = [n for n in results if n.startswith("ts_")]
    ts_best = max(ts_rows, key=lambda n: np.mean([r["val"] for r in results[n]]))
    text = (
        f"Choices on the validation means: g pass `{g_best}`; best teacher-student row `{ts_best}`; recipe for "
        f"noisy data `{recipe}`. Plateau check (doubling the epochs): curated only {gain['cur']:+.4f}, noisy "
        f"warm-up + supervised {gain['warm_sup']:+.4f} val lwlrap "
        f"({'both within' if max(abs(g) for g in gain.values()) <= 0.01 else 'NOT both within'} 0.01). "
        f"Best teacher-student row against noisy warm-up + supervised: val {diff(ts_best, 'warm_sup', 'val')}, "
        f"test {diff(ts_best, 'warm_sup', 'test')}. The table took {minutes:.0f} minutes."
    )
    print(table)
    print(text)
    body = (
        f"## Reference-system ablation over seeds (bench/quality.py)\n\n`.venv/bin/python bench/quality.py "
        f"--seeds {n_seeds} --epochs {a.epochs} --steps {a.steps} --evals {a.evals} {shlex.join(a.overrides)}` on "
        f"configs/{a.config}: "
        f"every variant trains {a.epochs} epochs of {a.steps} steps on folds 1-2, validated on fold 0, for "
        f"{n_seeds} seeds (each seed also redraws the folds and the warm-up); mean +- std over the seeds. "
        f"Pseudo-label columns: the last epoch, against train_noisy_truth.csv.\n\n{table}\n\n{text}\n"
    )
    write_section(a.section, body)


if __name__ == "__main__":
    main()
