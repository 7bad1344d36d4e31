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

Each table is declared on bench/harness.py (the rows as Variants, the columns, curated only as the paired
reference) and measured seed by seed. Finished runs are reused (runs/<prefix>*), so a rerun costs only what is
missing; runs/<prefix>summary.json (phases 1-4) or runs/<prefix>rows.json (--rows) holds every figure.
bench/plateau.py finds the budget (docs/results.md gives the one measured).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from common import (
    cfg_for,
    fold_lwlrap,
    mean_std,
    test_lwlrap,
    titled,
    train_seconds,
    truth_root,
    unheard_lwlrap,
)
from harness import Table, Variant, mean, paired, paired_cell, stat

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
ROWS = [*PHASE1, *(f"ts_{gp}" for gp in G_PASSES), *TS_RULE_ROWS]  # every row --rows may name
DEMO_ROWS = ("cur", "noisy", "warm_sup", "ts_separate", "ts_frozen_stats", "ts_joint")


ALWAYS = ("config", "seeds", "epochs", "steps", "evals")  # stated in the table's command even at their defaults
CUR = "cur"  # the reference of the --rows tables' paired columns


def warm_epochs(override: str) -> int | None:
    """N of a "<warm-up:N>" placeholder, None for anything else."""
    return int(override[len(WARM) : -1]) if override.startswith(WARM[:-1] + ":") else None


def ts(g_pass, rule="threshold") -> list:
    return ["train.mode=teacher_student", f"teacher_student.g_pass={g_pass}", f"teacher_student.rule={rule}"]


def ts_variant(g_pass: str, rule: str = "threshold") -> Variant:
    """Teacher-student from this seed's warm-up: ts_<g pass> with the paper's threshold rule, else
    ts_<g pass>_<rule>."""
    if rule == "threshold":
        return Variant(f"ts_{g_pass}", f"teacher-student, g pass {g_pass}, threshold eta", [*ts(g_pass), WARM])
    return Variant(f"ts_{g_pass}_{rule}", f"teacher-student, g pass {g_pass}, rule {rule}", [*ts(g_pass, rule), WARM])


def variant(name: str) -> Variant:
    """A phase-1 row by name: PHASE1's, ts_<g pass> or one of TS_RULE_ROWS."""
    if name.startswith("ts_"):
        return ts_variant(*TS_RULE_ROWS.get(name, (name[3:], "threshold")))
    label, ov = PHASE1[name]
    return Variant(name, label, list(ov))


def parser() -> argparse.ArgumentParser:
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
    return ap


def command(a) -> list:
    """The table's reproducing command."""
    return ["bench/quality.py", *harness.command_line(parser(), a, ALWAYS)]


def base(a) -> list:
    return [f"train.steps_per_epoch={a.steps}", "run.progress=false", *a.overrides]


def every(a, epochs) -> list:
    return [f"train.eval_every={max(1, epochs // a.evals)}"] if a.evals else []


def warm_overrides(a, seed, epochs=None) -> list:
    """The warm-up run of a seed (of `epochs` epochs, else the config's): runs/<prefix>warm[N]_s<seed>."""
    length = [f"warmup.epochs={epochs}"] if epochs else []
    return [f"run.name={a.prefix}warm{epochs or ''}_s{seed}", f"run.seed={seed}", *base(a), *length]


def resolve(a, overrides, seed) -> tuple[list, list]:
    """A variant's overrides at a seed with its placeholders filled in (<prefix>, <seed>, the warm-up's
    train.init_from, the true-label dataset), and the warm-ups it starts from (as warm_overrides' lists)."""
    out, warms = [], []
    for o in overrides:
        o = o.replace("<prefix>", a.prefix).replace("<seed>", str(seed))
        if o == TRUTH:
            o = f"data.root={truth_root(cfg_for(a.config, base(a), None).data.root)}"
        elif o == WARM or warm_epochs(o):
            warms.append(warm_overrides(a, seed, warm_epochs(o)))
            o = f"train.init_from=runs/{warms[-1][0].split('=', 1)[1]}/warmup/last.pt"
        out.append(o)
    return out, warms


def measure_row(a, v: Variant, seed) -> dict:
    """Train a row's fold 0 (after its warm-up, if any) and read its figures."""
    epochs = v.params.get("epochs", a.epochs)
    run = f"{a.prefix}{v.name}_s{seed}"
    ov, warms = resolve(a, v.overrides, seed)
    for w in warms:
        warmup.main(cfg_for(a.config, w, "warmup"))
    head = [f"run.name={run}", f"run.seed={seed}", f"train.epochs={epochs}", *base(a), *every(a, epochs)]
    cfg = cfg_for(a.config, [*head, "train.folds=[0]", *ov], "train")
    features.main(cfg_for(a.config, [*base(a), *ov], "features"))  # a lever may need its own cache (n_mels)
    train.main(cfg)
    fdir = Path(f"runs/{run}/train/fold_0")
    last = pd.read_csv(fdir / "metrics.csv").iloc[-1]
    return {
        "val": fold_lwlrap(cfg, fdir),
        "unheard": unheard_lwlrap(cfg, run, [fdir]),
        "test": test_lwlrap(cfg, fdir, tta=False),
        "seconds": train_seconds(fdir),
        **{k: float(last[k]) for k in ("pl_precision", "pl_recall", "pl_pos") if k in last},
    }


