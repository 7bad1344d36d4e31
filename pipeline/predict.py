"""Clip-level predictions from window-level model outputs: sliding windows, length-adaptive TTA, time reversal.

A clip of n frames is cut into windows of `frames` frames every `hop` frames (the last window ends at the clip's end;
clips shorter than a window are repeat-padded). Windows from many clips are batched together. With TTA, a clip that
counts k <= len(tta_counts) windows gets tta_counts[k-1] more passes of all its windows under SpecAugment; as in the
paper, k counts the hop-spaced windows without the end-aligned one (tta_count_windows="paper": a 200-frame clip with
192-frame windows counts 1, k = 9), or every window predicted ("all": 2 there, k = 5). With reversal (models
with time-reversal classes), a window's prediction is the mean of sigmoid(original-class outputs) of the window and
sigmoid(reversed-class outputs) of the time-reversed window. A clip's prediction is the arithmetic or geometric mean
of its window predictions. Single-label models (softmax=True) give softmax probabilities instead of sigmoids.
With channels_last, the model and the batches run in NHWC memory format, as training does (train.channels_last).

    p = predict_clips(model, cache, fnames, frames=192, hop=16, n_classes=80)      # (N, C) float32 in [0, 1]
    s = predict_settings(cfg)          # the config's inference settings as a plain dict (a bundle's manifest keeps it)
    p = predict_with(model, cache, fnames, n_classes=80, settings=s, device="cpu")  # what infer and predict_dir run
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.augment import spec_augment


def window_starts(n: int, frames: int, hop: int) -> list[int]:
    """Start frames of the sliding windows over a clip of n frames (one window when n <= frames)."""
    if n <= frames:
        return [0]
    starts = list(range(0, n - frames + 1, hop))
    if starts[-1] != n - frames:
        starts.append(n - frames)
    return starts


TTA_COUNT_WINDOWS = ("paper", "all")  # choices of infer.tta_count_windows
AUG_KEYS = ("freq_masks", "time_masks", "freq_width", "time_width")  # the augment keys TTA's SpecAugment takes


def _check_count_windows(mode: str):
    if mode not in TTA_COUNT_WINDOWS:
        raise ValueError(f"infer.tta_count_windows must be one of {' | '.join(TTA_COUNT_WINDOWS)}, got {mode!r}")


def tta_windows(n: int, frames: int, hop: int, mode: str = "paper") -> int:
    """The window count of a clip of n frames that picks its TTA passes.

    paper: the hop-spaced windows, without the end-aligned one window_starts adds (1 + (n - frames) // hop, 1 when
    n <= frames), as in Zhang and Wu's report; all: every window predicted, len(window_starts(n, frames, hop)).
    """
    _check_count_windows(mode)
    if mode == "all":
        return len(window_starts(n, frames, hop))
    return 1 if n <= frames else 1 + (n - frames) // hop


def tta_passes(n_windows: int, counts) -> int:
    """Extra SpecAugment passes for a clip of n_windows windows (0 beyond the table)."""
    return int(counts[n_windows - 1]) if 1 <= n_windows <= len(counts) else 0


def repeat_pad(x: np.ndarray, frames: int) -> np.ndarray:
    """(F, n) -> (F, frames): tile shorter clips from their start (deterministic)."""
    n = x.shape[1]
    return x if n == frames else np.tile(x, (1, -(-frames // n)))[:, :frames]


def plan_windows(lengths, frames: int, hop: int, tta_counts=None, tta_count_windows: str = "paper"):
    """Every pass over every window: arrays (clip, start, augmented) of equal length. A clip's extra passes are
    tta_passes(tta_windows(n, frames, hop, tta_count_windows), tta_counts); each pass covers all its windows."""
    _check_count_windows(tta_count_windows)
    clip, start, aug = [], [], []
    for i, n in enumerate(lengths):
        starts = window_starts(int(n), frames, hop)
        extra = tta_passes(tta_windows(int(n), frames, hop, tta_count_windows), tta_counts) if tta_counts else 0
        for p in range(1 + extra):
            clip += [i] * len(starts)
            start += starts
            aug += [p > 0] * len(starts)
    return np.array(clip, int), np.array(start, int), np.array(aug, bool)


def window_probs(
    logits: torch.Tensor, logits_rev: torch.Tensor | None, n_classes: int, softmax: bool = False
) -> torch.Tensor:
    """(B, n_out) logits of windows [and of the reversed windows] -> (B, C) probabilities.

    With reversal: mean of sigmoid(original classes) of the window and sigmoid(reversed classes) of the reversed
    window, whose content is the original sound played forwards again. softmax: softmax over the C classes (single-
    label models, which have no reversed classes).
    """
    if softmax:
        if logits_rev is not None or logits.shape[1] != n_classes:
            raise ValueError(
                "softmax predictions need a model without time-reversal classes (model.time_reversal "
                "false) and infer.reversal false"
            )
        return torch.softmax(logits.float(), 1)
    p = torch.sigmoid(logits[:, :n_classes].float())
    if logits_rev is None:
        return p
    return 0.5 * (p + torch.sigmoid(logits_rev[:, n_classes : 2 * n_classes].float()))


@torch.no_grad()
def predict_clips(
    model,
    cache,
    fnames,
    frames: int,
    hop: int,
    n_classes: int,
    batch_size=128,
    device="cpu",
    tta_counts=None,
    reversal=False,
    mean="arithmetic",
    aug_cfg=None,
    seed=0,
    head="h",
    progress=None,
    softmax=False,
    tta_count_windows="paper",
    amp="off",
    channels_last=False,
) -> np.ndarray:
    """(N, C) clip probabilities for `fnames` of a FeatureCache (anything with its position / frames / get).
    Model in eval mode; TTA masks seeded by `seed` (they depend on batch_size: the windows are drawn per batch);
    aug_cfg: a mapping with freq_masks, time_masks, freq_width, time_width (the augment section);
    tta_count_windows (paper | all) picks the window count that looks up tta_counts (see tta_windows); amp
    (train.amp: bf16 | fp16 | off) runs the network under autocast on CUDA, as training does; channels_last
    converts the model (in place) and every batch to NHWC memory format."""
    from pipeline.utils import amp_dtype

    dtype = amp_dtype(amp, torch.device(device))
    if mean not in ("arithmetic", "geometric"):
        raise ValueError(f"mean must be arithmetic or geometric, got {mean!r}")
    _check_count_windows(tta_count_windows)
    was_training = model.training
    model.eval()
    pos = [cache.position(f) for f in fnames]
    clip, start, aug = plan_windows(cache.frames[pos], frames, hop, tta_counts, tta_count_windows)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(len(fnames), n_classes, dtype=torch.float64)
    count = torch.zeros(len(fnames), 1, dtype=torch.float64)
    aug_kw = {} if aug_cfg is None else {k: aug_cfg[k] for k in AUG_KEYS}
    if channels_last:
        model.to(memory_format=torch.channels_last)
    steps = range(0, len(clip), batch_size)
    for b in progress(steps) if progress else steps:
        sl = slice(b, b + batch_size)
        x = np.stack([repeat_pad(cache.get(pos[c], s, frames), frames) for c, s in zip(clip[sl], start[sl])])
        x = torch.from_numpy(x)[:, None]  # (B, 1, F, frames)
        if aug[sl].any():
            masked = spec_augment(x, generator=gen, **aug_kw)
            x = torch.where(torch.from_numpy(aug[sl])[:, None, None, None], masked, x)
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            logits = model(x, heads=[head])[head]
            logits_rev = model(x.flip(-1), heads=[head])[head] if reversal else None
        p = window_probs(logits, logits_rev, n_classes, softmax).double().cpu()
        if mean == "geometric":
            p = torch.log(p.clamp_min(1e-7))
        idx = torch.from_numpy(clip[sl])
        acc.index_add_(0, idx, p)
        count.index_add_(0, idx, torch.ones(len(idx), 1, dtype=torch.float64))
    out = acc / count
    if mean == "geometric":
        out = out.exp()
    model.train(was_training)
    return out.float().numpy()


def predict_settings(cfg) -> dict:
    """Everything predict_with needs from a config besides the model, as plain JSON-able values: window length
    (train.frames), the infer section's hop, batch size, TTA, reversal and window mean, TTA's SpecAugment keys,
    the TTA seed (run.seed), precision (train.amp) and memory format (train.channels_last)."""
    inf = cfg.infer
    return {
        "frames": int(cfg.train.frames),
        "hop": int(inf.hop),
        "batch_size": int(inf.batch_size),
        "tta": bool(inf.tta),
        "tta_counts": [int(c) for c in inf.tta_counts],
        "tta_count_windows": inf.tta_count_windows,
        "reversal": bool(inf.reversal),
        "mean": inf.mean,
        "augment": {k: cfg.augment[k] for k in AUG_KEYS},
        "seed": int(cfg.run.seed),
        "amp": cfg.train.amp,
        "channels_last": bool(cfg.train.channels_last),
    }


def predict_with(model, cache, fnames, n_classes: int, settings: dict, device="cpu", progress=None) -> np.ndarray:
    """predict_clips with the settings of predict_settings (reversal only for a model with reversed classes):
    (N, C) clip probabilities. infer and predict_dir both predict through here, so they agree."""
    s = settings
    return predict_clips(
        model,
        cache,
        fnames,
        s["frames"],
        s["hop"],
        n_classes,
        batch_size=s["batch_size"],
        device=device,
        tta_counts=list(s["tta_counts"]) if s["tta"] else None,
        reversal=s["reversal"] and model.n_out == 2 * n_classes,
        mean=s["mean"],
        aug_cfg=s["augment"],
        seed=s["seed"],
        tta_count_windows=s["tta_count_windows"],
        amp=s["amp"],
        channels_last=s["channels_last"],
        progress=progress,
    )
