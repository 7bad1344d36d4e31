"""Any timm model as a backbone, 'timm:<name>': 1 input channel, no classifier, weights only from a local file.

    bb = build_backbone("timm:resnet18", pretrained_path="weights/resnet18.pth")   # timm or torchvision state dict
    bb = build_backbone("timm:resnet18", pretrained_path="resnet18/model.safetensors")   # timm's published file
    bb.out_dim                                                                      # 512

Local weights: the classifier is dropped and a 3-channel stem is summed to 1 channel (timm's adapt_input_conv).

Dropout: `block_dropout` becomes timm's stochastic depth (drop_path_rate: DropPath in every block, where the model
takes it) and the dropout on the pooled features. timm's own `drop_rate` (dropout before its classifier) is set to
0 in timm, which applies it with F.dropout in many models (resnet, efficientnet, mobilenetv3, ghostnet, ...), out of
reach of the modes' dropout switches; TimmBackbone applies it as the nn.Dropout `head_drop` instead (default 0, also
for models whose timm default is not, e.g. ghostnet's 0.2).
"""

from __future__ import annotations

import math

import timm
from timm.models._manipulate import adapt_input_conv
from torch import nn

from .base import Backbone, load_matching, read_state_dict, strip_prefix


def _names(v) -> tuple:
    return (v,) if isinstance(v, str) else tuple(v or ())


def _create(name: str, params: dict, optional: dict):
    """timm.create_model(name, in_chans=1, num_classes=0, **params, **optional), without the `optional` keyword
    arguments that the model does not take (e.g. drop_path_rate for vgg, densenet, ghostnet)."""
    while True:
        try:
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, **params, **optional)
        except TypeError as e:  # "... got an unexpected keyword argument 'drop_path_rate'"
            rejected = [k for k in optional if f"'{k}'" in str(e)]
            if not rejected:
                raise
            optional = {k: v for k, v in optional.items() if k not in rejected}


class TimmBackbone(Backbone):
    """`timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, **params)`: (B, 1, F, T) -> (B, out_dim).

    Inputs shorter than `min_size` (default: the model's total stride, e.g. 32) along F or T are tiled (repeated)
    up to it, so patchify stems and deep strides never see a side smaller than their kernel; tiling leaves the
    statistics of mean/max pooled features nearly unchanged.

    `head_drop`: nn.Dropout on the pooled features with params' drop_rate (default 0). block_dropout > 0 sets
    drop_rate and drop_path_rate where params do not (drop_path_rate only for models with stochastic depth).
    """

    def __init__(self, name: str, min_size: int | None = None, block_dropout: float = 0.0, **params):
        super().__init__()
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models('*{name[:6]}*')")
        head_p = params.pop("drop_rate", block_dropout)
        optional = {"drop_rate": 0.0}  # timm's pre-classifier dropout: head_drop below instead
        if block_dropout > 0 and "drop_path_rate" not in params:
            optional["drop_path_rate"] = block_dropout
        self.model = _create(name, params, optional)
        self.head_drop = nn.Dropout(head_p)  # a module, where timm would often call F.dropout
        info = getattr(self.model, "feature_info", None)
        self.min_size = min_size or (info[-1]["reduction"] if info else 32)
        # pooled-feature width; some models (e.g. MobileNetV3) add a head conv after pooling: head_hidden_size
        self.out_dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features

    def forward(self, x):
        f, t = x.shape[-2:]
        if f < self.min_size or t < self.min_size:
            x = x.repeat(1, 1, math.ceil(self.min_size / f), math.ceil(self.min_size / t))
            x = x[..., : max(f, self.min_size), : max(t, self.min_size)]  # (B, 1, >= min_size, >= min_size)
        return self.head_drop(self.model(x))  # (B, out_dim)

    def load_pretrained(self, path) -> dict:
        """Load a local timm / torchvision state dict: classifier keys dropped, the stem adapted 3 -> 1 channel."""
        state = strip_prefix(read_state_dict(path), "model.")  # "model." from a fattag TimmBackbone
        cfg, own = self.model.pretrained_cfg, self.model.state_dict()
        for conv in _names(cfg.get("first_conv")):
            k = conv + ".weight"
            if k in state and k in own and state[k].ndim == 4 and state[k].shape[1] != own[k].shape[1]:
                state[k] = adapt_input_conv(own[k].shape[1], state[k])
        skip = tuple(c + "." for c in _names(cfg.get("classifier")))
        return load_matching(self.model, state, path, skip=skip)
