"""Find the plateau budget: supervised training on all the labels at doubling epochs, over seeds.

    .venv/bin/python bench/plateau.py [--config demo.yaml] [--seeds 3] [--epochs 24] [--doublings 3] [--steps 25]
                                      [--batch 16] [--from-warmup] [key=value ...]
    (needs `make demo-data features`; writes its table into docs/results.md under the section name --section)

The quality tables (bench/quality.py, bench/ssl_modes.py) ask for a budget where supervised training on 100% of the
labels is within 0.01 val lwlrap of its plateau. This script trains that row at E, 2E, 4E, ... epochs of the same
steps per epoch (fold 0 held out, run.seed = 42 + i, which also redraws the folds) and reports, per budget, the mean
and std of the fold-0 val lwlrap and its gain over the previous budget; the plateau budget is the first whose
doubling gains less than 0.01. With --from-warmup each seed first warms up on the noisy set (the quality table's
recipe); without it, every run starts from scratch (the semi-supervised table's setting).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
from common import cfg_for, markdown_table, mean_std, test_lwlrap, train_seconds, write_section

from pipeline import train, warmup  # noqa: E402


def main():
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
    a = ap.parse_args()
    tag = a.tag or f"p{'w' if a.from_warmup else ''}"
    base = [
        f"train.steps_per_epoch={a.steps}",
        f"train.batch_size={a.batch}",
        "train.folds=[0]",
        "train.mode=supervised",
        "run.progress=false",
        *a.overrides,
    ]
    budgets = [a.epochs * 2**i for i in range(a.doublings + 1)]
    results: dict = {}
    for seed in [42 + i for i in range(a.seeds)]:
        init = ["train.init_from=null"]
        if a.from_warmup:
            name = f"{tag}_warm_s{seed}"
            warmup.main(cfg_for(a.config, [f"run.name={name}", f"run.seed={seed}", *base], "warmup"))
            init = [f"train.init_from=runs/{name}/warmup/last.pt"]
        for ep in budgets:
            name = f"{tag}_e{ep}_s{seed}"
            every = [f"train.eval_every={max(1, ep // a.evals)}"] if a.evals else []
            cfg = cfg_for(
                a.config, [f"run.name={name}", f"run.seed={seed}", f"train.epochs={ep}", *base, *init, *every], "train"
            )
            res = train.main(cfg)
            fdir = Path(f"runs/{name}/train/fold_0")
            r = {"val": res["oof_lwlrap"], "test": test_lwlrap(cfg, fdir, tta=False), "seconds": train_seconds(fdir)}
            results.setdefault(ep, []).append(r)
            print(
                f"{ep} epochs seed {seed}: val {r['val']:.4f} test {r['test']:.4f} ({r['seconds']:.0f} s)", flush=True
            )
    Path("runs").mkdir(exist_ok=True)
    Path(f"runs/{tag}_summary.json").write_text(json.dumps(results, indent=1))
    rows, plateau, prev = [], None, None
    for ep in budgets:
        v = np.mean([r["val"] for r in results[ep]])
        gain = "-" if prev is None else f"{v - prev:+.4f}"
        if prev is not None and plateau is None and v - prev < 0.01:
            plateau = ep // 2
        rows.append(
            [
                f"{ep} x {a.steps}",
                mean_std([r["val"] for r in results[ep]]),
                mean_std([r["test"] for r in results[ep]]),
                gain,
                f"{np.mean([r['seconds'] for r in results[ep]]):.0f}",
            ]
        )
        prev = v
    table = markdown_table(
        ["epochs x steps", "fold-0 val lwlrap", "test lwlrap", "val gain over half the budget", "training seconds"],
        rows,
    )
    verdict = (
        f"Plateau budget (the first whose doubling gains less than 0.01 val lwlrap): {plateau} epochs of "
        f"{a.steps} steps."
        if plateau
        else "No budget measured here is within 0.01 of its doubling."
    )
    print(table + "\n" + verdict)
    cmd = " ".join(
        x
        for x in [
            "bench/plateau.py",
            f"--config {a.config}",
            f"--seeds {a.seeds}",
            f"--epochs {a.epochs}",
            f"--doublings {a.doublings}",
            f"--steps {a.steps}",
            f"--batch {a.batch}",
            "--from-warmup" if a.from_warmup else "",
            f"--evals {a.evals}" if a.evals else "",
            f"--section {a.section}",
            f"--tag {a.tag}" if a.tag else "",
            f"--title {shlex.quote(a.title)}" if a.title else "",
            shlex.join(a.overrides),
        ]
        if x
    )
    write_section(
        a.section,
        f"## Plateau budget: supervised on 100% of the labels "
        f"({'after the noisy warm-up' if a.from_warmup else 'from scratch'}"
        f"{', ' + a.title if a.title else ''})\n\n"
        f"`.venv/bin/python {cmd}`: fold 0 held out, {a.seeds} seeds; mean +- "
        f"std over the seeds.\n\n{table}\n\n{verdict}\n",
    )


if __name__ == "__main__":
    main()
