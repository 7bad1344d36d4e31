import numpy as np
import pytest
import torch

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import build_model
from pipeline.losses import build_loss
from pipeline.modes import TrainContext, create_mode

C = 5


def make_mode(*overrides):
    cfg = load_config(
        None, ["model.params={width: 0.125}", "teacher_student.n_curated=4", "teacher_student.n_noisy=6", *overrides]
    )
    model = build_model(cfg, C, heads=("h", "g"), seed=0)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, C),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    return create_mode("teacher_student", ctx)


def batch(seed=0, noisy_seed=1):
    g, gn = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(noisy_seed)
    return {
        "x": torch.randn(4, 1, 32, 24, generator=g),
        "y": (torch.rand(4, C, generator=g) < 0.3).float(),
        "ux": torch.randn(6, 1, 32, 24, generator=gn),
        "uy": (torch.rand(6, C, generator=gn) < 0.3).float(),
        "utruth": (torch.rand(6, C, generator=gn) < 0.3).float(),
    }


def test_batch_sizes_from_config():
    assert make_mode().batch_sizes() == (4, 6)


def test_pseudo_label_rule_thresholds_g_on_original_classes():
    mode = make_mode()
    with torch.no_grad():  # g's bias alone decides: classes 0, 2 above eta = 0.5
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([2.0, -2, 0.1, -0.1, -5, 9, 9, 9, 9, 9]))
    y = mode.pseudo_labels(torch.randn(3, 1, 32, 24))
    assert y.tolist() == [[1, 0, 1, 0, 0]] * 3  # the reversed-class outputs (9) play no part
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


@pytest.mark.parametrize("g_pass", ["separate", "frozen_stats"])
def test_g_never_receives_gradients_from_noisy_clips(g_pass):
    mode = make_mode(f"teacher_student.g_pass={g_pass}")
    mode.model.train()  # separate: V' is normalised on its own pass; frozen_stats: by the
    start = {k: v.clone() for k, v in mode.model.state_dict().items()}  # running statistics before the step
    a, _ = grads(mode, batch(noisy_seed=1))
    mode.model.load_state_dict(start)  # (h's pass of the first step moved them)
    b, _ = grads(mode, batch(noisy_seed=2))  # other noisy clips, same curated clips and random draws
    g_params = [n for n in a if n.startswith(("heads.g", "arc.g"))]
    assert g_params and all(torch.equal(a[n], b[n]) for n in g_params)
    h_params = [n for n in a if n.startswith("heads.h")]
    assert any(not torch.equal(a[n], b[n]) for n in h_params)  # h does learn from the noisy clips
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("backbone"))


def test_loss_is_size_weighted_sum_of_both_heads_and_logs_quality():
    mode = make_mode()
    loss, logs = mode.step(batch(), 0.1)
    n_v, n_u = 4, 10
    assert loss.item() == pytest.approx(
        (n_v * float(logs["loss_g"]) + n_u * float(logs["loss_h"])) / (n_v + n_u), rel=1e-5
    )
    pl = mode.epoch_logs()
    assert {"pl_precision", "pl_recall", "pl_kept", "pl_pos"} <= set(pl)


