"""Pseudo-label selection rules (pipeline/modes/pseudo.py) and their use by the modes and the engine."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import precision_score

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import build_model, fit
from pipeline.losses import build_loss
from pipeline.modes import TrainContext, create_mode, mode_class
from pipeline.modes.pseudo import NEVER, PseudoLabeller, precision_threshold, precision_thresholds, topk_mask

C = 5


def test_topk_mask_selects_k_per_row():
    p = torch.tensor([[0.1, 0.4, 0.3, 0.2, 0.0], [0.9, 0.8, 0.1, 0.05, 0.2]])
    assert topk_mask(p, 1).tolist() == [[False, True, False, False, False], [True, False, False, False, False]]
    assert topk_mask(p, 2).sum(1).tolist() == [2, 2]
    assert topk_mask(p, 99).all()


def test_precision_threshold_is_the_lowest_reaching_the_target():
    rng = np.random.default_rng(0)
    s = rng.random(200)
    t = rng.random(200) < s**2  # higher scores are more often positive
    for target in (0.5, 0.7, 0.9):
        tau = precision_threshold(s, t, target)
        assert precision_score(t, s >= tau) >= target
        # every lower candidate threshold misses the target
        lower = np.sort(s[s < tau])
        assert all(precision_score(t, s >= c, zero_division=0) < target for c in lower)
    assert precision_threshold(np.array([0.2, 0.3]), np.array([False, False]), 0.5) == NEVER


def test_precision_thresholds_fall_back_to_the_pooled_one_for_rare_classes():
    rng = np.random.default_rng(1)
    p = rng.random((60, 3))
    y = np.zeros((60, 3), bool)
    y[:, 0] = p[:, 0] > 0.6  # many positives: its own threshold
    y[:2, 1] = True  # two positives: the pooled threshold
    tau = precision_thresholds(p, y, 0.8, min_pos=3)
    pooled = precision_threshold(p.ravel(), y.ravel(), 0.8)
    assert tau[0] == pytest.approx(precision_threshold(p[:, 0], y[:, 0], 0.8))
    assert tau[1] == tau[2] == pooled


def test_labeller_rules():
    p = torch.tensor([[0.3, 0.2, 0.6, 0.1, 0.05]])
    assert PseudoLabeller({"tau_pos": 0.5}, C).positives(p).tolist() == [[False, False, True, False, False]]
    assert PseudoLabeller({"tau_pos": 0.5, "rule": "topk", "topk": 2}, C).positives(p).sum() == 2
    assert PseudoLabeller({"tau_pos": 0.5, "rule": "topk"}, C, cardinality=2.6).k == 3  # rounded cardinality
    lab = PseudoLabeller({"tau_pos": 0.5, "rule": "class_threshold"}, C)
    assert lab.needs_calibration and not lab.positives(p).any()  # not calibrated yet
    lab.class_tau = torch.tensor([0.25, 0.9, 0.9, 0.9, 0.9])
    assert lab.positives(p).tolist() == [[True, False, False, False, False]]
    with pytest.raises(ValueError, match="rule"):
        PseudoLabeller({"tau_pos": 0.5, "rule": "median"}, C)


def make_mode(name, *overrides):
    cfg = load_config(
        None,
        [f"train.mode={name}", "train.batch_size=4", "model.params={width: 0.125}", "model.dropout=0.2", *overrides],
    )
    model = build_model(cfg, C, seed=0)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, C, model.n_out != C),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        total_steps=10,
        extra={"cardinality": 2.0},
    )
    return create_mode(name, ctx)


@pytest.mark.parametrize("name", ["fixmatch", "fixmatch_mixup", "pseudo_label", "fmuc"])
def test_topk_rule_in_the_pseudo_labelling_modes(name):
    mode = make_mode(name, f"ssl.{name}={{rule: topk}}")
    ux = torch.randn(6, 1, 32, 32)
    batch = {"x": torch.randn(4, 1, 32, 32), "y": torch.zeros(4, C), "ux": ux}
    if name == "pseudo_label":
        mode.step({**batch, "uy": torch.zeros(6, C), "idx": None, "uidx": None}, 0.1)  # makes the teacher
        with torch.no_grad():
            yhat, mask = mode.pick(torch.sigmoid(mode.logits(ux, mode.teacher.eval())))
    else:
        yhat, mask = mode.select(batch)
    assert yhat.sum(1).tolist() == [2.0] * 6  # k = the labelled cardinality, 2
    assert mask[yhat.bool()].all()


def test_single_label_modes_refuse_other_rules():
    with pytest.raises(ValueError, match="rule"):
        cfg = load_config(
            None,
            [
                "train.mode=fixmatch",
                "model.time_reversal=false",
                "ssl.fixmatch={rule: topk}",
                "model.params={width: 0.125}",
            ],
        )
        model = build_model(cfg, C, seed=0)
        ctx = TrainContext(
            cfg,
            model,
            build_loss(cfg.loss, True),
            build_batch_augment(cfg.augment, C, False),
            C,
            torch.device("cpu"),
            torch.Generator(),
            single_label=True,
        )
        create_mode("fixmatch", ctx)


def test_needs_calibration_from_the_rule():
    assert mode_class("fixmatch").needs_calibration(load_config(None, ["ssl.fixmatch={rule: class_threshold}"]))
    assert not mode_class("fixmatch").needs_calibration(load_config(None, []))
    assert mode_class("teacher_student").needs_calibration(load_config(None, ["teacher_student.rule=class_threshold"]))
    assert not mode_class("mean_teacher").needs_calibration(load_config(None, []))


def test_fit_calibrates_thresholds_at_each_epoch_start(tmp_path, monkeypatch, fake_clips):
    cfg = load_config(
        None,
        [
            "train.mode=fixmatch",
            "ssl.fixmatch={rule: class_threshold, mu: 1}",
            "model.params={width: 0.125}",
            "train.epochs=2",
            "train.steps_per_epoch=1",
            "train.batch_size=4",
            "train.frames=32",
            "train.eval_hop=16",
            "run.progress=false",
            "train.lr_warmup_epochs=0",
        ],
    )
    classes = list("abcde")
    clips = fake_clips([["a"], ["b"], ["c"], ["a", "b"], ["d"], ["e"]] * 2, classes)
    calls = []
    orig = mode_class("fixmatch").calibrate
    monkeypatch.setattr(
        mode_class("fixmatch"), "calibrate", lambda self, p, y: (calls.append((p, y)), orig(self, p, y))
    )
    model = build_model(cfg, 5, seed=0)
    fit(cfg, tmp_path, model, "fixmatch", classes, clips, unlabelled=clips, calib=clips)
    assert len(calls) == 2 and calls[0][0].shape == (12, 5)
    assert np.array_equal(calls[0][1], clips.y)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert "pl_tau_never" in m
