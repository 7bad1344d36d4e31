"""The backbone registry (timm-like): `@register_model("name")` on a backbone class or factory, then build by name.

@register_model("my_cnn")
class MyCNN(Backbone): ...                      # forward (B, 1, F, T) -> (B, out_dim)

list_models()                                   # ['cnn14', 'cnn_skip', 'vgg8', 'wrn28_2']; 'timm:<name>' also works
bb = build_backbone("vgg8", width=0.25)         # or "timm:resnet18", pretrained_path="weights/resnet18.pth"
"""

from __future__ import annotations

import inspect

_MODELS: dict = {}


def register_model(name: str):
    """Decorator: register a backbone class or factory (keyword parameters only) under `name`."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list:
    """Names of the registered backbones; any timm model is also accepted as 'timm:<name>'."""
    return sorted(_MODELS)


def model_params(name: str) -> list | None:
    """The `params` a registered backbone takes (block_dropout is create_model's own argument); None when it takes
    any keyword (a factory with **kwargs) or the name is not registered (timm:<name> passes its params to timm)."""
    if name not in _MODELS:
        return None
    sig = inspect.signature(_MODELS[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return None
    return sorted(set(sig) - {"block_dropout"})


def _check_params(name: str, params: dict):
    accepted = model_params(name)
    unknown = sorted(set(params) - set(accepted) - {"block_dropout"}) if accepted is not None else []
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for model {name!r}; it takes {accepted}")


def build_backbone(name: str, pretrained_path=None, **params):
    """A backbone (B, 1, F, T) -> (B, out_dim) by registered name or 'timm:<name>', with local weights if given.

    The loading report (loaded / skipped / missing tensor names) is kept as `backbone.pretrained_report`.
    """
    if name.startswith("timm:"):
        from .timm_backbone import TimmBackbone

        backbone = TimmBackbone(name[len("timm:") :], **params)
    elif name in _MODELS:
        _check_params(name, params)
        backbone = _MODELS[name](**params)
    else:
        raise ValueError(
            f"unknown model {name!r}; registered: {', '.join(list_models())} (or 'timm:<name>' for any timm model)"
        )
    if pretrained_path:
        backbone.pretrained_report = backbone.load_pretrained(pretrained_path)
    return backbone
