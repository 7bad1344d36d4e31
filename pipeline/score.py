"""Score a submission CSV against a labels CSV with lwlrap, after checking the submission's format.

    python -m pipeline.score SUBMISSION.csv LABELS.csv [--json FILE] [--sample sample_submission.csv]
    python -m pipeline.score --config configs/demo.yaml [key=value ...]   # submissions/<run.name>.csv vs test labels

LABELS.csv is `fname,labels` (like test_labels.csv). The class columns must match sample_submission.csv's header,
in order (by default the one beside LABELS.csv). The last line printed is `lwlrap: 0.xxxx`; --json writes the overall
and per-class values. A bad submission or input prints one `fattag score: error: ...` line naming the file and what is
wrong, and exits with status 2 (FATTAG_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import DataError, labels_to_matrix, read_classes, read_labels_csv
from pipeline.intervals import interval
from pipeline.metrics import lwlrap
from pipeline.utils import UserError, atomic_write_json

MAX_LISTED = 5


class SubmissionError(UserError):
    """The submission does not have the sample_submission.csv format; the message says what is wrong."""


def check_submission(sub: pd.DataFrame, fnames, classes, source="submission") -> None:
    """Raise SubmissionError unless `sub` has column fname + classes in order, every fname once, finite values in
    [0, 1]."""
    cols = list(sub.columns)
    if cols != ["fname"] + list(classes):
        if not cols or cols[0] != "fname":
            raise SubmissionError(f"{source}: first column must be 'fname', got {cols[:1]}")
        got, want = cols[1:], list(classes)
        missing = [c for c in want if c not in got]
        extra = [c for c in got if c not in want]
        if missing or extra:
            raise SubmissionError(
                f"{source}: class columns differ from sample_submission.csv: missing "
                f"{missing[:MAX_LISTED]}{'...' if len(missing) > MAX_LISTED else ''}, "
                f"unexpected {extra[:MAX_LISTED]}"
            )
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise SubmissionError(
            f"{source}: class columns out of order: column {first + 2} is '{got[first]}', "
            f"sample_submission.csv has '{want[first]}' there"
        )
    names = sub["fname"].astype(str)
    dup = names[names.duplicated()].tolist()
    if dup:
        raise SubmissionError(f"{source}: {len(dup)} duplicate fname(s): {dup[:MAX_LISTED]}")
    missing = sorted(set(fnames) - set(names))
    if missing:
        raise SubmissionError(f"{source}: {len(missing)} fname(s) missing: {missing[:MAX_LISTED]}")
    extra = sorted(set(names) - set(fnames))
    if extra:
        raise SubmissionError(f"{source}: {len(extra)} unexpected fname(s): {extra[:MAX_LISTED]}")
    values = sub[list(classes)]
    try:
        arr = values.to_numpy(np.float64)
    except (TypeError, ValueError):
        bad = [c for c in classes if not pd.api.types.is_numeric_dtype(values[c])]
        raise SubmissionError(f"{source}: non-numeric values in column(s) {bad[:MAX_LISTED]}") from None
    for what, mask in (("NaN/Inf", ~np.isfinite(arr)), ("values outside [0, 1]", (arr < 0) | (arr > 1))):
        if mask.any():
            rows, cols_ = np.nonzero(mask)
            where = [f"{names.iloc[r]}/{classes[c]}" for r, c in zip(rows[:MAX_LISTED], cols_[:MAX_LISTED])]
            raise SubmissionError(f"{source}: {int(mask.sum())} {what}, e.g. {where}")


def score_files(sub_path, labels_path, sample_path=None, json_path=None) -> dict:
    """Check and score; returns {'lwlrap': float, 'per_class': {class: float}, 'n_clips': int}."""
    labels_path = Path(labels_path)
    sample_path = Path(sample_path) if sample_path else labels_path.parent / "sample_submission.csv"
    classes = read_classes(sample_path.parent) if sample_path.name == "sample_submission.csv" else None
    if classes is None:
        classes = pd.read_csv(sample_path, nrows=0).columns[1:].tolist()
    truth = read_labels_csv(labels_path, classes)
    sub = pd.read_csv(sub_path, dtype={"fname": str})
    check_submission(sub, truth["fname"], classes, source=str(sub_path))
    sub = sub.set_index("fname").loc[truth["fname"]]
    overall, per_class = lwlrap(labels_to_matrix(truth["labels"], classes), sub[classes].to_numpy(np.float64))
    y = labels_to_matrix(truth["labels"], classes)
    ci = interval(y, sub[classes].to_numpy(np.float64))
    result = {
        "lwlrap": overall,
        "lwlrap_ci": [ci["lo"], ci["hi"]],  # 95% bootstrap interval over the clips
        "n_clips": len(truth),
        "per_class": {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, per_class)},
    }
    if json_path:
        atomic_write_json(json_path, {"submission": str(sub_path), "labels": str(labels_path), **result})
    return result


def report(result: dict, out=sys.stdout):
    per = {k: v for k, v in result["per_class"].items() if v is not None}
    worst = sorted(per.items(), key=lambda kv: kv[1])[:5]
    print(f"clips: {result['n_clips']}  classes scored: {len(per)}", file=out)
    print("weakest classes: " + ", ".join(f"{k} {v:.3f}" for k, v in worst), file=out)
    if result.get("lwlrap_ci"):
        lo, hi = result["lwlrap_ci"]
        print(f"95% interval (bootstrap over the clips): [{lo:.4f}, {hi:.4f}]", file=out)
    print(f"lwlrap: {result['lwlrap']:.4f}", file=out)


def main(cfg) -> dict:
    """Score submissions/<run.name>.csv against <data.root>/test_labels.csv."""
    root = Path(cfg.data.root)
    sub = Path("submissions") / f"{cfg.run.name}.csv"
    labels = root / "test_labels.csv"
    if not labels.exists():
        raise DataError(f"{labels}: not found: this dataset has no test labels to score against")
    result = score_files(
        sub, labels, root / "sample_submission.csv", json_path=Path("submissions") / f"{cfg.run.name}.score.json"
    )
    report(result)
    return result


def cli(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.score", description=__doc__.split("\n")[0])
    ap.add_argument("args", nargs="*", help="SUBMISSION.csv LABELS.csv, or key=value overrides with --config")
    ap.add_argument("--json", help="write overall and per-class lwlrap here")
    ap.add_argument("--sample", help="sample_submission.csv fixing the class columns (default: beside LABELS)")
    ap.add_argument("--config", help="score submissions/<run.name>.csv against <data.root>/test_labels.csv")
    a = ap.parse_args(argv)
    overrides = [x for x in a.args if re.match(r"^[A-Za-z_][\w.]*=", x)]
    files = [x for x in a.args if x not in overrides]
    try:
        if len(files) == 2:
            report(score_files(files[0], files[1], a.sample, a.json))
        elif not files and (a.config or overrides):
            from pipeline.config import DEFAULT, load_config

            main(load_config(a.config or DEFAULT, overrides, stage="score"))
        else:
            ap.error("give SUBMISSION.csv LABELS.csv, or --config FILE [key=value ...]")
    except (SubmissionError, DataError, FileNotFoundError) as e:  # a bad submission or input: the user's error
        if os.environ.get("FATTAG_DEBUG"):
            raise
        print(f"fattag score: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from pipeline.utils import user_errors

    with user_errors("score"):
        cli()
