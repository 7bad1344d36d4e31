"""make report: the page's sections from a run's files, notes where inputs are missing, a clear error without a run.
(The whole page in a headless browser: tests/test_e2e.py, after the tiny demo chain.)"""

import os
import re
import subprocess
import sys

import pytest

from pipeline import report, train
from pipeline.utils import ROOT, UserError


def sections(page: str) -> dict:
    """section id -> its inner HTML."""
    return dict(re.findall(r'<section id="([a-z-]+)">(.*?)</section>', page, flags=re.S))


def test_report_without_a_train_stage_names_the_missing_file(prepared, tmp_path):
    with pytest.raises(UserError, match=r"runs/nothing/train/oof\.csv.*make train"):
        report.main(prepared("run.name=nothing"))
    assert not (tmp_path / "runs" / "nothing" / "report.html").exists()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"inherit: {ROOT / 'configs' / 'base.yaml'}\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.report",
            "--config",
            str(cfg_file),
            "run.name=nothing",
            f"data.root={prepared().data.root}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2 and "oof.csv" in run.stderr and "Traceback" not in run.stderr


def test_report_of_a_trained_run_before_inference(prepared, tmp_path):
    cfg = prepared(
        "run.name=r", "train.folds=[0]", "train.mode=teacher_student", "train.steps_per_epoch=2", "train.init_from=null"
    )
    train.main(cfg)
    out = report.main(prepared("run.name=r"))  # described as trained, whatever the current config says
    page = out.read_text()
    got = sections(page)
    assert list(got) == list(report.SECTIONS)
    assert "teacher_student" in got["summary"] and "OOF lwlrap" in got["summary"]
    assert "make infer" in got["per-class"]  # no submission yet: the test bars are explained
    assert got["pseudo-labels"].count("<img") == 1  # teacher-student logs precision and recall
    assert got["hardest"].count("<figure>") == report.HARDEST  # 8 of fold 0's held-out clips, with spectrograms
    assert got["hardest"].count("<img") == report.HARDEST
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_pseudo_label_section_explains_a_mode_without_them(prepared):
    cfg = prepared(
        "run.name=s", "train.mode=supervised", "train.folds=[0]", "train.steps_per_epoch=2", "train.epochs=1"
    )
    train.main(cfg)
    got = sections(report.main(cfg).read_text())
    assert "<img" not in got["pseudo-labels"] and "logs no pseudo-labels" in got["pseudo-labels"]
