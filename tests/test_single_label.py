"""Single-label datasets (data.single_label_csv): the CSV reader, folds from the CSV, softmax losses and metrics, the
single-label forms of the semi-supervised modes, and training through the train stage."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import make_dataset
from sklearn.metrics import roc_auc_score

from pipeline import features, folds, train
from pipeline.augment import build_batch_augment
from pipeline.config import CONFIG_DIR, load_config
from pipeline.data import DataError, load_single_label
from pipeline.engine import build_model
from pipeline.losses import build_loss, ce, multiclass_hinge, softmax_arcface, softmax_focal
from pipeline.metrics import accuracy, single_label_scores, weighted_auc
from pipeline.modes import TrainContext, create_mode
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
C = 4
TASK = ssl.SingleLabelTask()


def single_label_dataset(root, with_fold=True, n=30):
    """A tone dataset whose one-label curated clips are listed in root/sl.csv (fname relative to root)."""
    make_dataset(root, n_curated=n, n_noisy=2, n_test=2)
    cur = pd.read_csv(root / "train_curated.csv")
    cur = cur[~cur["labels"].str.contains(",")].reset_index(drop=True)
    df = pd.DataFrame({"fname": "train_curated/" + cur["fname"], "label": cur["labels"]})
    if with_fold:
        df["fold"] = [10 + 10 * (i % 3) for i in range(len(df))]  # fold names 10, 20, 30
    df.to_csv(root / "sl.csv", index=False)
    return df


# ------------------------------------------------------------------------------------------------------ the CSV


def test_reads_labelled_unlabelled_and_folds(tmp_path):
    df = single_label_dataset(tmp_path / "ds")
    df = df.astype(str)
    df.loc[len(df)] = ["train_noisy/" + pd.read_csv(tmp_path / "ds/train_noisy.csv")["fname"][0], "", ""]
    df.to_csv(tmp_path / "ds/sl.csv", index=False)
    ds = load_single_label(tmp_path / "ds", "sl.csv")
    assert ds.single_label and ds.classes == sorted(set(df["label"]) - {""})
    assert len(ds.curated) == len(df) - 1 and len(ds.noisy) == 1 and ds.noisy["labels"][0] == []
    assert all(len(labs) == 1 for labs in ds.curated["labels"]) and len(ds.test) == 0
    assert ds.folds.tolist() == df["fold"][:-1].astype(int).tolist()
    assert ds.wav_dirs["curated"] == tmp_path / "ds"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.rename(columns={"label": "labels"}), "header must be 'fname,label'"),
        (lambda df: df.assign(fold=["x"] + list(df["fold"][1:])), "row 2 .*fold 'x' is not an integer"),
        (lambda df: df.assign(label=["A,B"] + list(df["label"][1:])), "row 2 .*holds a comma"),
        (lambda df: pd.concat([df, df[:1]]), r"row \d+ .*duplicate fname \(first at row 2\)"),
        (
            lambda df: df.assign(fname=["../outside.wav"] + list(df["fname"][1:])),
            r"row 2 .*not a plain file name inside",
        ),
        (lambda df: df.assign(fname=["train_curated/nope.wav"] + list(df["fname"][1:])), "row 2 .*missing audio"),
        (lambda df: df.assign(label=""), "no labelled clip"),
        (lambda df: df.assign(label=df["label"][0]), "one class only"),
    ],
)
def test_bad_csv_names_file_and_row(tmp_path, edit, message):
    df = single_label_dataset(tmp_path / "ds")
    edit(df).to_csv(tmp_path / "ds/sl.csv", index=False)
    with pytest.raises(DataError, match=message) as e:
        load_single_label(tmp_path / "ds", "sl.csv")
    assert "sl.csv" in str(e.value)


def test_a_single_predefined_fold_is_an_error(tmp_path, cfg_for):
    df = single_label_dataset(tmp_path / "ds")
    df.assign(fold=7).to_csv(tmp_path / "ds/sl.csv", index=False)
    with pytest.raises(ValueError, match=r"sl.csv: its fold column names one fold \(7\)"):
        folds.main(cfg_for(tmp_path / "ds", "data.single_label_csv=sl.csv"))


def test_softmax_predictions_refuse_reversal_outputs():
    from pipeline.predict import window_probs

    assert torch.allclose(window_probs(torch.zeros(2, C), None, C, softmax=True), torch.full((2, C), 1 / C))
    with pytest.raises(ValueError, match="model.time_reversal"):
        window_probs(torch.zeros(2, 2 * C), None, C, softmax=True)


def test_folds_honour_the_csv_or_stratify(tmp_path, cfg_for):
    df = single_label_dataset(tmp_path / "ds")
    got = folds.main(cfg_for(tmp_path / "ds", "data.single_label_csv=sl.csv", "run.name=a"))
    assert got["given_fold"].tolist() == df["fold"].tolist()
    assert got["fold"].tolist() == [f // 10 - 1 for f in df["fold"]]  # 10, 20, 30 -> 0, 1, 2
    df.drop(columns="fold").to_csv(tmp_path / "ds/sl.csv", index=False)
    got = folds.main(
        cfg_for(
            tmp_path / "ds", "data.single_label_csv=sl.csv", "run.name=b", "folds.n_splits=2", "folds.group_by=none"
        )
    )
    per_class = pd.crosstab(df["label"], got["fold"])  # StratifiedKFold
    assert (per_class.max(axis=1) - per_class.min(axis=1)).max() <= 1


# ------------------------------------------------------------------------------------------------ losses, metrics


def test_softmax_losses_match_torch_and_hand_values():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(6, C, generator=g), torch.tensor([0, 1, 2, 3, 1, 0])
    y = F.one_hot(t, C).float()
    assert torch.allclose(ce(z, y), F.cross_entropy(z, t))
    assert torch.allclose(softmax_focal(z, y, gamma=0.0), F.cross_entropy(z, t))
    p = torch.softmax(z, 1)[torch.arange(6), t]
    assert torch.allclose(softmax_focal(z, y, gamma=2.0), (-((1 - p) ** 2) * p.log()).mean())
    cos = torch.tanh(z)
    assert torch.allclose(softmax_arcface(cos, y, s=30.0, m=0.0), F.cross_entropy(30 * cos, t), atol=1e-5)
    theta = torch.acos(cos[torch.arange(6), t])
    margin = (30 * cos).scatter(1, t[:, None], 30 * torch.cos(theta + 0.3)[:, None])
    assert torch.allclose(softmax_arcface(cos, y, s=30.0, m=0.3), F.cross_entropy(margin, t), atol=1e-4)
    assert torch.allclose(multiclass_hinge(z, y), F.multi_margin_loss(z, t))
    soft = 0.7 * y + 0.3 * y.roll(1, 0)  # mixup targets
    assert torch.allclose(ce(z, soft), 0.7 * F.cross_entropy(z, t) + 0.3 * F.cross_entropy(z, t.roll(1, 0)))
    fn = build_loss({"bce": 1.0, "focal": 0.5}, single_label=True)
    assert torch.allclose(fn({"h": z}, y), F.cross_entropy(z, t) + 0.5 * softmax_focal(z, y))


def test_accuracy_and_weighted_auc():
    rng = np.random.default_rng(0)
    label = rng.integers(0, C, 60)
    y, p = np.eye(C)[label], rng.dirichlet(np.ones(C), 60)
    assert accuracy(y, p) == pytest.approx((p.argmax(1) == label).mean())
    assert weighted_auc(y, p) == pytest.approx(roc_auc_score(label, p, multi_class="ovr", average="weighted"))
    s = single_label_scores(y, np.eye(C)[np.where(label == 0, 1, label)])  # class 0 always missed
    assert s["per_class_accuracy"][0] == 0 and np.all(s["per_class_accuracy"][1:] == 1)


# ----------------------------------------------------------------------------------------- single-label SSL forms


def test_single_label_helpers_on_hand_made_inputs():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    q = ssl.sharpen_softmax(p, 0.5)
    assert torch.allclose(q[0], torch.tensor([0.36, 0.09, 0.01]) / 0.46) and torch.allclose(q.sum(1), torch.ones(2))
    pi_l, pi_u = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    a = ssl.align_softmax(p, pi_l, pi_u)
    assert torch.allclose(a[0], torch.tensor([1.2, 0.3, 0.05]) / 1.55)
    assert torch.allclose(ssl.categorical_js(p, p), torch.zeros(2), atol=1e-6)
    one, other = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert ssl.categorical_js(one, other).item() == pytest.approx(math.log(2), abs=1e-4)


def test_single_label_selection_keeps_whole_rows():
    p = torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2], [0.01, 0.97, 0.02]])
    yhat, mask = TASK.select(p, 0.95, 0.05)
    assert yhat.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    _, mask = TASK.select(p, torch.tensor([0.99, 0.9, 0.5]), 0.05)  # threshold of the top class
    assert mask[:, 0].tolist() == [False, False, True]
    mean, std = torch.tensor([[0.95, 0.05], [0.92, 0.08]]), torch.tensor([[0.01, 0.01], [0.05, 0.05]])
    _, mask = TASK.select_mc(mean, std, 0.9, 0.1)
    assert mask[:, 0].tolist() == [True, False]  # 0.94 kept, 0.87 not
    z = torch.randn(3, 3)
    t = torch.tensor([2, 0, 1])
    assert torch.allclose(TASK.masked(z, F.one_hot(t, 3).float()), F.cross_entropy(z, t))  # per clip, not x C
    assert torch.allclose(
        TASK.masked(z, F.one_hot(t, 3).float(), mask=torch.tensor([[1.0], [0], [0]]).expand(3, 3)),
        F.cross_entropy(z[:1], t[:1]) / 3,
    )  # constant denominator


def make_mode(name, seed=0, dropout=0.2):
    cfg = load_config(
        None,
        [
            f"train.mode={name}",
            "train.batch_size=4",
            "model.params={width: 0.125}",
            f"model.dropout={dropout}",
            "model.time_reversal=false",
            "data.single_label_csv=x.csv",
            "loss.focal=0",
            "loss.bce=1",
            "loss.arcface=0",
        ],
    )
    model = build_model(cfg, C, seed=seed)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss, single_label=True),
        build_batch_augment(cfg.augment, C, False),
        C,
        torch.device("cpu"),
        torch.Generator().manual_seed(seed),
        total_steps=10,
        single_label=True,
    )
    return create_mode(name, ctx)


def make_batch(mode, seed=1):
    b, bu = mode.batch_sizes()
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, 1, 32, 32, generator=g),
        "y": F.one_hot(torch.arange(b) % C, C).float(),
        "idx": np.arange(b),
        "ux": torch.randn(bu, 1, 32, 32, generator=g),
        "uy": torch.zeros(bu, C),
        "uidx": np.arange(bu),
        "utruth": F.one_hot(torch.arange(bu) % C, C).float(),
    }


@pytest.mark.parametrize("name", SSL_MODES)
def test_each_mode_steps_in_single_label_form(name):
    mode = make_mode(name)
    assert isinstance(mode.task, ssl.SingleLabelTask)
    loss, logs = mode.step(make_batch(mode), 0.5)
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in logs.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mode.parameters())
    pl = mode.epoch_logs()
    if "pl_pos" in pl:  # one-hot pseudo-labels: at most one positive per clip
        assert pl["pl_pos"] <= 1.0


def test_single_label_guesses_are_distributions():
    mm = make_mode("mixmatch")
    batch = make_batch(mm)
    guesses = []
    orig = ssl.mixup

    def spy(x, t, alpha, g, **kw):
        guesses.append(t)
        return orig(x, t, alpha, g, **kw)

    ssl.mixup = spy
    try:
        mm.step(batch, 0.5)
    finally:
        ssl.mixup = orig
    t = guesses[0]
    assert torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-5)  # labelled one-hot + sharpened guesses
    rm = make_mode("remixmatch")
    q = rm.guess(batch["y"], batch["ux"])
    assert torch.allclose(q.sum(1), torch.ones(len(q)), atol=1e-5)


def test_fixmatch_single_label_masks_rows_by_top_probability():
    mode = make_mode("fixmatch", dropout=0.0)  # deterministic passes
    batch = make_batch(mode)
    with torch.no_grad(), ssl.frozen_bn(mode.model):  # the weak pass as select makes it
        p = torch.softmax(mode.logits(batch["ux"]), 1)
    tau = float(p.max(1).values.median())
    mode.hp["tau_pos"] = tau
    yhat, mask = mode.select(batch)
    assert torch.equal(mask[:, 0], p.max(1).values >= tau) and (mask == mask[:, :1]).all()
    assert torch.equal(yhat.argmax(1), p.argmax(1)) and torch.equal(yhat.sum(1), torch.ones(len(p)))


def test_teacher_student_has_no_single_label_form():
    with pytest.raises(ValueError, match="teacher_student has no single-label form"):
        make_mode("teacher_student")


# ---------------------------------------------------------------------------------------------- the train stage


def test_train_stage_single_label(tmp_path, cfg_for, capsys):
    df = single_label_dataset(tmp_path / "ds", n=36)
    ov = [
        "model.params={width: 0.125}",
        "train.frames=32",
        "train.batch_size=8",
        "train.eval_hop=16",
        "train.epochs=2",
        "run.name=sl",
        "data.single_label_csv=sl.csv",
    ]

    def cfg(*more):
        return cfg_for(tmp_path / "ds", *ov, *more, config=CONFIG_DIR / "demo_single.yaml")

    features.main(cfg())
    res = train.main(cfg())
    assert res["n_clips"] == len(df) and len(res["fold_accuracy"]) == 3  # the CSV's 3 folds
    assert 0 <= res["oof_accuracy"] <= 1 and 0 <= res["oof_weighted_auc"] <= 1
    assert res["fold_accuracy_mean"] == pytest.approx(np.mean(res["fold_accuracy"]))
    assert "OOF accuracy" in capsys.readouterr().out
    oof = pd.read_csv("runs/sl/train/oof.csv")
    assert np.allclose(oof.drop(columns="fname").sum(axis=1), 1, atol=1e-4)  # softmax probabilities
    assert "val_accuracy" in pd.read_csv("runs/sl/train/fold_0/metrics.csv")
    # a semi-supervised mode on half the labels, the rest unlabelled
    res = train.main(cfg("train.mode=fixmatch", "data.labelled_fraction=0.5", "run.name=sl_fm", "train.folds=[0]"))
    assert "pl_precision" in pd.read_csv("runs/sl_fm/train/fold_0/metrics.csv")
    # config errors name the key
    with pytest.raises(ValueError, match="model.time_reversal must be false"):
        train.main(cfg("model.time_reversal=true"))
    with pytest.raises(ValueError, match="train.init_from=warmup"):
        train.main(cfg("train.init_from=warmup"))
