import pytest
import torch

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import build_model
from pipeline.losses import build_loss
from pipeline.modes import TrainContext, create_mode

C = 5


def make_mode(*overrides):
    cfg = load_config(None, ["model.params={width: 0.125}", "teacher_student.n_curated=4",
                             "teacher_student.n_noisy=6", *overrides])
    model = build_model(cfg, C, heads=("h", "g"), seed=0)
    ctx = TrainContext(cfg, model, build_loss(cfg.loss), build_batch_augment(cfg.augment, C), C,
                       torch.device("cpu"), torch.Generator().manual_seed(0))
    return create_mode("teacher_student", ctx)


def batch(seed=0, noisy_seed=1):
    g, gn = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(noisy_seed)
    return {"x": torch.randn(4, 1, 32, 24, generator=g), "y": (torch.rand(4, C, generator=g) < 0.3).float(),
            "ux": torch.randn(6, 1, 32, 24, generator=gn), "uy": (torch.rand(6, C, generator=gn) < 0.3).float(),
            "utruth": (torch.rand(6, C, generator=gn) < 0.3).float()}


def test_batch_sizes_from_config():
    assert make_mode().batch_sizes() == (4, 6)


def test_pseudo_label_rule_thresholds_g_on_original_classes():
    mode = make_mode()
    with torch.no_grad():                       # g's bias alone decides: classes 0, 2 above eta = 0.5
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([2.0, -2, 0.1, -0.1, -5, 9, 9, 9, 9, 9]))
    y = mode.pseudo_labels(torch.randn(3, 1, 32, 24))
    assert y.tolist() == [[1, 0, 1, 0, 0]] * 3   # the reversed-class outputs (9) play no part
    mode = make_mode("teacher_student.eta=0.6")
    with torch.no_grad():
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([0.3, 0.5, 0.0, 0, 0, 0, 0, 0, 0, 0]))
    assert mode.pseudo_labels(torch.randn(1, 1, 32, 24)).tolist() == [[0, 1, 0, 0, 0]]  # sigmoid(0.5) = 0.62


def grads(mode, b):
    mode.model.zero_grad()
    mode.ctx.generator.manual_seed(7)
    torch.manual_seed(7)
    loss, logs = mode.step(b, 0.5)
    loss.backward()
    return {n: p.grad.clone() for n, p in mode.model.named_parameters() if p.grad is not None}, logs


def test_g_never_receives_gradients_from_noisy_clips():
    mode = make_mode()
    mode.model.train()                           # batch statistics: V' is normalised on its own pass
    a, _ = grads(mode, batch(noisy_seed=1))
    b, _ = grads(mode, batch(noisy_seed=2))      # other noisy clips, same curated clips and random draws
    g_params = [n for n in a if n.startswith(("heads.g", "arc.g"))]
    assert g_params and all(torch.equal(a[n], b[n]) for n in g_params)
    h_params = [n for n in a if n.startswith("heads.h")]
    assert any(not torch.equal(a[n], b[n]) for n in h_params)    # h does learn from the noisy clips
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("backbone"))


def test_loss_is_size_weighted_sum_of_both_heads_and_logs_quality():
    mode = make_mode()
    loss, logs = mode.step(batch(), 0.1)
    n_v, n_u = 4, 10
    assert loss.item() == pytest.approx((n_v * float(logs["loss_g"]) + n_u * float(logs["loss_h"])) / (n_v + n_u),
                                        rel=1e-5)
    pl = mode.epoch_logs()
    assert {"pl_precision", "pl_recall", "pl_kept", "pl_pos"} <= set(pl)
