"""Does validation track the test when the data names no recordings? configs/real.yaml's curated-only recipe with its
folds grouped by the recordings found in the audio (folds.group_by=audio, pipeline/audio_groups.py: the `sources`
column is not read), by the true recordings (the `sources` column) and not grouped, over seeds: each run's
out-of-fold lwlrap (fold models' held-out predictions with TTA), its test lwlrap (the fold ensemble on clips of
recordings never heard in training), their gap, and the paired per-seed difference of the gap to the true
sources' (mean, sd and 95% t-interval over seeds, pipeline.intervals.across_seeds).

    .venv/bin/python bench/grouping.py [key=value ...] [--seeds 42 43 44] [--variants none,sources,audio]
    (needs `make real-data` and its feature cache; runs the make stages, reusing finished ones; writes
    docs/results.md's section real_grouping)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
from common import markdown_table, mean_std, write_section

from pipeline.intervals import across_seeds  # noqa: E402  (common puts the repository on sys.path)

VARIANTS = {  # name -> (label, folds.group_by)
    "none": ("not grouped (label-stratified)", "none"),
    "sources": ("grouped by the true recordings (sources column)", "sources"),
    "audio": ("grouped by the recordings found in the audio", "audio"),
}
REFERENCE = "sources"


def run_name(variant: str, seed: int) -> str:
    return f"real-g{variant}-s{seed}"


def unheard_by_truth(run: str) -> tuple[float, int]:
    """lwlrap of the run's out-of-fold predictions (train/oof.csv, no TTA) on the clips none of whose true
    recordings (the sources column) any clip of their fold's training set holds: what its folds would read had they
    missed no recording; and how many such clips there are."""
    import pandas as pd

    from pipeline.data import labels_to_matrix, load_dataset
    from pipeline.folds import split_groups, unheard
    from pipeline.metrics import lwlrap

    ds = load_dataset("data/real", check_audio=False)
    folds = pd.read_csv(f"runs/{run}/folds/folds.csv", dtype={"fname": str}).set_index("fname")
    fold = folds.loc[ds.curated["fname"], "fold"].to_numpy()
    groups = split_groups(ds.curated["sources"], ds.curated["fname"])
    clean = np.zeros(len(fold), bool)
    for k in np.unique(fold):
        clean |= unheard(groups, fold, int(k))
    oof = pd.read_csv(f"runs/{run}/train/oof.csv", dtype={"fname": str}).set_index("fname")
    keep = ds.curated["fname"][clean]
    y = labels_to_matrix(ds.curated.set_index("fname").loc[keep, "labels"], ds.classes)
    return float(lwlrap(y, oof.loc[keep, ds.classes].to_numpy())[0]), int(clean.sum())


def measure(variant: str, seed: int, overrides) -> dict:
    run = run_name(variant, seed)
    ov = [f"run.name={run}", f"run.seed={seed}", "run.progress=false", "train.mode=supervised"]
    ov += ["train.init_from=null", f"folds.group_by={VARIANTS[variant][1]}", *overrides]
    cmd = ["make", "folds", "train", "infer", "CONFIG=configs/real.yaml", f"OVERRIDES={shlex.join(ov)}"]
    subprocess.run(cmd, check=True)
    sub = json.loads(Path(f"submissions/{run}.json").read_text())
    done = json.loads(Path(f"runs/{run}/folds/done.json").read_text())
    return {
        "oof": sub["oof_lwlrap"],
        "test": sub["test_lwlrap"],
        "leak": done.get("group_leak"),
        **dict(zip(("unheard_truth", "n_unheard_truth"), unheard_by_truth(run))),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--variants", default="none,sources,audio")
    a = ap.parse_args()
    names = [n for n in a.variants.split(",") if n]
    res = {n: [] for n in names}
    for seed in a.seeds:  # seed by seed: a cut-short run still gives whole seeds
        for n in names:
            res[n].append(measure(n, seed, a.overrides))
    rows = []
    for n in names:
        gap = [r["oof"] - r["test"] for r in res[n]]
        paired = "-"
        if n != REFERENCE and REFERENCE in res:
            d = across_seeds(gap, [r["oof"] - r["test"] for r in res[REFERENCE]])
            paired = f"{d['mean']:+.4f} +- {d['sd']:.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        rows.append(
            [
                VARIANTS[n][0],
                mean_std([r["oof"] for r in res[n]]),
                mean_std([r["test"] for r in res[n]]),
                mean_std(gap),
                paired,
                mean_std([r["unheard_truth"] for r in res[n]]),
                f"{np.mean([r['n_unheard_truth'] for r in res[n]]):.0f}",
                mean_std([r["leak"] for r in res[n]], 3),
            ]
        )
    header = ["folds", "OOF lwlrap (TTA)", "test lwlrap", "OOF - test", f"gap - gap of {REFERENCE} (paired)"]
    header += ["OOF on clips of truly unheard recordings (no TTA)", "such clips (of 1,500)"]
    header += ["clips mixing two folds' groups"]
    table = markdown_table(header, rows)
    print(table)
    command = ["bench/grouping.py", *a.overrides, "--seeds", *map(str, a.seeds), "--variants", a.variants]
    body = (
        "## Real-sound set: folds grouped by audio, by the true recordings, not grouped (bench/grouping.py)\n\n"
        f"`.venv/bin/python {shlex.join(command)}`: configs/real.yaml's curated-only recipe (train.mode=supervised "
        f"from scratch), fold ensembles with TTA; mean +- sd over {len(a.seeds)} seeds (each seed redraws the "
        f"folds and every initialisation); paired: the per-seed difference of the OOF - test gap to the gap with "
        f"the true recordings' folds, mean +- sd [95% t-interval over the seeds]; truly unheard: the fold models' "
        f"held-out predictions (without TTA) of the clips none of whose true recordings (sources column) their "
        f"fold's training clips hold. The audio grouping reads only the feature cache and the labels, never the "
        f"sources column.\n\n{table}\n"
    )
    write_section("real_grouping", body)


if __name__ == "__main__":
    main()
