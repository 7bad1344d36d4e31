"""The resume key: performance knobs do not restart a fold; a real change does, names the keys that changed, and
keeps the old run's last.pt beside the new one."""

import logging

import pandas as pd

from pipeline.config import load_config
from pipeline.engine import build_model, changed_keys, fit, load_checkpoint, train_key
from pipeline.utils import save_torch

BASE = [
    "model.params={width: 0.125}",
    "train.epochs=2",
    "train.batch_size=4",
    "train.steps_per_epoch=1",
    "train.frames=32",
    "train.eval_hop=16",
    "run.progress=false",
    "train.lr_warmup_epochs=0",
    "train.mode=supervised",
]


def test_performance_knobs_stay_out_of_the_key():
    cfg = load_config(None, BASE)
    for knob in (
        "train.threads=1",
        "train.amp=off",
        "train.channels_last=false",
        "train.compile=true",
        "train.eval_every=2",
        "train.tensorboard=false",
        "train.folds=[1]",
    ):
        assert train_key(load_config(None, [*BASE, knob])) == train_key(cfg), knob
    assert train_key(load_config(None, [*BASE, "train.lr=0.01"])) != train_key(cfg)
    assert changed_keys(cfg, load_config(None, [*BASE, "train.lr=0.01", "train.threads=1"])) == ["train.lr"]


def test_warmup_key_leaves_out_what_the_warmup_does_not_read():
    def warm(*ov):
        return train_key(load_config(None, [*BASE, *ov], stage="warmup"))

    for unused in (
        "teacher_student.n_curated=7",
        "folds.n_splits=3",
        "train.mode=fixmatch",
        "ssl.fixmatch={tau_pos: 0.8}",
        "train.init_from=null",
        "data.labelled_fraction=0.5",
        "train.calib_fraction=0.3",
    ):
        assert warm(unused) == warm(), unused
    for used in ("warmup.lr=0.01", "train.lr=0.01", "model.params={width: 0.25}", "augment.mixup_alpha=0.5"):
        assert warm(used) != warm(), used

    # folds that start from the warm-up are redone when it changes; folds from scratch are not
    def fold(*ov):
        return train_key(load_config(None, [*BASE, *ov], stage="train"))

    assert fold("train.init_from=warmup", "warmup.epochs=5") != fold("train.init_from=warmup")
    assert fold("train.init_from=null", "warmup.epochs=5") == fold("train.init_from=null")


def test_knob_change_resumes_and_real_change_keeps_the_old_checkpoint(tmp_path, fake_clips, caplog):
    clips = fake_clips([["a"], ["b"]] * 4, ["a", "b"])
    log = logging.getLogger("test_resume_key")
    cfg = load_config(None, BASE)
    fit(cfg, tmp_path, build_model(cfg, 2, seed=0), "supervised", ["a", "b"], clips, log=log)
    ck = load_checkpoint(tmp_path / "last.pt")
    ck["epoch"], ck["history"] = 1, ck["history"][:1]  # as if killed after epoch 1
    save_torch(ck, tmp_path / "last.pt")  # as the run writes it (with its checksum)
    with caplog.at_level(logging.INFO, logger="test_resume_key"):
        fit(
            load_config(None, [*BASE, "train.threads=1"]),
            tmp_path,
            build_model(cfg, 2, seed=0),
            "supervised",
            ["a", "b"],
            clips,
            log=log,
        )
    assert "resuming" in caplog.text and "from epoch 1/2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test_resume_key"):
        fit(
            load_config(None, [*BASE, "train.lr=0.01"]),
            tmp_path,
            build_model(cfg, 2, seed=0),
            "supervised",
            ["a", "b"],
            clips,
            log=log,
        )
    assert "changed: train.lr" in caplog.text
    kept = list(tmp_path.glob("last.*.pt"))
    assert len(kept) == 1 and load_checkpoint(kept[0])["key"] == ck["key"]
    tag = kept[0].name.split(".")[1]  # the old run's best model and metrics are kept too
    assert load_checkpoint(tmp_path / f"best.{tag}.pt")["key"] == ck["key"]
    assert len(pd.read_csv(tmp_path / f"metrics.{tag}.csv")) == 2 and f"best.{tag}.pt" in caplog.text
    assert load_checkpoint(tmp_path / "last.pt")["key"] != ck["key"]