def measure_ensemble(a, v: Variant, seed) -> dict:
    """Phase 4: the recipe's other folds and its fold ensemble with TTA, and fold 0's test lwlrap with TTA k
    counted as the paper does and counting every window."""
    ov, warms = resolve(a, v.overrides, seed)
    for w in warms:
        warmup.main(cfg_for(a.config, w, "warmup"))
    run = f"{a.prefix}{v.name}_s{seed}"
    ovs = [f"run.name={run}", f"run.seed={seed}", f"train.epochs={a.epochs}", *base(a), *every(a, a.epochs), *ov]
    cfg = cfg_for(a.config, ovs, "train")
    train.main(cfg)
    out = infer.main(cfg_for(a.config, ovs, "infer"))
    fdir = f"runs/{run}/train/fold_0"
    return {
        "ensemble_val": out.get("oof_lwlrap"),
        "ensemble_test": out.get("test_lwlrap"),
        "ensemble_seconds": sum(train_seconds(p) for p in Path(f"runs/{run}/train").glob("fold_*")),
        "tta_paper": test_lwlrap(cfg, fdir, tta=True, count_windows="paper"),
        "tta_all": test_lwlrap(cfg, fdir, tta=True, count_windows="all"),
    }


def main():
    a = parser().parse_args()
    rows = [r.strip() for r in a.rows.split(",") if r.strip()] if a.rows else list(DEMO_ROWS)
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; rows: {ROWS}")
    if a.rows:  # a chosen set of rows: phase 1 only, each row paired with curated only
        rows_table(a, rows)
    else:
        phases(a)


ROWS_COLUMNS = [
    stat("fold-0 val lwlrap", "val"),
    stat("unheard val", "unheard"),
    stat("test lwlrap", "test"),
    stat("val - test", lambda r: r["val"] - r["test"]),
    stat("unheard val - test", lambda r: r["unheard"] - r["test"]),
    paired("paired val - cur", "val", CUR),
    paired("paired unheard val - cur", "unheard", CUR),
    paired("paired test - cur", "test", CUR),
    stat("PL precision", "pl_precision", 3),
    stat("PL recall", "pl_recall", 3),
    mean("training seconds", "seconds"),
]


def rows_table(a, names):
    """--rows: phase 1 with the rows named, each paired with curated only, into a.section."""
    t_start, n = time.time(), a.seeds
    title = a.title or (
        f"Noisy-clip recipes on configs/{a.config}, {a.epochs} x {a.steps} steps, {n} seed{'s' if n > 1 else ''}"
    )
    table = Table(
        section=a.section,
        title=f"{titled(a.config, a.overrides, title)} (bench/quality.py --rows)",
        command=command(a),
        variants=[variant(name) for name in names],
        seeds=[42 + i for i in range(n)],
        columns=ROWS_COLUMNS,
        reference=CUR,
    )
    results = harness.run(table.variants, table.seeds, lambda v, seed: measure_row(a, v, seed))
    Path(f"runs/{a.prefix}rows.json").write_text(json.dumps(results, default=str, indent=1))
    labels = {v.name: v.label for v in table.variants}
    ts_note = "".join(
        f"\n\n{labels[name]} against noisy warm-up + supervised, paired per seed: "
        + ", ".join(f"{k} {paired_cell(results, name, 'warm_sup', k)}" for k in ("val", "unheard", "test"))
        + "."
        for name in results
        if name.startswith("ts_") and "warm_sup" in results
    )
    seconds = sum(r["seconds"] for rs in results.values() for r in rs)
    text = (
        f": every row trains {a.epochs} epochs of {a.steps} steps on folds 1-2 and is validated on fold 0, for {n} "
        f"seeds (each seed redraws the folds, the warm-up and every initialisation); test lwlrap of the fold-0 model "
        f"without TTA; unheard val: fold 0's clips none of whose recordings a training clip holds; mean +- std over "
        f"the seeds; paired: the per-seed difference to curated only. Its runs trained {seconds / 60:.0f} minutes "
        f"in all (warm-ups not counted; this invocation took {(time.time() - t_start) / 60:.0f})."
    )
    harness.write(table, results, text, ts_note + ranking_note(results, labels))


def ranking_note(results, labels) -> str:
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
            f"({labels[pick]}) ranks {test_rank[pick]} of {len(names)} on test"
        )
    return "\n\nThe rows ranked by their means, against test (Spearman): " + "; ".join(parts) + "." if parts else ""


