"""Training modes, registered by name: how a batch becomes a loss (supervised, teacher-student, semi-supervised).

A mode gets a TrainContext (config, model, loss, batch augmentation, device, generator) and implements `step(batch,
progress) -> (loss, logs)`. The engine (pipeline/engine/) owns data, optimiser, schedule, checkpoints and
validation; it stands above the modes, which never import it: what a mode needs of it is handed to it (the
TrainContext; select_unlabelled's load_model). Each mode declares its hyperparameters beside its code in
`defaults`; a config sets them under `ssl.<mode>.<key>` (teacher_student uses its own config section).

    @register_mode("supervised")
    class Supervised(Mode): ...
    mode = create_mode("supervised", ctx)

Modules: supervised, teacher_student, noisy_mix (the noisy clips with their given labels), and the semi-supervised
modes (one module each: mean_teacher, deep_co_training, mixmatch, remixmatch, fixmatch, fixmatch_mixup, fmuc, vat,
pseudo_label) over their shared pieces in pipeline/modes/common.py; pseudo-label selection rules in
pipeline/modes/pseudo.py.

A batch is a dict: x (B, 1, F, T) and y (B, C) labelled crops on the device, idx (B,) their rows; with an unlabelled
stream also ux (Bu, 1, F, T), uy (Bu, C) (noisy labels; ignored by the semi-supervised modes), uidx (Bu,) and utruth
(Bu, C) where the true labels of the unlabelled clips are known (else None).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

MODES: dict = {}


def register_mode(name: str):
    def deco(cls):
        cls.name = name
        MODES[name] = cls
        return cls

    return deco


def list_modes() -> list[str]:
    _import_all()
    return sorted(MODES)


MODULES = (
    "supervised",
    "teacher_student",
    "mean_teacher",
    "deep_co_training",
    "mixmatch",
    "remixmatch",
    "fixmatch",
    "fixmatch_mixup",
    "fmuc",
    "vat",
    "pseudo_label",
    "noisy_mix",
)


def _import_all():
    import importlib

    for m in MODULES:  # one module per mode; registration is the import's side effect
        importlib.import_module(f"pipeline.modes.{m}")


def mode_class(name: str):
    _import_all()
    if name not in MODES:
        raise ValueError(f"train.mode: unknown mode {name!r}; registered: {sorted(MODES)}")
    return MODES[name]


@dataclass
class TrainContext:
    cfg: Any
    model: torch.nn.Module
    loss_fn: Any  # pipeline.losses.LossFn
    aug: Any  # pipeline.augment.BatchAugment
    n_classes: int
    device: torch.device
    generator: torch.Generator  # on the device: masks, reversal, mixup
    total_steps: int = 1
    log: Any = None
    single_label: bool = False  # softmax outputs (data.single_label_csv): modes take their single-label form
    extra: dict = field(default_factory=dict)


class Mode:
    """Base class. Subclasses set `defaults`, `heads`, `uses_unlabelled` (and `single_label_ok` = False when the
    mode has no single-label form) and implement `step`."""

    name = "base"
    defaults: dict = {}
    heads = ("h",)
    uses_unlabelled = False
    uses_noisy_labels = False  # trains on the noisy clips' given labels (refuses data.labelled_fraction < 1)
    single_label_ok = True

    def __init__(self, ctx: TrainContext):
        if ctx.single_label and not self.single_label_ok:
            raise ValueError(
                f"train.mode={self.name} has no single-label form (data.single_label_csv is set); "
                f"single-label modes: supervised and the semi-supervised ones"
            )
        self.ctx, self.model = ctx, ctx.model
        self.hp = self.hyperparameters(ctx.cfg)
        self.wrappers: dict = {}  # id(network) -> its DistributedDataParallel (pipeline/distributed.prepare)

    @classmethod
    def hyperparameters(cls, cfg) -> dict:
        given = dict((cfg.ssl or {}).get(cls.name, {}) or {})
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise ValueError(f"ssl.{cls.name}: unknown key(s) {unknown}; {cls.name} takes {sorted(cls.defaults)}")
        return {**cls.defaults, **given}

    @classmethod
    def model_dropout(cls, cfg) -> float:
        """The dropout the mode's model is built with (model.dropout; a mode that needs dropout may raise it)."""
        return cfg.model.dropout

    @classmethod
    def model_block_dropout(cls, cfg) -> float:
        """The dropout after every backbone block the mode's model is built with (model.block_dropout)."""
        return cfg.model.block_dropout

    def batch_sizes(self) -> tuple[int, int]:
        """(labelled, unlabelled) clips per step."""
        b = self.ctx.cfg.train.batch_size
        return b, (b * int(self.hp.get("mu", 1)) if self.uses_unlabelled else 0)

    @classmethod
    def needs_calibration(cls, cfg) -> bool:
        """Whether the mode wants held-out labelled clips (train.calib_fraction) to choose its pseudo-label
        thresholds: rule class_threshold (pipeline/modes/pseudo.py)."""
        return cls.hyperparameters(cfg).get("rule") == "class_threshold"

    @classmethod
    def select_unlabelled(cls, cfg, fold, clips, log=None, load_model=None):
        """The unlabelled (noisy) clips fold `fold` trains on, out of `clips` (a ClipSet): all of them. load_model
        (path -> (model, checkpoint), the engine's) is for a mode whose selection predicts with a saved model."""
        return clips

    def calibration_model(self):
        """(network, head) whose predictions on the held-out clips set the pseudo-label thresholds."""
        return self.model, "h"

    def calibrate(self, p, y):
        """Held-out predictions p (N, C) and labels y (N, C), at each epoch start (modes with rule class_threshold)."""

    def step(self, batch: dict, progress: float):
        """One training step's loss (a scalar tensor) and logs (floats). progress in [0, 1] over the whole run."""
        raise NotImplementedError

    def networks(self) -> list:
        """The networks the optimiser trains (each gets its own DistributedDataParallel in a data-parallel run)."""
        return [self.model]

    def unused_parameters(self, net) -> list[str]:
        """Names of `net`'s parameters that no loss of this mode reaches (data-parallel training leaves them out of
        the gradient averaging, which would otherwise wait for their gradients)."""
        return []

    def parameters(self):
        return itertools.chain.from_iterable(net.parameters() for net in self.networks())

    def net(self, model=None):
        """What runs a training forward of `model` (default self.model): its DistributedDataParallel wrapper in a
        data-parallel run, so that the step's backward averages the gradients over the ranks; the model itself
        otherwise (and for networks nobody trains: teachers)."""
        model = self.model if model is None else model
        return self.wrappers.get(id(model), model)

    def after_step(self):
        """Called after each optimiser step (EMA updates)."""

    def eval_model(self) -> torch.nn.Module:
        """The network validated and saved as the fold's model."""
        return self.model

    def epoch_logs(self) -> dict:
        """Per-epoch figures accumulated over steps (e.g. pseudo-label quality); resets them."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass

    # helpers shared by modes -------------------------------------------------------------------------------
    def supervised_loss(self, x, y, head="h", model=None):
        """The configured loss of the augmented labelled batch: SpecAugment, reversal, mixup."""
        g = self.ctx.generator
        x2, y2 = self.ctx.aug(x, y, g)
        out = self.net(model)(x2, heads=[head])
        return self.ctx.loss_fn(out, y2, head=head)

    def pad_targets(self, y):
        """(B, C) -> (B, n_out): [y | 0] when the model has time-reversal outputs."""
        n_out = self.model.n_out
        return y if y.shape[1] == n_out else torch.cat([y, torch.zeros_like(y)], dim=1)


class PseudoLabelStats:
    """Per-epoch quantity and quality of selected pseudo-labels, for every mode that selects them.

    update(yhat (B, C) hard pseudo-labels, mask (B, C) entries used (None: all), truth (B, C) true labels or None,
    noisy (B, C) the clips' given (noisy) labels or None). logs() then resets and returns:
      pl_pos        selected positives per clip
      pl_used       share of (clip, class) entries the mask uses (modes with confidence masks)
      pl_precision  share of selected positives that are true (NaN when none selected), where the truth is known
      pl_recall     share of true labels selected as positives, where the truth is known
      pl_kept       share of the given noisy labels kept as positives, where noisy labels are given
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.clips = self.entries = self.used = self.sel = self.tp = self.true = self.kept = self.noisy = 0.0
        self.has_mask = self.has_truth = False

    @torch.no_grad()
    def update(self, yhat, mask=None, truth=None, noisy=None):
        c = yhat.shape[1]
        sel = yhat >= 0.5
        if mask is not None:
            sel = sel & mask.bool()
            self.used += float(mask.bool().sum())
            self.has_mask = True
        self.clips += yhat.shape[0]
        self.entries += yhat.numel()
        self.sel += float(sel.sum())
        if truth is not None:
            t = truth[:, :c] >= 0.5
            self.tp += float((sel & t).sum())
            self.true += float(t.sum())
            self.has_truth = True
        if noisy is not None:
            n = noisy[:, :c] >= 0.5
            self.kept += float((sel & n).sum())
            self.noisy += float(n.sum())

    def logs(self) -> dict:
        """The epoch's figures (in a data-parallel run, of every rank's clips: the counts are summed first)."""
        from pipeline.distributed import sum_values

        names = ("clips", "entries", "used", "sel", "tp", "true", "kept", "noisy")
        for k, v in zip(names, sum_values([getattr(self, k) for k in names])):
            setattr(self, k, v)
        out = {}
        if self.clips:
            out["pl_pos"] = self.sel / self.clips
        if self.has_mask:
            out["pl_used"] = self.used / self.entries
        if self.has_truth:
            out["pl_precision"] = self.tp / self.sel if self.sel else float("nan")
            out["pl_recall"] = self.tp / self.true if self.true else float("nan")
        if self.noisy:
            out["pl_kept"] = self.kept / self.noisy
        self.reset()
        return out


def create_mode(name: str, ctx: TrainContext) -> Mode:
    return mode_class(name)(ctx)
