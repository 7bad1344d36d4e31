"""The real-sound set's recipes over seeds, each a fold ensemble with TTA (folds grouped by recording), against
curated only.

    .venv/bin/python bench/real_recipes.py [key=value ...] [--recipes warm_sup,cur,mix] [--seeds 42 43 44] [--section S]
    (needs `make real-data`; runs the make stages, reusing finished ones; writes docs/results.md's section
    real_recipes, or --section)

Recipes (RECIPES, declared on bench/harness.py and measured seed by seed): warm_sup (noisy warm-up + supervised, the
demo's recipe), cur (curated only, from scratch), cur5 (curated only on 5 folds instead of the config's 3: the
ensemble's size and each model's share of the clips), mix and its variants mix_boot, mix_head, mix_sel
(train.mode=noisy_mix from scratch; mix_sel selects with the same seed's cur fold models) and ts_joint_noisy_aware
(teacher-student), each on configs/real.yaml's other settings. Seed 42 is the config's run.seed: its runs are named
real-warm-sup, real-curated, real-mix; other seeds add -s<seed>. Each seed redraws the folds, the warm-up and every
initialisation. The table gives each recipe's out-of-fold lwlrap (every curated clip, predicted by the fold model
that did not train on it, with TTA), its test lwlrap, their gap, its paired per-seed difference to curated only and
its training minutes (warm-up included), mean +- std over the seeds, and the recording sd of each recipe's test
difference to curated only (common.recording_sd: what redrawing the test split's recordings does to it, a spread
the seeds do not sample).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from common import cfg_for, recording_sd, unheard_lwlrap
from harness import Column, Table, Variant, mean, paired, stat

from pipeline.data import load_dataset  # noqa: E402  (common puts the repository on sys.path)

CUR = "cur"
SCRATCH = ["folds", "train", "infer"]
WARM = ["folds", "warmup", "train", "infer"]
MIX = "train.mode=noisy_mix"  # from scratch: train.init_from=null is added to every noisy_mix recipe
SUP = "train.mode=supervised"
RECIPES = [  # params["run"]: the run's name at seed 42
    Variant(
        "warm_sup",
        "noisy warm-up + supervised (the demo's recipe)",
        [SUP, "train.init_from=warmup"],
        WARM,
        {"run": "real-warm-sup"},
    ),
    Variant(CUR, "curated only, from scratch", [SUP, "train.init_from=null"], SCRATCH, {"run": "real-curated"}),
    Variant(
        "cur5",
        "curated only, 5 folds (4/5 of the clips per model, 5 models)",
        [SUP, "train.init_from=null", "folds.n_splits=5"],
        SCRATCH,
        {"run": "real-curated-5f"},
    ),
    Variant(
        "mix", "curated + noisy in every batch (noisy_mix 16 / 16), from scratch", [MIX], SCRATCH, {"run": "real-mix"}
    ),
    Variant(
        "mix_boot",
        "noisy_mix, soft bootstrapping beta 0.7",
        [MIX, "ssl.noisy_mix={beta: 0.7}"],
        SCRATCH,
        {"run": "real-mix-boot"},
    ),
    Variant(
        "mix_head",
        "noisy_mix, noisy head",
        [MIX, "ssl.noisy_mix={noisy_head: true}"],
        SCRATCH,
        {"run": "real-mix-head"},
    ),
    Variant(
        "mix_sel",
        "noisy_mix, staged selection by the curated-only fold models",
        [MIX, "ssl.noisy_mix={select_from: <curated run>}"],
        SCRATCH,
        {"run": "real-mix-sel"},
    ),
    Variant(
        "ts_joint_noisy_aware",
        "noisy warm-up + teacher-student (g pass joint, rule noisy_aware)",
        ["train.mode=teacher_student", "train.init_from=warmup", "teacher_student.g_pass=joint"]
        + ["teacher_student.rule=noisy_aware"],
        WARM,
        {"run": "real-ts"},
    ),
]
BY_NAME = {v.name: v for v in RECIPES}


def run_name(base: str, seed: int) -> str:
    return base if seed == 42 else f"{base}-s{seed}"


def minutes(run: str) -> float:
    """Training minutes of a run: its warm-up's and its folds' epochs (metrics.csv's seconds)."""
    files = list(Path(f"runs/{run}").glob("warmup/metrics.csv")) + list(
        Path(f"runs/{run}").glob("train/fold_*/metrics.csv")
    )
    return sum(pd.read_csv(f)["seconds"].sum() for f in files) / 60


def measure(v: Variant, seed, overrides) -> dict:
    """Run a recipe's make stages at a seed (finished ones are skipped) and read its submission's figures."""
    run = run_name(v.params["run"], seed)
    ov = [o.replace("<curated run>", run_name(BY_NAME[CUR].params["run"], seed)) for o in v.overrides]
    ov += ["train.init_from=null"] if MIX in ov else []
    ov = [f"run.name={run}", f"run.seed={seed}", "run.progress=false", *ov, *overrides]
    subprocess.run(["make", *v.stages, "CONFIG=configs/real.yaml", f"OVERRIDES={shlex.join(ov)}"], check=True)
    sub = json.loads(Path(f"submissions/{run}.json").read_text())
    cfg = cfg_for("real.yaml", ov, "train")
    unheard = unheard_lwlrap(cfg, run, sorted(Path(f"runs/{run}/train").glob("fold_[0-9]*")))
    return {
        "val": sub["oof_lwlrap"],
        "unheard": unheard,
        "test": sub["test_lwlrap"],
        "minutes": minutes(run),
        "models": sub["n_models"],
    }


def test_resolution(ds, name: str, seed: int) -> float:
    """recording_sd of the recipe's and curated only's submissions at one seed: how much of their test difference
    the luck of the test split's recordings can make."""
    a, b = (
        pd.read_csv(f"submissions/{run_name(BY_NAME[n].params['run'], seed)}.csv", dtype={"fname": str})
        .set_index("fname")
        .loc[ds.test["fname"], ds.classes]
        .to_numpy()
        for n in (name, CUR)
    )
    return recording_sd(ds.root, ds.test["fname"], ds.targets(ds.test), a, b)


def recording_column(overrides) -> Column:
    """The recording sd of each recipe's test difference to curated only, the mean over its seeds."""
    ds = []  # the dataset, loaded for the first recipe that needs it

    def cell(res, v):
        if v.name == CUR:
            return "-"
        if not ds:
            ds.append(load_dataset(cfg_for("real.yaml", overrides, "infer").data.root, check_audio=False))
        return f"{np.mean([test_resolution(ds[0], v.name, r['seed']) for r in res[v.name]]):.4f}"

    return Column("recording sd of test - cur", cell)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--recipes", default="warm_sup,cur", help=f"comma-separated, of {sorted(BY_NAME)}")
    ap.add_argument("--section", default="real_recipes", help="docs/results.md section to write")
    ap.add_argument("overrides", nargs="*")
    return ap


def command_line(a: argparse.Namespace) -> list:
    """The arguments that parse back to `a` (the table's command): the overrides first, since after --seeds they
    would be read as seeds."""
    return harness.command_line(parser(), a, always=("recipes", "seeds", "section"))


def table(a) -> Table:
    """The recipes named, against curated only."""
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    if set(names) - set(BY_NAME) or CUR not in names:
        raise SystemExit(f"--recipes: {names}; each one of {sorted(BY_NAME)}, and {CUR} among them")
    return Table(
        section=a.section,
        title="Real-sound set: recipes against curated only over seeds (bench/real_recipes.py)",
        command=["bench/real_recipes.py", *command_line(a)],
        variants=[BY_NAME[n] for n in names],
        seeds=a.seeds,
        columns=[
            stat("OOF val lwlrap (TTA)", "val"),
            stat("unheard OOF", "unheard"),
            stat("test lwlrap", "test"),
            stat("val - test", lambda r: r["val"] - r["test"]),
            stat("unheard - test", lambda r: r["unheard"] - r["test"]),
            paired("paired val - cur", "val", CUR),
            paired("paired unheard - cur", "unheard", CUR),
            paired("paired test - cur", "test", CUR),
            recording_column(a.overrides),
            mean("training minutes", "minutes", "{:.1f}"),
        ],
        reference=CUR,
        first="recipe",
    )


def main():
    a = parser().parse_args()
    t = table(a)
    res = harness.run(t.variants, t.seeds, lambda v, seed: measure(v, seed, a.overrides))
    text = (
        f": configs/real.yaml, fold ensembles with TTA ({res[CUR][0]['models']} folds unless the recipe says "
        f"otherwise), folds grouped by recording; mean +- std over {len(a.seeds)} seeds; paired: the per-seed "
        f"difference to curated only (the same seed, so the same folds where the number of folds is the same); "
        f"unheard OOF: the fold models' validation predictions (without TTA) of the clips none of whose recordings "
        f"their fold's training clips hold; recording sd: the standard deviation of the recipe's test difference to "
        f"curated only when the test split's recordings are redrawn with replacement (bench/common.recording_sd; mean "
        f"over the seeds), the part of a test difference that is the luck of which recordings the split holds."
    )
    harness.write(t, res, text)


if __name__ == "__main__":
    main()
