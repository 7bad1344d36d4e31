"""Torch files that are checked and run no code: save_torch writes torch.save's bytes atomically with their sha256
sidecar; load_torch checks it and reads the file weights-only (load_weights_only: a file whose unpickling would
call code is refused unread, NotPlainWeights, naming the one-time conversion of a trusted old file)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.utils.checksums import _sums, checksum_path, sha256_file, verify_checksum
from pipeline.utils.errors import UserError
from pipeline.utils.files import atomic_path, atomic_write_text


def save_torch(obj, path):
    """torch.save(obj) to `path` atomically, and its sha256 to the sidecar checksum_path(path), which load_torch
    checks. The bytes depend on obj alone (written through a file object, the archive's inner folder is always
    "archive", not the temporary's random name), so the same state gives the same file. While the file is
    replaced the sidecar lists the new and the old sums: killed at any moment, the pair on disk checks."""
    import torch

    path, side = Path(path), checksum_path(path)
    old = _sums(side) if path.exists() else []
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        digest = sha256_file(tmp)
        atomic_write_text(side, "".join(f"{h}  {path.name}\n" for h in dict.fromkeys([digest, *old])))
    atomic_write_text(side, f"{digest}  {path.name}\n")


class NotPlainWeights(UserError):
    """A model file whose unpickling would call code (a class, a function): refused unread, nothing in it run."""


CONVERT_COMMAND = "python -m pipeline.model_files convert"  # the one-time conversion of a trusted old file


def _refused(path, e: BaseException) -> NotPlainWeights:
    """The one-line refusal of a file weights-only unpickling stopped at, naming what it would have called."""
    needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    what = f"it calls {needs.group(1)}" if needs else "it holds pickle instructions beyond plain data"
    return NotPlainWeights(
        f"{path}: not a plain weights file: loading it would run code ({what}), so nothing in it was read or run; "
        f"a fattag checkpoint written before weights-only loading (or another file from a source you trust) is "
        f"converted once with `{CONVERT_COMMAND} {path}`"
    )


def load_weights_only(path):
    """torch.load(path, weights_only=True) on the CPU: tensors, plain containers, numbers and strings come back; a
    file whose unpickling would call anything else (a crafted file, or a checkpoint pickling numpy or other
    objects) is refused with NotPlainWeights before any of it runs. Other unreadable files raise as torch does."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise _refused(path, e) from None
        raise


def load_torch(path, repair: str = "write it again"):
    """load_weights_only of a file save_torch wrote, after verify_checksum."""
    verify_checksum(path, repair)
    return load_weights_only(path)
