"""Every training mode on the demo data with 10% of the curated set labelled, the same budget for each, over seeds.

    .venv/bin/python bench/ssl_modes.py [--config demo.yaml] [--seeds 3] [--epochs N] [--steps N] [--evals N]
                                        [--modes a,b] [key=value ...]
    .venv/bin/python bench/ssl_modes.py --config demo_single.yaml --fraction 0.25    # single-label forms
    (needs `make demo-data features`; writes its table into docs/results.md)

Each row trains on folds 1-2 of the curated set, keeping a stratified 10% of those clips labelled and using the
other 90% as unlabelled clips (their labels are only used to measure pseudo-label quality), validates on fold 0 with
its full labels, and scores the test set; once per seed (run.seed = 42 + i, which also redraws the folds, the
labelled share and every initialisation). Rows: supervised on the 10%, every semi-supervised mode with its defaults
(fmuc with its MC dropout in every block), the multi-label pseudo-label rule topk for fixmatch and pseudo_label,
supervised on 100%, and supervised on 100% with twice the epochs (the plateau check: is the budget one where
supervised training on all the labels has stopped gaining?). All start from scratch with the same epochs, optimiser
steps and labelled batch size; the unlabelled batch is mu x the labelled one (each mode's default mu). The table
gives mean +- std over the seeds, each mode's difference to supervised 10% in units of the two rows' pooled std, and
the paired difference: mean +- std over the seeds of (mode - supervised 10%) within each seed, whose rows share the
seed's folds and labelled share.

The rows are declared on bench/harness.py and measured seed by seed; a mode that fails is a row that says so.

With a single-label config (data.single_label_csv, e.g. configs/demo_single.yaml) every mode runs in its single-label
form, and the table gives the fold-0 validation accuracy and weighted AUC (no test split); teacher_student, which has
no single-label form, and the multi-label rule rows are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from common import cfg_for, fold_lwlrap, test_lwlrap, titled, train_seconds
from harness import Column, Table, Variant, mean, paired, stat

from pipeline import train  # noqa: E402  (common puts the repository on sys.path)
from pipeline.modes import list_modes, mode_class  # noqa: E402

# teacher_student's row: the paper's rule (noisy_aware needs noisy labels) and the batch of 8 labelled + 24 others
TS = ["teacher_student.rule=threshold", "teacher_student.n_curated=8", "teacher_student.n_noisy=24"]
ALWAYS = ("config", "fraction", "seeds", "epochs", "steps", "evals")  # stated in the command even at their defaults


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="demo.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--seed0",
        type=int,
        default=42,
        help="the first seed (processes that run other seeds side by "
        "side; a last run over all seeds reuses their runs)",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument(
        "--evals", type=int, default=0, help="validations per run (train.eval_every = epochs / evals; 0: every epoch)"
    )
    ap.add_argument("--modes", default="", help="comma-separated subset of the modes")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tabulate the finished runs (processes that ran seeds side by side; a "
        "default changed since, which would change the runs' training key); multi-label only",
    )
    ap.add_argument("--no-topk", action="store_true", help="leave out the rule topk rows")
    ap.add_argument(
        "--tag",
        default="",
        help="run-name prefix (default s, ssl for single-label): a table at another budget keeps its own runs",
    )
    ap.add_argument("--section", default="", help="docs/results.md section (default ssl, ssl_single)")
    ap.add_argument("overrides", nargs="*")
    return ap


def base(a) -> list:
    return [
        f"train.steps_per_epoch={a.steps}",
        "train.batch_size=16",
        "train.init_from=null",
        "train.folds=[0]",
        "augment.mixup_per_pair=false",
        "run.progress=false",
        *a.overrides,
    ]  # as measured on 30 Nov


def row(label: str, mode: str, overrides, epochs: int) -> Variant:
    """A row: its name (the run name's stem) comes from its label."""
    name = label.split(" (")[0].replace(" ", "_").replace("%", "pct").replace(",", "")
    return Variant(name, label, [f"train.mode={mode}", *overrides], [], {"epochs": epochs})


def variants(a, single: bool) -> list:
    """Supervised on the labelled share, every semi-supervised mode (of --modes), the topk rule rows, supervised on
    all the labels and its plateau check at twice the epochs."""
    ssl_modes = [
        m
        for m in list_modes()
        if mode_class(m).uses_unlabelled
        and not mode_class(m).uses_noisy_labels
        and (mode_class(m).single_label_ok or not single)
    ]
    if a.modes:
        ssl_modes = [m for m in ssl_modes if m in a.modes.split(",")]
    frac = [f"data.labelled_fraction={a.fraction}"]
    topk = [] if single or a.no_topk else [m for m in ("fixmatch", "pseudo_label") if m in ssl_modes]
    return [
        row(f"supervised {a.fraction:.0%}", "supervised", frac, a.epochs),
        *(row(m, m, frac + (TS if m == "teacher_student" else []), a.epochs) for m in ssl_modes),
        *(row(f"{m}, rule topk", m, [*frac, f"ssl.{m}={{rule: topk}}"], a.epochs) for m in topk),
        row("supervised 100%", "supervised", [], a.epochs),
        row(f"supervised 100%, {2 * a.epochs} epochs (plateau check)", "supervised", [], 2 * a.epochs),
    ]


def measure(a, single: bool, tag: str, v: Variant, seed) -> dict:
    """Train a row's fold 0 (or, --report-only, read its finished run) and read its figures."""
    epochs = v.params["epochs"]
    name = f"{tag}_{v.name}_s{seed}".replace(",", "")
    every = [f"train.eval_every={max(1, epochs // a.evals)}"] if a.evals else []
    ovs = [f"run.name={name}", f"run.seed={seed}", f"train.epochs={epochs}", *base(a), *every, *v.overrides]
    cfg = cfg_for(a.config, ovs, "train")
    fdir = Path(f"runs/{name}/train/fold_0")
    if a.report_only:
        if single or not (fdir / "oof.csv").exists():
            raise FileNotFoundError(f"{fdir}: no finished run to report (multi-label only)")
        res = {"oof_lwlrap": fold_lwlrap(cfg, fdir)}
    else:
        res = train.main(cfg)
    last = pd.read_csv(fdir / "metrics.csv").iloc[-1]
    r = {
        "seconds": train_seconds(fdir),
        **{k: float(last[k]) for k in ("pl_precision", "pl_recall", "pl_used", "pl_pos") if k in last},
    }
    if single:
        r.update(val=res["oof_accuracy"], test=res["oof_weighted_auc"])
    else:
        r.update(val=res["oof_lwlrap"], test=test_lwlrap(cfg, fdir, tta=False))
    return r


def main():
    a = parser().parse_args()
    t_start = time.time()
    single = cfg_for(a.config, a.overrides, "train").data.single_label_csv is not None
    tag = a.tag or f"s{'sl' if single else ''}"
    t = table(a, single)
    results = harness.run(t.variants, t.seeds, lambda v, seed: measure(a, single, tag, v, seed), keep_going=True)
    if not any(harness.ok(rs) for rs in results.values()):
        raise SystemExit("every run failed (see above); docs/results.md is left as it was")
    Path("runs").mkdir(exist_ok=True)
    Path(f"runs/{tag}_summary.json").write_text(json.dumps({v.label: results[v.name] for v in t.variants}, indent=1))
    minutes = (time.time() - t_start) / 60
    text = (
        f": {a.epochs} epochs of {a.steps} steps, labelled batch 16, from scratch, fold 0 held out, {a.seeds} seeds "
        f"(each also redraws the folds and the labelled share); mean +- std over the seeds. Pseudo-label columns: "
        f"last epoch, against the true labels of the unlabelled clips; '-' where a mode selects none. "
        + (
            "Tabulated from the finished runs (--report-only)."
            if a.report_only
            else f"The table took {minutes:.0f} minutes."
        )
    )
    harness.write(t, results, text)


def gap(rs, ref) -> str:
    """Mean difference to the reference row in units of the pooled std of the two rows' values (unpaired)."""
    x, y = np.array([r["val"] for r in rs if "val" in r]), np.array([r["val"] for r in ref if "val" in r])
    if len(x) < 2 or len(y) < 2:
        return "-"
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    return f"{x.mean() - y.mean():+.4f} ({(x.mean() - y.mean()) / sd:+.1f} sd)" if sd > 0 else "-"


def table(a, single: bool) -> Table:
    """The rows against supervised on the labelled share: lwlrap (multi-label) or accuracy and weighted AUC
    (single-label), the unpaired gap and the paired per-seed difference, pseudo-label quality, cost."""
    rows = variants(a, single)
    ref = rows[0]
    metric = (
        [stat("fold-0 val accuracy", "val"), stat("fold-0 val weighted AUC", "test")]
        if single
        else [
            stat("fold-0 val lwlrap", "val"),
            stat("test lwlrap", "test"),
            stat("val - test", lambda r: r["val"] - r["test"]),
        ]
    )
    title = (
        f"{titled(a.config, a.overrides, 'Semi-supervised modes')}{' (single-label forms)' if single else ''} at "
        f"{a.fraction:.0%} labelled over seeds, {a.epochs} x {a.steps} steps (bench/ssl_modes.py)"
    )
    return Table(
        section=a.section or ("ssl_single" if single else "ssl"),
        title=title,
        command=["bench/ssl_modes.py", *harness.command_line(parser(), a, ALWAYS)],
        variants=rows,
        seeds=[a.seed0 + i for i in range(a.seeds)],
        columns=[
            *metric,
            Column(f"val vs {ref.label}", lambda res, v: gap(res[v.name], res[ref.name])),
            paired("paired per-seed val difference", "val", ref.name),
            stat("PL precision", "pl_precision", 3),
            stat("PL recall", "pl_recall", 3),
            stat("PL entries used", "pl_used", 3),
            mean("training seconds", "seconds"),
        ],
        reference=ref.name,
        first="mode",
    )


if __name__ == "__main__":
    main()
