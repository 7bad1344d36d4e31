"""PANNs CNN14 (Kong et al. 2020, qiuqiangkong/audioset_tagging_cnn pytorch/models.py) on our log-mels, and the
loading of a released PANNs checkpoint from a local file.

    bb = build_backbone("cnn14", n_mels=64, pretrained_path="weights/Cnn14_mAP=0.431.pth")   # or:
    load_panns(bb, "weights/Cnn14_mAP=0.431.pth")   # -> {"loaded": [...], "skipped": [...], "missing": [...]}

Module names equal PANNs' (bn0, conv_block1..6.{conv1,bn1,conv2,bn2}, fc1), so checkpoint keys map one to one;
the waveform front end (spectrogram_extractor, logmel_extractor) and the AudioSet classifier (fc_audioset) are
skipped, and so is bn0 when the checkpoint's mel-bin count differs from ours (PANNs: 64). PANNs' F.dropout calls are
nn.Dropout modules here (block_drops, fc_drop: no tensors, so checkpoints load as before), which the dropout switches
of the training modes (layers.dropout_modules) reach.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Backbone, load_matching, read_state_dict
from .layers import ConvBlock, check_pool, global_pool, init_layer, pool2, scaled
from .registry import register_model

PANNS_SKIP = ("spectrogram_extractor.", "logmel_extractor.", "spec_augmenter.", "fc_audioset.")


@register_model("cnn14")
class Cnn14(Backbone):
    """CNN14: bn0 over mel bins, 6 ConvBlocks (64, 128, 256, 512, 1024, 2048 x width), 2x2 average pooling after
    blocks 1-5 (1x1, i.e. none, after block 6), dropout after each block (`block_drops`), mean over frequency,
    max + mean over time, dropout `fc_dropout` (`fc_drop`), fc1 + ReLU as the embedding.

    The per-block dropout is PANNs' `dropout` (0.2), or `block_dropout` when that is > 0 (fattag's common knob, e.g.
    for MC dropout); dropout=0, fc_dropout=0 and block_dropout=0 give a network without dropout.

    Input (B, 1, F = n_mels, T); PANNs works on (B, 1, T, F), so the input is transposed and the checkpoint's
    weights apply unchanged. Output (B, 2048 * width). The PANNs front end and SpecAugment live elsewhere in fattag.
    """

    def __init__(
        self,
        n_mels: int = 128,
        width: float = 1.0,
        dropout: float = 0.2,
        fc_dropout: float = 0.5,
        pool: str = "avgmax",
        block_dropout: float = 0.0,
    ):
        super().__init__()
        self.n_mels, self.pool = n_mels, check_pool(pool)
        self.bn0 = nn.BatchNorm2d(n_mels)
        cin = 1
        for i, c in enumerate((64, 128, 256, 512, 1024, 2048), 1):
            setattr(self, f"conv_block{i}", ConvBlock(cin, scaled(c, width)))
            cin = scaled(c, width)
        p = block_dropout if block_dropout > 0 else dropout
        self.block_drops = nn.ModuleList(nn.Dropout(p) for _ in range(6))  # modules, not F.dropout: switchable
        self.fc_drop = nn.Dropout(fc_dropout)
        self.fc1 = nn.Linear(cin, cin)
        init_layer(self.fc1)
        self.out_dim = cin

    def forward(self, x):
        if x.shape[2] != self.n_mels:
            raise ValueError(f"cnn14 was built for n_mels={self.n_mels} (model params) but got F={x.shape[2]} mel bins")
        x = self.bn0(x.transpose(1, 2)).transpose(1, 2)  # normalise each mel bin: (B, 1, F, T)
        x = x.transpose(2, 3)  # PANNs layout (B, 1, T, F)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x)  # (B, C_i, T', F')
            if i < 6:
                x = pool2(x)  # (B, C_i, T' / 2, F' / 2)
            x = self.block_drops[i - 1](x)
        x = global_pool(x.transpose(2, 3), self.pool)  # (B, C, F', T') -> (B, C)
        x = self.fc_drop(x)
        return F.relu_(self.fc1(x))  # (B, out_dim) embedding

    def load_pretrained(self, path) -> dict:
        return load_panns(self, path)


def load_panns(module, path) -> dict:
    """Load a PANNs CNN14 checkpoint (a local file; state dict under 'model' or bare) into a Cnn14 backbone or a
    Tagger holding one. Returns {path, loaded, skipped, missing} (tensor names; also logged). Raises ValueError
    naming the file when nothing matched or when shapes conflict (e.g. another width)."""
    module = getattr(module, "backbone", module)
    if not isinstance(module, Cnn14):
        raise TypeError(f"load_panns needs a cnn14 backbone, got {type(module).__name__}")
    state = read_state_dict(path)
    skip = PANNS_SKIP
    if "bn0.weight" in state and state["bn0.weight"].shape != module.bn0.weight.shape:
        skip = skip + ("bn0.",)  # e.g. 64-bin PANNs into our 128 bins
    return load_matching(module, state, path, skip=skip)
