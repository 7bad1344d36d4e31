"""Building blocks shared by the backbones: the conv block, size-safe 2x2 pooling, global pooling, PANNs init, and
`dropout_modules`, the modules whose training flag makes a forward random.

Tensors are (B, C, F, T): batch, channels, frequency (mel bins), time (frames).

    for m in dropout_modules(model):        # dropout off (BN untouched), e.g. for VAT's power iteration ...
        m.training = False
    model.eval()                            # ... or Monte-Carlo dropout: all in eval mode but the dropout
    for m in dropout_modules(model):
        m.training = True
"""

from __future__ import annotations

import sys

import torch.nn.functional as F
from torch import nn

POOLS = ("avgmax", "avg", "max")


def scaled(channels: int, width: float) -> int:
    """Channel count times a width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
    return pool


def init_layer(layer: nn.Module):
    """PANNs initialisation of a conv / linear layer: Xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def pool2(x, size: int = 2):
    """Average pooling `size` x `size` with stride `size`: (B, C, H, W) -> (B, C, H // size, W // size).

    A side shorter than `size` is pooled over its own length instead, so no side ever reaches 0 (short clips).
    """
    return F.avg_pool2d(x, (min(size, x.shape[-2]), min(size, x.shape[-1])))


def global_pool(x, pool: str = "avgmax"):
    """(B, C, F, T) -> (B, C): mean over frequency, then over time max + mean ("avgmax"), mean ("avg") or max."""
    x = x.mean(2)  # (B, C, T)
    if pool == "avg":
        return x.mean(2)
    if pool == "max":
        return x.amax(2)
    return x.amax(2) + x.mean(2)


class ConvBlock(nn.Module):
    """Two conv3x3-BN-ReLU, PANNs ConvBlock names (conv1, bn1, conv2, bn2) and init: (B, Cin, H, W) -> (B, Cout, H, W).

    Pooling is left to the caller.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        init_layer(self.conv1)
        init_layer(self.conv2)

    def forward(self, x):
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.relu_(self.bn2(self.conv2(x)))


def _rate(m: nn.Module) -> float:
    """The drop probability of a torch dropout or timm DropPath / DropBlock2d / PatchDropout module; 0 for others."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p
    timm_layers = sys.modules.get("timm.layers")  # no timm module can exist unless timm was imported
    if timm_layers is not None:
        if isinstance(m, (timm_layers.DropPath, timm_layers.DropBlock2d)):
            return m.drop_prob or 0.0
        if isinstance(m, (timm_layers.PatchDropout, timm_layers.PatchDropoutWithIndices)):
            return m.prob or 0.0
    return 0.0


def _fused_attention_dropout(m: nn.Module) -> bool:
    """A timm attention module that calls F.scaled_dot_product_attention(dropout_p=attn_drop.p if self.training):
    its own flag, not its attn_drop's, sets the attention dropout (attn_drop is then never called)."""
    if not getattr(m, "fused_attn", False):
        return False
    drop = getattr(m, "attn_drop", None)
    return (isinstance(drop, nn.Module) and _rate(drop) > 0) or (getattr(m, "attn_drop_p", 0) or 0) > 0


def dropout_modules(model: nn.Module) -> list:
    """Every submodule of `model` whose own `training` flag makes its forward random, in model.modules() order.

    These are torch dropout modules (nn.Dropout, Dropout1d/2d/3d, AlphaDropout, ...) with p > 0; timm's DropPath
    and DropBlock2d with drop_prob > 0 and PatchDropout with prob > 0; and timm attention modules that run fused
    attention with attention dropout (they stand in for their attn_drop, which they never call). Modules that are
    never called are left out: those attn_drop, and the DropPath of timm's EfficientNet-family blocks without a
    residual (has_skip False). Setting only these modules' `training` turns all dropout of a fattag model off
    (m.training = False, BN left in train mode) or on (model.eval(), then m.training = True: MC dropout). Every
    fattag backbone applies the dropout it is configured with (block_dropout, cnn14's dropout and fc_dropout, timm's
    drop_rate and drop_path_rate) through such modules, never through F.dropout. Not reached: timm options that
    timm itself applies with F.dropout inside blocks (e.g. densenet's proj_drop_rate).
    """
    unused = set()
    for m in model.modules():
        if _fused_attention_dropout(m):
            unused.add(id(getattr(m, "attn_drop", None)))
        if getattr(m, "has_skip", None) is False:  # timm: `if self.has_skip: x = self.drop_path(x) + shortcut`
            unused.add(id(getattr(m, "drop_path", None)))
    return [m for m in model.modules() if (_rate(m) > 0 and id(m) not in unused) or _fused_attention_dropout(m)]
