"""Building blocks shared by the backbones: the conv block, size-safe 2x2 pooling, global pooling, PANNs init.

Tensors are (B, C, F, T): batch, channels, frequency (mel bins), time (frames).
"""
from __future__ import annotations

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
    x = x.mean(2)                                   # (B, C, T)
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
