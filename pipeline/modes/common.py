"""Shared pieces of the semi-supervised modes (one module per mode beside this one, as USB's algorithms folder):
ramps, the loss and selection operations per task (multi-label sigmoid / single-label softmax), frozen BN
statistics, MC dropout, FGSM, EMA, running means, and SSLMode, the base class of the semi-supervised modes.

Conventions shared by every semi-supervised mode (all adapted to multi-label sigmoid outputs: p = sigmoid(z) per
class, never a softmax or a normalisation across classes):
- Supervised part: the configured loss (loss.*) with the configured SpecAugment, time reversal and mixup
  (Mode.supervised_loss), or, for modes that mix labelled with unlabelled clips, the configured loss on the mixed
  labelled rows. Its unit is the codebase's: sum over outputs, mean over clips.
- Unlabelled / consistency terms compare the first C outputs (the original classes) of unreversed views; only the
  mixing modes (mixmatch, remixmatch, fixmatch_mixup) apply the configured time reversal to the mixed batch, with
  targets padded to the 2C outputs. These terms are in the supervised loss's unit, sum over classes and mean over
  clips (Task.masked divides by the number of rows, never by the mask count), so the papers' per-clip weights
  (FixMatch lambda_u = 1, ReMixMatch 1.5 / 0.5, ...) weigh an unlabelled clip as the papers intend. Mean Teacher's
  and MixMatch's MSE stay per-entry means (per_entry), as their papers define them.
- Passes that only make targets (teacher, guesses, weak views, MC dropout, adversarial and VAT passes) leave the BN
  running statistics alone (frozen_bn); only the passes that carry the training gradient on clean or augmented
  clips update them. Dropout is switched through models.dropout_modules, which every backbone's dropout and
  stochastic-depth modules answer to. Random draws use ctx.generator (dropout uses torch's global RNG, saved by the
  engine).
- Pseudo-label quantity and quality per epoch (PseudoLabelStats: pl_used, pl_pos, pl_kept; pl_precision and
  pl_recall of the selected positives when the unlabelled clips' true labels are known) come from epoch_logs().
  Selection rules beyond a fixed threshold (per-class thresholds for a target precision, top-k) live in
  pipeline/modes/pseudo.py.

Single-label datasets (data.single_label_csv; ctx.single_label) run every mode in its original single-label form,
through the operations of SingleLabelTask instead of MultiLabelTask (self.task): p = softmax(z); sharpening
p^(1/T) renormalised over the classes; distribution alignment renormalised; pseudo-labels one-hot argmax, kept per
clip where the top probability reaches tau_pos (FMUC: top mean - its std >= tau_pos; tau_neg unused); losses softmax
cross-entropy per clip; the co-training divergence the categorical Jensen-Shannon; FGSM against the argmax class.
Mean Teacher and MixMatch keep the MSE between probability vectors per entry, as their papers' code does.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import mixup, spec_augment
from pipeline.modes import Mode, PseudoLabelStats
from pipeline.modes.pseudo import PseudoLabeller

EPS = 1e-6


# --------------------------------------------------------------------------------------------------------- helpers


def sigmoid_ramp(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = progress / length clipped to [0, 1] (Laine & Aila 2017); 1 when length <= 0."""
    if length <= 0:
        return 1.0
    return math.exp(-5.0 * (1.0 - min(max(progress / length, 0.0), 1.0)) ** 2)


def linear_ramp(progress: float, length: float) -> float:
    """progress / length clipped to [0, 1]; 1 when length <= 0."""
    return 1.0 if length <= 0 else min(max(progress / length, 0.0), 1.0)


def sharpen(p: torch.Tensor, T: float = 0.5) -> torch.Tensor:
    """Per-class sharpening of Bernoulli probabilities: sigmoid(logit(p) / T) = p^(1/T) / (p^(1/T) + (1-p)^(1/T)).
    Each entry on its own, never normalised across classes (a row of 0.9s becomes 0.988s)."""
    p = p.clamp(EPS, 1 - EPS)
    return torch.sigmoid(torch.logit(p) / T)


