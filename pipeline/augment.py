"""Data augmentation for log-mel spectrograms: per-clip numpy functions for the data loader, whole-batch torch
functions for the training device.

Per clip (numpy, spec (F, T) float32, rng a numpy Generator):
    crop_or_pad(spec, frames, rng) -> (F, frames)   random crop of a long clip, tiling of a short one
    center(spec, frames)           -> (F, frames)   deterministic: the first frames, or tiled from frame 0
    albu = build_albu(cfg.augment.albumentations)   # None for [], else albu(spec, rng) -> (F, T)

Per batch (torch, x (B, 1, F, T) normalised log-mels, y (B, C) targets in [0, 1], generator a torch.Generator
on any device, or None for torch's global one):
    spec_augment(x, ...)       -> x2            SpecAugment frequency and time masks (no time warp)
    time_reverse(x, y, p)      -> x2, y2        reversed clips as new classes: y2 (B, 2C)
    mixup(x, y, alpha)         -> x2, y2, lam, perm     lam 0-d (one per batch), or (B,) with per_pair=True
    augment = build_batch_augment(cfg.augment, n_classes=80, time_reversal=cfg.model.time_reversal)
    x, y = augment(x, y, generator)             # the three above in that order, as configured
    augment.spec(x, g); augment.reverse(x, y, g); augment.mix(x, y, g)   # each step alone, as configured
                                                # (mix: one lam per pair when augment.mixup_per_pair)

None of them modifies its input.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

__all__ = [
    "crop_or_pad",
    "center",
    "build_albu",
    "spec_augment",
    "time_reverse",
    "mixup",
    "BatchAugment",
    "build_batch_augment",
]


# ---------------------------------------------------------------------------------------------- per clip (numpy)


def crop_or_pad(spec: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """spec (F, T) -> (F, frames): a random crop when T >= frames, else the clip tiled along time from a random
    start frame (so a short clip wraps around: ... c d | a b c d | a b ...)."""
    n = spec.shape[-1]
    if n == 0:
        raise ValueError("crop_or_pad: empty clip (0 frames)")
    if n < frames:
        spec = np.tile(spec, (1, -(-frames // n) + 1))  # >= frames + n - 1 frames
        start = int(rng.integers(n))
    else:
        start = int(rng.integers(n - frames + 1))
    return np.ascontiguousarray(spec[:, start : start + frames])


def center(spec: np.ndarray, frames: int) -> np.ndarray:
    """Deterministic crop_or_pad for evaluation: spec (F, T) -> (F, frames), its first `frames` frames, or the clip
    tiled from frame 0 when shorter."""
    n = spec.shape[-1]
    if n == 0:
        raise ValueError("center: empty clip (0 frames)")
    if n < frames:
        spec = np.tile(spec, (1, -(-frames // n)))
    return np.ascontiguousarray(spec[:, :frames])


def _make(cls, kw: dict, shape):
    """cls(**kw), with output-size arguments it takes but kw lacks set to the input's shape (F, T)."""
    params = inspect.signature(cls.__init__).parameters
    fill = {"size": tuple(shape), "height": shape[0], "width": shape[1]}
    return cls(**{**{k: v for k, v in fill.items() if k in params}, **kw})


class _Albu:
    """An albumentations pipeline on spectrograms; see build_albu."""

    def __init__(self, specs: list):
        self.specs = specs  # [(class, kwargs)]
        self.composes = {}  # input shape -> A.Compose

    def _compose(self, shape):
        if shape not in self.composes:
            import albumentations as A

            self.composes[shape] = A.Compose([_make(cls, kw, shape) for cls, kw in self.specs])
        return self.composes[shape]

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        compose = self._compose(spec.shape)
        compose.set_random_seed(int(rng.integers(2**32)))
        lo, hi = float(spec.min()), float(spec.max())
        scale = hi - lo if hi > lo else 1.0
        out = compose(image=((spec - lo) / scale).astype(np.float32))["image"]
        return (out * scale + lo).astype(np.float32)

    def __repr__(self):
        return f"Albu({[(c.__name__, kw) for c, kw in self.specs]})"


