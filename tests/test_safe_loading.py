"""Loading a model file never runs code (pipeline/model_files.py, pipeline.utils.load_weights_only): a file whose
unpickling would create a marker file, given at every place that accepts a model path (train.init_from, the warm-up
model, a fold's last.pt on resume, model.pretrained_path, infer's fold models, infer.runs' checkpoints in a bundle,
ssl.noisy_mix.select_from, a bundle's model files), is refused in one line naming it (exit 2) and the marker never
appears; checkpoints are written in weights-only forms, and an old one is converted once by a command."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import bundle, infer, model_files, predict_dir, train
from pipeline.cache import FeatureCache, feature_params
from pipeline.config import save_config
from pipeline.data import load_dataset
from pipeline.engine import build_model, load_checkpoint, load_model, make_clipset, save_checkpoint, train_key
from pipeline.modes import noisy_mix
from pipeline.predict import predict_settings
from pipeline.utils import CONVERT_COMMAND, NotPlainWeights, mark_done, sha256_file, user_errors


class Payload:
    """Unpickled with pickle's full power, it opens (creates) the marker file: code run by loading."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path: Path, marker: Path) -> Path:
    """A torch.save file that looks like a checkpoint and runs code when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "model_config": Payload(marker), "classes": ["a"]}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


def refused(capsys, stage, fn, path, marker):
    """fn() under the stage's user_errors: exit 2, one line `fattag <stage>: error: <path>: not a plain weights
    file ...`, and the marker never made."""
    with pytest.raises(SystemExit) as e:
        with user_errors(stage):
            fn()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fattag ")]
    assert e.value.code == 2 and len(lines) == 1, lines
    assert f"fattag {stage}: error: {path}: not a plain weights file" in lines[0], lines[0]
    assert CONVERT_COMMAND in lines[0] and not marker.exists()


def test_the_crafted_file_runs_code_when_fully_unpickled(tmp_path, marker):
    """The check below is worth something: pickle's full power (weights_only=False) does run the payload."""
    path = crafted(tmp_path / "x.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_init_from_and_pretrained_path_refuse_it(prepared, tmp_path, marker, capsys):
    evil = crafted(tmp_path / "shared" / "teammate.pt", marker)
    refused(capsys, "train", lambda: train.main(prepared(f"train.init_from={evil}")), evil, marker)
    pretrained = crafted(tmp_path / "shared" / "weights.pth", marker)
    cfg = prepared("train.init_from=null", f"model.pretrained_path={pretrained}", "train.folds=[0]")
    refused(capsys, "train", lambda: train.main(cfg), pretrained, marker)


def test_the_warmup_model_and_a_resumed_last_pt_refuse_it(prepared, marker, capsys):
    cfg = prepared("train.init_from=warmup", "train.folds=[0]")
    wcfg = train.warmup_config(cfg)
    last = crafted(Path("runs/base/warmup/last.pt"), marker)
    mark_done(last.parent, train_key(wcfg))  # a finished warm-up whose model was swapped
    refused(capsys, "train", lambda: train.main(cfg), last, marker)
    cfg = prepared("train.init_from=null", "train.folds=[0]")
    last = crafted(Path("runs/base/train/fold_0/last.pt"), marker)
    refused(capsys, "train", lambda: train.main(cfg), last, marker)


def fold_model(cfg, fdir: Path, classes):
    fdir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(fdir / "best.pt", build_model(cfg, len(classes), seed=0), cfg, classes, epoch=1)
    mark_done(fdir, "k")


def test_infer_and_a_bundle_of_infer_runs_refuse_it(prepared, marker, capsys):
    cfg = prepared()
    ds = load_dataset(cfg.data.root, check_audio=False)
    evil = crafted(Path("runs/base/train/fold_0/best.pt"), marker)
    mark_done(evil.parent, "k")
    refused(capsys, "infer", lambda: infer.main(prepared(stage="infer")), evil, marker)
    fold_model(cfg, evil.parent, ds.classes)  # this run's model is fine; the teammate's run (infer.runs) is not
    other = prepared("run.name=other", stage="infer")
    save_config(other, Path("runs/other/infer"))
    theirs = crafted(Path("runs/other/train/fold_0/best.pt"), marker)
    mark_done(theirs.parent, "k")
    refused(capsys, "bundle", lambda: bundle.main(prepared("infer.runs=[other]", stage="bundle")), theirs, marker)


def test_select_from_refuses_it(prepared, marker, capsys):
    from pipeline import folds

    cfg = prepared("train.mode=noisy_mix", "ssl.noisy_mix={select_from: other}")
    folds.main(prepared("run.name=other"))
    ds = load_dataset(cfg.data.root, check_audio=False)
    clips = make_clipset(FeatureCache.open(cfg, "noisy"), ds.noisy, ds.classes)
    evil = crafted(Path("runs/other/train/fold_0/best.pt"), marker)
    mark_done(evil.parent, "k")
    refused(capsys, "train", lambda: noisy_mix.selection_predictions(cfg, "other", 0, clips, load_model), evil, marker)


@pytest.mark.parametrize("name", ["fold_0.safetensors", "fold_0.pt"])
def test_a_bundles_model_file_is_never_unpickled(prepared, tmp_path, marker, capsys, name):
    """A bundle whose manifest (sha256 and all) names a crafted file: refused, with its name, before any model."""
    cfg = prepared()
    ds = load_dataset(cfg.data.root, check_audio=False)
    folder = tmp_path / "bundle"
    evil = crafted(folder / "weights" / "x" / name, marker)
    manifest = {
        "format": predict_dir.FORMAT,
        "classes": ds.classes,
        "features": feature_params(cfg),
        "normalisation": {"mean": 0.0, "std": 1.0},
        "predict": predict_settings(cfg),
        "ensemble": {"mean": "arithmetic"},
        "models": [
            {"file": f"weights/x/{name}", "sha256": sha256_file(evil), "fold": "fold_0", "weight": 1.0}
            | {"model_config": build_model(cfg, ds.n_classes).config}
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    args = ["--bundle", str(folder), "--audio", str(Path(cfg.data.root) / "test"), "--out", str(tmp_path / "s.csv")]
    with pytest.raises(SystemExit) as e:
        predict_dir.main([*args, "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"fattag predict_dir: error: {evil}: not a" in err and not marker.exists(), err
    assert not (tmp_path / "s.csv").exists()


def test_checkpoints_are_written_in_weights_only_forms(tmp_path):
    from pipeline.config import load_config

    cfg = load_config(None, ["model.params={width: 0.125}"])
    model = build_model(cfg, 3, seed=0)
    extra = {"best": np.float64(0.25), "counts": np.arange(3), "rng": np.random.default_rng(0).bit_generator.state}
    save_checkpoint(tmp_path / "c.pt", model, cfg, ["a", "b", "c"], **extra)
    ck = torch.load(tmp_path / "c.pt", weights_only=True)  # nothing beyond plain data in the file
    assert ck["best"] == 0.25 and type(ck["best"]) is float and torch.equal(ck["counts"], torch.arange(3))
    assert ck["rng"] == np.random.default_rng(0).bit_generator.state
    assert type(ck["model"]) is OrderedDict and hasattr(ck["model"], "_metadata")
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[0\]: a Payload"):
        model_files.plain({"x": [Payload(tmp_path / "m")]})
    state = model.state_dict()
    assert model_files.plain(state) is state  # nothing to change: the same object (and the same file bytes)


def test_an_old_checkpoint_is_refused_then_converted_by_the_command(tmp_path, capsys):
    """A checkpoint written before weights-only loading (a numpy scalar pickled in it) is refused with the one-time
    command that converts it; after the command it loads weights-only with the same contents."""
    path = tmp_path / "runs" / "old" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(2)}, "best": np.float64(0.5), "epoch": 3}, path)
    with pytest.raises(NotPlainWeights, match=rf"{path}: not a plain weights file.*numpy.*{CONVERT_COMMAND} {path}"):
        load_checkpoint(path)
    model_files.main(["convert", str(path)])
    ck = load_checkpoint(path)
    assert ck["best"] == 0.5 and ck["epoch"] == 3 and torch.equal(ck["model"]["w"], torch.ones(2))
    model_files.main(["convert", str(path)])
    out = capsys.readouterr().out
    assert "converted to a plain weights file" in out and "already a plain weights file" in out
    assert CONVERT_COMMAND == "python -m pipeline.model_files convert"


def test_a_safetensors_file_starts_a_run(prepared, tmp_path):
    """train.init_from takes a .safetensors model (an export's) as it takes a checkpoint."""
    cfg = prepared()
    src = build_model(cfg, 5, seed=3)
    model_files.write_safetensors(src.state_dict(), tmp_path / "m.safetensors", {"note": "x"})
    tensors, header = model_files.read_safetensors(tmp_path / "m.safetensors")
    assert header == {"note": "x"} and all(torch.equal(tensors[k], v) for k, v in src.state_dict().items())
    from pipeline.engine import init_from_checkpoint

    dst = init_from_checkpoint(build_model(cfg, 5, heads=("h", "g"), seed=4), tmp_path / "m.safetensors")
    assert torch.equal(dst.heads["g"].weight, src.heads["h"].weight)
