"""Find the plateau budget: supervised training on all the labels at doubling epochs, over seeds.

    .venv/bin/python bench/plateau.py [--config demo.yaml] [--seeds 3] [--epochs 24] [--doublings 3] [--steps 25]
                                      [--batch 16] [--from-warmup] [key=value ...]
    (needs `make demo-data features`; writes its table into docs/results.md under the section name --section)

The quality tables (bench/quality.py, bench/ssl_modes.py) ask for a budget where supervised training on 100% of the
labels is within 0.01 val lwlrap of its plateau. This script trains that row at E, 2E, 4E, ... epochs of the same
steps per epoch (fold 0 held out, run.seed = 42 + i, which also redraws the folds) and reports, per budget, the mean
and std of the fold-0 val lwlrap and its gain over the previous budget; the plateau budget is the first whose
doubling gains less than 0.01. With --from-warmup each seed first warms up on the noisy set (the quality table's
recipe); without it, every run starts from scratch (the semi-supervised table's setting). The budgets are the
table's variants on bench/harness.py, measured seed by seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import harness
import numpy as np
from common import cfg_for, test_lwlrap, train_seconds
from harness import Column, Table, Variant, mean, stat

from pipeline import train, warmup  # noqa: E402

ALWAYS = ("config", "seeds", "epochs", "doublings", "steps", "batch", "section")  # stated even at their defaults


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=24, help="the first budget; each next one doubles it")
    ap.add_argument("--doublings", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--from-warmup", action="store_true")
    ap.add_argument(
        "--evals", type=int, default=0, help="validations per run (train.eval_every = epochs / evals; 0: every epoch)"
    )
    ap.add_argument("--section", default="plateau")
    ap.add_argument(
        "--tag",
        default="",
        help="run-name prefix (default p, pw with --from-warmup): probes of other settings keep their own runs",
    )
    ap.add_argument("--title", default="", help="added to the section's heading (what a probe varies)")
    ap.add_argument("overrides", nargs="*")
    return ap


def base(a) -> list:
    return [
        f"train.steps_per_epoch={a.steps}",
        f"train.batch_size={a.batch}",
        "train.folds=[0]",
        "train.mode=supervised",
        "run.progress=false",
        *a.overrides,
    ]


def measure(a, tag: str, v: Variant, seed) -> dict:
    """Train supervised at one budget (from this seed's warm-up with --from-warmup) and read its figures."""
    init = ["train.init_from=null"]
    if a.from_warmup:
        name = f"{tag}_warm_s{seed}"
        warmup.main(cfg_for(a.config, [f"run.name={name}", f"run.seed={seed}", *base(a)], "warmup"))
        init = [f"train.init_from=runs/{name}/warmup/last.pt"]
    ep = v.params["epochs"]
    name = f"{tag}_e{ep}_s{seed}"
    every = [f"train.eval_every={max(1, ep // a.evals)}"] if a.evals else []
    ovs = [f"run.name={name}", f"run.seed={seed}", f"train.epochs={ep}", *base(a), *init, *every]
    cfg = cfg_for(a.config, ovs, "train")
    res = train.main(cfg)
    fdir = Path(f"runs/{name}/train/fold_0")
    return {"val": res["oof_lwlrap"], "test": test_lwlrap(cfg, fdir, tta=False), "seconds": train_seconds(fdir)}


def gains(variants, results) -> dict:
    """Each budget's mean val lwlrap minus the previous (half) budget's; None for the first."""
    means = [np.mean([r["val"] for r in results[v.name]]) for v in variants]
    return {v.name: None if i == 0 else means[i] - means[i - 1] for i, v in enumerate(variants)}


def table(a) -> Table:
    """One variant per budget: E, 2E, 4E, ... epochs of the same steps."""
    budgets = [a.epochs * 2**i for i in range(a.doublings + 1)]
    variants = [Variant(f"e{ep}", f"{ep} x {a.steps}", params={"epochs": ep}) for ep in budgets]

    def gain(res, v):
        g = gains(variants, res)[v.name]
        return "-" if g is None else f"{g:+.4f}"

    return Table(
        section=a.section,
        title=(
            f"Plateau budget: supervised on 100% of the labels "
            f"({'after the noisy warm-up' if a.from_warmup else 'from scratch'}{', ' + a.title if a.title else ''})"
        ),
        command=["bench/plateau.py", *harness.command_line(parser(), a, ALWAYS)],
        variants=variants,
        seeds=[42 + i for i in range(a.seeds)],
        columns=[
            stat("fold-0 val lwlrap", "val"),
            stat("test lwlrap", "test"),
            Column("val gain over half the budget", gain),
            mean("training seconds", "seconds"),
        ],
        first="epochs x steps",
    )


def main():
    a = parser().parse_args()
    tag = a.tag or f"p{'w' if a.from_warmup else ''}"
    t = table(a)
    results = harness.run(t.variants, t.seeds, lambda v, seed: measure(a, tag, v, seed))
    Path("runs").mkdir(exist_ok=True)
    Path(f"runs/{tag}_summary.json").write_text(
        json.dumps({v.params["epochs"]: results[v.name] for v in t.variants}, indent=1)
    )
    g = gains(t.variants, results)
    plateau = next((v.params["epochs"] // 2 for v in t.variants if g[v.name] is not None and g[v.name] < 0.01), None)
    verdict = (
        f"Plateau budget (the first whose doubling gains less than 0.01 val lwlrap): {plateau} epochs of "
        f"{a.steps} steps."
        if plateau
        else "No budget measured here is within 0.01 of its doubling."
    )
    harness.write(t, results, f": fold 0 held out, {a.seeds} seeds; mean +- std over the seeds.", f"\n\n{verdict}")


if __name__ == "__main__":
    main()