def build_albu(spec_list):
    """The config list `augment.albumentations` -> callable(spec (F, T) float32, rng) -> (F, T) float32, or None
    when the list is empty.

    Each entry is {name: <albumentations transform>, p: ..., **kwargs}, e.g.
    [{name: GaussNoise, p: 0.3}, {name: RandomResizedCrop, p: 0.5, scale: [0.8, 1.0]}]; the transforms run in
    order under one A.Compose. Output-size arguments a transform takes (`size`, or `height` and `width`) default to
    the input's shape, so e.g. RandomResizedCrop resizes its crop back to the spectrogram's shape (the FAT2019
    winner's random resized crop). albumentations clips float images to [0, 1] in its pixel transforms, so each
    spectrogram is min-max scaled to [0, 1] around the transforms and scaled back: amplitude parameters (noise std,
    brightness) are relative to the clip's value range, and a fill value 0 is the clip's minimum. albumentations'
    randomness is seeded from rng on every call, so the result is reproducible for a given rng state.
    """
    if not spec_list:
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no online version check on import
    import albumentations as A

    specs = []
    for i, entry in enumerate(spec_list):
        where = f"augment.albumentations[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"config key {where}: expected a mapping with a 'name', got {entry!r}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "name"}
        cls = getattr(A, str(entry["name"]), None)
        if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
            raise ValueError(f"config key {where}: unknown albumentations transform '{entry['name']}'")
        params = inspect.signature(cls.__init__).parameters
        bad = [k for k in kw if k not in params]
        if bad and not any(q.kind is q.VAR_KEYWORD for q in params.values()):
            raise ValueError(f"config key {where}: {entry['name']} takes no argument(s) {bad}")
        try:
            _make(cls, kw, (64, 64))  # bad values fail here, not in a worker
        except Exception as e:
            raise ValueError(f"config key {where}: {entry['name']}({kw}): {e}") from e
        specs.append((cls, kw))
    return _Albu(specs)


# ----------------------------------------------------------------------------------------------- per batch (torch)


def _rand(shape, generator, device) -> torch.Tensor:
    """Uniform [0, 1) numbers on `device`, drawn on the generator's device (so a CPU generator serves CUDA)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _band_mask(n_batch, size, n_masks, width, generator, device) -> torch.Tensor:
    """(B, size) bool: per sample, the union of n_masks bands, each floor(U * width * size) wide and inside."""
    u = _rand((2, n_batch, n_masks, 1), generator, device)
    w = (u[0] * width * size).floor()
    start = (u[1] * (size - w + 1)).floor()
    pos = torch.arange(size, device=device)
    return ((pos >= start) & (pos < start + w)).any(1)


def spec_augment(
    x: torch.Tensor,
    freq_masks: int = 2,
    time_masks: int = 2,
    freq_width: float = 0.1,
    time_width: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment without time warp: x (B, ..., F, T) -> new tensor of that shape.

    Each sample gets its own `freq_masks` frequency bands and `time_masks` time bands set to 0 (the mean of
    normalised log-mels); a band is floor(U(0, 1) * width * size) bins wide (width a fraction of F or T) and starts
    uniformly where it fits. Bands may overlap. Vectorised over samples and masks.
    """
    b, f, t = x.shape[0], x.shape[-2], x.shape[-1]
    mid = (1,) * (x.dim() - 3)
    mask = torch.zeros(b, *mid, f, t, dtype=torch.bool, device=x.device)
    if freq_masks > 0 and freq_width > 0:
        mask |= _band_mask(b, f, freq_masks, freq_width, generator, x.device).view(b, *mid, f, 1)
    if time_masks > 0 and time_width > 0:
        mask |= _band_mask(b, t, time_masks, time_width, generator, x.device).view(b, *mid, 1, t)
    return x.masked_fill(mask, 0)


