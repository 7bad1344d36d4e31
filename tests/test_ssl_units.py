"""The unlabelled terms of the semi-supervised modes are in the supervised loss's unit (sum over classes, mean over
clips): on a batch whose unlabelled clips are the labelled clips with the same targets, the two terms are equal."""

import numpy as np
import pytest
import torch

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import build_model
from pipeline.losses import bce, build_loss
from pipeline.modes import TrainContext, create_mode
from pipeline.modes.common import dropout_modules, frozen_bn

C = 6
PLAIN = [
    "loss.focal=0",
    "loss.bce=1",
    "loss.arcface=0",
    "model.time_reversal=false",
    "augment.spec_augment=false",
    "augment.mixup_alpha=0",
    "model.dropout=0",
    "train.batch_size=4",
    "model.params={width: 0.125}",
]


def make_mode(name, *overrides):
    cfg = load_config(None, [f"train.mode={name}", *PLAIN, *overrides])
    model = build_model(cfg, C, seed=0, dropout=0.3 if name == "fmuc" else None)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, C, False),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        total_steps=10,
    )
    return create_mode(name, ctx)


def same_clips_batch(mode, seed=1):
    """ux = x repeated mu times, with the same targets (BN batch statistics of ux equal those of x)."""
    b, bu = mode.batch_sizes()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, 1, 32, 32, generator=g), (torch.rand(b, C, generator=g) < 0.4).float()
    y[:, 0] = 1
    reps = bu // b
    return {
        "x": x,
        "y": y,
        "idx": np.arange(b),
        "ux": x.repeat(reps, 1, 1, 1),
        "uy": y.repeat(reps, 1),
        "uidx": np.arange(bu),
        "utruth": None,
    }


def targets_as_labels(mode, monkeypatch, batch):
    """Every pseudo-label equals the clip's target, every entry kept; the strong view is the clip itself."""
    yu = batch["uy"]
    monkeypatch.setattr(mode, "select", lambda b: (yu, torch.ones_like(yu, dtype=torch.bool)), raising=False)
    monkeypatch.setattr(mode, "pick", lambda p, *a: (yu, torch.ones_like(yu, dtype=torch.bool)))
    monkeypatch.setattr(mode, "strong", lambda x: x)


@pytest.mark.parametrize("name", ["fixmatch", "fmuc", "pseudo_label", "fixmatch_mixup"])
def test_unlabelled_term_equals_supervised_term_on_the_same_clips(name, monkeypatch):
    mode = make_mode(name, f"ssl.{name}={{alpha: 0}}" if name == "fixmatch_mixup" else "run.seed=42")
    for m in dropout_modules(mode.model):  # fmuc's dropout: the two passes must see the same network
        m.p = 0.0
    batch = same_clips_batch(mode)
    targets_as_labels(mode, monkeypatch, batch)
    _, logs = mode.step(batch, 0.5)
    # before the fix the unlabelled term was the supervised one / C (a mean over classes)
    assert logs["unl"].item() == pytest.approx(logs["sup"].item(), rel=1e-4)
    assert logs["sup"].item() > 0.1


def test_remixmatch_terms_in_the_supervised_unit(monkeypatch):
    mode = make_mode("remixmatch", "ssl.remixmatch={alpha: 0, K: 1, mu: 1}")
    batch = same_clips_batch(mode)
    targets_as_labels(mode, monkeypatch, batch)
    monkeypatch.setattr(mode, "guess", lambda y, ux: batch["uy"])
    _, logs = mode.step(batch, 0.5)
    assert logs["unl"].item() == pytest.approx(logs["sup"].item(), rel=1e-4)
    assert logs["unl_pre"].item() == pytest.approx(logs["sup"].item(), rel=1e-4)


def test_deep_co_training_terms_in_the_supervised_unit(monkeypatch):
    mode = make_mode("deep_co_training", "ssl.deep_co_training={eps: 0.0, mu: 1}")
    mode.net2.load_state_dict(mode.model.state_dict())  # twins: L_cot = 0, L_dif = 2 x the BCE unit
    batch = same_clips_batch(mode)
    _, logs = mode.step(batch, 0.5)
    assert logs["cot"].item() == pytest.approx(0.0, abs=1e-6)
    v = torch.cat([batch["x"], batch["ux"]])
    with torch.no_grad(), frozen_bn(mode.model, no_dropout=True):
        z = mode.logits(v)
        z_train = mode.logits(v)  # train-mode batch statistics, as the step's passes
    expected = 2 * bce(z, torch.sigmoid(z_train)).item()  # losses.bce: sum over classes, mean over clips
    assert logs["dif"].item() == pytest.approx(expected, rel=1e-3)


def test_vat_distance_in_the_supervised_unit(monkeypatch):
    mode = make_mode("vat")
    batch = same_clips_batch(mode)
    v = torch.cat([batch["x"], batch["ux"]])
    r = 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(mode, "perturbation", lambda x, p: r)
    _, logs = mode.step(batch, 0.5)
    with torch.no_grad(), frozen_bn(mode.model, no_dropout=True):
        z, za = mode.logits(v), mode.logits(v + r)
    p = torch.sigmoid(z)
    assert logs["vat"].item() == pytest.approx((bce(za, p) - bce(z, p)).item(), rel=1e-3, abs=1e-6)
