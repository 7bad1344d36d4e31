"""Checkpoint files: what a fattag checkpoint holds and how it is written and read.

A checkpoint is self-describing (model_config, weights, the resolved config, the classes, and what the writer adds:
epoch, key, optimiser, ...), written atomically with its sha256 beside it (<name>.pt.sha256) and read
weights-only (nothing in it run), its checksum checked. load_model rebuilds the model from the file alone;
checkpoint_state and init_from_checkpoint take the weights of a checkpoint, a state dict or an export's
.safetensors file. What a fit writes at each epoch's end, and reads back to resume, is pipeline/engine/resume.py.

    save_checkpoint("best.pt", model, cfg, classes, epoch=3)
    model, ck = load_model("runs/demo/train/fold_0/best.pt")
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import to_plain
from pipeline.model_files import SAFETENSORS, plain, read_safetensors
from pipeline.utils import NotPlainWeights, UserError, load_weights_only, save_torch, verify_checksum


def save_checkpoint(path, model, cfg, classes, **extra):
    """Atomically write a self-describing checkpoint: model_config + weights + config + classes + extra."""
    state = {
        "model_config": model.config,
        "model": model.state_dict(),
        "cfg": to_plain(cfg),
        "classes": list(classes),
        **extra,
    }
    # in the forms weights-only loading reads back (numpy values as tensors and numbers), with its sha256 beside it
    # (path.sha256), checked by load_checkpoint
    save_torch(plain(state), path)


def load_checkpoint(path):
    """A checkpoint's contents, read weights-only (torch.load(weights_only=True): a file that would run code when
    unpickled is refused, NotPlainWeights, nothing in it run); one whose bytes are not those its sha256 sidecar
    recorded is a DamagedFile error naming it and the stage that writes it again."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    stage = next((s for s in ("warmup", "train", "infer") if s in path.parts[:-1]), None)
    verify_checksum(path, f"delete {path.parent} and run `make {stage}` again" if stage else "write it again")
    try:
        return load_weights_only(path)
    except NotPlainWeights:
        raise
    except Exception as e:  # a corrupt or foreign file
        raise UserError(f"{path}: not a readable checkpoint: {e}") from None


def load_model(path):
    """(model, checkpoint) of a self-describing checkpoint (load_checkpoint): the model built from its model_config
    with its weights, on the CPU."""
    from models import create_model

    ck = load_checkpoint(path)
    model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    return model, ck


def checkpoint_state(path) -> dict:
    """The model weights of a checkpoint (a fattag checkpoint's "model", or a plain state dict) or of a .safetensors
    file (an export's fold model, pipeline/bundle.py)."""
    if Path(path).suffix == SAFETENSORS:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        return read_safetensors(path)[0]
    ck = load_checkpoint(path)
    state = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds no model weights (a fattag checkpoint or a state dict of tensors)")
    return state


def init_from_checkpoint(model, path, log=None):
    """Load matching weights from a checkpoint; heads missing there (e.g. g) start as copies of its head h."""
    state = checkpoint_state(path)
    own = model.state_dict()
    for k in list(own):
        if k not in state:
            for head in ("heads.", "arc."):
                if k.startswith(head) and k.split(".")[1] != "h":
                    src = head + "h." + ".".join(k.split(".")[2:])
                    if src in state:
                        state[k] = state[src]
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise UserError(f"{path}: no weights match this model ({model.config.get('name')})")
    model.load_state_dict(loaded, strict=False)
    model.init_keys = set(getattr(model, "init_keys", ())) | set(loaded)  # what a second network copies (co-training)
    if log:
        log.info(f"initialised {len(loaded)}/{len(own)} tensors from {path}")
    return model
