"""TensorBoard curves of a fit (pipeline/loggers.py), read back as TensorBoard reads them (its EventAccumulator):
the expected tags at the expected steps, a resumed fit with each step once and the values of an uninterrupted one,
nothing written with train.tensorboard false, and an old config's curves kept aside."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import pipeline.engine.loop as loop  # train_epoch calls its train_step
from pipeline import loggers
from pipeline.config import load_config
from pipeline.engine import build_model, fit, make_clipset

STEPS, EPOCHS = 4, 3
BASE = [
    "model.params={width: 0.125}",
    f"train.epochs={EPOCHS}",
    f"train.steps_per_epoch={STEPS}",
    "train.batch_size=4",
    "train.frames=32",
    "train.eval_hop=16",
    "run.progress=false",
    "train.lr_warmup_epochs=0",
    "train.threads=1",
]
CLASSES = ["a", "b"]
FOLD = Path("runs/tb/train/fold_0")  # a fit in runs/<run>/: its curves go to runs/<run>/tb/train/fold_0


def curves(folder) -> dict:
    """{tag: [(step, value), ...]} of the scalars in `folder`, as TensorBoard shows them (every event kept)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_steps(folder, tag: str) -> list[int]:
    """Every event of `tag` in the files, purged or not."""
    return [
        e.step
        for f in sorted(Path(folder).glob("events.out.tfevents.*"))
        for e in EventFileLoader(str(f)).Load()
        for v in e.summary.value
        if v.tag == tag
    ]


def fit_in(out, fake_clips, *overrides, mode="supervised"):
    cfg = load_config(None, ["run.name=tb", f"train.mode={mode}", *BASE, *overrides])
    clips = fake_clips([["a"], ["b"], ["a", "b"], ["b"]] * 2, CLASSES)
    unlabelled = None
    if mode != "supervised":  # unlabelled clips whose true labels the pseudo-label figures are measured against
        df = pd.DataFrame({"fname": [str(i) for i in range(8)], "labels": [["a"], ["b"], ["a", "b"], ["b"]] * 2})
        unlabelled = make_clipset(clips.caches[0], df, CLASSES, truth_df=df)
    model = build_model(cfg, len(CLASSES), seed=0, dropout=0.2 if mode != "supervised" else None)
    return fit(cfg, out, model, mode, CLASSES, clips, unlabelled, val=clips)


def test_a_fit_writes_its_curves_step_by_step_and_epoch_by_epoch(fake_clips):
    fit_in(FOLD, fake_clips)
    got = curves("runs/tb/tb/train/fold_0")
    every = list(range(1, STEPS * EPOCHS + 1))
    ends = [STEPS * (e + 1) for e in range(EPOCHS)]
    for tag in ("train/loss", "train/lr"):
        assert [s for s, _ in got[tag]] == every, tag
    terms = [t for t in got if t.startswith("train/loss_")]
    assert terms, sorted(got)  # the loss's terms (focal, ArcFace) each on their own
    h = pd.read_csv(FOLD / "metrics.csv")
    for tag, column in (("val/lwlrap", "val_lwlrap"), ("epoch/loss", "loss"), ("speed/data_wait_share", None)):
        assert [s for s, _ in got[tag]] == ends, tag
        if column:
            assert [v for _, v in got[tag]] == pytest.approx(h[column].tolist(), rel=1e-6), tag
    speed = got["speed/samples_per_second"]
    assert [s for s, _ in speed] == ends and all(v > 0 for _, v in speed)
    acc = EventAccumulator("runs/tb/tb/train/fold_0")
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config, as text


def test_a_mode_with_pseudo_labels_logs_their_quality(fake_clips):
    fit_in(FOLD, fake_clips, mode="pseudo_label")
    got = curves("runs/tb/tb/train/fold_0")
    pl = sorted(t for t in got if t.startswith("pseudo_labels/"))
    h = pd.read_csv(FOLD / "metrics.csv")  # every pl_* column with numbers (precision is NaN while none is picked)
    assert pl == sorted("pseudo_labels/" + c[3:] for c in h.columns if c.startswith("pl_") and h[c].notna().all())
    assert {"pseudo_labels/recall", "pseudo_labels/kept"} <= set(pl), pl
    assert all([s for s, _ in got[t]] == [STEPS * (e + 1) for e in range(EPOCHS)] for t in pl)


def test_a_resumed_fit_shows_each_step_once_with_the_uninterrupted_values(fake_clips, monkeypatch):
    fit_in(Path("runs/tb/train/fold_1"), fake_clips)
    want = curves("runs/tb/tb/train/fold_1")

    class Killed(Exception):
        pass

    real = loop.train_step

    def dies_in_epoch_3(run, batch, epoch, s, sums):  # after epoch 2's last.pt and 2 steps of epoch 3
        if epoch == 2 and s == 2:
            raise Killed
        real(run, batch, epoch, s, sums)

    monkeypatch.setattr(loggers, "STEPS_PER_WRITE", 1)  # the killed run's steps 9, 10 reach the files
    monkeypatch.setattr(loop, "train_step", dies_in_epoch_3)
    with pytest.raises(Killed):
        fit_in(FOLD, fake_clips)
    monkeypatch.setattr(loop, "train_step", real)
    assert raw_steps("runs/tb/tb/train/fold_0", "train/loss") == list(range(1, 11))
    fit_in(FOLD, fake_clips)  # resumes from epoch 2's last.pt
    assert raw_steps("runs/tb/tb/train/fold_0", "train/loss").count(9) == 2  # written twice, shown once:
    got = curves("runs/tb/tb/train/fold_0")
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # each step once, none missing
        if not tag.startswith("speed/"):
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def test_tensorboard_off_writes_nothing_and_another_config_keeps_the_old_curves(fake_clips):
    fit_in(FOLD, fake_clips, "train.tensorboard=false")
    assert not Path("runs/tb/tb").exists() and (FOLD / "done.json").exists()
    fit_in(Path("runs/tb/train/fold_2"), fake_clips)
    fit_in(Path("runs/tb/train/fold_2"), fake_clips, "train.lr=0.01")  # another config: trained from the start
    kept = list(Path("runs/tb/tb/train").glob("fold_2.*"))
    assert len(kept) == 1 and len(curves(kept[0])["train/loss"]) == STEPS * EPOCHS
    assert len(curves("runs/tb/tb/train/fold_2")["train/loss"]) == STEPS * EPOCHS
