"""The embedded demo dataset: layout, labels, audio format, label noise, determinism and the atomic/no-op build."""

import csv
import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.datasets import demo as dd

LABEL_CSVS = ("train_curated.csv", "train_noisy.csv", "train_noisy_truth.csv", "test_labels.csv")
WAV_DIR = {
    "train_curated.csv": "train_curated",
    "train_noisy.csv": "train_noisy",
    "train_noisy_truth.csv": "train_noisy",
    "test_labels.csv": "test",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return dd.build(tmp_path_factory.mktemp("demo") / "tiny", preset="tiny", seed=0, workers=2, progress=False)


def read_labels(path):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {f: lab.split(",") for f, lab in zip(df["fname"], df["labels"])}


def classes_of(root):
    with open(root / "sample_submission.csv", newline="") as f:
        return next(csv.reader(f))[1:]


def files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(Path(root).rglob("*")) if p.is_file()}


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_layout_headers_and_meta(tiny):
    for split in dd.SPLITS:
        assert (tiny / split).is_dir()
    for name in LABEL_CSVS:
        assert (tiny / name).read_text().splitlines()[0] == "fname,labels"
        assert {p.name for p in (tiny / WAV_DIR[name]).iterdir()} == set(read_labels(tiny / name))
    classes = classes_of(tiny)
    assert classes == sorted(classes) == dd.CLASS_NAMES and len(classes) >= 20
    sub = pd.read_csv(tiny / "sample_submission.csv")
    assert list(sub.columns) == ["fname"] + classes
    assert (sub[classes].to_numpy() == 0).all()
    assert set(sub["fname"]) == set(read_labels(tiny / "test_labels.csv"))
    meta = json.loads((tiny / "demo_meta.json").read_text())
    sizes = {s: dd.PRESETS["tiny"][s] for s in dd.SPLITS}
    assert (meta["preset"], meta["seed"], meta["sizes"], meta["classes"]) == ("tiny", 0, sizes, classes)
    assert meta["version"] == dd.VERSION
    assert {s: len(list((tiny / s).iterdir())) for s in dd.SPLITS} == sizes
    # a multi-label field is one quoted CSV field, as in FSDKaggle2019
    lines = (tiny / "train_curated.csv").read_text().splitlines()[1:]
    multi = [ln for ln in lines if ln.count(",") > 1]
    assert multi and all(re.fullmatch(r'[0-9a-f]{8}\.wav,"[^"]+"', ln) for ln in multi)
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_labels(tiny):
    classes = set(classes_of(tiny))
    for name in LABEL_CSVS:
        for fname, labs in read_labels(tiny / name).items():
            assert 1 <= len(labs) <= 3 and len(set(labs)) == len(labs), (name, fname, labs)
            assert set(labs) <= classes, (name, fname, labs)
    for name in ("train_curated.csv", "test_labels.csv"):  # every class present
        assert set().union(*read_labels(tiny / name).values()) == classes
    # the label-count and length distributions, on a large plan (no audio rendered)
    plan = dd.make_plan(7, {"train_curated": 3000, "train_noisy": 1000, "test": 0}, dd.PRESETS["default"]["lengths"])
    counts = Counter(len(r["labels"]) for r in plan["train_curated"])
    assert abs(counts[1] / 3000 - 0.75) < 0.04 and abs(counts[2] / 3000 - 0.20) < 0.04 and counts[3] > 60
    secs = np.array([r["n"] for r in plan["train_curated"]]) / dd.SR
    assert secs.min() >= 0.3 and secs.max() <= 30 and 3.5 < np.median(secs) < 4.5
    noisy = np.array([r["n"] for r in plan["train_noisy"]]) / dd.SR
    assert 0.75 < np.mean(noisy == 15.0) < 0.95 and noisy.min() >= 1.0


def test_wavs(tiny):
    seen = []
    for split in dd.SPLITS:
        for p in sorted((tiny / split).iterdir()):
            assert re.fullmatch(r"[0-9a-f]{8}\.wav", p.name)
            info = sf.info(str(p))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (44100, 1, "PCM_16", "WAV")
            assert 0.29 * 44100 <= info.frames <= 4.01 * 44100, (p, info.frames)
            x, _ = sf.read(str(p), dtype="float32")
            assert np.abs(x).max() > 0.05 and np.sqrt(np.mean(x**2)) > 1e-3, p
            seen.append(p.name)
    assert len(seen) == len(set(seen))  # unique across splits


@pytest.mark.parametrize("name", dd.CLASS_NAMES)
def test_every_class_renders(name):
    for i, seconds in enumerate((0.3, 1.0, 3.0)):
        x = dd.render_source(name, np.random.default_rng([99, i]), seconds)  # raises on silence
        assert np.isfinite(x).all() and np.abs(x).max() > 0.05 and len(x) >= seconds * dd.SR


