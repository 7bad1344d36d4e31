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

With a single-label config (data.single_label_csv, e.g. configs/demo_single.yaml) every mode runs in its single-label
form, and the table gives the fold-0 validation accuracy and weighted AUC (no test split); teacher_student, which has
no single-label form, and the multi-label rule rows are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import cfg_for, fold_lwlrap, markdown_table, mean_std, test_lwlrap, titled, train_seconds, write_section

from pipeline import train  # noqa: E402  (common puts the repository on sys.path)
from pipeline.modes import list_modes, mode_class  # noqa: E402

# teacher_student's row: the paper's rule (noisy_aware needs noisy labels) and the batch of 8 labelled + 24 others
TS = ["teacher_student.rule=threshold", "teacher_student.n_curated=8", "teacher_student.n_noisy=24"]


def main():
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
    a = ap.parse_args()
    t_start = time.time()
    base = [
        f"train.steps_per_epoch={a.steps}",
        "train.batch_size=16",
        "train.init_from=null",
        "train.folds=[0]",
        "augment.mixup_per_pair=false",
        "run.progress=false",
        *a.overrides,
    ]  # as measured on 30 Nov
    single = cfg_for(a.config, a.overrides, "train").data.single_label_csv is not None
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
    spec = (
        [(f"supervised {a.fraction:.0%}", "supervised", frac, a.epochs)]
        + [(m, m, frac + (TS if m == "teacher_student" else []), a.epochs) for m in ssl_modes]
        + (
            []
            if single or a.no_topk
            else [
                (f"{m}, rule topk", m, [*frac, f"ssl.{m}={{rule: topk}}"], a.epochs)
                for m in ("fixmatch", "pseudo_label")
                if m in ssl_modes
            ]
        )
        + [
            ("supervised 100%", "supervised", [], a.epochs),
            (f"supervised 100%, {2 * a.epochs} epochs (plateau check)", "supervised", [], 2 * a.epochs),
        ]
    )
    tag = a.tag or f"s{'sl' if single else ''}"
    results: dict = {}
    for seed in [a.seed0 + i for i in range(a.seeds)]:
        for label, mode, ov, epochs in spec:
            name = (f"{tag}_{label.split(' (')[0].replace(' ', '_').replace('%', 'pct')}_s{seed}").replace(",", "")
            every = [f"train.eval_every={max(1, epochs // a.evals)}"] if a.evals else []
            ovs = [
                f"run.name={name}",
                f"run.seed={seed}",
                f"train.epochs={epochs}",
                *base,
                *every,
                f"train.mode={mode}",
                *ov,
            ]
            cfg = cfg_for(a.config, ovs, "train")
            fdir = Path(f"runs/{name}/train/fold_0")
            try:
                if a.report_only:
                    if single or not (fdir / "oof.csv").exists():
                        raise FileNotFoundError(f"{fdir}: no finished run to report (multi-label only)")
                    res = {"oof_lwlrap": fold_lwlrap(cfg, fdir)}
                else:
                    res = train.main(cfg)
            except Exception as e:  # a failing mode is a row, not the end of the table
                print(f"{label} seed {seed} failed: {type(e).__name__}: {e}", flush=True)
                results.setdefault(label, []).append({"failed": f"{type(e).__name__}"})
                continue
            last = pd.read_csv(fdir / "metrics.csv").iloc[-1]
            r = {
                "seconds": train_seconds(fdir),
                **{k: float(last[k]) for k in ("pl_precision", "pl_recall", "pl_used", "pl_pos") if k in last},
            }
            if single:
                r.update(val=res["oof_accuracy"], test=res["oof_weighted_auc"])
            else:
                r.update(val=res["oof_lwlrap"], test=test_lwlrap(cfg, fdir, tta=False))
            results.setdefault(label, []).append(r)
            print(f"{label} seed {seed}: {r['val']:.4f} / {r['test']:.4f} ({r['seconds']:.0f} s)", flush=True)
    if not any("val" in r for rs in results.values() for r in rs):
        raise SystemExit("every run failed (see above); docs/results.md is left as it was")
    Path("runs").mkdir(exist_ok=True)
    Path(f"runs/{tag}_summary.json").write_text(json.dumps(results, indent=1))
    report(a, results, single, spec[0][0], (time.time() - t_start) / 60)