def time_reverse(x: torch.Tensor, y: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None):
    """Time reversal as new classes: x (B, ..., T), y (B, C) -> x2 (B, ..., T), y2 (B, 2C).

    Each sample is reversed along time with probability p; y2 is [y | 0] for a kept sample and [0 | y] for a
    reversed one (the second C outputs are the reversed classes). p = 0 returns (x, [y | 0]).
    """
    if p <= 0:
        return x, torch.cat([y, torch.zeros_like(y)], 1)
    rev = _rand(x.shape[0], generator, x.device) < p
    x2 = torch.where(rev.view(-1, *(1,) * (x.dim() - 1)), x.flip(-1), x)
    r = rev.to(y.device, y.dtype)[:, None]
    return x2, torch.cat([y * (1 - r), y * r], 1)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor | None,
    alpha: float = 0.4,
    generator: torch.Generator | None = None,
    perm: torch.Tensor | None = None,
    per_sample: bool = False,
    lam: torch.Tensor | None = None,
    *,
    per_pair: bool = False,
):
    """mixup: x (B, ...), y (B, C) or None -> (x2, y2, lam, perm).

    x2 = lam x + (1 - lam) x[perm], y2 likewise, with lam = max(l, 1 - l), l ~ Beta(alpha, alpha), so lam >= 0.5 and
    each mixed sample stays closer to its own original. One lam for the batch (a 0-d tensor, the default), or one
    per mixed pair (x[i], x[perm[i]]) as in the mixup and MixMatch papers (per_pair=True, or its older name
    per_sample=True: lam (B,), row i mixed with lam[i] in x2 and y2 alike). perm: a random permutation of the batch
    unless given; pass lam and perm back in to mix other tensors the same way. alpha <= 0 (and no lam given) returns
    x, y unchanged with lam = 1 (0-d, or (B,) ones when per pair) and the identity permutation. perm and the seed of
    the Beta draws (numpy) come from `generator`, so a seeded generator gives the same mix.
    """
    b = x.shape[0]
    per_pair = per_pair or per_sample
    if lam is None and alpha <= 0:
        return x, y, torch.ones(b if per_pair else (), device=x.device), torch.arange(b, device=x.device)
    gen_device = generator.device if generator is not None else x.device
    if perm is None:
        perm = torch.randperm(b, generator=generator, device=gen_device).to(x.device)
    if lam is None:
        seed = int(torch.randint(2**62, (1,), generator=generator, device=gen_device))
        draw = np.random.default_rng(seed).beta(alpha, alpha, size=b if per_pair else ())
        lam = torch.as_tensor(np.maximum(draw, 1 - draw), dtype=torch.float32, device=x.device)

    def mix(v):
        lv = lam.to(v.device, v.dtype)
        lv = lv.view(-1, *(1,) * (v.dim() - 1)) if lv.dim() else lv
        return lv * v + (1 - lv) * v[perm.to(v.device)]

    return mix(x), None if y is None else mix(y), lam, perm


class BatchAugment:
    """The configured batch augmentation: spec_augment, then time reversal, then mixup; see build_batch_augment.

    x (B, 1, F, T), y (B, n_classes) -> x (B, 1, F, T), y (B, 2 n_classes) with time_reversal else (B, n_classes).
    """

    def __init__(self, aug_cfg, n_classes: int, time_reversal: bool = True):
        c = aug_cfg
        self.n_classes, self.time_reversal = n_classes, time_reversal
        self.spec_on = bool(c.get("spec_augment", True))
        self.spec_kw = {k: c[k] for k in ("freq_masks", "time_masks", "freq_width", "time_width") if k in c}
        self.reversal_p = float(c.get("reversal_p", 0.5))
        self.mixup_alpha = float(c.get("mixup_alpha", 0.4))
        self.mixup_per_pair = bool(c.get("mixup_per_pair", False))

    def spec(self, x, generator=None):
        """SpecAugment with the configured masks, if augment.spec_augment; else x."""
        return spec_augment(x, **self.spec_kw, generator=generator) if self.spec_on else x

    def reverse(self, x, y, generator=None):
        """Time reversal with augment.reversal_p, if time_reversal; else (x, y)."""
        if y.shape[-1] != self.n_classes:
            raise ValueError(
                f"batch augment: targets have {y.shape[-1]} classes, expected n_classes = "
                f"{self.n_classes} (before time reversal doubles them)"
            )
        return time_reverse(x, y, self.reversal_p, generator) if self.time_reversal else (x, y)

    def mix(self, x, y, generator=None, **kw):
        """mixup with augment.mixup_alpha (0: off) -> (x2, y2, lam, perm); lam (B,), one per pair, when
        augment.mixup_per_pair (a per_pair or per_sample keyword given here wins), else 0-d."""
        if "per_pair" not in kw and "per_sample" not in kw:
            kw["per_pair"] = self.mixup_per_pair
        return mixup(x, y, self.mixup_alpha, generator, **kw)

    def __call__(self, x, y, generator=None):
        x = self.spec(x, generator)
        x, y = self.reverse(x, y, generator)
        return self.mix(x, y, generator)[:2]

    def __repr__(self):
        return (
            f"BatchAugment(spec_augment={self.spec_on and self.spec_kw}, "
            f"reversal_p={self.reversal_p if self.time_reversal else 'off'}, mixup_alpha={self.mixup_alpha}, "
            f"mixup_per_pair={self.mixup_per_pair})"
        )


def build_batch_augment(aug_cfg, n_classes: int, time_reversal: bool = True) -> BatchAugment:
    """The `augment` config section (Cfg or plain dict; keys left out take base.yaml's defaults) -> a callable
    (x (B, 1, F, T), y (B, n_classes), generator) -> (x, y), y (B, 2 n_classes) when time_reversal."""
    return BatchAugment(aug_cfg, n_classes, time_reversal)