def test_noisy_label_corruption(tiny):
    # a moderately large noisy plan: about 40% of the label sets corrupted, each one changed
    plan = dd.make_plan(3, {"train_curated": 0, "train_noisy": 1000, "test": 0}, dd.PRESETS["tiny"]["lengths"])
    rows = plan["train_noisy"]
    assert 0.34 < np.mean([r["corrupted"] for r in rows]) < 0.46
    for r in rows:
        assert r["corrupted"] == (set(r["given"]) != set(r["labels"])) and 1 <= len(r["given"]) <= 3
    # the tiny build: train_noisy.csv differs from the truth exactly on the corrupted rows; the truth is the plan's
    sizes = {s: dd.PRESETS["tiny"][s] for s in dd.SPLITS}
    plan = {r["fname"]: r for r in dd.make_plan(0, sizes, dd.PRESETS["tiny"]["lengths"])["train_noisy"]}
    noisy, truth = read_labels(tiny / "train_noisy.csv"), read_labels(tiny / "train_noisy_truth.csv")
    assert set(noisy) == set(truth) == set(plan)
    differ = {f for f in noisy if set(noisy[f]) != set(truth[f])}
    assert differ == {f for f, r in plan.items() if r["corrupted"]} and differ
    assert all(truth[f] == plan[f]["labels"] for f in truth)
    assert len(differ) == json.loads((tiny / "demo_meta.json").read_text())["stats"]["noisy_corrupted"]


def test_loads_with_the_data_layer(tiny):
    from pipeline.data import load_dataset

    ds = load_dataset(tiny)
    assert ds.classes == dd.CLASS_NAMES and ds.has_test_labels and ds.noisy_truth is not None
    assert (len(ds.curated), len(ds.noisy), len(ds.test)) == (48, 40, 30)


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_rerun_is_a_noop(tiny):
    before = {k: (p.stat().st_mtime_ns, p.stat().st_ino) for k, p in files(tiny).items()}
    inode = tiny.stat().st_ino
    rec = Records()
    log = logging.getLogger("fattag")
    log.addHandler(rec)
    try:
        assert dd.build(tiny, preset="tiny", seed=0, workers=2, progress=False) == tiny
        assert dd.main(["--out", str(tiny), "--preset", "tiny", "--no-progress"]) == 0
    finally:
        log.removeHandler(rec)
    assert sum("nothing to do" in m for m in rec.messages) == 2
    assert {k: (p.stat().st_mtime_ns, p.stat().st_ino) for k, p in files(tiny).items()} == before
    assert tiny.stat().st_ino == inode


def test_determinism_and_replacement(tiny, tmp_path):
    ref = files(tiny)
    # same seed, fresh folder, one worker: byte-identical
    same = dd.build(tmp_path / "same", preset="tiny", seed=0, workers=1, progress=False)
    got = files(same)
    assert got.keys() == ref.keys()
    assert all(got[k].read_bytes() == ref[k].read_bytes() for k in ref)
    # another seed, fresh folder: other fnames, other audio, other labels
    other = files(dd.build(tmp_path / "other", preset="tiny", seed=1, workers=2, progress=False))
    wavs = lambda fs: {k for k in fs if k.endswith(".wav")}  # noqa: E731
    assert not wavs(other) & wavs(ref)
    assert not {digest(p) for k, p in other.items() if k.endswith(".wav")} & {digest(ref[k]) for k in wavs(ref)}
    assert other["train_curated.csv"].read_bytes() != ref["train_curated.csv"].read_bytes()
    # other parameters in an existing build: replaced as a whole
    out = dd.build(
        tmp_path / "same", preset="tiny", seed=2, n_curated=24, n_noisy=3, n_test=2, workers=1, progress=False
    )
    meta = json.loads((out / "demo_meta.json").read_text())
    assert meta["seed"] == 2 and meta["sizes"] == {"train_curated": 24, "train_noisy": 3, "test": 2}
    assert [len(list((out / s).iterdir())) for s in dd.SPLITS] == [24, 3, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "same"]  # no temporary folders left


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("not a demo build")
    with pytest.raises(FileExistsError):
        dd.build(tmp_path / "data", preset="tiny", progress=False)
    assert (tmp_path / "data" / "precious.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_single_label_csv(tiny):
    """single_label.csv: every one-label curated and test clip, its label, 5 folds of near-equal size."""
    sl = pd.read_csv(tiny / "single_label.csv")
    assert list(sl.columns) == ["fname", "label", "fold"]
    expected = {
        f"{split}/{f}": labs[0]
        for name, split in (("train_curated.csv", "train_curated"), ("test_labels.csv", "test"))
        for f, labs in read_labels(tiny / name).items()
        if len(labs) == 1
    }
    assert dict(zip(sl["fname"], sl["label"])) == expected
    sizes = sl["fold"].value_counts()
    assert sorted(sizes.index) == [1, 2, 3, 4, 5] and sizes.max() - sizes.min() <= 1
    assert all((tiny / f).exists() for f in sl["fname"])
