"""Shared fixtures: a small synthetic dataset in the FSDKaggle2019 layout (tones per class), written in a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

CLASSES = ["Bass_drum", "Church_bell", "Hi-hat", "Marimba_and_xylophone", "Zipper_(clothing)"]


def tone(cls_idx, seconds, sr, rng):
    t = np.arange(int(seconds * sr)) / sr
    f = 220.0 * 2 ** (cls_idx * 0.5)
    return 0.3 * np.sin(2 * np.pi * f * t) * rng.uniform(0.5, 1.0)


def make_dataset(root, n_curated=20, n_noisy=10, n_test=8, sr=44100, seed=0, classes=CLASSES):
    """Write a tiny FSDKaggle2019-layout dataset; returns its root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    k = 0

    def clips(split, n, with_labels=True):
        nonlocal k
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            labs = sorted(set(rng.choice(len(classes), size=1 + (i % 4 == 0), replace=False).tolist()))
            if i < len(classes) and split == "train_curated":
                labs = [i]  # every class present
            secs = rng.uniform(0.5, 2.5)
            y = sum(tone(c, secs, sr, rng) for c in labs) + 0.01 * rng.standard_normal(int(secs * sr))
            fname = f"{k:08x}.wav"
            k += 1
            sf.write(root / split / fname, y.astype(np.float32), sr, subtype="PCM_16")
            rows.append((fname, ",".join(classes[c] for c in labs)))
        return pd.DataFrame(rows, columns=["fname", "labels"])

    clips("train_curated", n_curated).to_csv(root / "train_curated.csv", index=False)
    clips("train_noisy", n_noisy).to_csv(root / "train_noisy.csv", index=False)
    test = clips("test", n_test)
    test.to_csv(root / "test_labels.csv", index=False)
    sub = pd.DataFrame(0.0, index=range(n_test), columns=classes)
    sub.insert(0, "fname", test["fname"])
    sub.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def cfg_for(tmp_path):
    """cfg_for(root, *overrides): a base config pointed at root, with cache and runs under tmp_path."""
    from pipeline.config import load_config

    def make(root, *overrides, stage=None, config=None):
        return load_config(
            config,
            [
                f"data.root={root}",
                f"features.cache_dir={tmp_path / 'cache'}",
                "run.workers=1",
                "run.progress=false",
                "features.n_mels=32",
                *overrides,
            ],
            stage=stage,
        )

    return make


@pytest.fixture(autouse=True)
def _chdir(tmp_path, monkeypatch):
    """Stages write runs/ and submissions/ relative to the working directory: keep them in tmp."""
    monkeypatch.chdir(tmp_path)


TINY_TRAIN = [
    "model.params={width: 0.125}",
    "train.epochs=2",
    "warmup.epochs=1",
    "train.frames=32",
    "train.batch_size=8",
    "folds.n_splits=3",
    "train.eval_hop=16",
    "infer.hop=16",
    "teacher_student.n_curated=4",
    "teacher_student.n_noisy=8",
]


@pytest.fixture
def prepared(tmp_path, cfg_for):
    """A tiny dataset with its feature cache and folds; returns make(*overrides, stage=None) -> cfg."""
    from pipeline import features, folds

    root = make_dataset(tmp_path / "ds", n_curated=24, n_noisy=16)

    def make(*overrides, stage=None):
        return cfg_for(root, *TINY_TRAIN, *overrides, stage=stage)

    features.main(make())
    folds.main(make())
    return make


class FakeCache:
    """A FeatureCache stand-in: n random (32 mel, frames) clips named '0'..'n-1'."""

    def __init__(self, n, frames=40, seed=0):
        self.x = np.random.default_rng(seed).standard_normal((n, 32, frames)).astype(np.float32)
        self.frames = np.full(n, frames)

    def position(self, f):
        return int(f)

    def get(self, i, start=0, length=None):
        return self.x[i][:, start : None if length is None else start + length]


@pytest.fixture
def fake_clips():
    """fake_clips(labels, classes) -> a ClipSet over a FakeCache, one clip per label list: fit tests without data."""
    from pipeline.engine import make_clipset

    def make(labels, classes):
        df = pd.DataFrame({"fname": [str(i) for i in range(len(labels))], "labels": list(labels)})
        return make_clipset(FakeCache(len(labels)), df, classes)

    return make


BROWSERS = ("chromium-headless-shell", "chromium")


@pytest.fixture
def browser_dom():
    """browser_dom(html_path) -> the page's DOM after load, as Debian's headless Chromium renders it (scripts run).
    Skipped where no Chromium is installed, except in CI (CI=true), where `make test` installs it."""
    import shutil
    import subprocess

    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("no headless Chromium: `make test` installs chromium-headless-shell with apt-get (as root)")
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")

    def dom(path) -> str:
        run = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=5000",
                "--dump-dom",
                Path(path).resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    return dom
