"""Interrupted = uninterrupted: each stage (features, warmup, train, infer, ensemble) killed with -9 at a random
point of its run, then run again, leaves exactly what an uninterrupted run leaves: byte-identical caches,
predictions and submissions, and (training on the CPU) identical weights.

A reference chain runs once, uninterrupted, through the command line. Each test starts from a copy of the
reference's inputs to its stage (the outputs of the stages before it), starts the stage's command line, and once
the stage has started its work kills it with SIGKILL after a random share of the reference's duration of that
stage (seeded by FATTAG_KILL_SEED; the delay is printed; a run that finished first is started again with a shorter
delay). Then it runs the stage again to the end and compares the outputs with the reference's.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_TRAIN, make_dataset

from pipeline.utils import ROOT

STAGES = ("features", "warmup", "train", "infer", "ensemble")
# what each stage reads from the stages before it (copied from the reference) and what it writes (compared)
INPUTS = {
    "features": [],
    "warmup": ["cache"],
    "train": ["cache", "runs/t/warmup"],
    "infer": ["cache", "runs/t/warmup", "runs/t/folds", "runs/t/train"],
    "ensemble": ["cache", "runs/t/warmup", "runs/t/folds", "runs/t/train", "runs/t/infer"],
}
OUTPUTS = {
    "features": ["cache"],
    "warmup": ["runs/t/warmup"],
    "train": ["runs/t/folds", "runs/t/train"],
    "infer": ["runs/t/infer", "submissions"],
    "ensemble": ["submissions"],
}
NOT_COMPARED = {"log.txt", "curves.png"}  # timestamps; a figure's bytes (its data is in metrics.csv)
CURVES = {"warmup": "runs/t/tb/warmup", "train": "runs/t/tb/train"}  # TensorBoard's, compared as it reads them
TIMING_COLUMNS = {"seconds", "data_wait_share"}


def command(stage: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        f"pipeline.{stage}",
        "--config",
        "c.yaml",
        *TINY_TRAIN,
        "train.steps_per_epoch=6",
        "train.threads=1",
    ]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FATTAG_DEBUG": "1"}


def run(stage: str, cwd: Path) -> float:
    t = time.time()
    out = subprocess.run(command(stage), cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return time.time() - t


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(folder of the uninterrupted chain, seconds each stage took there)."""
    base = tmp_path_factory.mktemp("interrupted")
    make_dataset(base / "ds", n_curated=24, n_noisy=16, n_test=8)
    ref = base / "ref"
    ref.mkdir()
    (ref / "c.yaml").write_text(
        f"inherit: {ROOT / 'configs' / 'base.yaml'}\n"
        f"run: {{name: t, workers: 1, progress: false}}\n"
        f"data: {{root: {base / 'ds'}}}\nfeatures: {{cache_dir: cache, n_mels: 32}}\n"
    )
    seconds = {stage: run(stage, ref) for stage in STAGES}
    return ref, seconds


def later(p: Path) -> bool:
    """Written into the feature cache's folder by a later stage (folds' audio grouping), not by features."""
    return p.name.startswith("audio_groups-")


def files(folder: Path, parts) -> dict:
    out = {}
    for part in parts:
        for p in sorted((folder / part).rglob("*")):
            if p.is_file() and p.name not in NOT_COMPARED and not p.name.endswith(".lock") and not later(p):
                out[str(p.relative_to(folder))] = p
    return out


