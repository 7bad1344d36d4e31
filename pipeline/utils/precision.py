"""Mixed precision: the autocast dtype of train.amp on a device (amp_dtype) and the gradient scaler fp16 needs
(make_scaler)."""

from __future__ import annotations

from pipeline.utils.errors import UserError

AMP_CHOICES = ("bf16", "fp16", "off")


def amp_dtype(choice: str, device):
    """The autocast dtype of train.amp on this device: bf16 -> torch.bfloat16, fp16 -> torch.float16 (T4 / P100
    GPUs have no fast bf16), off -> None; None on the CPU (mixed precision is a CUDA feature here)."""
    import torch

    if choice not in AMP_CHOICES:
        raise UserError(f"train.amp={choice!r}: one of {list(AMP_CHOICES)}")
    if choice == "off" or getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.bfloat16 if choice == "bf16" else torch.float16


def make_scaler(choice: str, device):
    """The gradient scaler fp16 needs (enabled only for fp16 autocast on CUDA; a no-op otherwise)."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=amp_dtype(choice, device) == torch.float16)
