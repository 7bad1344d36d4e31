"""The real-sound set's recipes over seeds, each a fold ensemble with TTA (folds grouped by recording), against
curated only.

    .venv/bin/python bench/real_recipes.py [key=value ...] [--recipes warm_sup,cur,mix] [--seeds 42 43 44] [--section S]
    (needs `make real-data`; runs the make stages, reusing finished ones; writes docs/results.md's section
    real_recipes, or --section)

Recipes (RECIPES): warm_sup (noisy warm-up + supervised, the demo's recipe), cur (curated only, from scratch), cur5
(curated only on 5 folds instead of the config's 3: the ensemble's size and each model's share of the clips), mix
and its variants mix_boot, mix_head, mix_sel (train.mode=noisy_mix from scratch; mix_sel selects with the same
seed's cur fold models) and ts_joint_noisy_aware (teacher-student), each on configs/real.yaml's other settings. Seed
42 is the config's run.seed: its runs are named real-warm-sup, real-curated, real-mix; other seeds add -s<seed>.
Each seed redraws the folds, the warm-up and every initialisation. The table gives each recipe's out-of-fold lwlrap
(every curated clip, predicted by the fold model that did not train on it, with TTA), its test lwlrap, their gap,
its paired per-seed difference to curated only and its training minutes (warm-up included), mean +- std over the
seeds, and the recording sd of each recipe's test difference to curated only (common.recording_sd: what redrawing
the test split's recordings does to it, a spread the seeds do not sample).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from common import cfg_for, markdown_table, mean_std, paired_diff, recording_sd, unheard_lwlrap, write_section

from pipeline.data import load_dataset  # noqa: E402  (common puts the repository on sys.path)

CUR = "cur"
SCRATCH = ["folds", "train", "infer"]
MIX = "train.mode=noisy_mix"  # from scratch: train.init_from=null is added to every noisy_mix recipe
RECIPES = {  # name -> (label, run name at seed 42, make stages, overrides)
    "warm_sup": (
        "noisy warm-up + supervised (the demo's recipe)",
        "real-warm-sup",
        ["folds", "warmup", "train", "infer"],
        ["train.mode=supervised", "train.init_from=warmup"],
    ),
    CUR: (
        "curated only, from scratch",
        "real-curated",
        ["folds", "train", "infer"],
        ["train.mode=supervised", "train.init_from=null"],
    ),
    "cur5": (
        "curated only, 5 folds (4/5 of the clips per model, 5 models)",
        "real-curated-5f",
        ["folds", "train", "infer"],
        ["train.mode=supervised", "train.init_from=null", "folds.n_splits=5"],
    ),
    "mix": ("curated + noisy in every batch (noisy_mix 16 / 16), from scratch", "real-mix", SCRATCH, [MIX]),
    "mix_boot": (
        "noisy_mix, soft bootstrapping beta 0.7",
        "real-mix-boot",
        SCRATCH,
        [MIX, "ssl.noisy_mix={beta: 0.7}"],
    ),
    "mix_head": ("noisy_mix, noisy head", "real-mix-head", SCRATCH, [MIX, "ssl.noisy_mix={noisy_head: true}"]),
    "mix_sel": (
        "noisy_mix, staged selection by the curated-only fold models",
        "real-mix-sel",
        SCRATCH,
        [MIX, "ssl.noisy_mix={select_from: <curated run>}"],
    ),
    "ts_joint_noisy_aware": (
        "noisy warm-up + teacher-student (g pass joint, rule noisy_aware)",
        "real-ts",
        ["folds", "warmup", "train", "infer"],
        ["train.mode=teacher_student", "train.init_from=warmup", "teacher_student.g_pass=joint"]
        + ["teacher_student.rule=noisy_aware"],
    ),
}


def run_name(base: str, seed: int) -> str:
    return base if seed == 42 else f"{base}-s{seed}"


def minutes(run: str) -> float:
    """Training minutes of a run: its warm-up's and its folds' epochs (metrics.csv's seconds)."""
    files = list(Path(f"runs/{run}").glob("warmup/metrics.csv")) + list(
        Path(f"runs/{run}").glob("train/fold_*/metrics.csv")
    )
    return sum(pd.read_csv(f)["seconds"].sum() for f in files) / 60


def measure(name, seed, overrides) -> dict:
    _, base, stages, ov = RECIPES[name]
    run = run_name(base, seed)
    ov = [o.replace("<curated run>", run_name(RECIPES[CUR][1], seed)) for o in ov]
    ov += ["train.init_from=null"] if MIX in ov else []
    ov = [f"run.name={run}", f"run.seed={seed}", "run.progress=false", *ov, *overrides]
    subprocess.run(["make", *stages, "CONFIG=configs/real.yaml", f"OVERRIDES={shlex.join(ov)}"], check=True)
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
        pd.read_csv(f"submissions/{run_name(RECIPES[n][1], seed)}.csv", dtype={"fname": str})
        .set_index("fname")
        .loc[ds.test["fname"], ds.classes]
        .to_numpy()
        for n in (name, CUR)
    )
    return recording_sd(ds.root, ds.test["fname"], ds.targets(ds.test), a, b)


