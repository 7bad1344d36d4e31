"""Backbone base class and loading of local pretrained weights (never downloaded).

A backbone maps a log-mel batch (B, 1, F, T) to a pooled embedding (B, D) and says D in `out_dim`.
`load_pretrained(path)` copies the tensors of a local weights file (.safetensors, or a .pt / .pth checkpoint read
weights-only: nothing in it runs) whose names and shapes match and returns a report:

    report = backbone.load_pretrained("weights/x.pth")      # or "weights/model.safetensors"
    report["loaded"], report["skipped"], report["missing"]      # lists of parameter/buffer names
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.model_files import read_weights

log = logging.getLogger(__name__)


def strip_prefix(state: dict, prefix: str) -> dict:
    """`state` with `prefix` removed from its keys when every key has it; unchanged otherwise."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path) -> dict:
    """The tensors of a local weights file, read without running code (pipeline.model_files.read_weights): a
    .safetensors file (timm's and Hugging Face's published `model.safetensors`), or a .pt / .pth checkpoint loaded
    weights-only (PANNs' releases, torchvision's, a fattag run's): the dict under 'model' / 'state_dict' /
    'model_state_dict', or the file's bare dict. DataParallel 'module.' prefixes are dropped; a fattag Tagger
    checkpoint (keys 'backbone.*') gives its backbone's tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path} (weights are never downloaded; give a local file)"
        )
    ckpt = read_weights(path)  # .safetensors, or .pt / .pth weights-only: a file that would run code is refused
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path}: expected a state dict (or one under 'model'/'state_dict'), got {type(ckpt).__name__}"
        )
    state = strip_prefix({k: v for k, v in ckpt.items() if torch.is_tensor(v)}, "module.")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_matching(module: nn.Module, state: dict, path, skip=()) -> dict:
    """Copy the tensors of `state` into `module` where the names match; return {path, loaded, skipped, missing}.

    Keys starting with a prefix in `skip`, and keys the module does not have, are skipped. Raises ValueError naming
    the file when a matching name has another shape or when nothing matched at all.
    """
    own = module.state_dict()
    loaded, skipped, conflicts = [], [], []
    for k, v in state.items():
        if k.startswith(tuple(skip)) or k not in own:
            skipped.append(k)
        elif v.shape != own[k].shape:
            conflicts.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            loaded.append(k)
    if conflicts:
        raise ValueError(
            f"{path}: {len(conflicts)} tensor shape(s) conflict with the model (wrong width/depth?): "
            + "; ".join(conflicts[:5])
            + (" ..." if len(conflicts) > 5 else "")
        )
    if not loaded:
        raise ValueError(
            f"{path}: no tensor name matched the model (file keys e.g. {list(state)[:4]}, "
            f"model keys e.g. {list(own)[:4]})"
        )
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    done = set(loaded)
    report = dict(path=str(path), loaded=loaded, skipped=skipped, missing=[k for k in own if k not in done])
    log.info(
        "%s: loaded %d tensors, skipped %d %s, missing (left as initialised) %d %s",
        path,
        len(loaded),
        len(skipped),
        skipped[:8],
        len(report["missing"]),
        report["missing"][:8],
    )
    return report


class Backbone(nn.Module):
    """Base of every backbone: forward (B, 1, F, T) -> (B, out_dim)."""

    out_dim: int

    def load_pretrained(self, path) -> dict:
        """Load matching tensors from a local checkpoint (e.g. a fattag run's backbone); returns the report."""
        return load_matching(self, read_state_dict(path), path)