def align(p: torch.Tensor, pi_labelled: torch.Tensor, pi_unlabelled: torch.Tensor) -> torch.Tensor:
    """Distribution alignment per class (ReMixMatch): p * pi_labelled / pi_unlabelled clipped to [0, 1], no
    renormalisation across classes."""
    return (p * pi_labelled / pi_unlabelled.clamp_min(EPS)).clamp(0, 1)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def binary_js(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of two Bernoulli predictions, per entry: H((p1 + p2) / 2) - (H(p1) + H(p2)) / 2."""
    return binary_entropy((p1 + p2) / 2) - (binary_entropy(p1) + binary_entropy(p2)) / 2


def sharpen_softmax(p: torch.Tensor, T: float = 0.5) -> torch.Tensor:
    """MixMatch's sharpening of a categorical distribution: p^(1/T) / sum_c p_c^(1/T) per row."""
    q = p.clamp_min(EPS) ** (1 / T)
    return q / q.sum(1, keepdim=True)


def align_softmax(p: torch.Tensor, pi_labelled: torch.Tensor, pi_unlabelled: torch.Tensor) -> torch.Tensor:
    """ReMixMatch's distribution alignment: p * pi_labelled / pi_unlabelled renormalised to sum 1 per row."""
    q = p * pi_labelled / pi_unlabelled.clamp_min(EPS)
    return q / q.sum(1, keepdim=True).clamp_min(EPS)


def categorical_js(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of two categorical distributions per row (B,): H(m) - (H(p1) + H(p2)) / 2."""

    def h(p):
        p = p.clamp_min(EPS)
        return -(p * p.log()).sum(1)

    return h((p1 + p2) / 2) - (h(p1) + h(p2)) / 2


def per_entry(loss: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Sum of a (rows, n) loss matrix over rows x n_classes: a mean per (clip, class) entry, constant normaliser.
    Only for Mean Teacher's and MixMatch's MSE, which their papers define per entry."""
    return loss.sum() / (loss.shape[0] * n_classes)


def masked_bce(z: torch.Tensor, t: torch.Tensor, mask=None) -> torch.Tensor:
    """BCE of logits z (B, n) against targets t where mask (B, n) is set, summed over classes and averaged over the
    B clips (the supervised loss's unit), whatever the number of masked entries."""
    return TASKS[False].masked(z, t, mask)


class MultiLabelTask:
    """The sigmoid (multi-label) form of the operations the modes share; SingleLabelTask has the softmax form.
    Multi-label pseudo-labels are selected by SSLMode.pick with the mode's PseudoLabeller (pipeline/modes/pseudo.py);
    SingleLabelTask.select / select_mc are the single-label forms."""

    single_label = False

    @staticmethod
    def probs(z):
        return torch.sigmoid(z.float())

    sharpen = staticmethod(sharpen)
    align = staticmethod(align)

    @staticmethod
    def hard(p):
        return (p >= 0.5).float()

    @staticmethod
    def entry_loss(z, t):
        """(B, n) loss per entry: BCE of logits z against targets t."""
        return F.binary_cross_entropy_with_logits(z.float(), t.float(), reduction="none")

    def masked(self, z, t, mask=None):
        """Masked loss, summed over the outputs and averaged over the rows (clips): the supervised loss's unit. The
        denominator is the number of rows, never the mask count."""
        loss = self.entry_loss(z, t)
        return (loss if mask is None else loss * mask).sum() / len(z)

    @staticmethod
    def divergence(p1, p2):
        """Co-training divergence: binary Jensen-Shannon summed over classes, averaged over clips."""
        return binary_js(p1, p2).sum(1).mean()


class SingleLabelTask(MultiLabelTask):
    """The softmax (single-label) form: one class per clip, losses per clip (see the module docstring)."""

    single_label = True

    @staticmethod
    def probs(z):
        return torch.softmax(z.float(), 1)

    sharpen = staticmethod(sharpen_softmax)
    align = staticmethod(align_softmax)

    @staticmethod
    def _rows(p, top, keep):
        return F.one_hot(top, p.shape[1]).to(p.dtype), keep[:, None].expand_as(p)

    @classmethod
    def select(cls, p, tau_pos, tau_neg=None):
        """One-hot argmax pseudo-labels, kept (the whole row) where the top probability >= tau_pos (a float, or (C,)
        per class: the threshold of the predicted class)."""
        conf, top = p.max(1)
        tau = tau_pos[top] if torch.is_tensor(tau_pos) else tau_pos
        return cls._rows(p, top, conf >= tau)

    @classmethod
    def select_mc(cls, mean, std, tau_pos, tau_neg=None):
        top = mean.argmax(1)
        conf = mean.gather(1, top[:, None])[:, 0] - std.gather(1, top[:, None])[:, 0]
        return cls._rows(mean, top, conf >= tau_pos)

    @staticmethod
    def hard(p):
        return F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype)

    @staticmethod
    def entry_loss(z, t):
        """(B, C) terms of the softmax cross-entropy -t_c log softmax(z)_c (their row sum is the CE)."""
        return -t.float() * F.log_softmax(z.float(), 1)

    @staticmethod
    def divergence(p1, p2):
        return categorical_js(p1, p2).mean()


TASKS = {False: MultiLabelTask(), True: SingleLabelTask()}


@contextlib.contextmanager
def switched(modules, attr: str, value):
    """Set `attr` of every module to `value` inside; each module gets its own earlier value back after."""
    was = [(m, getattr(m, attr)) for m in modules]
    for m, _ in was:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, v in was:
            setattr(m, attr, v)


def bn_modules(*models):
    return [m for model in models for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_bn(*models, no_dropout: bool = False):
    """BN layers leave their running statistics (and counters) untouched inside: in train mode they normalise with
    the batch statistics, in eval mode with the running ones, as usual. no_dropout: dropout off too, so the network
    is a deterministic function of its input (VAT's finite differences, FGSM)."""
    drops = [m for model in models for m in dropout_modules(model)] if no_dropout else []
    with switched(bn_modules(*models), "track_running_stats", False), switched(drops, "training", False):
        yield


def bn_eval(model):
    """BN layers in eval mode inside: normalised by the running statistics, which stay untouched."""
    return switched(bn_modules(model), "training", False)


def dropout_modules(model):
    """Every module whose training flag makes the forward random (dropout, stochastic depth): models.dropout_modules."""
    from models import dropout_modules as find

    return find(model)


@contextlib.contextmanager
def mc_dropout(model):
    """Monte-Carlo dropout: everything in eval mode (BN uses and keeps its running statistics) except dropout."""
    with switched(list(model.modules()), "training", False), switched(dropout_modules(model), "training", True):
        yield


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *(1,) * (x.dim() - 1))


def fgsm(model, x: torch.Tensor, eps_rel: float, n_classes: int, task=TASKS[False]) -> torch.Tensor:
    """FGSM adversarial examples (Goodfellow et al. 2015) against the network's own hard labels 1[p >= 0.5] on the
    first n_classes outputs: x + eps_rel * std(x_b) * sign(grad_x BCE). The step is relative to each clip's standard
    deviation (normalised log-mels: about eps_rel in feature std units). No parameter gradients, BN untouched,
    dropout off."""
    x = x.detach().requires_grad_(True)
    with frozen_bn(model, no_dropout=True):
        z = model(x, heads=["h"])["h"][:, :n_classes].float()
        loss = task.entry_loss(z, task.hard(task.probs(z.detach()))).sum()
    (g,) = torch.autograd.grad(loss, x)
    x = x.detach()
    return x + eps_rel * _per_sample(x.flatten(1).std(1), x) * g.sign()


class EMA:
    """Exponential moving average of a model: parameters and float buffers (BN running mean / var) follow
    teacher = d teacher + (1 - d) student with d = min(1 - 1 / (t + 1), decay), t the update count (1 at the first
    update, as in Tarvainen & Valpola's code). Integer buffers (num_batches_tracked) are skipped: left as copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.t = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.t += 1
        d = min(1 - 1 / (self.t + 1), self.decay)
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach().to(v.dtype), alpha=1 - d)

    def state_dict(self):
        return {"model": self.model.state_dict(), "t": self.t}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.t = int(state["t"])


class RunningMean:
    """Mean of the last n (C,) vectors given to update() (a ring buffer)."""

    def __init__(self, n: int, size: int, device):
        self.buf, self.count = torch.zeros(n, size, device=device), 0

    def update(self, v: torch.Tensor):
        self.buf[self.count % len(self.buf)] = v.detach().float()
        self.count += 1

    def value(self) -> torch.Tensor:
        return self.buf[: min(self.count, len(self.buf))].mean(0)

    def state_dict(self):
        return {"buf": self.buf.clone(), "count": self.count}

    def load_state_dict(self, state):
        self.buf.copy_(state["buf"])
        self.count = int(state["count"])


class SSLMode(Mode):
    """Shared plumbing of the semi-supervised modes."""

    uses_unlabelled = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.C, self.g = ctx.n_classes, ctx.generator
        self.task = TASKS[bool(ctx.single_label)]
        self.stats = PseudoLabelStats()
        self.labeller = None
        if "rule" in self.defaults:  # the modes that select pseudo-labels (pipeline/modes/pseudo.py)
            if ctx.single_label and self.hp["rule"] != "threshold":
                raise ValueError(
                    f"ssl.{self.name}.rule={self.hp['rule']}: single-label datasets take rule "
                    f"threshold (the argmax kept where its probability reaches tau_pos)"
                )
            self.labeller = PseudoLabeller(self.hp, self.C, ctx.extra.get("cardinality", 1.0))

    def pick(self, p_pos, p_neg=None):
        """Pseudo-labels (B, C) and the mask (B, C) of the entries used: the rule's positives of p_pos, and the
        confident negatives p_neg <= tau_neg (p_neg defaults to p_pos). Single-label: SingleLabelTask.select."""
        if self.task.single_label:
            return self.task.select(p_pos, self.hp["tau_pos"], self.hp["tau_neg"])
        pos = self.labeller.positives(p_pos)
        return pos.float(), pos | ((p_pos if p_neg is None else p_neg) <= self.hp["tau_neg"])

    def calibrate(self, p, y):
        if self.labeller is not None:
            self.labeller.calibrate(p, y)

    def logits(self, x, model=None) -> torch.Tensor:
        """Head h's logits of the original classes (first C outputs), float32."""
        return self.net(model)(x, heads=["h"])["h"][:, : self.C].float()

    def strong(self, x):
        """Strong SpecAugment: hp strong_masks frequency and time masks, each up to strong_width of the axis."""
        m, w = int(self.hp["strong_masks"]), float(self.hp["strong_width"])
        return spec_augment(x, m, m, w, w, generator=self.g)

    def reverse(self, x, t, m):
        """Configured time reversal of a batch with targets t and entry mask m (B, C) -> (B, n_out): a kept clip gets
        [t | 0], a reversed one [0 | t]; the all-zero half is known, so its mask is 1."""
        if self.model.n_out == self.C:
            return x, t, m
        x2, r = self.ctx.aug.reverse(x, torch.ones_like(t), self.g)  # r = [1 - rev | rev]
        rev, z, o = r[:, -1:] > 0.5, torch.zeros_like(t), torch.ones_like(m)
        return (
            x2,
            torch.where(rev, torch.cat([z, t], 1), torch.cat([t, z], 1)),
            torch.where(rev, torch.cat([o, m], 1), torch.cat([m, o], 1)),
        )

    def mix(self, xs, ts, ms=None, alpha=0.75):
        """MixMatch mixing: concatenate clips (targets, masks), reverse, mixup with lambda' = max(l, 1 - l),
        l ~ Beta(alpha, alpha), over the whole batch. The mixed mask is m * m[perm]: an entry counts only where both
        sources are trusted. -> x, t (N, n_out), m (N, n_out)."""
        x, t = torch.cat(xs), torch.cat(ts).float()
        m = torch.ones_like(t) if ms is None else torch.cat(ms).float()
        x, t, m = self.reverse(x, t, m)
        x, t, _, perm = mixup(x, t, alpha, self.g, per_pair=self.ctx.aug.mixup_per_pair)
        return x, t, m * m[perm]

    def epoch_logs(self):
        return {**self.stats.logs(), **(self.labeller.logs() if self.labeller else {})}
