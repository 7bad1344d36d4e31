"""The bad-input suite: what a new user gets wrong, across data, config, checkpoints and submissions.

Each case starts from a copy of one finished tiny run (dataset, feature cache, folds, trained folds, submission),
breaks one thing, and runs a stage's command line in-process (`python -m pipeline.<stage> ...` through runpy, the
path a user takes). It asserts: exit status 2, one `fattag <stage>: error:` line naming the offending file, row or
key (no traceback), and no artifact left behind: no file created or changed except the stage's log.txt (and the
config.yaml it writes beside its outputs before checking inputs), no temporary file.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TRAIN, make_dataset

ALLOWED_NEW = {"log.txt", "config.yaml"}
# runpy warns that the stage module was imported before (by the fixture); running it again as __main__ is the point
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny run in a folder of its own: ds/, cache/, runs/t/{folds,train}, submissions/t.csv, c.yaml."""
    from pipeline import features, folds, infer, train
    from pipeline.config import load_config

    w = tmp_path_factory.mktemp("world")
    make_dataset(w / "ds", n_curated=24, n_noisy=12, n_test=6)
    lines = [
        "inherit: " + str(Path(__file__).resolve().parent.parent / "configs" / "base.yaml"),
        "run: {name: t, workers: 1, progress: false}",
        f"data: {{root: {w / 'ds'}}}",
        f"features: {{cache_dir: {w / 'cache'}, n_mels: 32}}",
        "train: {mode: supervised, init_from: null, epochs: 1, steps_per_epoch: 2}",
    ]
    (w / "c.yaml").write_text("\n".join(lines) + "\n")
    old = os.getcwd()
    os.chdir(w)
    try:

        def cfg(stage):
            return load_config(w / "c.yaml", TINY_TRAIN + ["train.epochs=1"], stage=stage)

        features.main(cfg("features"))
        folds.main(cfg("folds"))
        train.main(cfg("train"))
        infer.main(cfg("infer"))
    finally:
        os.chdir(old)
    return w


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def run_cli(stage: str, args: list[str], capsys) -> tuple[int, str]:
    """`python -m pipeline.<stage> args` in this process; returns (exit status, stderr)."""
    argv = sys.argv
    sys.argv = [f"pipeline/{stage}.py", *args]
    try:
        runpy.run_module(f"pipeline.{stage}", run_name="__main__", alter_sys=False)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


STAGE_ARGS = ["--config", "c.yaml", *TINY_TRAIN, "train.epochs=1"]


def write_csv(path, rows, header="fname,labels"):
    Path(path).write_text(header + "\n" + "".join(r + "\n" for r in rows))


def first_curated(w):
    return pd.read_csv(w / "ds" / "train_curated.csv")["fname"][0]


