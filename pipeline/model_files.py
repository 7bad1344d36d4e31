"""Model files that load without running code: checkpoints (.pt, .pth) through torch.load(weights_only=True), whose
pickles hold only tensors, plain containers, numbers and strings; `.safetensors` files (timm's and Hugging Face's
published weights, bundles, exports), which hold tensors and a string-to-string header and cannot run code at all.

    state = read_weights("weights/resnet18.safetensors")    # {name: tensor}; a .pt/.pth: what it holds, weights-only
    write_safetensors(model.state_dict(), "m.safetensors", {"note": "..."})   # atomically
    tensors, header = read_safetensors("m.safetensors")
    ck = plain(ck)                  # numpy arrays -> tensors, numpy scalars -> numbers: what weights-only loading takes

A file that would need code to load is refused (pipeline.utils.NotPlainWeights: one line naming the file, exit 2
from any stage), nothing in it run. A fattag checkpoint written before weights-only loading that holds other objects
(numpy scalars or arrays), from a source you trust, is converted once in place (its sha256 sidecar rewritten):

    python -m pipeline.model_files convert runs/old/train/fold_0/best.pt [...]
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from pipeline.utils import (
    UserError,
    atomic_path,
    load_weights_only,
    save_torch,
    user_errors,
    verify_checksum,
)

SAFETENSORS = ".safetensors"


def plain(obj, where: str = "checkpoint"):
    """`obj` in the forms torch.load(weights_only=True) accepts: tensors, dicts, lists, tuples, str, int, float,
    bool, None (unchanged, the same objects), numpy arrays as tensors, numpy scalars as Python numbers. Anything
    else is a TypeError naming where it sits (`checkpoint['mode']['x']`): never written where it cannot be read."""
    if isinstance(obj, np.generic):  # before the numbers: np.float64 is a float, and pickles as numpy's
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if obj is None or isinstance(obj, (torch.Tensor, str, bytes, bool, int, float, torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, dict):
        new = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()):
            return obj  # as it was (a state dict stays an OrderedDict with its _metadata; the same pickle bytes)
        out = OrderedDict(new) if isinstance(obj, OrderedDict) else new
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        new = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(new, obj)) else type(obj)(new)
    raise TypeError(f"{where}: a {type(obj).__name__}, which a weights-only checkpoint cannot hold")


def write_safetensors(tensors: dict, path, header: dict | None = None):
    """Save {name: tensor} as a .safetensors file (atomically; contiguous CPU copies, shared storage split) with
    `header` ({str: str}) as its metadata."""
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(header or {}))


def read_safetensors(path) -> tuple[dict, dict]:
    """({name: tensor} on the CPU, the header's metadata {str: str}) of a .safetensors file; a file that is not
    one is a UserError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None


def read_weights(path):
    """What a model file holds, read without running code: a .safetensors file's {name: tensor}; any other file
    (.pt, .pth, .bin) through torch.load(weights_only=True), refused (NotPlainWeights) when it would need code."""
    path = Path(path)
    if path.suffix == SAFETENSORS:
        return read_safetensors(path)[0]
    return load_weights_only(path)


def convert(path) -> str:
    """Rewrite a trusted checkpoint in the weights-only form (plain), in place with a new sha256 sidecar; what was
    done, in a line. A file that already loads weights-only is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    verify_checksum(path, "it was changed after it was written: convert only a file you trust")
    try:
        load_weights_only(path)
        return f"{path}: already a plain weights file, left as it is"
    except UserError:
        pass
    obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouches for this file
    try:
        obj = plain(obj)
    except TypeError as e:
        raise UserError(f"{path}: cannot be converted: {e}") from None
    save_torch(obj, path)
    load_weights_only(path)
    return f"{path}: converted to a plain weights file"


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.model_files",
        description="Convert trusted fattag checkpoints written before weights-only loading (in place).",
    )
    ap.add_argument("command", choices=["convert"])
    ap.add_argument("files", nargs="+", help="checkpoints you trust: converting one runs the code it holds")
    args = ap.parse_args(argv)
    with user_errors("model_files"):
        for f in args.files:
            print(convert(f))


if __name__ == "__main__":
    main()