def paired(res, name, key) -> str:
    return paired_diff([r[key] for r in res[name]], [c[key] for c in res[CUR]])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--recipes", default="warm_sup,cur", help=f"comma-separated, of {sorted(RECIPES)}")
    ap.add_argument("--section", default="real_recipes", help="docs/results.md section to write")
    ap.add_argument("overrides", nargs="*")
    return ap


def command_line(a: argparse.Namespace) -> list:
    """The arguments that parse back to `a` (the table's command): the overrides first, since after --seeds they
    would be read as seeds."""
    return [*a.overrides, "--recipes", a.recipes, "--seeds", *map(str, a.seeds), "--section", a.section]


def main():
    a = parser().parse_args()
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    if set(names) - set(RECIPES) or CUR not in names:
        raise SystemExit(f"--recipes: {names}; each one of {sorted(RECIPES)}, and {CUR} among them")
    res = {n: [measure(n, s, a.overrides) for s in a.seeds] for n in names}
    ds = load_dataset(cfg_for("real.yaml", a.overrides, "infer").data.root, check_audio=False)
    rows = [
        [
            RECIPES[n][0],
            mean_std([r["val"] for r in rs]),
            mean_std([r["unheard"] for r in rs]),
            mean_std([r["test"] for r in rs]),
            mean_std([r["val"] - r["test"] for r in rs]),
            mean_std([r["unheard"] - r["test"] for r in rs]),
            *("-" if n == CUR else paired(res, n, k) for k in ("val", "unheard", "test")),
            "-" if n == CUR else f"{np.mean([test_resolution(ds, n, s) for s in a.seeds]):.4f}",
            f"{np.mean([r['minutes'] for r in rs]):.1f}",
        ]
        for n, rs in res.items()
    ]
    header = ["recipe", "OOF val lwlrap (TTA)", "unheard OOF", "test lwlrap", "val - test", "unheard - test"]
    header += ["paired val - cur", "paired unheard - cur", "paired test - cur"]
    table = markdown_table([*header, "recording sd of test - cur", "training minutes"], rows)
    print(table)
    command = ["bench/real_recipes.py", *command_line(a)]
    body = (
        f"## Real-sound set: recipes against curated only over seeds (bench/real_recipes.py)\n\n"
        f"`.venv/bin/python {shlex.join(command)}`: configs/real.yaml, fold ensembles with TTA "
        f"({res[CUR][0]['models']} folds unless the recipe says otherwise), folds grouped by recording; mean +- std "
        f"over {len(a.seeds)} seeds; paired: the per-seed difference to curated only (the same seed, so the same "
        f"folds where the number of folds is the same); unheard OOF: the fold models' validation predictions "
        f"(without TTA) of the clips none of whose recordings their fold's training clips hold; recording sd: the "
        f"standard deviation of the recipe's test difference to curated only when the test split's recordings are "
        f"redrawn with replacement (bench/common.recording_sd; mean over the seeds), the part of a test difference "
        f"that is the luck of which recordings the split holds.\n\n{table}\n"
    )
    write_section(a.section, body)


if __name__ == "__main__":
    main()
