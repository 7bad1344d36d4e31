import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.data import load_dataset
from pipeline.score import SubmissionError, check_submission, score_files
from pipeline.utils import ROOT


def perfect_submission(dataset, path):
    ds = load_dataset(dataset)
    sub = pd.DataFrame(ds.targets(ds.test), columns=ds.classes)
    sub.insert(0, "fname", ds.test["fname"])
    sub.to_csv(path, index=False)
    return sub


def test_cli_scores_and_prints_last_line(dataset, tmp_path):
    perfect_submission(dataset, tmp_path / "sub.csv")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.score",
            str(tmp_path / "sub.csv"),
            str(dataset / "test_labels.csv"),
            "--json",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "lwlrap: 1.0000"
    assert "per_class" in (tmp_path / "s.json").read_text()


def test_random_submission_scores_below_one(dataset, tmp_path):
    sub = perfect_submission(dataset, tmp_path / "sub.csv")
    sub[sub.columns[1:]] = np.random.default_rng(0).random((len(sub), len(sub.columns) - 1))
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert score_files(tmp_path / "sub.csv", dataset / "test_labels.csv")["lwlrap"] < 1.0


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda s: s.drop(index=0), "1 fname\\(s\\) missing"),
        (lambda s: s.assign(Hi_hat=0.0), "unexpected \\['Hi_hat'\\]"),
        (lambda s: s[["fname"] + list(s.columns[1:][::-1])], "out of order: column 2 is 'Zipper_\\(clothing\\)'"),
        (lambda s: s.assign(Bass_drum=np.nan), "NaN/Inf"),
        (lambda s: s.assign(Bass_drum=1.5), "outside \\[0, 1\\]"),
        (lambda s: pd.concat([s, s.iloc[:1]]), "duplicate fname"),
        (lambda s: s.drop(columns=["Hi-hat"]), "missing \\['Hi-hat'\\]"),
    ],
)
def test_submission_checks_name_problem(dataset, tmp_path, mutate, msg):
    sub = mutate(perfect_submission(dataset, tmp_path / "sub.csv"))
    ds = load_dataset(dataset)
    with pytest.raises(SubmissionError, match=msg):
        check_submission(sub, ds.test["fname"], ds.classes)


def test_cli_reports_bad_submission(dataset, tmp_path):
    perfect_submission(dataset, tmp_path / "sub.csv").drop(index=1).to_csv(tmp_path / "sub.csv", index=False)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.score", str(tmp_path / "sub.csv"), str(dataset / "test_labels.csv")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "missing" in out.stderr and "Traceback" not in out.stderr
