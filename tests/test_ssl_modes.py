"""Semi-supervised modes (pipeline/modes/ssl.py): helpers on hand-made inputs, each mode's step, its state and its
invariants (views, BN statistics, normalisation), and a short engine fit per mode."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import build_model, fit, make_clipset
from pipeline.losses import build_loss
from pipeline.modes import PseudoLabelStats, TrainContext, create_mode, list_modes, mode_class
from pipeline.modes import common as ssl

SSL_MODES = [
    "mean_teacher",
    "deep_co_training",
    "mixmatch",
    "remixmatch",
    "fixmatch",
    "fixmatch_mixup",
    "fmuc",
    "vat",
    "pseudo_label",
]
PL_MODES = ["mixmatch", "remixmatch", "fixmatch", "fixmatch_mixup", "fmuc", "pseudo_label"]
C = 5
# BN updates per step: only the passes that carry the training gradient on clean / augmented clips
BN_UPDATES = {
    "mean_teacher": 2,
    "deep_co_training": 2,
    "mixmatch": 1,
    "remixmatch": 1,
    "fixmatch": 2,
    "fixmatch_mixup": 1,
    "fmuc": 2,
    "vat": 1,
    "pseudo_label": 2,
}


def make_mode(name, *overrides, dropout=0.2, seed=0):
    cfg = load_config(
        None,
        [
            f"train.mode={name}",
            "train.batch_size=4",
            "model.params={width: 0.125}",
            f"model.dropout={dropout}",
            *overrides,
        ],
    )
    model = build_model(cfg, C, seed=seed)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, C, model.n_out != C),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(seed),
        total_steps=10,
    )
    return create_mode(name, ctx)


def make_batch(mode, seed=1, truth=True):
    b, bu = mode.batch_sizes()
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, 1, 32, 32, generator=g),
        "y": (torch.rand(b, C, generator=g) < 0.4).float(),
        "idx": np.arange(b),
        "ux": torch.randn(bu, 1, 32, 32, generator=g),
        "uy": (torch.rand(bu, C, generator=g) < 0.3).float(),
        "uidx": np.arange(bu),
        "utruth": (torch.rand(bu, C, generator=g) < 0.4).float() if truth else None,
    }


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def bn_state(model):
    return [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bn_layers(model)]


def same_bn(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------- every mode


def test_all_modes_registered():
    assert set(SSL_MODES) <= set(list_modes())
    assert all(mode_class(n).uses_unlabelled and "mu" in mode_class(n).defaults for n in SSL_MODES)


@pytest.mark.parametrize("name", SSL_MODES)
def test_step_backward_finite(name):
    mode = make_mode(name)
    assert mode.batch_sizes() == (4, 4 * mode.hp["mu"])
    batch = make_batch(mode)
    before = int(bn_layers(mode.model)[0].num_batches_tracked)
    loss, logs = mode.step(batch, 0.5)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(math.isfinite(float(v)) for v in logs.values())
    # target-only passes (teachers, guesses, weak / MC / adversarial / VAT passes) leave BN statistics alone
    assert int(bn_layers(mode.model)[0].num_batches_tracked) - before == BN_UPDATES[name]
    loss.backward()
    grads = [p.grad for p in mode.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    mode.after_step()
    pl = mode.epoch_logs()
    if name in PL_MODES:
        assert {"pl_used", "pl_precision", "pl_recall", "pl_kept"} <= set(pl) and 0 <= pl["pl_used"] <= 1
        assert mode.epoch_logs() == {}  # reset
    else:
        assert pl == {}


@pytest.mark.parametrize("name", ["mean_teacher", "fixmatch", "mixmatch", "vat"])
def test_step_without_time_reversal(name):
    mode = make_mode(name, "model.time_reversal=false")
    assert mode.model.n_out == C
    loss, _ = mode.step(make_batch(mode, truth=False), 0.1)
    loss.backward()
    assert torch.isfinite(loss) and mode.epoch_logs().keys() <= {"pl_used", "pl_pos", "pl_kept"}


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="tau_pos"):
        make_mode("mean_teacher", "ssl.mean_teacher={tau_pos: 0.9}")
    assert make_mode("fixmatch", "ssl.fixmatch={tau_pos: 0.8, mu: 3}").batch_sizes() == (4, 12)


@pytest.mark.parametrize("name", SSL_MODES)
def test_state_dict_round_trip(name):
    mode = make_mode(name, "ssl.fixmatch={rule: topk}")
    for s in range(2):
        loss, _ = mode.step(make_batch(mode, seed=s), 0.3 + 0.4 * s)
        loss.backward()
        with torch.no_grad():
            for p in mode.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
                    p.grad = None
        mode.after_step()
    state = mode.state_dict()
    fresh = make_mode(name, seed=7)
    fresh.load_state_dict(state)

    def flat(obj):
        if isinstance(obj, dict):
            return [x for k in sorted(obj) for x in flat(obj[k])]
        return [obj]

    a, b = flat(state), flat(fresh.state_dict())
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    if name == "mean_teacher":
        assert fresh.ema.t == 2 and torch.equal(
            fresh.eval_model().state_dict()["backbone.blocks.0.bn1.running_mean"],
            mode.eval_model().state_dict()["backbone.blocks.0.bn1.running_mean"],
        )
    if name == "deep_co_training":
        x = torch.randn(2, 1, 32, 32)
        assert torch.equal(fresh.net2.eval()(x)["h"], mode.net2.eval()(x)["h"])


# --------------------------------------------------------------------------------------------------------- helpers


def test_sharpen_per_class_never_normalised():
    p = torch.tensor([[0.9, 0.9, 0.9, 0.9], [0.5, 0.2, 0.7, 0.99]])
    q = ssl.sharpen(p, 0.5)
    assert (q[0] > 0.9).all()  # no normalisation across classes
    assert q[0, 0] == pytest.approx(0.81 / (0.81 + 0.01), abs=1e-6)  # p^2 / (p^2 + (1 - p)^2)
    assert q[1, 0] == pytest.approx(0.5) and q[1, 1] == pytest.approx(0.04 / (0.04 + 0.64), abs=1e-6)
    assert torch.allclose(ssl.sharpen(p, 1.0), p, atol=1e-6)


def test_distribution_alignment():
    p = torch.tensor([[0.2, 0.5, 0.9], [0.4, 0.1, 0.6]])
    out = ssl.align(p, torch.tensor([0.1, 0.2, 0.6]), torch.tensor([0.2, 0.1, 0.3]))
    assert torch.allclose(out, torch.tensor([[0.1, 1.0, 1.0], [0.2, 0.2, 1.0]]))  # x0.5, x2, x2; clipped to 1
    rm = ssl.RunningMean(3, 2, "cpu")
    for v in ([1.0, 0.0], [0.0, 0.0], [0.5, 1.0], [0.5, 0.5]):
        rm.update(torch.tensor(v))
    assert torch.allclose(rm.value(), torch.tensor([1 / 3, 0.5]))  # the last 3 only


def test_remixmatch_guess_aligns_then_sharpens():
    mode = make_mode("remixmatch", "ssl.remixmatch={da_batches: 2}", dropout=0.0)
    batch = make_batch(mode)
    q = mode.guess(batch["y"], batch["ux"])
    with torch.no_grad(), ssl.frozen_bn(mode.model):
        p = torch.sigmoid(mode.logits(batch["ux"]))
    expected = ssl.sharpen(ssl.align(p, batch["y"].mean(0), p.mean(0)), 0.5)
    assert torch.allclose(q, expected, atol=1e-6)
    assert mode.pi_u.count == 1


def test_binary_js():
    p = torch.tensor([[0.1, 0.5, 0.97]])
    assert torch.equal(ssl.binary_js(p, p), torch.zeros_like(p))
    js = ssl.binary_js(p, torch.tensor([[0.3, 0.5, 0.4]]))
    assert (js[:, [0, 2]] > 0).all() and js[0, 1] == 0
    # by hand: H(0.5) - (H(0) + H(1)) / 2 = log 2
    assert ssl.binary_js(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2), abs=1e-4)


def test_threshold_rule_pick():
    p = torch.tensor([[0.96, 0.5, 0.04, 0.93, 0.06], [0.2, 0.95, 0.01, 0.7, 0.99]])
    yhat, mask = make_mode("fixmatch", "ssl.fixmatch={tau_pos: 0.95, tau_neg: 0.05}").pick(p)
    assert torch.equal(mask, torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool))
    assert torch.equal(yhat[mask], (p >= 0.5).float()[mask])  # kept entries: confident positives / negatives


def test_masked_bce_summed_over_classes_averaged_over_clips_not_mask_count():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    t = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    m = torch.tensor([[1, 0, 0], [0, 0, 1]]).float()
    full = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    assert ssl.masked_bce(z, t, m).item() == pytest.approx((full[0, 0] + full[1, 2]).item() / 2)
    assert ssl.masked_bce(z, t, torch.zeros_like(m)).item() == 0
    assert ssl.masked_bce(z, t).item() == pytest.approx(full.sum().item() / 2)


def test_fixmatch_unlabelled_loss_zero_for_empty_mask_and_averaged_over_clips(monkeypatch):
    mode = make_mode("fixmatch", "ssl.fixmatch={tau_pos: 1.5, tau_neg: -0.5}")
    batch = make_batch(mode)
    _, logs = mode.step(batch, 0.5)
    assert logs["unl"].item() == 0 and logs["kept"].item() == 0
    # one kept entry: its BCE / B_u (sum over classes, mean over clips)
    mode = make_mode("fixmatch", dropout=0.0)
    bu = len(batch["ux"])
    mask = torch.zeros(bu, C, dtype=torch.bool)
    mask[1, 2] = True
    yhat = torch.ones(bu, C)
    monkeypatch.setattr(mode, "select", lambda b: (yhat, mask))
    strong = {}
    monkeypatch.setattr(mode, "strong", lambda x: strong.setdefault("x", ssl.spec_augment(x, 3, 3, 0.2, 0.2)))
    _, logs = mode.step(batch, 0.5)
    with torch.no_grad():
        z = mode.logits(strong["x"])
    # the step's forward updated BN stats in train mode; recompute with the same batch statistics
    entry = F.binary_cross_entropy_with_logits(z[1, 2], torch.tensor(1.0)).item()
    assert logs["unl"].item() == pytest.approx(entry / bu, rel=1e-4)


def test_mixmatch_guess_is_sharpened_mean_and_hard_stats():
    mode = make_mode("mixmatch", "augment.spec_augment=false", "ssl.mixmatch={K: 3}", dropout=0.0)
    batch = make_batch(mode)
    with torch.no_grad(), ssl.frozen_bn(mode.model):
        q = ssl.sharpen(torch.sigmoid(mode.logits(batch["ux"])), 0.5)  # no SpecAugment: all K views equal
    mode.step(batch, 0.5)
    pl = mode.epoch_logs()
    truth, sel = batch["utruth"] >= 0.5, q >= 0.5
    assert pl["pl_used"] == 1.0
    assert pl["pl_recall"] == pytest.approx((truth & sel).sum().item() / truth.sum().item())


def test_reverse_pads_targets_and_masks():
    mode = make_mode("fixmatch_mixup", "augment.reversal_p=1.0")
    x, t, m = torch.randn(2, 1, 4, 6), torch.tensor([[1.0, 0, 0, 0, 1]] * 2), torch.zeros(2, C)
    x2, t2, m2 = mode.reverse(x, t, m)
    assert torch.equal(x2, x.flip(-1))
    assert torch.equal(t2, torch.cat([torch.zeros_like(t), t], 1)) and torch.equal(m2[:, :C], torch.ones(2, C))
    mode = make_mode("fixmatch_mixup", "augment.reversal_p=0.0")
    x2, t2, m2 = mode.reverse(x, t, m)
    assert torch.equal(x2, x) and torch.equal(t2[:, :C], t) and torch.equal(m2[:, C:], torch.ones(2, C))


# -------------------------------------------------------------------------------------------- mean teacher / EMA


def test_mean_teacher_views_differ_and_consistency():
    # identical weights and identical views (no SpecAugment, no dropout): consistency exactly 0
    mode = make_mode("mean_teacher", "augment.spec_augment=false", dropout=0.0)
    batch = make_batch(mode)
    _, logs = mode.step(batch, 1.0)
    assert logs["cons"].item() == 0.0
    # with SpecAugment the student and the teacher see different draws, so consistency > 0
    mode = make_mode("mean_teacher", dropout=0.0)
    seen = {}
    mode.model.register_forward_pre_hook(lambda m, a: seen.setdefault("student", []).append(a[0]))
    mode.ema.model.register_forward_pre_hook(lambda m, a: seen.setdefault("teacher", []).append(a[0]))
    _, logs = mode.step(batch, 1.0)
    xs, xt = seen["student"][-1], seen["teacher"][-1]
    assert xs.shape == xt.shape and not torch.equal(xs, xt)
    assert logs["cons"].item() > 0
    assert logs["w_cons"] == pytest.approx(mode.hp["w_max"])
    assert make_mode("mean_teacher").step(batch, 0.0)[1]["w_cons"] == pytest.approx(10 * math.exp(-5))


def test_ema_updates_bn_buffers_and_skips_integer():
    student = build_model(load_config(None, ["model.params={width: 0.125}"]), C, seed=0)
    ema = ssl.EMA(student, decay=0.999)
    student.train()
    for _ in range(3):  # BN statistics move; counter = 3
        student(torch.randn(4, 1, 32, 32) * 3 + 1)
    teacher = ema.model.state_dict()
    key = "backbone.blocks.0.bn1"
    old = teacher[key + ".running_mean"].clone()
    ema.update(student)  # t = 1: d = 0.5
    s = student.state_dict()
    assert torch.allclose(teacher[key + ".running_mean"], 0.5 * old + 0.5 * s[key + ".running_mean"])
    assert not torch.equal(teacher[key + ".running_mean"], old)
    assert teacher[key + ".num_batches_tracked"].dtype == torch.long
    assert int(teacher[key + ".num_batches_tracked"]) == 0 and int(s[key + ".num_batches_tracked"]) == 3
    w = "heads.h.weight"
    before = teacher[w].clone()
    with torch.no_grad():
        student.heads["h"].weight += 1.0
    ema.update(student)  # t = 2: d = 2 / 3
    assert torch.allclose(teacher[w], 2 / 3 * before + 1 / 3 * student.state_dict()[w])
    ema.t, before = 10**6, teacher[w].clone()
    ema.update(student)  # decay capped at 0.999
    assert torch.allclose(teacher[w], 0.999 * before + 0.001 * student.state_dict()[w])
    assert not any(p.requires_grad for p in ema.model.parameters())


# --------------------------------------------------------------------------------------------------- FMUC / VAT


def test_fmuc_mc_passes_differ_and_keep_bn():
    mode = make_mode("fmuc", dropout=0.5)
    mode.model.train()
    batch = make_batch(mode)
    before = bn_state(mode.model)
    ps = mode.mc_probs(batch["ux"])
    assert ps.shape == (5, len(batch["ux"]), C)
    assert not torch.equal(ps[0], ps[1])  # dropout on
    assert same_bn(before, bn_state(mode.model)) and mode.model.training and mode.model.drop.training
    yhat, mask = mode.select(batch)
    assert yhat.shape == mask.shape == (len(batch["ux"]), C)
    with pytest.raises(ValueError, match="model.dropout"):
        make_mode("fmuc", dropout=0.0)


def test_fmuc_selection_rule(monkeypatch):
    mode = make_mode("fmuc")
    ps = torch.tensor([[[0.95, 0.5, 0.05, 0.99]], [[0.93, 0.6, 0.02, 0.7]]])  # (N=2, B=1, 4)
    monkeypatch.setattr(mode, "mc_probs", lambda ux: ps)
    yhat, mask = mode.select({"ux": None, "y": torch.zeros(1, C)})
    # mean - std >= 0.9 for column 0 (0.94 - 0.014), mean + std <= 0.1 for column 2; column 3 too uncertain
    assert torch.equal(mask, torch.tensor([[True, False, True, False]]))
    assert torch.equal(yhat, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # positives: the kept ones only


def test_vat_perturbation_norm_and_bn():
    mode = make_mode("vat")
    mode.model.train()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad(), ssl.frozen_bn(mode.model, no_dropout=True):
        p = torch.sigmoid(mode.logits(x))
    before = bn_state(mode.model)
    r = mode.perturbation(x, p)
    assert same_bn(before, bn_state(mode.model))
    assert torch.allclose(r.flatten(1).norm(dim=1), mode.hp["eps_rel"] * x.flatten(1).norm(dim=1), rtol=1e-4)
    assert not r.requires_grad and all(p.grad is None for p in mode.model.parameters())
    # the adversarial direction raises the divergence more than a random one of the same norm
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad(), ssl.frozen_bn(mode.model, no_dropout=True):
        z = mode.logits(x)

        def kl(rr):
            return (ssl.masked_bce(mode.logits(x + rr), p) - ssl.masked_bce(z, p)).item()

        assert kl(r) > kl(d)


def test_frozen_bn_and_fgsm():
    model = build_model(load_config(None, ["model.params={width: 0.125}"]), C, seed=0).train()
    x = torch.randn(3, 1, 32, 32)
    before = bn_state(model)
    with ssl.frozen_bn(model):
        model(x)
    assert same_bn(before, bn_state(model))
    adv = ssl.fgsm(model, x, 0.02, C)
    assert same_bn(before, bn_state(model)) and all(p.grad is None for p in model.parameters())
    step = (adv - x).abs().flatten(1).amax(1)
    assert torch.allclose(step, 0.02 * x.flatten(1).std(1), rtol=1e-5)
    model(x)
    assert not same_bn(before, bn_state(model))  # restored: statistics update again


def test_deep_co_training_second_network():
    mode = make_mode("deep_co_training")
    p1, p2 = list(mode.model.parameters()), list(mode.net2.parameters())
    assert len(list(mode.parameters())) == len(p1) + len(p2)
    assert not torch.equal(p1[0], p2[0]) and mode.eval_model() is mode.model
    assert mode.net2.config == mode.model.config


# ---------------------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_label_stats_by_hand():
    st = PseudoLabelStats()
    yhat = torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    truth = torch.tensor([[1.0, 0, 0, 1], [1, 1, 0, 0]])
    st.update(yhat, mask, truth)
    # selected positives: (0,0) (0,2) (1,0) -> 2 true of 3; true positives: (0,0) (0,3) (1,0) (1,1) -> 2 of 4
    out = st.logs()
    assert out == pytest.approx({"pl_used": 6 / 8, "pl_precision": 2 / 3, "pl_recall": 2 / 4, "pl_pos": 3 / 2})
    assert st.logs() == {}
    st.update(yhat, torch.zeros_like(mask))
    assert st.logs() == {"pl_used": 0.0, "pl_pos": 0.0}  # no truth: quantity only
    noisy = torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 0]])  # given labels: 3, kept as positives: 2
    st.update(yhat, None, None, noisy)
    assert st.logs()["pl_kept"] == pytest.approx(2 / 3)


def test_pseudo_label_teacher_lazy_and_refreshed():
    mode = make_mode("pseudo_label", "ssl.pseudo_label={rounds: 2}")
    assert mode.teacher is None
    init = {k: v.clone() for k, v in mode.model.state_dict().items()}
    batch = make_batch(mode)
    loss, _ = mode.step(batch, 0.1)
    assert all(torch.equal(init[k], v) for k, v in mode.teacher.state_dict().items())
    with torch.no_grad():
        mode.model.heads["h"].weight += 1.0
    mode.step(batch, 0.4)  # same round: teacher unchanged
    assert torch.equal(mode.teacher.heads["h"].weight, init["heads.h.weight"])
    mode.step(batch, 0.6)  # round 2: refreshed from the student
    assert torch.equal(mode.teacher.heads["h"].weight, mode.model.heads["h"].weight) and mode.round == 1
    assert make_mode("pseudo_label", "train.epochs=10", "ssl.pseudo_label={refresh_epochs: 3}").round_at(0.65) == 2
    assert make_mode("pseudo_label", "ssl.pseudo_label={rounds: 1}").round_at(0.99) == 0


# ------------------------------------------------------------------------------------------------------ engine fit


def test_fit_one_epoch_each_mode(prepared, tmp_path):
    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset

    cfg0 = prepared()
    ds = load_dataset(cfg0.data.root, check_audio=False)
    failures = []
    for name in SSL_MODES:
        cfg = prepared(
            f"train.mode={name}",
            "train.epochs=1",
            "train.steps_per_epoch=2",
            "train.batch_size=4",
            "model.dropout=0.2",
            "train.lr_warmup_epochs=0",
        )
        cur, noisy = FeatureCache.open(cfg, "curated"), FeatureCache.open(cfg, "noisy")
        labelled = make_clipset(cur, ds.curated[4:], ds.classes)
        unlabelled = make_clipset(noisy, ds.noisy, ds.classes, truth_df=ds.noisy)  # noisy labels as "truth"
        val = make_clipset(cur, ds.curated[:4], ds.classes)
        model = build_model(cfg, ds.n_classes, seed=0)
        out = tmp_path / "fits" / name
        try:
            fit(cfg, out, model, name, ds.classes, labelled, unlabelled, val)
            h = pd.read_csv(out / "metrics.csv")
            assert len(h) == 1 and np.isfinite(h["loss"]).all() and np.isfinite(h["val_lwlrap"]).all()
            assert (out / "best.pt").exists() and (out / "done.json").exists()
            if name in PL_MODES:
                assert {"pl_used", "pl_precision", "pl_recall"} <= set(h.columns)
        except Exception as e:  # report every failing mode at once
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_fmuc_model_gets_dropout_when_config_has_none():
    cls = mode_class("fmuc")
    assert cls.model_dropout(load_config(None, ["model.dropout=0"])) == 0.3
    assert cls.model_dropout(load_config(None, ["model.dropout=0.1"])) == 0.1
    assert cls.model_dropout(load_config(None, ["model.dropout=0", "ssl.fmuc={dropout: 0.5}"])) == 0.5
    assert mode_class("fixmatch").model_dropout(load_config(None, ["model.dropout=0"])) == 0.0


# --------------------------------------------------------------------------------------- co-training, FMUC dropout


def test_deep_co_training_second_network_starts_from_the_same_source(tmp_path):
    from pipeline.engine import init_from_checkpoint, save_checkpoint

    src = make_mode("fixmatch", seed=5).model  # a "warm-up" of the same architecture, head h only
    save_checkpoint(tmp_path / "warm.pt", src, load_config(None, []), list("abcde"))
    cfg = load_config(None, ["train.mode=deep_co_training", "train.batch_size=4", "model.params={width: 0.125}"])
    model = init_from_checkpoint(build_model(cfg, C, seed=0), tmp_path / "warm.pt")
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, C),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    mode = create_mode("deep_co_training", ctx)
    own, other = mode.model.state_dict(), mode.net2.state_dict()
    assert model.init_keys and all(torch.equal(own[k], other[k]) for k in model.init_keys)
    # scratch: every tensor drawn with another seed, so the two networks differ
    fresh = make_mode("deep_co_training")
    a, b = fresh.model.state_dict(), fresh.net2.state_dict()
    assert not torch.equal(a["backbone.blocks.0.conv1.weight"], b["backbone.blocks.0.conv1.weight"])


def test_fmuc_builds_dropout_into_every_block():
    cfg = load_config(None, ["train.mode=fmuc", "ssl.fmuc={dropout: 0.4}"])
    cls = mode_class("fmuc")
    assert cls.model_block_dropout(cfg) == 0.4 and cls.model_dropout(cfg) == 0.4
    assert mode_class("fixmatch").model_block_dropout(cfg) == 0.0
    from models import dropout_modules

    model = build_model(cfg, C, seed=0, dropout=cls.model_dropout(cfg), block_dropout=cls.model_block_dropout(cfg))
    n_blocks = len(model.backbone.blocks)
    assert len(dropout_modules(model)) == n_blocks + 1  # one per block and one before the heads
