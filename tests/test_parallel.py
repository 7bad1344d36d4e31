"""Fold-parallel runs: processes that each train their own folds of one run share its warm-up and its summary."""

import json
import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipeline import summary, warmup
from pipeline.config import BASE
from pipeline.folds import read_folds
from pipeline.utils import ROOT, UserError, file_lock, run_dir

RUN = [
    "run.name=par",
    "train.mode=supervised",
    "train.init_from=warmup",
    "train.epochs=1",
    "warmup.epochs=1",
    "train.steps_per_epoch=2",
    "train.threads=1",
]


def _wait_for(path, text, count, procs, timeout=120):
    """Until `path` holds `text` `count` times; fails early when a process exits first."""
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text().count(text) >= count):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a process ended before it waited for the warm-up:\n{p.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"{path}: '{text}' not seen {count} times in {timeout} s"
        time.sleep(0.2)


def test_two_fold_processes_share_one_warmup_and_one_summary(prepared, tmp_path):
    cfg = prepared(*RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)

    def start(k):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.train",
                "--config",
                str(BASE),
                *cfg["_meta"]["overrides"],
                f"train.folds=[{k}]",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    wlog = run_dir(cfg, "warmup") / "log.txt"
    with file_lock(warmup.lock_path(cfg)):  # hold the warm-up back until both processes wait for it
        procs = [start(0), start(1)]
        _wait_for(wlog, "waiting for the warm-up", 2, procs)
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "OOF lwlrap" in out
    text = wlog.read_text()
    assert text.count("warm-up on ") == 1 and text.count("warm-up already done") == 1  # trained once
    out = run_dir(cfg, "train")
    got = json.loads((out / "summary.json").read_text())
    assert got["folds"] == [0, 1]  # whichever process finished last saw both folds
    folds = read_folds(cfg)
    want = folds.loc[folds["fold"].isin([0, 1]), "fname"]
    oof = pd.read_csv(out / "oof.csv", dtype={"fname": str})
    assert sorted(oof["fname"]) == sorted(want) and got["n_clips"] == len(want)
    train_log = (out / "log.txt").read_text()
    assert train_log.count("initialised ") == 2  # each fold's model started from the warm-up
    assert all(f"fold {k}: " in train_log and (out / f"fold_{k}" / "done.json").exists() for k in (0, 1))

    # `make summary` rebuilds the same files from the fold folders
    before = {name: (out / name).read_bytes() for name in ("summary.json", "oof.csv")}
    for name in before:
        (out / name).unlink()
    assert summary.main(cfg)["folds"] == [0, 1]
    assert before == {name: (out / name).read_bytes() for name in before}
    # folds trained with other settings are not this config's: named, and the files are left alone
    with pytest.raises(UserError, match="fold_0, fold_1 are unfinished or were trained with other settings"):
        summary.main(prepared(*RUN, "train.lr=0.5"))
    assert before == {name: (out / name).read_bytes() for name in before}


def test_two_processes_given_the_same_fold_train_it_once(prepared, tmp_path):
    """`make train` started twice on one run: the fold's lock makes the second wait, then find the fold done."""
    cfg = prepared(*RUN, "train.init_from=null")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    out = run_dir(cfg, "train")
    with file_lock(out / "fold_0" / ".fold.lock"):  # hold fold 0 back until both processes wait for it
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.train",
                    "--config",
                    str(BASE),
                    *cfg["_meta"]["overrides"],
                    "train.folds=[0]",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        _wait_for(out / "log.txt", "waiting for fold 0", 2, procs)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    log = (out / "log.txt").read_text()
    assert len(re.findall(r"fold 0: \d+ labelled", log)) == 1  # trained once, by one of them
    assert (out / "fold_0" / "done.json").exists() and log.count("OOF lwlrap") == 2


def test_summary_without_a_run_names_the_folder(prepared):
    with pytest.raises(UserError, match=r"runs/none/train: no fold finished for this config; run `make train`"):
        summary.main(prepared("run.name=none"))
