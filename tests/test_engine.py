import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import create_model
from pipeline import train, warmup
from pipeline.cache import FeatureCache
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.engine import build_model, fit, init_from_checkpoint, load_checkpoint, lr_factor, make_clipset
from pipeline.utils import ROOT, UserError


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config(None, ["train.epochs=10", "train.lr_warmup_epochs=2"])
    f = [lr_factor(s, 5, cfg) for s in range(50)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear ramp over 10 steps
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01  # cosine down to ~0
    assert f[10 + 20] == pytest.approx(0.5, abs=0.02)  # halfway through the cosine


def small_fit(cfg, out):
    ds = load_dataset(cfg.data.root, check_audio=False)
    clips = make_clipset(FeatureCache.open(cfg, "curated"), ds.curated, ds.classes)
    model = build_model(cfg, ds.n_classes, heads=("h",), seed=cfg.run.seed)
    return fit(cfg, out, model, "supervised", ds.classes, clips, val=clips), model


def test_resume_gives_same_weights_as_uninterrupted(prepared, tmp_path, monkeypatch):
    from pipeline.engine import resume  # write_checkpoints writes last.pt through its save_checkpoint

    cfg = prepared("train.mode=supervised", "train.epochs=3", "model.dropout=0.2")
    small_fit(cfg, tmp_path / "a")

    class Stop(Exception):
        pass

    real_save = resume.save_checkpoint

    def save_then_stop(path, *a, **k):  # dies right after epoch 1's last.pt, as a kill there would
        real_save(path, *a, **k)
        if Path(path).name == "last.pt" and k.get("epoch") == 1:
            raise Stop

    monkeypatch.setattr(resume, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        small_fit(cfg, tmp_path / "c")
    monkeypatch.setattr(resume, "save_checkpoint", real_save)
    assert not (tmp_path / "c" / "done.json").exists()
    torch.manual_seed(12345)  # the process's RNG state differs from a fresh run's
    small_fit(cfg, tmp_path / "c")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    c = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], c[k]), k
    assert pd.read_csv(tmp_path / "c" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_checkpoint_is_self_describing(prepared, tmp_path):
    cfg = prepared("train.mode=supervised", "train.epochs=1")
    small_fit(cfg, tmp_path / "m")
    ck = load_checkpoint(tmp_path / "m" / "best.pt")
    model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    assert ck["cfg"]["model"]["name"] == "vgg8" and len(ck["classes"]) == 5 and ck["epoch"] == 1
    x = torch.randn(2, 1, 32, 40)
    model.eval()
    assert model(x)["h"].shape == (2, 10)


def test_corrupt_checkpoint_named(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="x.pt: not a readable checkpoint"):  # a user's file: exit 2, one line
        load_checkpoint(tmp_path / "x.pt")


def test_init_from_copies_h_into_g(prepared, tmp_path):
    cfg = prepared()
    src = build_model(cfg, 5, heads=("h",))
    torch.save({"model": src.state_dict(), "model_config": src.config}, tmp_path / "w.pt")
    dst = init_from_checkpoint(build_model(cfg, 5, heads=("h", "g")), tmp_path / "w.pt")
    assert torch.equal(dst.heads["g"].weight, src.heads["h"].weight)
    assert torch.equal(
        dst.backbone.state_dict()[next(iter(dst.backbone.state_dict()))],
        src.backbone.state_dict()[next(iter(src.backbone.state_dict()))],
    )


def test_warmup_then_train_writes_artifacts_and_skips_finished_folds(prepared, capsys):
    warmup.main(prepared(stage="warmup"))
    w = Path("runs/base/warmup")
    assert (w / "last.pt").exists() and (w / "curves.png").exists() and (w / "done.json").exists()
    assert len(pd.read_csv(w / "metrics.csv")) == 2  # the explicit train.epochs=2 override beats warmup.epochs=1
    res = train.main(prepared("train.mode=supervised", stage="train"))
    t = Path("runs/base/train")
    assert 0 <= res["oof_lwlrap"] <= 1 and "OOF lwlrap" in capsys.readouterr().out
    oof = pd.read_csv(t / "oof.csv")
    assert len(oof) == 24 and (t / "curves.png").exists() and (t / "summary.json").exists()
    for k in range(3):
        assert {"best.pt", "last.pt", "metrics.csv", "oof.csv", "done.json"} <= {
            p.name for p in (t / f"fold_{k}").iterdir()
        }
    mtimes = {p: p.stat().st_mtime_ns for p in t.glob("fold_*/best.pt")}
    train.main(prepared("train.mode=supervised", stage="train"))
    assert mtimes == {p: p.stat().st_mtime_ns for p in t.glob("fold_*/best.pt")}


def test_train_runs_missing_folds_and_warmup_first(prepared):
    import shutil

    shutil.rmtree("runs/base/folds")
    res = train.main(prepared("train.folds=[0]", stage="train"))  # teacher_student from the warm-up
    assert (Path("runs/base/folds/done.json")).exists() and (Path("runs/base/warmup/done.json")).exists()
    assert 0 <= res["oof_lwlrap"] <= 1
    assert "initialised" in Path("runs/base/train/log.txt").read_text()


def test_kill_mid_epoch_then_resume(prepared, tmp_path):
    """kill -9 while fold 1 trains; the rerun keeps fold 0 and finishes fold 1 from its last.pt."""
    cfg = prepared()
    ov = [
        f"data.root={cfg.data.root}",
        f"features.cache_dir={cfg.features.cache_dir}",
        "run.workers=1",
        "run.progress=false",
        "features.n_mels=32",
        "model.params={width: 0.125}",
        "train.frames=32",
        "train.batch_size=8",
        "folds.n_splits=3",
        "train.mode=supervised",
        "train.init_from=null",
        "train.epochs=8",
        "train.steps_per_epoch=12",
        "train.eval_hop=16",
    ]
    cmd = [sys.executable, "-m", "pipeline.train", "--config", str(ROOT / "configs/base.yaml"), *ov]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fold1 = tmp_path / "runs/base/train/fold_1"
    deadline = time.time() + 120
    while not (fold1 / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGSTOP)  # freeze at once: seven epochs of fold 1 are still to run
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "runs/base/train/fold_0/done.json").exists()
    assert not (fold1 / "done.json").exists()
    fold0_best = (tmp_path / "runs/base/train/fold_0/best.pt").stat().st_mtime_ns
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stderr and "OOF lwlrap" in out.stdout
    assert (tmp_path / "runs/base/train/fold_0/best.pt").stat().st_mtime_ns == fold0_best
    assert pd.read_csv(fold1 / "metrics.csv")["epoch"].tolist() == list(range(1, 9))