def bn_count(model):
    return [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_pseudo_label_pass_leaves_bn_statistics_alone():
    mode = make_mode()
    mode.model.train()
    state = {k: v.clone() for k, v in mode.model.state_dict().items() if "running" in k or "num_batches" in k}
    mode.pseudo_labels(torch.randn(6, 1, 32, 24))
    assert all(torch.equal(v, mode.model.state_dict()[k]) for k, v in state.items())
    assert mode.model.training


@pytest.mark.parametrize("g_pass, updates", [("separate", 2), ("frozen_stats", 1), ("joint", 1)])
def test_bn_running_statistics_updates_per_step(g_pass, updates):
    """Before the g_pass key the step updated the running statistics three times (pseudo-label, g and h passes)."""
    mode = make_mode(f"teacher_student.g_pass={g_pass}")
    mode.model.train()
    before = bn_count(mode.model)
    mode.step(batch(), 0.5)
    assert all(a - b == updates for a, b in zip(bn_count(mode.model), before))


def test_frozen_stats_g_pass_normalises_with_running_statistics():
    mode = make_mode("teacher_student.g_pass=frozen_stats")
    mode.model.train()
    x = torch.randn(4, 1, 32, 24)
    with torch.no_grad(), mode.g_context():
        a = mode.model(x, heads=["g"])["g"]
    mode.model.eval()
    with torch.no_grad():
        b = mode.model(x, heads=["g"])["g"]
    assert torch.allclose(a, b, atol=1e-6)


def test_joint_g_pass_shares_the_noisy_clips_statistics_not_their_loss():
    """g_pass joint: g's loss has curated rows only, but one forward normalises V' and U' together, so with batch
    statistics g's gradient depends on the noisy clips (stated here); with BN in eval mode it does not."""
    mode = make_mode("teacher_student.g_pass=joint")
    mode.model.train()
    a, _ = grads(mode, batch(noisy_seed=1))
    b, _ = grads(mode, batch(noisy_seed=2))
    g_params = [n for n in a if n.startswith(("heads.g", "arc.g"))]
    assert g_params and any(not torch.equal(a[n], b[n]) for n in g_params)
    mode.model.eval()
    a, _ = grads(mode, batch(noisy_seed=1))
    b, _ = grads(mode, batch(noisy_seed=2))
    assert all(torch.allclose(a[n], b[n], atol=1e-7) for n in g_params)


def test_rules_topk_and_noisy_aware():
    mode = make_mode("teacher_student.rule=topk", "teacher_student.topk=2")
    with torch.no_grad():
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([-3.0, -1, -2, -4, -5, 9, 9, 9, 9, 9]))
    assert mode.pseudo_labels(torch.randn(2, 1, 32, 24)).tolist() == [[0, 1, 1, 0, 0]] * 2
    mode = make_mode("teacher_student.rule=noisy_aware", "teacher_student.keep_low=0.2", "teacher_student.eta=0.5")
    with torch.no_grad():  # sigmoid: 0.88, 0.27, 0.12, 0.27, 0.5
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([2.0, -1, -2, -1, 0, 9, 9, 9, 9, 9]))
    given = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 0]]).float()
    # kept: given and >= 0.2 (class 1 in row 0, class 3 in row 1); added: >= 0.5 (classes 0 and 4); class 2 dropped
    assert mode.pseudo_labels(torch.randn(2, 1, 32, 24), given).tolist() == [[1, 1, 0, 0, 1], [1, 0, 0, 1, 1]]


def test_class_threshold_rule_uses_calibrated_thresholds():
    mode = make_mode("teacher_student.rule=class_threshold")
    assert mode.needs_calibration(mode.ctx.cfg) and mode.calibration_model()[1] == "g"
    with torch.no_grad():
        mode.model.heads["g"].weight.zero_()
        mode.model.heads["g"].bias.copy_(torch.tensor([0.0, -1, -2, -1, 0, 9, 9, 9, 9, 9]))
    assert mode.pseudo_labels(torch.randn(1, 1, 32, 24)).sum() == 0  # not calibrated yet: nothing selected
    mode.calibrate(np.tile([[0.6, 0.3, 0.1, 0.2, 0.9]], (4, 1)), np.tile([[1, 1, 0, 0, 1]], (4, 1)))
    # class 0: 0.6 positive -> tau 0.6; sigmoid(0) = 0.5 < 0.6. class 1: tau 0.3 <= 0.27? no. others pooled
    tau = mode.labeller.class_tau
    assert tau.shape == (5,)
    y = mode.pseudo_labels(torch.randn(1, 1, 32, 24))
    p = torch.sigmoid(torch.tensor([0.0, -1, -2, -1, 0]))
    assert y[0].tolist() == (p >= tau).float().tolist()


def test_noisy_aware_refused_without_noisy_labels(dataset, cfg_for):
    from pipeline import train

    cfg = cfg_for(
        dataset, "train.mode=teacher_student", "teacher_student.rule=noisy_aware", "data.labelled_fraction=0.5"
    )
    with pytest.raises(ValueError, match="noisy_aware"):
        train.main(cfg)


def test_unlabelled_curated_clips_carry_no_given_labels(prepared, monkeypatch):
    """With data.labelled_fraction < 1 the unlabelled clips' labels are only the truth for the pl_* figures."""
    from pipeline import train

    seen = {}

    def spy_fit(cfg, fdir, model, mode, classes, labelled, unlabelled, *a, **k):
        seen["y"], seen["truth"] = unlabelled.y.copy(), unlabelled.truth.copy()
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", spy_fit)
    with pytest.raises(KeyboardInterrupt):
        train.main(prepared("train.mode=fixmatch", "data.labelled_fraction=0.5", "train.init_from=null"))
    assert seen["y"].sum() == 0 and seen["truth"].sum() > 0
