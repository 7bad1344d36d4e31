"""pipeline.losses against hand-computed values and torch / torchvision references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.config import load_config
from pipeline.losses import arcface, bce, build_loss, focal, hinge


def sig(z):
    return 1 / (1 + math.exp(-z))


def close(a, b, tol=1e-5):
    a, b = float(torch.as_tensor(a).detach()), float(b)
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 3
    y = (torch.rand(6, 5, generator=g) < 0.4).float()
    return logits, y


# ------------------------------------------------------------------------------------------------------------ bce


def test_bce_hand_and_torch(batch):
    # row 0: -log sig(0) - log(1 - sig(2)); row 1: -log sig(-1) - log sig(3)
    logits, y = torch.tensor([[0.0, 2.0], [-1.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    rows = [math.log(2) + math.log(1 + math.e**2), math.log(1 + math.e) + math.log(1 + math.exp(-3))]
    assert close(bce(logits, y), sum(rows) / 2)
    logits, y = batch
    ref = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(y)
    assert torch.allclose(bce(logits, y), ref)


def test_weighted_mean_over_batch(batch):
    logits, y = batch
    per = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
    w = torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert torch.allclose(bce(logits, y, weight=w), (per * w).sum() / 4)
    assert bce(logits, y, weight=torch.zeros(6)) == 0


# ---------------------------------------------------------------------------------------------------------- focal


def test_focal_hand():
    # y=1, z=0: (1 - 0.5)^2 * log 2; y=0, z=2: sig(2)^2 * -log(1 - sig(2)) = sig(2)^2 * log(1 + e^2)
    logits, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    assert close(focal(logits, y), 0.25 * math.log(2) + sig(2) ** 2 * math.log(1 + math.e**2))
    assert close(focal(logits, y, gamma=1.0), 0.5 * math.log(2) + sig(2) * math.log(1 + math.e**2))
    # soft target 0.3 at z=1: -(0.7 * (1-p)^2 * 0.3 log p ... ) as written
    p = sig(1.0)
    want = -((1 - p) ** 2 * 0.3 * math.log(p) + p**2 * 0.7 * math.log(1 - p))
    assert close(focal(torch.tensor([[1.0]]), torch.tensor([[0.3]])), want)


def test_focal_vs_torchvision_and_bce(batch):
    logits, y = batch
    ref = sigmoid_focal_loss(logits, y, alpha=-1, gamma=2.0, reduction="sum") / len(y)
    assert torch.allclose(focal(logits, y), ref, atol=1e-6)
    ref = sigmoid_focal_loss(logits, y, alpha=-1, gamma=1.5, reduction="sum") / len(y)
    assert torch.allclose(focal(logits, y, gamma=1.5), ref, atol=1e-6)
    assert torch.allclose(focal(logits, y, gamma=0.0), bce(logits, y))


def test_focal_stable_at_large_logits():
    logits = torch.tensor([[200.0, -200.0, 200.0, -200.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = focal(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert close(loss, 2 * 200.0)  # the two wrong ones: p^2 * 200 each, p = 1


# -------------------------------------------------------------------------------------------------------- arcface


def test_arcface_hand():
    s, m = 30.0, 0.5
    cos = torch.tensor([[0.5]])  # theta = pi / 3
    pos = s * math.cos(math.pi / 3 + m)
    assert close(arcface(cos, torch.tensor([[1.0]]), s, m), math.log(1 + math.exp(-pos)))
    assert close(arcface(cos, torch.tensor([[0.0]]), s, m), math.log(1 + math.exp(s * 0.5)))
    # soft target: logits interpolate, BCE with the soft target
    z = s * (0.3 * math.cos(math.pi / 3 + m) + 0.7 * 0.5)
    want = -(0.3 * math.log(sig(z)) + 0.7 * math.log(1 - sig(z)))
    assert close(arcface(cos, torch.tensor([[0.3]]), s, m), want)
    # theta > pi - m: fallback cos - m sin(m) (monotone instead of cos(theta + m) turning back up)
    cos = torch.tensor([[-0.95]])
    z = s * (-0.95 - m * math.sin(m))
    assert close(arcface(cos, torch.tensor([[1.0]]), s, m), math.log(1 + math.exp(-z)))


def test_arcface_margin_hurts_positives_only():
    cos = torch.linspace(-1, 1, 41)[None]
    ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)

    def per_class(c, y, m):
        return torch.stack([arcface(c[:, i : i + 1], y[:, i : i + 1], m=m) for i in range(c.shape[1])])

    assert (per_class(cos, ones, 0.5) > per_class(cos, ones, 0.0)).all()
    assert torch.allclose(per_class(cos, zeros, 0.5), per_class(cos, zeros, 0.0))
    # m = 0 is BCE on s * cos
    y = (torch.rand(3, 41, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    c = cos.expand(3, -1)
    assert torch.allclose(arcface(c, y, s=30.0, m=0.0), bce(30.0 * c, y), rtol=1e-4)


def test_arcface_gradients_finite_at_extremes():
    cos = torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.5]])
    loss = arcface(cos, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()


# ---------------------------------------------------------------------------------------------------------- hinge


def test_hinge_torch_doc_example():
    # torch's MultiLabelMarginLoss example: targets [3, 0, -1, 1] -> classes {3, 0}; loss 0.85
    x = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    ref = torch.nn.MultiLabelMarginLoss()(x, torch.tensor([[3, 0, -1, 1]]))
    hand = ((1 - (0.1 - 0.2)) + (1 - (0.1 - 0.4)) + (1 - (0.8 - 0.2)) + (1 - (0.8 - 0.4))) / 4
    assert close(ref, hand) and close(hinge(x, y), hand)


def test_hinge_vs_torch_index_lists(batch):
    logits, y = batch
    y[0] = 0  # a sample without positives: loss 0
    y = y * 0.9 + 0.05  # soft: positives are y >= 0.5
    target = torch.full(y.shape, -1, dtype=torch.long)
    for b in range(len(y)):
        idx = [c for c in range(y.shape[1]) if y[b, c] >= 0.5]
        target[b, : len(idx)] = torch.tensor(idx, dtype=torch.long)
    assert torch.allclose(hinge(logits, y), torch.nn.MultiLabelMarginLoss()(logits, target))
    w = torch.tensor([1.0, 0, 1, 0, 0, 0])
    ref = torch.nn.MultiLabelMarginLoss(reduction="none")(logits, target)[[0, 2]].mean()
    assert torch.allclose(hinge(logits, y, weight=w), ref)


# ----------------------------------------------------------------------------------------------------- build_loss


@pytest.fixture
def out(batch):
    logits, y = batch
    cos = torch.tanh(logits / 3)
    return {"h": logits, "h_cos": cos, "g": logits * 2}, y


def test_build_loss_base_config(out):
    out, y = out
    cfg = load_config()
    fn = build_loss(cfg.loss)
    terms = fn.terms(out, y)
    assert set(terms) == {"focal", "arcface"}  # bce and hinge weigh 0
    assert torch.allclose(terms["focal"], focal(out["h"], y, gamma=cfg.loss.focal_gamma))
    assert torch.allclose(terms["arcface"], arcface(out["h_cos"], y, s=cfg.loss.arc_s, m=cfg.loss.arc_m))
    assert torch.allclose(fn(out, y), terms["focal"] + terms["arcface"])


def test_build_loss_weights_params_heads_masks(out):
    out, y = out
    fn = build_loss({"bce": 0.5, "focal": 2.0, "focal_gamma": 1.0, "hinge": 0.25, "arcface": 0})
    want = 0.5 * bce(out["g"], y) + 2.0 * focal(out["g"], y, gamma=1.0) + 0.25 * hinge(out["g"], y)
    assert torch.allclose(fn(out, y, head="g"), want)
    assert set(fn.terms(out, y, "g")) == {"bce", "focal", "hinge"}
    w = torch.tensor([0.0, 1, 1, 0, 0, 0])
    assert torch.allclose(fn(out, y, weight=w), fn({"h": out["h"][1:3]}, y[1:3]))
    loss = fn({"h": out["h"].clone().requires_grad_()}, y)
    assert loss.dim() == 0 and loss.requires_grad


def test_build_loss_errors(out):
    out, y = out
    fn = build_loss({"arcface": 1.0})
    with pytest.raises(KeyError, match="h_cos"):
        fn({"h": out["h"]}, y)
    with pytest.raises(ValueError, match="focal_gama"):
        build_loss({"focal": 1.0, "focal_gama": 2.0})
    with pytest.raises(ValueError, match="0"):
        build_loss({"bce": 0.0, "focal": 0.0})
