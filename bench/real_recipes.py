"""The real-sound set's first comparison over seeds: the demo's recipe (noisy warm-up + supervised, configs/real.yaml)
against curated only (from scratch), each a fold ensemble with TTA, folds grouped by recording.

    .venv/bin/python bench/real_recipes.py [--seeds 42 43 44] [key=value ...]
    (needs `make real-data`; runs the make stages, reusing finished ones; writes docs/results.md's real_recipes)

Seed 42 is configs/real.yaml's run.seed, so its runs keep the config's names (real, real-curated); other seeds run as
real-s<seed> and real-curated-s<seed>. Each seed redraws the folds, the warm-up and every initialisation. The table
gives each recipe's out-of-fold lwlrap (every curated clip, predicted by the fold model that did not train on it,
with TTA), its test lwlrap, their gap and its training minutes (warm-up included), mean +- std over the seeds; and
the per-seed paired difference of the two recipes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from common import markdown_table, mean_std, write_section

RECIPES = {
    "noisy warm-up + supervised (configs/real.yaml)": ("real", ["folds", "warmup", "train", "infer"], []),
    "curated only, from scratch": ("real-curated", ["folds", "train", "infer"], ["train.init_from=null"]),
}


def run_name(base: str, seed: int) -> str:
    return base if seed == 42 else f"{base}-s{seed}"


def minutes(run: str) -> float:
    """Training minutes of a run: its warm-up's and its folds' epochs (metrics.csv's seconds)."""
    files = list(Path(f"runs/{run}").glob("warmup/metrics.csv")) + list(
        Path(f"runs/{run}").glob("train/fold_*/metrics.csv")
    )
    return sum(pd.read_csv(f)["seconds"].sum() for f in files) / 60


def measure(label, seed, overrides) -> dict:
    base, stages, ov = RECIPES[label]
    run = run_name(base, seed)
    ov = [f"run.name={run}", f"run.seed={seed}", "run.progress=false", *ov, *overrides]
    subprocess.run(["make", *stages, "CONFIG=configs/real.yaml", f"OVERRIDES={shlex.join(ov)}"], check=True)
    sub = json.loads(Path(f"submissions/{run}.json").read_text())
    return {"val": sub["oof_lwlrap"], "test": sub["test_lwlrap"], "minutes": minutes(run), "models": sub["n_models"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    res = {label: [measure(label, s, a.overrides) for s in a.seeds] for label in RECIPES}
    rows = [
        [
            label,
            mean_std([r["val"] for r in rs]),
            mean_std([r["test"] for r in rs]),
            mean_std([r["val"] - r["test"] for r in rs]),
            f"{np.mean([r['minutes'] for r in rs]):.1f}",
        ]
        for label, rs in res.items()
    ]
    (wa, cu) = res.values()
    d_val = [w["val"] - c["val"] for w, c in zip(wa, cu)]
    d_test = [w["test"] - c["test"] for w, c in zip(wa, cu)]
    rows.append(
        ["paired difference (warm-up + supervised - curated only)", mean_std(d_val), mean_std(d_test), "-", "-"]
    )
    header = ["recipe", "OOF val lwlrap (TTA)", "test lwlrap", "val - test", "training minutes"]
    table = markdown_table(header, rows)
    print(table)
    per_seed = ", ".join(f"{s}: {t:+.4f}" for s, t in zip(a.seeds, d_test))
    body = (
        f"## Real-sound set: the demo's recipe against curated only over seeds (bench/real_recipes.py)\n\n"
        f"`.venv/bin/python bench/real_recipes.py --seeds {' '.join(map(str, a.seeds))} {shlex.join(a.overrides)}`"
        f": configs/real.yaml, {wa[0]['models']}-fold ensembles with TTA, folds grouped by recording; mean +- std "
        f"over {len(a.seeds)} seeds. Test difference per seed: {per_seed}.\n\n{table}\n"
    )
    write_section("real_recipes", body)


if __name__ == "__main__":
    main()
