"""The inference levers of a recipe's fold ensembles, over seeds: the sliding-window hop, length-adaptive TTA,
time-reversal averaging and the number of fold models averaged, each against the run's own inference.

    .venv/bin/python bench/infer_levers.py [--runs real-curated real-curated-s43 real-curated-s44] [--variants ...]
        [--threads N]
    (needs each run's `make infer`: bench/real_recipes.py --recipes cur makes the default runs; writes
    docs/results.md's infer_levers section)

A variant changes infer settings only (VARIANTS, declared on bench/harness.py; the runs are its seeds, measured one
by one). Every fold model of a run (runs/<run>/infer/fold_<k>/model.pt)
predicts its held-out curated clips and the test clips with the variant's settings; the choice is made on the pooled
out-of-fold lwlrap and on its unheard subset (validation clips none of whose recordings their fold's training clips
hold), the test lwlrap of the fold ensemble (arithmetic mean) is reported beside it. The row `as run` reads the
run's own oof.csv and test.csv. Predictions are kept in runs/<run>/infer_levers/<variant>/fold_<k>.npz, keyed by
model.pt's modification time and the settings, so a rerun costs only what changed.

Ensemble size: the test lwlrap of the mean of m fold models (every subset of size m, averaged), m = 1..K, at the
run's own settings. It has no validation figure (each curated clip has one out-of-fold model), so it says what the
ensemble adds, not which K to pick; the number of folds (n_splits) also changes each model's training share.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from common import ROOT, markdown_table, mean_std, paired_diff, titled
from harness import Table, Variant, paired, stat

from pipeline.config import load_config  # noqa: E402
from pipeline.utils import atomic_path  # noqa: E402

AS_RUN = "as_run"
KEYS = ("val", "unheard", "test")  # the figures each variant is paired on
VARIANTS = [  # infer overrides only
    Variant(AS_RUN, "as the run inferred (configs/real.yaml: hop 32, TTA, reversal)"),
    Variant("hop16", "hop 16 (the reference's)", ["infer.hop=16"]),
    Variant("hop64", "hop 64", ["infer.hop=64"]),
    Variant("no_tta", "no TTA", ["infer.tta=false"]),
    Variant("no_rev", "no time-reversal averaging", ["infer.reversal=false"]),
]
BY_NAME = {v.name: v for v in VARIANTS}


def run_cfg(run: str, overrides):
    return load_config(ROOT / "runs" / run / "infer" / "config.yaml", list(overrides), stage="infer")


def fold_predictions(run: str, fdir: Path, variant: str, ds, held) -> tuple[np.ndarray, np.ndarray, float]:
    """(test, held-out) probabilities of one fold model under a variant, in ds.test's and held's order, and the
    seconds their prediction took when it was made (NaN for AS_RUN and for files written without it)."""
    if variant == AS_RUN:
        test = pd.read_csv(fdir / "test.csv", dtype={"fname": str}).set_index("fname")
        oof = pd.read_csv(fdir / "oof.csv", dtype={"fname": str}).set_index("fname")
        return test.loc[ds.test["fname"], ds.classes].to_numpy(), oof.loc[held, ds.classes].to_numpy(), float("nan")
    import torch

    from pipeline.cache import FeatureCache
    from pipeline.engine import load_model
    from pipeline.predict import predict_settings, predict_with

    cfg = run_cfg(run, BY_NAME[variant].overrides)
    settings = predict_settings(cfg)
    key = json.dumps([(fdir / "model.pt").stat().st_mtime_ns, settings], sort_keys=True)
    path = ROOT / "runs" / run / "infer_levers" / variant / f"{fdir.name}.npz"
    if path.exists():
        z = np.load(path)
        if str(z["key"]) == key and len(z["test"]) == len(ds.test) and len(z["oof"]) == len(held):
            return z["test"], z["oof"], float(z["seconds"]) if "seconds" in z else float("nan")
    model, _ = load_model(fdir / "model.pt")
    model.eval()
    t0 = time.time()
    with torch.no_grad():
        test = predict_with(model, FeatureCache.open(cfg, "test"), list(ds.test["fname"]), ds.n_classes, settings)
        oof = predict_with(model, FeatureCache.open(cfg, "curated"), held, ds.n_classes, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, test=test, oof=oof, key=np.array(key), seconds=np.array(time.time() - t0))
    return test, oof, time.time() - t0


def measure(run: str, variant: str) -> dict:
    """One run under one variant: pooled OOF lwlrap, its unheard subset, the ensemble's test lwlrap and, for
    AS_RUN, the test lwlrap by ensemble size."""
    from pipeline.data import labels_to_matrix, load_dataset
    from pipeline.folds import unheard_mask
    from pipeline.metrics import lwlrap

    cfg = run_cfg(run, [])
    ds = load_dataset(cfg.data.root, check_audio=False)
    folds = pd.read_csv(ROOT / "runs" / run / "folds" / "folds.csv", dtype={"fname": str})
    fold_of = folds.set_index("fname")["fold"]
    fdirs = sorted(p for p in (ROOT / "runs" / run / "infer").glob("fold_[0-9]*") if (p / "done.json").exists())
    if not fdirs:
        raise SystemExit(f"runs/{run}/infer: no finished fold predictions; run `make infer` for it first")
    seconds, tests, oof_p, oof_names = 0.0, [], [], []
    for fdir in fdirs:
        k = int(fdir.name.split("_")[1])
        held = [f for f in ds.curated["fname"] if fold_of[f] == k]
        test, oof, took = fold_predictions(run, fdir, variant, ds, held)
        seconds += took
        tests.append(test)
        oof_p.append(oof)
        oof_names += held
    names = pd.Series(oof_names)
    y = labels_to_matrix(ds.curated.set_index("fname").loc[names, "labels"], ds.classes)
    p = np.concatenate(oof_p)
    keep = unheard_mask(cfg, ds, folds, names)
    truth = ds.targets(ds.test)
    out = {
        "val": float(lwlrap(y, p)[0]),
        "unheard": float(lwlrap(y[keep], p[keep])[0]) if keep is not None and keep.any() else float("nan"),
        "test": float(lwlrap(truth, np.mean(tests, axis=0))[0]),
        "seconds": seconds,
    }
    if variant == AS_RUN:
        out["by_size"] = [
            float(np.mean([lwlrap(truth, np.mean([tests[i] for i in c], axis=0))[0] for c in combos]))
            for combos in (list(itertools.combinations(range(len(tests)), m)) for m in range(1, len(tests) + 1))
        ]
    return out


def size_table(base) -> str:
    """Test lwlrap by ensemble size, from AS_RUN's records (each run's every subset of m fold models)."""
    sizes = np.array([r["by_size"] for r in base])  # (runs, K)
    size_rows = [
        [m + 1, mean_std(sizes[:, m]), "-" if m == 0 else paired_diff(sizes[:, m], sizes[:, 0])]
        for m in range(sizes.shape[1])
    ]
    return (
        "\n\nTest lwlrap by ensemble size (the run's own inference; every subset of m fold models, averaged):\n\n"
        + markdown_table(["fold models", "test lwlrap", "paired - one model"], size_rows)
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=["real-curated", "real-curated-s43", "real-curated-s44"])
    ap.add_argument("--variants", default=",".join(BY_NAME), help=f"comma-separated, of {list(BY_NAME)}")
    ap.add_argument("--section", default="infer_levers", help="docs/results.md section")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap


def table(a) -> Table:
    """The variants named against the run's own inference, over the runs (one per seed)."""
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    if set(names) - set(BY_NAME) or AS_RUN not in names:
        raise SystemExit(f"--variants: {names}; each one of {list(BY_NAME)}, and {AS_RUN} among them")
    variants = [BY_NAME[n] for n in names]
    config = str(ROOT / "runs" / a.runs[0] / "infer" / "config.yaml")
    return Table(
        section=a.section,
        title=(
            f"{titled(config, [], 'Inference levers')} of the fold ensembles: "
            f"{', '.join(v.label for v in variants[1:])}; {len(a.runs)} run{'s' if len(a.runs) > 1 else ''} "
            f"(bench/infer_levers.py)"
        ),
        command=["bench/infer_levers.py", *harness.command_line(parser(), a, ("runs", "variants"))],
        variants=variants,
        seeds=a.runs,
        columns=[
            stat("OOF val lwlrap", "val"),
            stat("unheard OOF", "unheard"),
            stat("test lwlrap (ensemble)", "test"),
            *(paired(f"paired {k} - as run", k, AS_RUN) for k in KEYS),
            stat("prediction minutes per run", lambda r: r["seconds"] / 60, 1),
        ],
        reference=AS_RUN,
        first="inference",
    )


def main():
    a = parser().parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    t, t0 = table(a), time.time()
    res = harness.run(t.variants, t.seeds, lambda v, run: measure(run, v.name))
    text = (
        f": each run's fold models (one run per seed) predict their held-out curated clips and the test clips with "
        f"the variant's infer settings; OOF val: pooled out-of-fold lwlrap, unheard: its clips of recordings no "
        f"training clip of their fold holds; test: the fold ensemble; mean +- std over {len(a.runs)} runs; paired: "
        f"the per-run difference to the run's own inference. The table took {(time.time() - t0) / 60:.0f} minutes."
    )
    harness.write(t, res, text, size_table(res[AS_RUN]))


if __name__ == "__main__":
    main()
