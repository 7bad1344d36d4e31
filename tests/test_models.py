"""Tests of models/: every registered backbone (at small widths) and one small timm model through the Tagger,
PANNs and timm local-weight loading, and the reference architectures' sizes."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import adapt_input_conv

from models import Tagger, build_backbone, create_model, list_models
from models.panns import load_panns

TIMM = "timm:mobilenetv3_small_050"
MODELS = list_models() + [TIMM]
# small, fast settings per backbone (a backbone missing here is tested at its defaults)
SMALL = {
    "vgg8": {"width": 0.125},
    "cnn_skip": {"width": 0.125},
    "wrn28_2": {"depth": 10, "widen": 1},
    "cnn14": {"width": 1 / 16},
}
N_CLASSES = 5


def small(name, n_mels=64):
    params = dict(SMALL.get(name, {}))
    if name == "cnn14":
        params["n_mels"] = n_mels
    return params


def make(name, n_mels=64, **kw):
    torch.manual_seed(0)
    return create_model(name, N_CLASSES, **small(name, n_mels), **kw)


def settle(model, x, steps=2):
    """A few train-mode forwards so that BN running statistics differ from their initial values."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x + torch.randn_like(x))
    return model.eval()


def test_registry():
    assert set(list_models()) >= {"vgg8", "cnn_skip", "wrn28_2", "cnn14"}
    with pytest.raises(ValueError, match="vgg8"):
        create_model("nope", N_CLASSES)
    with pytest.raises(TypeError, match="bogus"):
        create_model("vgg8", N_CLASSES, bogus=1)
    with pytest.raises(ValueError, match="timm"):
        create_model("timm:no_such_model_xyz", N_CLASSES)
    with pytest.raises(ValueError, match="pool"):
        create_model("vgg8", N_CLASSES, width=0.125, pool="median")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("time_reversal", [True, False])
def test_forward_heads(name, time_reversal):
    model = make(name, time_reversal=time_reversal, heads=("h", "g"))
    n_out = N_CLASSES * (2 if time_reversal else 1)
    assert isinstance(model, Tagger) and model.n_out == n_out and model.n_classes == N_CLASSES
    out = model.eval()(torch.randn(2, 1, 64, 50))
    assert set(out) == {"emb", "h", "g", "h_cos", "g_cos"}
    assert out["emb"].shape == (2, model.backbone.out_dim)
    for k in ("h", "g", "h_cos", "g_cos"):
        assert out[k].shape == (2, n_out) and torch.isfinite(out[k]).all()
    assert out["h_cos"].abs().max() <= 1 + 1e-5


def test_head_selection_and_no_arcface():
    model = make("vgg8", heads=("h", "g")).eval()
    x = torch.randn(2, 1, 64, 20)
    assert set(model(x, heads=["g"])) == {"emb", "g", "g_cos"}
    assert set(make("vgg8", arcface=False)(x)) == {"emb", "h"}
    with pytest.raises(KeyError, match="no head"):
        model(x, heads=["z"])


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = make(name, heads=("h", "g"), dropout=0.1).train()
    out = model(torch.randn(2, 1, 64, 40))
    sum(v.float().mean() for k, v in out.items() if k != "emb").backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_mels", [64, 128])
def test_any_input_length(name, n_mels):
    model = make(name, n_mels).eval()
    with torch.no_grad():
        for t in (1, 7, 100, 501):
            out = model(torch.randn(2, 1, n_mels, t))
            assert out["h"].shape == (2, model.n_out) and torch.isfinite(out["h"]).all(), t
    model.train()(torch.randn(2, 1, n_mels, 1))  # training-mode BN on a 1-frame clip


@pytest.mark.parametrize("name", MODELS)
def test_export_inference_and_rebuild_from_config(name):
    x = torch.randn(3, 1, 64, 30)
    model = settle(make(name, heads=("h", "g"), dropout=0.2), x)
    ref = model(x)

    small_model = model.export_inference()
    assert list(small_model.heads) == ["h"] and len(small_model.arc) == 0 and not small_model.training
    assert small_model.config["heads"] == ["h"] and small_model.config["arcface"] is False
    assert len(small_model.state_dict()) < len(model.state_dict())
    assert set(small_model(x)) == {"emb", "h"}
    torch.testing.assert_close(small_model(x)["h"], ref["h"], rtol=0, atol=0)

    config = json.loads(json.dumps(model.config))  # a plain, serialisable dict
    for ckpt_model in (model, small_model):
        rebuilt = create_model(**json.loads(json.dumps(ckpt_model.config)))
        rebuilt.load_state_dict(ckpt_model.state_dict())  # strict: same architecture
        torch.testing.assert_close(rebuilt.eval()(x)["h"], ref["h"], rtol=0, atol=0)
    assert config["name"] == name and config["n_classes"] == N_CLASSES and "pretrained_path" not in config


