"""Compare: is run B better than run A? The paired difference of out-of-fold lwlrap with its bootstrap interval.

    make compare RUNS="a b [c ...]"             # or: python -m pipeline.compare a b [c ...] [--json FILE]

For runs trained on the same folds (the same clips in the same folds, else refused): each later run's pooled
out-of-fold lwlrap (runs/<run>/train/oof.csv) against the first run's, on the same clips, with the interval of a
paired bootstrap that resamples the folds' groups (recordings or audio groups, folds.csv's `groups`; clips where
there are none) identically for both runs (pipeline.intervals); the classes whose difference lies outside its
interval; and where the dataset has test labels and both runs have a submission (submissions/<run>.csv), the same
on the test clips. Prints a table and writes JSON to runs/<first>/compare/<a>_vs_<b>[_vs_...].json (or --json),
which the first run's report.html shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import load_config
from pipeline.data import labels_to_matrix, load_dataset
from pipeline.intervals import interval, paired, units_of
from pipeline.utils import UserError, atomic_write_json, user_errors

RUNS = Path("runs")
SUBMISSIONS = Path("submissions")


def _run_parts(run: str):
    """(trained config, folds frame, oof frame) of a run, each refused clearly when missing."""
    train = RUNS / run / "train"
    cfg_path, oof_path = train / "config.yaml", train / "oof.csv"
    folds_path = RUNS / run / "folds" / "folds.csv"
    for p, what in ((cfg_path, "make train"), (oof_path, "make train"), (folds_path, "make folds")):
        if not p.exists():
            raise UserError(f"{p}: not found: run {run!r} has no finished `{what}` to compare")
    cfg = load_config(cfg_path)
    folds = pd.read_csv(folds_path, dtype={"fname": str, "groups": str})
    oof = pd.read_csv(oof_path, dtype={"fname": str})
    return cfg, folds, oof


def _same_folds(names, parts):
    """Refuse runs whose data or folds differ from the first run's."""
    cfg0, folds0, oof0 = parts[0]
    f0 = folds0.set_index("fname")["fold"]
    for name, (cfg, folds, oof) in zip(names[1:], parts[1:]):
        if Path(cfg.data.root).resolve() != Path(cfg0.data.root).resolve():
            raise UserError(
                f"runs {names[0]!r} and {name!r} were trained on different data ({cfg0.data.root}, "
                f"{cfg.data.root}): nothing to pair"
            )
        f = folds.set_index("fname")["fold"]
        if set(f.index) != set(f0.index) or not (f.loc[f0.index] == f0).all():
            moved = int((f.reindex(f0.index) != f0).sum())
            raise UserError(
                f"runs {names[0]!r} and {name!r} were trained on different folds ({moved} of {len(f0)} clips in "
                f"another fold or missing; runs/<run>/folds/folds.csv): train both with the same run.seed, "
                f"folds.* and data to compare them"
            )
        if set(oof["fname"]) != set(oof0["fname"]):
            raise UserError(
                f"runs {names[0]!r} and {name!r} pool out-of-fold predictions of different clips "
                f"({len(oof0)} and {len(oof)}): finish the same folds of both (`make train`)"
            )


def _test_scores(names, ds):
    """{run: (N, C) test predictions in ds.test's order} for the runs with a submission; {} without test labels."""
    if not ds.has_test_labels:
        return {}
    out = {}
    for name in names:
        path = SUBMISSIONS / f"{name}.csv"
        if path.exists():
            sub = pd.read_csv(path, dtype={"fname": str}).set_index("fname")
            if set(ds.test["fname"]) <= set(sub.index):
                out[name] = sub.loc[ds.test["fname"], ds.classes].to_numpy(np.float64)
    return out


def compare(names: list[str]) -> dict:
    """The comparison of runs `names` (the first is the reference) as a JSON-ready dict."""
    if len(names) < 2:
        raise UserError('compare: give two or more runs (the first is the reference), e.g. RUNS="a b"')
    parts = [_run_parts(n) for n in names]
    _same_folds(names, parts)
    cfg0, folds0, oof0 = parts[0]
    ds = load_dataset(cfg0.data.root, check_audio=False)
    fnames = oof0["fname"].tolist()
    y = labels_to_matrix(ds.curated.set_index("fname").loc[fnames, "labels"], ds.classes)
    groups = folds0.set_index("fname")["groups"].loc[fnames] if "groups" in folds0.columns else [None] * len(fnames)
    units = units_of(list(groups))
    scores = [p[2].set_index("fname").loc[fnames, ds.classes].to_numpy(np.float64) for p in parts]
    tests = _test_scores(names, ds)
    yt = ds.targets(ds.test) if tests else None
    out = dict(runs=names, data=str(cfg0.data.root), n_clips=len(fnames), units=int(units.max()) + 1, rows=[])
    for name, s in zip(names, scores):
        row = dict(run=name, oof=interval(y, s, units))
        if name != names[0]:
            row["oof_diff"] = paired(y, scores[0], s, units, ds.classes)
        if name in tests:
            row["test"] = interval(yt, tests[name])
            if names[0] in tests and name != names[0]:
                row["test_diff"] = paired(yt, tests[names[0]], tests[name], None, ds.classes)
        out["rows"].append(row)
    return out


def _ci(d: dict, key="lwlrap", sign="") -> str:
    return f"{d[key]:{sign}.4f} [{d['lo']:{sign}.4f}, {d['hi']:{sign}.4f}]"


def table(result: dict) -> str:
    """The comparison as a plain-text table and the classes outside their interval."""
    ref = result["runs"][0]
    head = f"{'run':<24} {'OOF lwlrap [95% CI]':<28} {'- ' + ref:<30} {'test lwlrap':<28} {'- ' + ref}"
    lines = [head, "-" * len(head)]
    notes = []
    for row in result["rows"]:
        diff = _ci(row["oof_diff"], "diff", "+") if "oof_diff" in row else ""
        test = _ci(row["test"]) if "test" in row else "-"
        tdiff = _ci(row["test_diff"], "diff", "+") if "test_diff" in row else ""
        lines.append(f"{row['run']:<24} {_ci(row['oof']):<28} {diff:<30} {test:<28} {tdiff}")
        if "oof_diff" in row:
            out = {c: v for c, v in row["oof_diff"]["per_class"].items() if v["outside"]}
            if out:
                notes.append(
                    f"{row['run']} - {ref}, classes outside their interval (OOF): "
                    + ", ".join(
                        f"{c} {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                        for c, v in sorted(out.items(), key=lambda kv: kv[1]["diff"])
                    )
                )
            else:
                notes.append(f"{row['run']} - {ref}: no class outside its interval (OOF)")
    lines.append(f"{result['n_clips']} clips in {result['units']} resampled groups; intervals: 95% paired bootstrap")
    return "\n".join(lines + notes)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run names (runs/<name>); the first is the reference")
    ap.add_argument("--json", help="write the comparison here (default runs/<first>/compare/<a>_vs_<b>.json)")
    a = ap.parse_args(argv)
    with user_errors("compare"):
        result = compare(a.runs)
        path = Path(a.json) if a.json else RUNS / a.runs[0] / "compare" / ("_vs_".join(a.runs) + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)
        print(table(result))
        print(f"wrote {path}")
        return result


if __name__ == "__main__":
    main()