def gap(rs, ref) -> str:
    """Mean difference to the reference row in units of the pooled std of the two rows' values."""
    x, y = np.array([r["val"] for r in rs if "val" in r]), np.array([r["val"] for r in ref if "val" in r])
    if len(x) < 2 or len(y) < 2:
        return "-"
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    return f"{x.mean() - y.mean():+.4f} ({(x.mean() - y.mean()) / sd:+.1f} sd)" if sd > 0 else "-"


def paired(rs, ref) -> str:
    """Mean +- std of the per-seed differences to the reference row (each seed's rows share its folds and labelled
    share, so the difference leaves out what the seeds' splits add to both), and the mean in units of that std."""
    d = np.array([r["val"] - q["val"] for r, q in zip(rs, ref) if "val" in r and "val" in q])
    if len(d) < 2 or d.std(ddof=1) == 0:
        return "-"
    return f"{d.mean():+.4f} +- {d.std(ddof=1):.4f} ({d.mean() / d.std(ddof=1):+.1f} sd)"


def report(a, results, single, ref_label, minutes):
    rows = []
    for label, rs in results.items():
        ok = [r for r in rs if "val" in r]
        fails = len(rs) - len(ok)
        pl = [mean_std([r.get(k, float("nan")) for r in ok], 3) for k in ("pl_precision", "pl_recall", "pl_used")]
        rows.append(
            [
                label + (f" ({fails} failed)" if fails else ""),
                mean_std([r["val"] for r in ok]),
                mean_std([r["test"] for r in ok]),
                *([] if single else [mean_std([r["val"] - r["test"] for r in ok])]),
                gap(ok, results[ref_label]),
                paired(rs, results[ref_label]),
                *pl,
                f"{np.mean([r['seconds'] for r in ok]):.0f}" if ok else "-",
            ]
        )
    metric = (
        ["fold-0 val accuracy", "fold-0 val weighted AUC"]
        if single
        else ["fold-0 val lwlrap", "test lwlrap", "val - test"]
    )
    header = [
        "mode",
        *metric,
        f"val vs {ref_label}",
        "paired per-seed val difference",
        "PL precision",
        "PL recall",
        "PL entries used",
        "training seconds",
    ]
    table = markdown_table(header, rows)
    print(table)
    body = (
        f"## {titled(a.config, a.overrides, 'Semi-supervised modes')}{' (single-label forms)' if single else ''} at "
        f"{a.fraction:.0%} labelled over seeds, {a.epochs} x {a.steps} steps (bench/ssl_modes.py)\n\n"
        f"`.venv/bin/python bench/ssl_modes.py --config {a.config} --fraction {a.fraction} --seeds {a.seeds}"
        f"{f' --seed0 {a.seed0}' if a.seed0 != 42 else ''} --epochs {a.epochs} --steps {a.steps} --evals {a.evals}"
        f"{' --modes ' + a.modes if a.modes else ''}{' --no-topk' if a.no_topk else ''}"
        f"{' --tag ' + a.tag if a.tag else ''}{' --section ' + a.section if a.section else ''} "
        f"{shlex.join(a.overrides)}`: "
        f"{a.epochs} epochs of {a.steps} steps, labelled batch 16, from scratch, fold 0 held out, "
        f"{a.seeds} seeds (each also redraws the folds and the labelled share); mean +- std over the seeds. "
        f"Pseudo-label columns: last epoch, against the true labels of the unlabelled clips; '-' where a mode "
        f"selects none. "
        + (
            "Tabulated from the finished runs (--report-only)."
            if a.report_only
            else f"The table took {minutes:.0f} minutes."
        )
        + f"\n\n{table}\n"
    )
    write_section(a.section or ("ssl_single" if single else "ssl"), body)


if __name__ == "__main__":
    main()
