"""Tests of the backbones' dropout, parametrised over the registry plus timm models: every backbone applies all of
its dropout through modules that models.dropout_modules lists, so the modes' switches reach it. Dropout off
(those modules' training False) makes two train-mode passes equal; MC dropout (eval mode, those modules on) makes
two passes differ, and every one of the modules is reached and random."""

import pytest
import torch

from models import build_backbone, create_model, dropout_modules, list_models
from pipeline.modes.common import frozen_bn, mc_dropout

# timm models at small sizes: a ResNet (DropPath, F.dropout head in timm), EfficientNet-style blocks, a ViT with
# fused attention and attention dropout, and a model without stochastic depth (ghostnet: no drop_path_rate)
TIMM = {
    "timm:resnet18": {},
    "timm:mobilenetv3_small_050": {},
    "timm:ghostnet_050": {},
    "timm:vit_tiny_patch16_224": {"img_size": (32, 64), "patch_size": 8, "depth": 2, "attn_drop_rate": 0.3},
}
MODELS = list_models() + list(TIMM)
# small, fast settings per backbone, as in tests/test_models.py
SMALL = {
    "vgg8": {"width": 0.125},
    "cnn_skip": {"width": 0.125},
    "wrn28_2": {"depth": 10, "widen": 1},
    "cnn14": {"width": 1 / 16, "n_mels": 32},
    **TIMM,
}
N_CLASSES = 5


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name, dropout=0.3, block_dropout=0.3, **params):
    torch.manual_seed(0)
    return create_model(
        name, N_CLASSES, dropout=dropout, block_dropout=block_dropout, params={**SMALL.get(name, {}), **params}
    )


def batch():
    return torch.randn(2, 1, 32, 64, generator=torch.Generator().manual_seed(1))  # (B, 1, F, T)


def is_per_sample(m):
    """Stochastic depth drops whole samples: a batch of 2 can draw the same mask twice."""
    return type(m).__name__ == "DropPath"


@pytest.mark.parametrize("name", MODELS)
def test_no_dropout_passes_agree(name):
    model, x = make(name).train(), batch()
    assert dropout_modules(model)
    with torch.no_grad(), frozen_bn(model):  # the modes' switches (pipeline/modes/common.py)
        on = model(x)["h"], model(x)["h"]
        with frozen_bn(model, no_dropout=True):
            a, b = model(x), model(x)
    assert not torch.equal(*on)  # dropout is really there in train mode ...
    for k in a:
        assert torch.equal(a[k], b[k]), k  # ... and nothing random is left once it is off
    assert all(m.training for m in model.modules())  # flags restored


