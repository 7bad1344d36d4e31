"""Plain CNN backbones trained from scratch: vgg8 (the reference), cnn_skip (FAT2019 kernels) and wrn28_2 (SSL).

    vgg8(width=1.0, pool="avgmax")              # Zhang and Wu's VGG-like CNN, out_dim 512 * width
    cnn_skip(width=1.0, skip=True)              # 4 blocks, each input concatenated to its output (DenseNet-style)
    wrn28_2(depth=28, widen=2)                  # Wide-ResNet-28-2 as in FixMatch, about 1.47 M parameters

All map a log-mel batch (B, 1, F, T) to (B, out_dim); any F and T >= 1 work (pooling never shrinks a side to 0).
All take `block_dropout` (default 0: none), an nn.Dropout in every block (layers.dropout_modules finds them).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .layers import ConvBlock, check_pool, global_pool, pool2, scaled
from .registry import register_model


class ConvNet(Backbone):
    """Stacked ConvBlocks (two conv3x3-BN-ReLU each) with 2x2 average pooling and dropout, then global pooling.

    Args:
        channels: output channels of each block (before `width`).
        pool_last: also pool after the last block (otherwise only between blocks).
        skip: concatenate each block's input to its output before pooling (DenseNet-style; widens the next block).
        width: channel multiplier.
        pool: global pooling, see layers.global_pool.
        block_dropout: dropout probability after each block (after its pooling), nn.Dropout `drops[i]`.
    Shapes: (B, 1, F, T) -> blocks -> (B, C, F / 2^p, T / 2^p) -> (B, C), C = out_dim.
    """

    def __init__(
        self,
        channels,
        pool_last: bool,
        skip: bool = False,
        width: float = 1.0,
        pool: str = "avgmax",
        block_dropout: float = 0.0,
    ):
        super().__init__()
        self.pool, self.pool_last, self.skip = check_pool(pool), pool_last, skip
        self.blocks = nn.ModuleList()
        cin = 1
        for c in channels:
            cout = scaled(c, width)
            self.blocks.append(ConvBlock(cin, cout))
            cin = cin + cout if skip else cout
        self.drops = nn.ModuleList(nn.Dropout(block_dropout) for _ in channels)  # no tensors: state dict unchanged
        self.out_dim = cin

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            y = block(x)  # (B, C_i, F', T')
            x = torch.cat([x, y], 1) if self.skip else y  # (B, C_in + C_i, F', T') with skip
            if self.pool_last or i < len(self.blocks) - 1:
                x = pool2(x)  # (B, C, F' / 2, T' / 2)
            x = self.drops[i](x)
        return global_pool(x, self.pool)  # (B, out_dim)


@register_model("vgg8")
def vgg8(width: float = 1.0, pool: str = "avgmax", block_dropout: float = 0.0):
    """The reference backbone: 8 conv3x3-BN-ReLU of 64, 64, 128, 128, 256, 256, 512, 512 channels (x width),
    2x2 average pooling after conv layers 2, 4 and 6, dropout `block_dropout` after every second conv layer, then
    global pooling: (B, 1, F, T) -> (B, 512 * width)."""
    return ConvNet((64, 128, 256, 512), pool_last=False, width=width, pool=pool, block_dropout=block_dropout)


@register_model("cnn_skip")
def cnn_skip(width: float = 1.0, skip: bool = True, pool: str = "avgmax", block_dropout: float = 0.0):
    """The FAT2019 public-kernel CNN: 4 blocks of 64, 128, 256, 512 channels (x width), each two conv3x3-BN-ReLU
    then 2x2 average pooling and dropout `block_dropout`; with `skip` a block's input is concatenated to its output
    before pooling. (B, 1, F, T) -> (B, D), D = 1 + 64 + 128 + 256 + 512 (scaled) with skip, 512 (scaled) without."""
    return ConvNet((64, 128, 256, 512), pool_last=True, skip=skip, width=width, pool=pool, block_dropout=block_dropout)


class WRNBlock(nn.Module):
    """Pre-activation basic block of the FixMatch WRN: x + conv(drop(act(bn(conv(act(bn(x))))))).

    The shortcut is a 1x1 (strided) conv when the width changes; it takes the activated input when
    `activate_before_residual` (first block of the network), the raw input otherwise. `dropout` sits between the
    two convs of the residual branch, where Zagoruyko and Komodakis (and FixMatch's drop_rate) put it.
    (B, Cin, H, W) -> (B, Cout, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        activate_before_residual: bool = False,
        bn_momentum: float = 0.001,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        o = self.act(self.bn1(x))
        if self.activate_before_residual:
            x = o
        o = self.conv2(self.drop(self.act(self.bn2(self.conv1(o)))))  # (B, Cout, H / stride, W / stride)
        return o + (x if self.shortcut is None else self.shortcut(x))


@register_model("wrn28_2")
class WideResNet(Backbone):
    """Wide-ResNet-`depth`-`widen` of FixMatch (Sohn et al. 2020) on 1-channel log-mels.

    Stem conv3x3 (16 channels), three groups of n = (depth - 4) / 6 blocks with 16, 32, 64 x `widen` channels
    ((32, 64, 128) for WRN-28-2) and strides 1, 2, 2; then BN + leaky ReLU (0.1) and global pooling (FixMatch: "avg").
    BN momentum 0.001 as in FixMatch (TF decay 0.999), made for its 2^20 steps: in a 640-step run the running
    statistics move 47% of the way from their initial values and validation suffers (bench/bn_stats.py; on real sound
    0.348 as trained, 0.504 recomputed, one seed), so short runs pass bn_momentum: 0.1 (docs/results.md, WRN table).
    `block_dropout` inside every block (see WRNBlock).
    (B, 1, F, T) -> (B, 64 * widen).
    """

    def __init__(
        self, depth: int = 28, widen: int = 2, pool: str = "avg", bn_momentum: float = 0.001, block_dropout: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"depth={depth}: must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        n, self.pool = (depth - 4) // 6, check_pool(pool)
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        blocks = []
        for g, (cin, cout, stride) in enumerate(zip(widths[:-1], widths[1:], (1, 2, 2))):
            for i in range(n):
                blocks.append(
                    WRNBlock(
                        cin if i == 0 else cout,
                        cout,
                        stride if i == 0 else 1,
                        activate_before_residual=(g == 0 and i == 0),
                        bn_momentum=bn_momentum,
                        dropout=block_dropout,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1], momentum=bn_momentum)
        self.act = nn.LeakyReLU(0.1)
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))  # (B, 64w, F / 4, T / 4) (rounded up)
        return global_pool(self.act(self.bn(x)), self.pool)  # (B, out_dim)
