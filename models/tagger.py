"""The tagger: a backbone, linear heads and optional cosine (ArcFace) heads; `create_model` builds it by name.

model = create_model("vgg8", n_classes=80, width=0.25)            # 160 outputs: time reversal as new classes
out = model(x)                      # x (B, 1, F, T) -> {"emb": (B, D), "h": (B, 160), "h_cos": (B, 160)}
model = create_model("vgg8", 80, heads=("h", "g"))                # + label-cleaning head "g" and "g_cos"
model = create_model("vgg8", 80, dropout=0.3, block_dropout=0.3)  # dropout before the heads and in every block
torch.save({"model": model.state_dict(), "model_config": model.config}, "ckpt.pt")
model = create_model(**ckpt["model_config"]); model.load_state_dict(ckpt["model"])   # rebuilt from the file
small = model.export_inference()    # backbone + "h" only, for submission
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .registry import build_backbone


class CosineHead(nn.Module):
    """Cosines between the L2-normalised embedding and L2-normalised class weights: (B, D) -> (B, n) in [-1, 1]."""

    def __init__(self, in_dim: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, in_dim))  # (n, D)
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x):
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class Tagger(nn.Module):
    """Backbone -> embedding (B, D) -> dropout -> linear head(s) (B, n_out) [and cosine head(s) (B, n_out)].

    n_out = n_classes * 2 with time reversal (a reversed clip's labels are classes n_classes..2 n_classes - 1).
    `config` holds the create_model arguments that rebuild this architecture.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        time_reversal: bool = True,
        heads=("h",),
        arcface: bool = True,
        dropout: float = 0.0,
        config: dict | None = None,
    ):
        super().__init__()
        self.backbone, self.n_classes, self.time_reversal = backbone, n_classes, time_reversal
        self.n_out = n_classes * (2 if time_reversal else 1)
        d = backbone.out_dim
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({k: nn.Linear(d, self.n_out) for k in heads})
        self.arc = nn.ModuleDict({k: CosineHead(d, self.n_out) for k in heads} if arcface else {})
        self.config = config or {}

    def forward(self, x, heads=None) -> dict:
        """x (B, 1, F, T) -> {"emb": (B, D), k: (B, n_out) logits, k + "_cos": (B, n_out) cosines (with arcface)}
        for every head k, or those named in `heads`."""
        emb = self.backbone(x)  # (B, D)
        z = self.drop(emb)
        out = {"emb": emb}
        for k in self.heads if heads is None else heads:
            if k not in self.heads:
                raise KeyError(f"no head {k!r}; this model has {list(self.heads)}")
            out[k] = self.heads[k](z)  # (B, n_out)
            if k in self.arc:
                out[k + "_cos"] = self.arc[k](z)  # (B, n_out) in [-1, 1]
        return out

    def export_inference(self) -> Tagger:
        """A new Tagger (eval mode) with copies of the backbone and head "h" only: no "g", no cosine heads."""
        if "h" not in self.heads:
            raise ValueError(f"export_inference needs head 'h'; this model has {list(self.heads)}")
        config = {**self.config, "heads": ["h"], "arcface": False}
        new = Tagger(
            copy.deepcopy(self.backbone), self.n_classes, self.time_reversal, ("h",), False, self.drop.p, config
        )
        new.heads["h"] = copy.deepcopy(self.heads["h"])
        return new.eval()


def create_model(
    name: str,
    n_classes: int,
    time_reversal: bool = True,
    heads=("h",),
    arcface: bool = True,
    dropout: float = 0.0,
    pretrained_path=None,
    params: dict | None = None,
    block_dropout: float = 0.0,
    **kwargs,
) -> Tagger:
    """Build a Tagger on backbone `name` (see list_models(); or 'timm:<name>').

    Backbone parameters come as `params={...}` (the config form, as in `model.config`) and/or keyword arguments.
    `dropout`: before the heads. `block_dropout`: the backbone's dropout in every block (its constructor argument;
    cnn14 keeps PANNs' 0.2 when it is 0, timm models get stochastic depth; see each backbone). Both are kept in
    `config` (a checkpoint's config without block_dropout means 0).
    `pretrained_path`: local weights for the backbone (PANNs for cnn14, timm/torchvision for timm:*); heads start
    fresh. It is not kept in `config`: a checkpoint's state dict carries the weights.
    """
    params = {**(params or {}), **kwargs}
    if "block_dropout" in params:
        raise TypeError(
            "block_dropout is create_model's own argument (config: model.block_dropout), not a backbone param"
        )
    backbone = build_backbone(name, pretrained_path=pretrained_path, block_dropout=block_dropout, **params)
    config = dict(
        name=name,
        n_classes=n_classes,
        time_reversal=time_reversal,
        heads=list(heads),
        arcface=arcface,
        dropout=dropout,
        block_dropout=block_dropout,
        params=params,
    )
    return Tagger(backbone, n_classes, time_reversal, heads, arcface, dropout, config)