# Each case: (id, stage, extra args, break(w) -> None, words the message must contain).
# Data: the feature stage reads and checks every CSV and wav.
def _curated_rows(w, edit):
    df = pd.read_csv(w / "ds" / "train_curated.csv", dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(w / "ds" / "train_curated.csv", index=False)


def _sample_header(w, header):
    df = pd.read_csv(w / "ds" / "sample_submission.csv")
    (w / "ds" / "sample_submission.csv").write_text(
        header + "\n" + "\n".join(f"{f}" + ",0" * (header.count(",")) for f in df["fname"]) + "\n"
    )


def _set(df, col, i, value):
    df.loc[i, col] = value


CASES = [
    # ----- data
    ("data root missing", "features", ["data.root=nowhere"], None, ["nowhere"]),
    (
        "sample_submission missing",
        "features",
        [],
        lambda w: (w / "ds/sample_submission.csv").unlink(),
        ["sample_submission.csv", "not found"],
    ),
    (
        "sample_submission header",
        "features",
        [],
        lambda w: _sample_header(w, "file,Bass_drum,Hi-hat"),
        ["sample_submission.csv", "fname"],
    ),
    (
        "duplicate class columns",
        "features",
        [],
        lambda w: _sample_header(w, "fname,Bass_drum,Bass_drum"),
        ["sample_submission.csv", "duplicate", "Bass_drum"],
    ),
    ("curated csv missing", "features", [], lambda w: (w / "ds/train_curated.csv").unlink(), ["train_curated.csv"]),
    (
        "curated csv header only",
        "features",
        [],
        lambda w: write_csv(w / "ds/train_curated.csv", []),
        ["train_curated.csv"],
    ),
    (
        "curated csv without labels column",
        "features",
        [],
        lambda w: _curated_rows(w, lambda df: df.drop(columns="labels", inplace=True)),
        ["train_curated.csv", "labels"],
    ),
    (
        "unknown label",
        "features",
        [],
        lambda w: _curated_rows(w, lambda df: _set(df, "labels", 3, "Kazoo")),
        ["train_curated.csv", "Kazoo"],
    ),
    (
        "duplicate fname",
        "features",
        [],
        lambda w: _curated_rows(w, lambda df: _set(df, "fname", 2, df["fname"][1])),
        ["train_curated.csv", "duplicate"],
    ),
    (
        "fname with a path",
        "features",
        [],
        lambda w: _curated_rows(w, lambda df: _set(df, "fname", 0, "../x.wav")),
        ["train_curated.csv", "../x.wav"],
    ),
    (
        "empty fname",
        "features",
        [],
        lambda w: _curated_rows(w, lambda df: _set(df, "fname", 4, "")),
        ["train_curated.csv"],
    ),
    (
        "missing wav",
        "features",
        [],
        lambda w: (w / "ds/train_curated" / first_curated(w)).unlink(),
        ["train_curated", "missing"],
    ),
    (
        "garbage wav",
        "features",
        [],
        lambda w: (w / "ds/train_curated" / first_curated(w)).write_bytes(b"RIFFjunk"),
        ["train_curated"],
    ),
    (
        "zero-sample wav",
        "features",
        [],
        lambda w: __import__("soundfile").write(
            w / "ds/train_curated" / first_curated(w), np.zeros(0, np.float32), 44100
        ),
        ["train_curated"],
    ),
    (
        "noisy unknown label",
        "features",
        [],
        lambda w: write_csv(
            w / "ds/train_noisy.csv", [f"{pd.read_csv(w / 'ds/train_noisy.csv')['fname'][0]},Theremin"]
        ),
        ["train_noisy.csv", "Theremin"],
    ),
    (
        "test wav missing",
        "features",
        [],
        lambda w: (w / "ds/test" / pd.read_csv(w / "ds/sample_submission.csv")["fname"][2]).unlink(),
        ["test"],
    ),
    # ----- config
    ("unknown key", "train", ["train.epoch=3"], None, ["train.epoch"]),
    ("unknown section", "train", ["trian.epochs=3"], None, ["trian"]),
    ("negative epochs", "train", ["train.epochs=-1"], None, ["train.epochs", "-1"]),
    ("zero batch", "train", ["train.batch_size=0"], None, ["train.batch_size", "0"]),
    ("negative mixup alpha", "train", ["augment.mixup_alpha=-1"], None, ["augment.mixup_alpha"]),
    ("device gpu", "train", ["run.device=gpu"], None, ["run.device", "gpu"]),
    ("unknown mode", "train", ["train.mode=coteaching"], None, ["train.mode", "coteaching"]),
    ("unknown model", "train", ["model.name=resnet9000"], None, ["resnet9000"]),
    ("amp fp8", "train", ["train.amp=fp8"], None, ["train.amp", "fp8"]),
    ("ensemble mean median", "ensemble", ["ensemble.mean=median"], None, ["ensemble.mean", "median"]),
    ("config file missing", "train", ["--config", "nope.yaml"], None, ["nope.yaml"]),
    (
        "yaml syntax",
        "train",
        ["--config", "bad.yaml"],
        lambda w: (w / "bad.yaml").write_text("train: {epochs: 3\n"),
        ["bad.yaml"],
    ),
    ("zero mels", "features", ["features.n_mels=0"], None, ["features.n_mels"]),
    ("negative lr", "train", ["train.lr=-0.1"], None, ["train.lr"]),
    ("one split", "folds", ["folds.n_splits=1"], None, ["folds.n_splits"]),
    ("fold out of range", "train", ["train.folds=[7]"], None, ["train.folds"]),
    ("zero hop", "infer", ["infer.hop=0"], None, ["infer.hop"]),
    ("override without =", "train", ["train.epochs"], None, ["train.epochs"]),
    ("unknown pseudo-label rule", "train", ["teacher_student.rule=vote"], None, ["teacher_student.rule", "vote"]),
    ("probability above 1", "train", ["augment.mixup_prob=1.5"], None, ["augment.mixup_prob"]),
    # ----- checkpoints and earlier stages
    ("init_from missing", "train", ["run.name=u", "train.init_from=gone.pt"], None, ["gone.pt"]),
    (
        "init_from not a checkpoint",
        "train",
        ["run.name=u", "train.init_from=junk.pt"],
        lambda w: (w / "junk.pt").write_bytes(b"not a torch file"),
        ["junk.pt"],
    ),
    (
        "init_from without weights",
        "train",
        ["run.name=u", "train.init_from=dict.pt"],
        lambda w: __import__("torch").save({"something": 1}, w / "dict.pt"),
        ["dict.pt"],
    ),
    ("infer before train", "infer", ["run.name=never"], None, ["runs/never/", "make folds"]),
    ("train before features", "train", ["run.name=u", "features.cache_dir=empty"], None, ["make features"]),
    ("corrupt fold model", "infer", ["infer.tta=false"], lambda w: _corrupt_fold(w), ["best.pt"]),
    ("report before train", "report", ["run.name=never"], None, ["oof.csv", "make train"]),
    # ----- submissions (make score)
    ("submission missing", "score", [], lambda w: (w / "submissions/t.csv").unlink(), ["submissions/t.csv"]),
    (
        "submission columns out of order",
        "score",
        [],
        lambda w: _sub(w, lambda s: s[[s.columns[0], *s.columns[:0:-1]]]),
        ["submissions/t.csv", "out of order"],
    ),
    (
        "submission fname missing",
        "score",
        [],
        lambda w: _sub(w, lambda s: s.iloc[1:]),
        ["submissions/t.csv", "missing"],
    ),
    (
        "submission NaN",
        "score",
        [],
        lambda w: _sub(w, lambda s: s.assign(**{s.columns[2]: np.nan})),
        ["submissions/t.csv", "NaN"],
    ),
    (
        "submission above 1",
        "score",
        [],
        lambda w: _sub(w, lambda s: s.assign(**{s.columns[1]: 3.0})),
        ["submissions/t.csv", "outside [0, 1]"],
    ),
    (
        "submission duplicate fname",
        "score",
        [],
        lambda w: _sub(w, lambda s: pd.concat([s, s.iloc[:1]])),
        ["submissions/t.csv", "duplicate"],
    ),
    ("test labels missing", "score", [], lambda w: (w / "ds/test_labels.csv").unlink(), ["test_labels.csv"]),
]


def _sub(w, edit):
    path = w / "submissions" / "t.csv"
    edit(pd.read_csv(path)).to_csv(path, index=False)


def _corrupt_fold(w):
    for d in (w / "runs/t/infer").glob("fold_*"):
        shutil.rmtree(d)  # inference must read the fold models again
    (w / "runs/t/train/fold_0/best.pt").write_bytes(b"\0" * 100)


def test_the_suite_has_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, stage, extra, breaks, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, monkeypatch, capsys, name, stage, extra, breaks, words):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    monkeypatch.chdir(w)
    monkeypatch.delenv("FATTAG_DEBUG", raising=False)
    if breaks:
        breaks(w)
    before = snapshot(w)
    # features and score read the copy's dataset, which the case may have broken; the other stages read the
    # original one, whose feature cache (named by the dataset's absolute path) they need
    local = ["data.root=ds", "features.cache_dir=cache"] if stage in ("features", "score") else []
    args = [*STAGE_ARGS, *local, *extra]
    if "--config" in extra:  # the case's own config file
        i = args.index("--config")
        del args[i : i + 2]
    code, err = run_cli(stage, args, capsys)
    assert code == 2, f"exit {code}: {err[-1500:]}"
    head = f"fattag {stage}: error: "
    assert head in err and "Traceback" not in err, err[-1500:]
    message = err[err.index(head) :]  # the message (a list of problems takes several lines)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    after = snapshot(w)
    new_or_changed = [p for p, v in after.items() if before.get(p) != v and p.name not in ALLOWED_NEW]
    assert not new_or_changed, f"left behind: {new_or_changed}"
    assert not [p for p in after if p.name.startswith(".") and p not in before], "temporary files left"