def test_noisy_labels_as_is_join_the_labelled_stream(prepared):
    from pipeline.engine import batch_stream, concat_clipsets

    cfg = prepared()
    ds = load_dataset(cfg.data.root, check_audio=False)
    cur = make_clipset(FeatureCache.open(cfg, "curated"), ds.curated, ds.classes)
    noisy = make_clipset(FeatureCache.open(cfg, "noisy"), ds.noisy, ds.classes)
    both = concat_clipsets(cur, noisy)
    assert len(both) == 40 and both.fnames[24] == ds.noisy["fname"][0]
    assert np.array_equal(both.get(24), noisy.get(0)) and np.array_equal(both.y[24:], noisy.y)
    rows = np.concatenate([r for _, _, r in batch_stream(both, 8, 5, 32, np.random.default_rng(0))])
    assert sorted(rows) == list(range(40))  # one pass covers curated and noisy clips
    with pytest.raises(ValueError, match="several caches"):
        both.cache  # noqa: B018  (the property raises: what the test checks)


def test_labelled_fraction_is_stratified():
    from pipeline.train import labelled_split

    rng = np.random.default_rng(0)
    y = np.zeros((400, 8))
    y[np.arange(400), rng.integers(0, 8, 400)] = 1
    mask = labelled_split(y, 0.1, seed=0)
    assert mask.sum() == 40
    per_class = y[mask].sum(0)
    assert per_class.min() >= 3 and per_class.max() <= 7  # about 5 of each class
    assert labelled_split(y, 1.0, 0).all()
    with pytest.raises(ValueError, match="labelled_fraction"):
        labelled_split(y, 1.5 - 2, 0)


def test_labelled_fraction_run_uses_rest_as_unlabelled(prepared):
    res = train.main(
        prepared(
            "train.mode=fixmatch",
            "train.init_from=null",
            "data.labelled_fraction=0.5",
            "train.folds=[0]",
            "train.epochs=1",
            "train.steps_per_epoch=2",
            stage="train",
        )
    )
    log = Path("runs/base/train/log.txt").read_text()
    assert "fold 0: 8 labelled, 8 unlabelled" in log and 0 <= res["oof_lwlrap"] <= 1
    m = pd.read_csv("runs/base/train/fold_0/metrics.csv")
    assert "pl_precision" in m  # the unlabelled clips' truth is known


def test_unlabelled_noisy_adds_the_noisy_clips_without_their_labels(prepared):
    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset
    from pipeline.modes import mode_class
    from pipeline.train import fold_clips

    sizes = {}
    for flag in ("false", "true"):
        cfg = prepared("train.mode=fixmatch", "data.labelled_fraction=0.5", f"data.unlabelled_noisy={flag}")
        ds = load_dataset(cfg.data.root, check_audio=False)
        caches = FeatureCache.open(cfg, "curated"), FeatureCache.open(cfg, "noisy")
        tr = np.arange(len(ds.curated)) >= 4
        lab, unl, _ = fold_clips(cfg, ds, mode_class("fixmatch"), *caches, tr)
        sizes[flag] = (len(lab), len(unl))
        assert unl.y.sum() == 0  # labels dropped; the truth is kept where every part has it
        assert (unl.truth is not None) == (flag == "false" or ds.noisy_truth is not None)
    n_rest = sizes["false"][1]
    assert sizes["true"] == (sizes["false"][0], n_rest + len(ds.noisy))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_accepted_by_glibc():
    from pipeline.utils import keep_freed_memory

    assert keep_freed_memory() is True  # both mallopt calls succeeded
