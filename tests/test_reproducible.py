"""The same config and seed give byte-identical results (issue 19, item 4): the tiny chain (features, folds, warmup,
train, infer) run twice through the command line, the second time with CPU-bound processes beside it, two feature
workers instead of one, and training stopped by SIGTERM and resumed. Every checkpoint and its checksum, the folds,
the out-of-fold and test predictions, the submission and the feature cache are compared byte for byte.

What is not covered (README, "Reproducibility"): another torch thread count (train.threads) or another device,
whose float sums run in another order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, make_dataset

from pipeline.utils import ROOT

STAGES = ("features", "folds", "warmup", "train", "infer")
COMPARED = ("*.pt", "*.sha256", "*.csv", "*.f16", "*.index.csv")
NOT_COMPARED = {"metrics.csv"}  # its seconds and data_wait_share columns are timings (the rest is in last.pt)


def command(stage: str, *extra) -> list[str]:
    return [sys.executable, "-m", f"pipeline.{stage}", "--config", "c.yaml", *TINY_TRAIN, "train.steps_per_epoch=6",
            "train.threads=1", *extra]  # fmt: skip


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def setup(folder: Path, data: Path):
    folder.mkdir()
    (folder / "c.yaml").write_text(
        f"inherit: {ROOT / 'configs' / 'base.yaml'}\nrun: {{name: t, workers: 1, progress: false}}\n"
        f"data: {{root: {data}}}\nfeatures: {{cache_dir: cache, n_mels: 32}}\n"
    )


def run(stage: str, cwd: Path, *extra):
    out = subprocess.run(command(stage, *extra), cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def interrupted_train(cwd: Path):
    """make train, stopped by SIGTERM in fold 1's first epoch, then run again to the end."""
    proc = subprocess.Popen(command("train"), cwd=cwd, env=env(), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if re.search(r"fold_1 epoch 1/", line):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "fattag train: interrupted at fold 1" in rest, rest
    run("train", cwd)


def outputs(folder: Path) -> dict:
    found = {}
    for pattern in COMPARED:
        for p in folder.rglob(pattern):
            if p.name not in NOT_COMPARED and not p.name.startswith("."):
                found[str(p.relative_to(folder))] = p.read_bytes()
    return found


@pytest.mark.e2e
def test_same_bytes_under_load_other_workers_and_an_interruption(tmp_path):
    data = make_dataset(tmp_path / "ds", n_curated=24, n_noisy=16, n_test=8)
    quiet, loaded = tmp_path / "quiet", tmp_path / "loaded"
    setup(quiet, data)
    setup(loaded, data)
    for stage in STAGES:
        run(stage, quiet)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(1)]
    try:
        run("features", loaded, "run.workers=2")
        run("folds", loaded)
        run("warmup", loaded)
        interrupted_train(loaded)
        run("infer", loaded)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    want, got = outputs(quiet), outputs(loaded)
    assert any(k.endswith("last.pt") for k in want) and "submissions/t.csv" in want
    assert sorted(got) == sorted(want)
    assert [k for k in want if want[k] != got[k]] == []