PHASE_COLUMNS = [
    stat("fold-0 val lwlrap", "val"),
    stat("test lwlrap", "test"),
    stat("val - test", lambda r: r["val"] - r["test"]),
    stat("PL precision", "pl_precision", 3),
    stat("PL recall", "pl_recall", 3),
    stat("PL positives per clip", "pl_pos", 3),
    mean("training seconds", "seconds"),
]


def best(results, names) -> str:
    """The name whose mean validation lwlrap is highest (choices are made on validation, never on test)."""
    return max(names, key=lambda n: np.mean([r["val"] for r in results[n]]))


def phases(a):
    """Phases 1-4 (the module's docstring) into a.section: each phase's variants follow the previous phases'
    choices, all in one table, with the recipe's ensemble rows below."""
    t_start, seeds, e2 = time.time(), [42 + i for i in range(a.seeds)], 2 * a.epochs

    def measured(variants):
        return harness.run(variants, seeds, lambda v, seed: measure_row(a, v, seed))

    variants = [variant(n) for n in DEMO_ROWS]
    results = measured(variants)
    g_best = best(results, [f"ts_{gp}" for gp in G_PASSES])[3:]
    variants += [ts_variant(g_best, rule) for rule in RULES]  # phase 2
    results |= measured(variants[-len(RULES) :])
    variants += [  # phase 3: the plateau check
        Variant(
            "cur_x2", f"curated only, {e2} epochs (plateau check)", [SUP, "train.init_from=null"], [], {"epochs": e2}
        ),
        Variant(
            "warm_sup_x2", f"noisy warm-up + supervised, {e2} epochs (plateau check)", [SUP, WARM], [], {"epochs": e2}
        ),
    ]
    results |= measured(variants[-2:])
    recipe = best(results, ["warm_sup"] + [n for n in results if n.startswith("ts_")])
    v_recipe = next(v for v in variants if v.name == recipe)
    extra = harness.run([v_recipe], seeds, lambda v, seed: measure_ensemble(a, v, seed))[recipe]  # phase 4
    Path(f"runs/{a.prefix}summary.json").write_text(
        json.dumps({"rows": results, "recipe": recipe, "g_pass": g_best, "phase4": extra}, default=str, indent=1)
    )
    table = Table(
        section=a.section,
        title="Reference-system ablation over seeds (bench/quality.py)",
        command=command(a),
        variants=[replace(v, label=v.label + " **(recipe)**") if v.name == recipe else v for v in variants],
        seeds=seeds,
        columns=PHASE_COLUMNS,
    )
    text = (
        f" on configs/{a.config}: every variant trains {a.epochs} epochs of {a.steps} steps on folds 1-2, validated "
        f"on fold 0, for {len(seeds)} seeds (each seed also redraws the folds and the warm-up); mean +- std over the "
        f"seeds. Pseudo-label columns: the last epoch, against train_noisy_truth.csv."
    )
    notes = "\n\n" + choices(results, recipe, g_best, (time.time() - t_start) / 60)
    harness.write(table, results, text, notes, ensemble_rows(v_recipe.label, extra))


def ensemble_rows(label, extra) -> list:
    """Phase 4's rows: the recipe's fold ensemble, and its fold-0 model with TTA k counted both ways."""
    e = {k: [x[k] for x in extra] for k in extra[0]}
    gaps = [v - t for v, t in zip(e["ensemble_val"], e["ensemble_test"]) if None not in (v, t)]
    return [
        [
            f"{label}: fold ensemble (3 folds, TTA)",
            mean_std(e["ensemble_val"]),
            mean_std(e["ensemble_test"]),
            mean_std(gaps),
            *"---",
            f"{np.mean(e['ensemble_seconds']):.0f}",
        ],
        [f"{label}: fold 0, TTA k counted as the paper", "-", mean_std(e["tta_paper"]), *"-" * 5],
        [f"{label}: fold 0, TTA k counting every window", "-", mean_std(e["tta_all"]), *"-" * 5],
    ]


def choices(results, recipe, g_best, minutes) -> str:
    """The phases' choices (on the validation means), the plateau check, and the best teacher-student row against
    noisy warm-up + supervised, paired per seed."""
    gain = {
        n: np.mean([r["val"] for r in results[f"{n}_x2"]]) - np.mean([r["val"] for r in results[n]])
        for n in ("cur", "warm_sup")
    }
    ts_best = best(results, [n for n in results if n.startswith("ts_")])
    val, test = (paired_cell(results, ts_best, "warm_sup", k) for k in ("val", "test"))
    return (
        f"Choices on the validation means: g pass `{g_best}`; best teacher-student row `{ts_best}`; recipe for "
        f"noisy data `{recipe}`. Plateau check (doubling the epochs): curated only {gain['cur']:+.4f}, noisy "
        f"warm-up + supervised {gain['warm_sup']:+.4f} val lwlrap "
        f"({'both within' if max(abs(g) for g in gain.values()) <= 0.01 else 'NOT both within'} 0.01). "
        f"Best teacher-student row against noisy warm-up + supervised, paired per seed: val {val}, test {test}. "
        f"The table took {minutes:.0f} minutes."
    )


if __name__ == "__main__":
    main()