def test_reference_vgg8_widths():
    bb = build_backbone("vgg8")
    convs = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) for c in convs) and bb.out_dim == 512
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules()) == 8
    # 3 poolings: 64 x 40 -> 8 x 5 before global pooling
    assert bb.blocks[3](torch.zeros(1, 256, 8, 5)).shape == (1, 512, 8, 5)


def test_cnn_skip_flag():
    assert build_backbone("cnn_skip", width=0.125).out_dim == 1 + 8 + 16 + 32 + 64
    assert build_backbone("cnn_skip", width=0.125, skip=False).out_dim == 64


def test_wrn28_2_size():
    bb = build_backbone("wrn28_2")
    n = sum(p.numel() for p in bb.parameters())
    assert 1.4e6 <= n <= 1.5e6, n
    assert bb.out_dim == 128 and sum(isinstance(m, torch.nn.Conv2d) for m in bb.modules()) == 1 + 24 + 3


def _panns_checkpoint(path, width, n_mels=64, bare=False):
    """A PANNs-format checkpoint from a small Cnn14: its tensors under PANNs' key names, plus the front end and
    AudioSet classifier entries that PANNs files carry."""
    torch.manual_seed(1)
    src = build_backbone("cnn14", width=width, n_mels=n_mels)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    src.bn0.running_mean.normal_()
    panns_names = {"bn0", "fc1"} | {f"conv_block{i}" for i in range(1, 7)}
    state = {k: v.clone() for k, v in src.state_dict().items()}
    assert {k.split(".")[0] for k in state} == panns_names and "conv_block1.conv1.weight" in state
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    state["logmel_extractor.melW"] = torch.randn(513, n_mels)
    state["fc_audioset.weight"] = torch.randn(527, src.out_dim)
    state["fc_audioset.bias"] = torch.randn(527)
    if path.suffix == ".safetensors":  # a safetensors file holds the bare tensors
        save_file(state, str(path))
    else:
        torch.save(state if bare else {"model": state, "iteration": 660000}, path)
    return src


@pytest.mark.parametrize("bare,suffix", [(False, ".pth"), (True, ".pth"), (True, ".safetensors")])
def test_load_panns(tmp_path, bare, suffix):
    path = tmp_path / f"Cnn14_small{suffix}"
    src = _panns_checkpoint(path, width=1 / 16, bare=bare)
    model = create_model("cnn14", N_CLASSES, width=1 / 16, n_mels=64, pretrained_path=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    report = model.backbone.pretrained_report
    assert not report["missing"] and "fc_audioset.weight" in report["skipped"]
    assert "spectrogram_extractor.stft.conv_real.weight" in report["skipped"]
    assert "pretrained_path" not in model.config

    # 64-bin PANNs into a 128-bin model: bn0 is skipped, the rest loads
    other = create_model("cnn14", N_CLASSES, width=1 / 16, n_mels=128)
    report = load_panns(other, path)
    assert "bn0.weight" in report["skipped"] and set(report["missing"]) == {
        k for k in other.backbone.state_dict() if k.startswith("bn0.")
    }
    assert torch.equal(other.backbone.conv_block6.conv2.weight, src.conv_block6.conv2.weight)


def test_load_panns_errors(tmp_path):
    path = tmp_path / "panns_w8.pth"
    _panns_checkpoint(path, width=1 / 8)
    with pytest.raises(ValueError, match="panns_w8.pth.*conflict"):
        create_model("cnn14", N_CLASSES, width=1 / 16, n_mels=64, pretrained_path=str(path))
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"something.else": torch.zeros(3)}}, junk)
    with pytest.raises(ValueError, match="junk.pth.*no tensor"):
        create_model("cnn14", N_CLASSES, width=1 / 16, n_mels=64, pretrained_path=str(junk))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_model("cnn14", N_CLASSES, width=1 / 16, pretrained_path=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("timm_name,suffix", [("mobilenetv3_small_050", ".pth"), ("resnet10t", ".safetensors")])
def test_timm_local_weights(tmp_path, timm_name, suffix):
    """A timm / torchvision state dict (.pth), or timm's published model.safetensors, loads with the same report."""
    torch.manual_seed(2)
    src = timm.create_model(timm_name, pretrained=False, in_chans=3, num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    model = create_model("timm:" + timm_name, N_CLASSES, pretrained_path=str(path))
    ours, theirs = model.backbone.model.state_dict(), src.state_dict()
    stem = src.pretrained_cfg["first_conv"] + ".weight"
    assert ours[stem].shape[1] == 1 and theirs[stem].shape[1] == 3
    torch.testing.assert_close(ours[stem], adapt_input_conv(1, theirs[stem]))
    torch.testing.assert_close(ours[stem], theirs[stem].sum(1, keepdim=True))
    rest = [k for k in ours if k != stem]
    assert rest and all(torch.equal(ours[k], theirs[k]) for k in rest)
    classifier = src.pretrained_cfg["classifier"] + ".weight"
    assert classifier in model.backbone.pretrained_report["skipped"] and not model.backbone.pretrained_report["missing"]