def same_state(x, y) -> bool:
    """Equal nested checkpoint contents: tensors element for element, everything else by value."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same_state(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same_state(a, b) for a, b in zip(x, y))
    return x == y


def same_content(a: Path, b: Path) -> bool:
    if a.suffix == ".pt":  # weights, optimiser, scheduler, RNG states: all equal
        x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))  # plain data only
        skip = {"history", "source"}  # timings per epoch; the path it was exported from
        return same_state({k: v for k, v in x.items() if k not in skip}, {k: v for k, v in y.items() if k not in skip})
    if a.name == "metrics.csv":  # every column but the timings
        x, y = (pd.read_csv(p) for p in (a, b))
        keep = [c for c in x.columns if c not in TIMING_COLUMNS]
        return list(x.columns) == list(y.columns) and x[keep].equals(y[keep])
    return a.read_bytes() == b.read_bytes()


# a file that shows the stage has started its work (None: the process start)
STARTED = {
    "features": "cache",
    "warmup": "runs/t/warmup/config.yaml",
    "train": "runs/t/train/config.yaml",
    "infer": "runs/t/infer",
    "ensemble": None,
}


def kill_while_running(stage: str, ref: Path, work: Path, seconds: float, rng: random.Random) -> float:
    """Start the stage in a fresh copy of its inputs and SIGKILL it at a random point after it started its work;
    a run that finished first is started again with a shorter delay. Returns the delay."""
    for attempt in range(5):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        shutil.copy(ref / "c.yaml", work)
        for part in INPUTS[stage]:
            shutil.copytree(ref / part, work / part)
        delay = rng.uniform(0.0, 0.7) * seconds * 0.5**attempt
        proc = subprocess.Popen(
            command(stage), cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        marker = STARTED[stage]
        while marker and not (work / marker).exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return delay
        proc.wait()
    pytest.fail(f"{stage} finished before every kill")


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_rerun_equals_uninterrupted(reference, tmp_path, stage):
    ref, seconds = reference
    work = tmp_path / "w"
    rng = random.Random(f"{stage}-{os.environ.get('FATTAG_KILL_SEED', '0')}")
    delay = kill_while_running(stage, ref, work, seconds[stage], rng)
    print(f"{stage}: killed {delay:.2f} s after it started its work (the reference took {seconds[stage]:.2f} s)")
    run(stage, work)
    want, got = files(ref, OUTPUTS[stage]), files(work, OUTPUTS[stage])
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    differ = [k for k in want if not same_content(want[k], got[k])]
    assert not differ, f"{stage}: differs from the uninterrupted run: {differ}"
    assert not [k for k in got if Path(k).name.startswith(".")], "temporary files left"
    if stage in CURVES:  # every step once, as TensorBoard shows them, with the uninterrupted run's values
        want, got = curves(ref / CURVES[stage]), curves(work / CURVES[stage])
        assert sorted(got) == sorted(want)
        for key in want:
            assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
            assert key[1].startswith("speed/") or got[key] == want[key], key


def curves(folder: Path) -> dict:
    """{(TensorBoard run, tag): [(step, value)]} of the event files under folder, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run_dir in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[(str(run_dir.relative_to(folder)), tag)] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


# temporary names a writer killed mid-write leaves (pipeline.utils.atomic_path: .<stem>.tmp-<8 random><suffix>)
LEFT_BY_A_KILL = {
    "train": ["runs/t/train/fold_0/.last.tmp-k1ll3d00.pt", "runs/t/train/fold_1/.metrics.tmp-k1ll3d00.csv"],
    "infer": ["runs/t/infer/fold_0/.test.tmp-k1ll3d00.csv", "runs/t/infer/fold_2/.model.tmp-k1ll3d00.pt"],
    "ensemble": ["submissions/.t.tmp-k1ll3d00.csv", "submissions/.t.tmp-k1ll3d00.json"],
}


@pytest.mark.parametrize("stage", sorted(LEFT_BY_A_KILL))
def test_next_run_reclaims_what_a_killed_writer_left(reference, tmp_path, stage):
    ref, _ = reference
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(ref / "c.yaml", work)
    for part in INPUTS[stage]:
        shutil.copytree(ref / part, work / part)
    for part in OUTPUTS[stage]:  # a finished run, except the folds it must redo
        if not (work / part).exists():
            shutil.copytree(ref / part, work / part)
    for name in LEFT_BY_A_KILL[stage]:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(b"half written")
        done = (work / name).parent / "done.json"
        if stage != "ensemble":
            done.unlink()  # the killed fold is unfinished
    run(stage, work)
    left = [n for n in LEFT_BY_A_KILL[stage] if (work / n).exists()]
    assert not left, f"{stage} left {left}"


def test_kill_between_done_and_oof_and_a_stale_oof(prepared):
    """A fold killed after done.json but before its oof.csv gets the oof.csv on the rerun; an earlier config's
    oof.csv in a fold that trains again is never pooled with the new model."""
    from pipeline import train

    cfg = prepared("train.mode=supervised", "train.init_from=null", "train.steps_per_epoch=2", "train.epochs=1")
    first = train.main(cfg)
    fold0 = Path("runs/base/train/fold_0")
    want = (fold0 / "oof.csv").read_bytes()
    (fold0 / "oof.csv").unlink()  # as if killed between done.json and oof.csv
    again = train.main(cfg)
    assert (fold0 / "oof.csv").read_bytes() == want and again["oof_lwlrap"] == first["oof_lwlrap"]
    # another config: fold 0 trains again; its old oof.csv (stale) must not survive the kill of the new run
    cfg2 = prepared(
        "train.mode=supervised",
        "train.init_from=null",
        "train.steps_per_epoch=2",
        "train.epochs=1",
        "train.lr=0.01",
        "train.folds=[0]",
    )
    import pipeline.engine as engine

    real = engine.fit

    def killed(*a, **k):
        raise KeyboardInterrupt  # dies while training the new config

    engine.fit, train.fit = killed, killed
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(cfg2)
    finally:
        engine.fit, train.fit = real, real
    assert not (fold0 / "oof.csv").exists()
