"""Errors a user causes print one line and exit with status 2 (FATTAG_DEBUG=1: the traceback); bugs keep theirs."""

import os
import subprocess
import sys

import pytest

from pipeline.utils import ROOT, UserError, user_errors


def run_stage(*args, debug=False):
    env = {k: v for k, v in os.environ.items() if k != "FATTAG_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    if debug:
        env["FATTAG_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, named",
    [
        (("pipeline.train", "--config", "configs/demo.yaml", "train.epochs=-1"), "train.epochs = -1"),
        (("pipeline.features", "--config", "configs/demo.yaml", "data.root=/nonexistent"), "data.root /nonexistent"),
        (("pipeline.score", "--config", "configs/demo.yaml", "ensemble.mean=median"), "ensemble.mean = 'median'"),
    ],
)
def test_user_error_is_one_line_and_status_2(args, named):
    out = run_stage(*args)
    assert out.returncode == 2, out.stderr
    assert f"fattag {args[0].split('.')[1]}: error: " in out.stderr and named in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback():
    out = run_stage("pipeline.train", "--config", "configs/demo.yaml", "train.epochs=-1", debug=True)
    assert out.returncode != 0 and "Traceback" in out.stderr and "train.epochs = -1" in out.stderr


@pytest.mark.parametrize(
    "error",
    [
        UserError("data.root x: no such folder"),
        FileNotFoundError("runs/x: no completed folds; run `make folds`"),
        ValueError("train.folds: [7] outside 0..4"),
        ValueError("config key augment.albumentations[0]: no name"),
    ],
)
def test_user_errors_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv("FATTAG_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e, user_errors("train"):
        raise error
    assert e.value.code == 2
    assert capsys.readouterr().err == f"fattag train: error: {error}\n"


@pytest.mark.parametrize(
    "error",
    [KeyError("epoch"), ValueError("need at least one array to concatenate"), RuntimeError("CUDA out of memory")],
)
def test_bugs_propagate(error, monkeypatch):
    monkeypatch.delenv("FATTAG_DEBUG", raising=False)
    with pytest.raises(type(error)), user_errors("train"):
        raise error


def test_debug_reraises_user_errors(monkeypatch):
    monkeypatch.setenv("FATTAG_DEBUG", "1")
    with pytest.raises(UserError), user_errors("train"):
        raise UserError("x")
