"""train.mode=noisy_mix (pipeline/modes/noisy_mix.py): curated and noisy clips in one batch, the noisy clips' weight,
soft bootstrapping, the separate noisy head and staged selection."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_ssl_modes import C, make_batch

from pipeline.augment import build_batch_augment
from pipeline.config import load_config
from pipeline.engine import ClipSet, build_model, fit, load_model, make_clipset
from pipeline.losses import build_loss
from pipeline.modes import TrainContext, create_mode, mode_class
from pipeline.modes import noisy_mix as nm


def make_mode(*overrides):
    cfg = load_config(None, ["train.mode=noisy_mix", "model.params={width: 0.125}", *overrides])
    model = build_model(cfg, C, heads=("h", "g"), seed=0)
    aug = build_batch_augment(cfg.augment, C, True)
    ctx = TrainContext(cfg, model, build_loss(cfg.loss), aug, C, torch.device("cpu"), torch.Generator().manual_seed(0))
    return create_mode("noisy_mix", ctx)


def loss_of(*overrides, batch_seed=1, flip_noisy=False):
    mode = make_mode("ssl.noisy_mix={n_curated: 4, n_noisy: 4}", *overrides)
    batch = make_batch(mode, seed=batch_seed)
    if flip_noisy:
        batch["uy"] = 1 - batch["uy"]
    loss, logs = mode.step(batch, 0.5)
    return mode, loss, logs


def test_step_trains_h_on_both_sets_and_leaves_g_alone():
    mode, loss, logs = loss_of()
    assert mode.batch_sizes() == (4, 4) and torch.isfinite(loss)
    assert set(logs) == {"loss_curated", "loss_noisy"}
    loss.backward()
    assert mode.model.heads["h"].weight.grad.abs().sum() > 0
    assert mode.model.heads["g"].weight.grad is None  # no loss reaches g without noisy_head
    assert "heads.g.weight" in mode.unused_parameters(mode.model)


def test_noisy_head_takes_the_noisy_clips():
    mode, loss, _ = loss_of("ssl.noisy_mix={n_curated: 4, n_noisy: 4, noisy_head: true}")
    loss.backward()
    assert mode.model.heads["g"].weight.grad.abs().sum() > 0
    assert mode.unused_parameters(mode.model) == []


def test_noisy_weight_scales_what_the_noisy_labels_cost():
    # weight 0: the noisy clips' labels do not enter the loss (their audio still shares the BN batch)
    same = [loss_of("ssl.noisy_mix={n_curated: 4, n_noisy: 4, weight: 0.0}", flip_noisy=f)[1] for f in (0, 1)]
    assert torch.allclose(same[0], same[1])
    differ = [loss_of(flip_noisy=f)[1] for f in (0, 1)]
    assert not torch.allclose(differ[0], differ[1])
    # the weighted sum: (N_V L_V + w N_W L_W) / (N_V + N_W)
    _, loss, logs = loss_of("ssl.noisy_mix={n_curated: 4, n_noisy: 4, weight: 0.5}")
    assert torch.allclose(loss, (4 * logs["loss_curated"] + 0.5 * 4 * logs["loss_noisy"]) / 8, atol=1e-5)


def test_bootstrap_moves_the_noisy_target_towards_the_model():
    _, _, hard = loss_of()
    _, _, soft = loss_of("ssl.noisy_mix={n_curated: 4, n_noisy: 4, beta: 0.7}")
    assert torch.allclose(hard["loss_curated"], soft["loss_curated"])
    assert not torch.allclose(hard["loss_noisy"], soft["loss_noisy"])
    # beta 0: the target is the model's own belief, whatever the given labels say
    zero = [loss_of("ssl.noisy_mix={n_curated: 4, n_noisy: 4, beta: 0.0}", flip_noisy=f)[2] for f in (0, 1)]
    assert torch.allclose(zero[0]["loss_noisy"], zero[1]["loss_noisy"])
    with pytest.raises(ValueError, match="beta"):
        loss_of("ssl.noisy_mix={beta: 1.5}")


def test_refuses_labelled_fraction_below_one():
    with pytest.raises(ValueError, match="labelled_fraction"):
        make_mode("data.labelled_fraction=0.5")


def clipset(y):
    n = len(y)
    return ClipSet([None], np.zeros(n, int), np.arange(n), np.array(y, float), None, [f"n{i}" for i in range(n)])


def test_staged_selection_keeps_clips_whose_label_the_model_ranks_top(monkeypatch):
    y = [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    p = np.array([[0.9, 0.1, 0, 0, 0], [0.9, 0.5, 0, 0, 0], [0, 0, 0.2, 0.6, 0.1], [0, 0, 0, 0.3, 0.2]], np.float32)
    monkeypatch.setattr(nm, "selection_predictions", lambda cfg, run, fold, clips, load_model: p)
    cls = mode_class("noisy_mix")
    cfg = load_config(None, ["train.mode=noisy_mix", "ssl.noisy_mix={select_from: other}"])
    kept = cls.select_unlabelled(cfg, 0, clipset(y))
    assert kept.fnames == ["n0", "n2"]  # n1's label is second, n3's second
    cfg2 = load_config(None, ["train.mode=noisy_mix", "ssl.noisy_mix={select_from: other, select_topk: 2}"])
    assert cls.select_unlabelled(cfg2, 0, clipset(y)).fnames == ["n0", "n1", "n2", "n3"]
    assert cls.select_unlabelled(cfg, "full", clipset(y)).fnames == [f"n{i}" for i in range(4)]
    plain = load_config(None, ["train.mode=noisy_mix"])
    assert len(cls.select_unlabelled(plain, 0, clipset(y))) == 4


def test_staged_selection_refuses_a_run_without_the_fold_or_with_other_folds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.name=mine", "train.mode=noisy_mix", "ssl.noisy_mix={select_from: other}"])
    with pytest.raises(FileNotFoundError, match="select_from=other"):
        nm.selection_predictions(cfg, "other", 0, clipset([[1, 0, 0, 0, 0]]), load_model)
    for run, folds in (("mine", [0, 1]), ("other", [1, 0])):
        (tmp_path / "runs" / run / "folds").mkdir(parents=True)
        pd.DataFrame({"fname": ["a", "b"], "fold": folds}).to_csv(tmp_path / f"runs/{run}/folds/folds.csv")
    (tmp_path / "runs/other/train/fold_0").mkdir(parents=True)
    (tmp_path / "runs/other/train/fold_0/done.json").write_text("{}")
    with pytest.raises(ValueError, match="not this run's"):
        nm.selection_predictions(cfg, "other", 0, clipset([[1, 0, 0, 0, 0]]), load_model)


def test_staged_selection_predicts_with_the_fold_model_once_and_anew_after_retraining(prepared, monkeypatch):
    import os

    from pipeline import folds
    from pipeline import predict as pred
    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset
    from pipeline.engine import save_checkpoint

    cfg = prepared("run.name=mine", "train.mode=noisy_mix", "ssl.noisy_mix={select_from: other}")
    folds.main(cfg)
    folds.main(prepared("run.name=other"))
    ds = load_dataset(cfg.data.root, check_audio=False)
    clips = make_clipset(FeatureCache.open(cfg, "noisy"), ds.noisy, ds.classes)
    fdir = Path("runs/other/train/fold_0")
    fdir.mkdir(parents=True)
    (fdir / "done.json").write_text("{}")
    models = [build_model(cfg, ds.n_classes, seed=s).eval() for s in (0, 1)]
    save_checkpoint(fdir / "best.pt", models[0], cfg, ds.classes)

    def direct(model):
        args = (clips.cache, clips.fnames, cfg.train.frames, cfg.infer.hop, ds.n_classes)
        return pred.predict_clips(model, *args)

    p = nm.selection_predictions(cfg, "other", 0, clips, load_model)
    assert p.shape == (len(ds.noisy), ds.n_classes)
    np.testing.assert_allclose(p, direct(models[0]), atol=1e-6)  # the fold model's own predictions
    assert len(list(fdir.glob("noisy_pred-*.npy"))) == 1
    with monkeypatch.context() as m:  # kept: a second fit of the fold reads them instead of predicting
        m.setattr(pred, "predict_clips", lambda *a, **k: pytest.fail("predicted again"))
        np.testing.assert_array_equal(nm.selection_predictions(cfg, "other", 0, clips, load_model), p)
    save_checkpoint(fdir / "best.pt", models[1], cfg, ds.classes)  # the source fold retrained: predicted anew
    t = (fdir / "best.pt").stat().st_mtime_ns + 10**9
    os.utime(fdir / "best.pt", ns=(t, t))
    np.testing.assert_allclose(
        nm.selection_predictions(cfg, "other", 0, clips, load_model), direct(models[1]), atol=1e-6
    )


def test_fit_one_epoch(prepared, tmp_path):
    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset

    cfg = prepared(
        "train.mode=noisy_mix",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "ssl.noisy_mix={n_curated: 4, n_noisy: 4, noisy_head: true, beta: 0.8}",
        "train.lr_warmup_epochs=0",
    )
    ds = load_dataset(cfg.data.root, check_audio=False)
    cur, noisy = FeatureCache.open(cfg, "curated"), FeatureCache.open(cfg, "noisy")
    model = build_model(cfg, ds.n_classes, heads=("h", "g"), seed=0)
    out = tmp_path / "fit"
    fit(
        cfg,
        out,
        model,
        "noisy_mix",
        ds.classes,
        make_clipset(cur, ds.curated[4:], ds.classes),
        make_clipset(noisy, ds.noisy, ds.classes),
        make_clipset(cur, ds.curated[:4], ds.classes),
    )
    h = pd.read_csv(out / "metrics.csv")
    assert len(h) == 1 and np.isfinite(h[["loss", "loss_curated", "loss_noisy", "val_lwlrap"]]).all().all()
