"""The whole chain on the tiny demo preset, as `make demo` runs it, with one-epoch overrides."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import features, folds, infer, report, train, warmup
from pipeline.config import CONFIG_DIR, load_config
from pipeline.datasets import demo as demo_data
from pipeline.utils import ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return demo_data.build(tmp_path_factory.mktemp("demo") / "tiny", preset="tiny", workers=2, progress=False)


@pytest.mark.e2e
def test_whole_chain_on_tiny_demo(tiny, tmp_path, capsys, browser_dom):
    root = tiny
    ov = [
        f"data.root={root}",
        f"features.cache_dir={tmp_path / 'cache'}",
        "run.name=e2e",
        "run.progress=false",
        "train.epochs=1",
        "train.full=true",
        "model.params={width: 0.125}",
        "train.batch_size=16",
        "teacher_student.n_curated=8",
        "teacher_student.n_noisy=16",
        "train.frames=64",
        "train.mode=teacher_student",
        "train.steps_per_epoch=0",
    ]

    def cfg(stage):
        return load_config(CONFIG_DIR / "demo.yaml", ov, stage=stage)

    features.main(cfg("features"))
    folds.main(cfg("folds"))
    warmup.main(cfg("warmup"))
    res = train.main(cfg("train"))  # teacher_student from the warm-up
    assert cfg("train").train.mode == "teacher_student" and 0 <= res["oof_lwlrap"] <= 1
    metrics = pd.read_csv(Path("runs/e2e/train/fold_0/metrics.csv"))
    assert {"pl_precision", "pl_recall", "pl_kept", "loss_g", "loss_h"} <= set(metrics.columns)
    out = infer.main(cfg("infer"))
    sub_path = Path("submissions/e2e.csv")
    assert out["submission"] == sub_path and sub_path.exists()
    sub = pd.read_csv(sub_path)
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["fname"]) == list(sample["fname"])
    meta = json.loads(Path("submissions/e2e.json").read_text())
    assert meta["n_models"] == 4 and "oof_per_class" in meta and "test_lwlrap" in meta  # 3 folds + full
    # the exported inference model drops g and the ArcFace weights
    assert Path("runs/e2e/infer/fold_0/model.pt").stat().st_size < Path("runs/e2e/train/fold_0/best.pt").stat().st_size
    # the submission passes the scorer, which prints the lwlrap last
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.score", str(sub_path.resolve()), str(root / "test_labels.csv")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("lwlrap: ") and abs(float(last.split()[1]) - meta["test_lwlrap"]) < 1e-4
    # the report: every section on the page, every inline image decoded by the browser
    page = browser_dom(report.main(cfg("report")))
    assert re.search(r'<body data-sections="6" data-images="(\d+)" data-images-ok="\1"', page), page[:300]
    for sid in report.SECTIONS:
        assert re.search(rf'<section id="{sid}"><h2>[^<]+</h2>\s*(<img|<table|<p|<div)', page), sid
    assert "test lwlrap [95% interval]</th><td>0." in page  # the submission scored against test_labels.csv
    # a rerun of every stage is a no-op
    before = {p: p.stat().st_mtime_ns for p in Path("runs/e2e").rglob("*.pt")}
    features.main(cfg("features"))
    train.main(cfg("train"))
    infer.main(cfg("infer"))
    assert before == {p: p.stat().st_mtime_ns for p in Path("runs/e2e").rglob("*.pt")}


@pytest.mark.e2e
def test_single_label_clips_of_the_demo_set(tiny, tmp_path, capsys):
    """configs/demo_single.yaml on the demo set's single_label.csv: its 5 folds, softmax, accuracy and AUC."""
    ov = [
        f"data.root={tiny}",
        f"features.cache_dir={tmp_path / 'cache'}",
        "run.progress=false",
        "train.epochs=1",
        "model.params={width: 0.125}",
        "train.batch_size=16",
        "train.frames=64",
    ]

    def cfg(stage, *more):
        return load_config(CONFIG_DIR / "demo_single.yaml", [*ov, *more], stage=stage)

    csv = pd.read_csv(tiny / "single_label.csv")
    features.main(cfg("features"))
    res = train.main(cfg("train"))
    got = pd.read_csv("runs/demo_single/folds/folds.csv")
    assert got["fname"].tolist() == csv["fname"].tolist() and got["given_fold"].tolist() == csv["fold"].tolist()
    assert len(res["fold_accuracy"]) == 5 and res["n_clips"] == len(csv) and 0 <= res["oof_accuracy"] <= 1
    assert "OOF accuracy" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no test split"):
        infer.main(cfg("infer"))