@pytest.mark.parametrize("name", MODELS)
def test_mc_dropout_reaches_every_dropout_module(name):
    model, x = make(name).eval(), batch()
    drops = dropout_modules(model)
    calls = {m: [] for m in drops}
    hooks = [
        m.register_forward_hook(lambda mod, args, kwargs, out: calls[mod].append((args, kwargs, out)), with_kwargs=True)
        for m in drops
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad(), mc_dropout(model):
            a, b = model(x)["h"], model(x)["h"]
    finally:
        for h in hooks:
            h.remove()
    assert not torch.equal(a, b)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN running statistics kept
    with torch.no_grad():
        for i, m in enumerate(drops):
            assert len(calls[m]) == 2, f"dropout module {i} ({type(m).__name__}) called {len(calls[m])} times"
            (args, kwargs, out1), (_, _, out2) = calls[m]
            assert not m.training  # eval mode again after the MC passes
            assert not torch.equal(out1, m(*args, **kwargs)), f"module {i} ({type(m).__name__}) drew no mask"
            if not is_per_sample(m):
                assert not torch.equal(out1, out2), f"module {i} ({type(m).__name__}) gave the same output twice"


@pytest.mark.parametrize("name", MODELS)
def test_block_dropout_in_every_block(name):
    bb = make(name).backbone
    drops = dropout_modules(bb)
    if name in ("vgg8", "cnn_skip", "wrn28_2"):
        assert len(drops) == len(bb.blocks) and all(m.p == 0.3 for m in drops)
    elif name == "cnn14":  # block_dropout replaces PANNs' 0.2; fc_dropout stays
        assert [m.p for m in drops] == [0.3] * 6 + [0.5]
    else:
        assert bb.head_drop in drops and bb.head_drop.p == 0.3
        assert getattr(bb.model, "drop_rate", 0) == 0  # timm's own (often F.dropout) head dropout is off
        stochastic_depth = [m for m in drops if is_per_sample(m)]
        assert bool(stochastic_depth) == (name != "timm:ghostnet_050")  # ghostnet has no drop_path_rate


@pytest.mark.parametrize("name", MODELS)
def test_no_dropout_by_default(name):
    own = {"attn_drop_rate": 0.0} if "vit" in name else {}  # the ViT above has attention dropout of its own
    model = make(name, dropout=0.0, block_dropout=0.0, **own)
    if name == "cnn14":  # PANNs' own dropout: 0.2 per block, 0.5 before fc1
        assert [m.p for m in dropout_modules(model)] == [0.2] * 6 + [0.5]
        model = create_model("cnn14", N_CLASSES, params={**SMALL["cnn14"], "dropout": 0.0, "fc_dropout": 0.0})
    assert dropout_modules(model) == []
    x = batch()
    with torch.no_grad(), frozen_bn(model):
        assert torch.equal(model.train()(x)["h"], model(x)["h"])


def test_timm_drop_rate_becomes_a_module():
    """timm's drop_rate (F.dropout in ResNet's head) is applied by TimmBackbone's head_drop module instead."""
    model = make("timm:resnet18", dropout=0.0, block_dropout=0.0, drop_rate=0.2).train()
    assert model.backbone.model.drop_rate == 0 and model.backbone.head_drop.p == 0.2
    assert dropout_modules(model) == [model.backbone.head_drop]
    assert model.config["params"]["drop_rate"] == 0.2  # rebuilt the same way from a checkpoint
    x = batch()
    with torch.no_grad(), frozen_bn(model, no_dropout=True):
        assert torch.equal(model(x)["h"], model(x)["h"])
    # block_dropout gives way to an explicit drop_path_rate
    bb = build_backbone("timm:resnet18", block_dropout=0.3, drop_path_rate=0.1)
    assert max(m.drop_prob for m in dropout_modules(bb) if is_per_sample(m)) == pytest.approx(0.1)


def test_block_dropout_in_config_and_checkpoints():
    model = make("vgg8", block_dropout=0.25)
    assert model.config["block_dropout"] == 0.25 and "block_dropout" not in model.config["params"]
    for config in (model.config, model.export_inference().config):
        rebuilt = create_model(**config)
        rebuilt.load_state_dict(model.state_dict(), strict=False)
        assert [m.p for m in dropout_modules(rebuilt.backbone)] == [0.25] * 4
    old = {k: v for k, v in model.config.items() if k != "block_dropout"}  # a checkpoint from before the key
    assert dropout_modules(create_model(**old).backbone) == []
    with pytest.raises(TypeError, match="block_dropout"):
        create_model("vgg8", N_CLASSES, params={"width": 0.125, "block_dropout": 0.1})
    # dropout modules hold no tensors: the state dict (and PANNs checkpoint loading) is unchanged
    for name in ("vgg8", "cnn14", "wrn28_2"):
        assert list(make(name, block_dropout=0.3).state_dict()) == list(make(name, block_dropout=0.0).state_dict())


def test_build_model_block_dropout():
    from pipeline.config import load_config
    from pipeline.engine import build_model

    cfg = load_config(None, ["model.params={width: 0.125}", "model.block_dropout=0.2"])
    assert [m.p for m in dropout_modules(build_model(cfg, N_CLASSES).backbone)] == [0.2] * 4
    model = build_model(cfg, N_CLASSES, block_dropout=0.0)
    assert dropout_modules(model.backbone) == [] and model.config["block_dropout"] == 0.0
    assert load_config(None, []).model.block_dropout == 0.0
