"""Semi-supervised modes for multi-label tagging: labelled curated clips plus unlabelled (noisy) clips.

    train.mode = mean_teacher | deep_co_training | mixmatch | remixmatch | fixmatch | fixmatch_mixup | fmuc | vat
                 | pseudo_label
    ssl: {fixmatch: {tau_pos: 0.9, mu: 4}}          # hyperparameters: each class's `defaults`

Conventions shared by every mode here (all adapted to multi-label sigmoid outputs: p = sigmoid(z) per class, never
a softmax or a normalisation across classes):
- Supervised part: the configured loss (loss.*) with the configured SpecAugment, time reversal and mixup
  (Mode.supervised_loss), or, for modes that mix labelled with unlabelled clips, the configured loss on the mixed
  labelled rows. Its scale is the codebase's: sum over outputs, mean over clips.
- Unlabelled / consistency terms compare the first C outputs (the original classes) of unreversed views; only the
  mixing modes (mixmatch, remixmatch, fixmatch_mixup) apply the configured time reversal to the mixed batch, with
  targets padded to the 2C outputs. These terms are per-entry means: sum / (rows x C), a constant normaliser (never
  the mask count), so they are about C times smaller than a per-clip sum; the weights are in that unit.
- Passes that only make targets (teacher, guesses, weak views, MC dropout, adversarial and VAT passes) leave the BN
  running statistics alone (frozen_bn); only the passes that carry the training gradient on clean or augmented
  clips update them. Random draws use ctx.generator (dropout uses torch's global RNG, saved by the engine).
- Pseudo-label quantity and quality per epoch (PseudoLabelStats: pl_used, pl_pos, pl_kept; pl_precision and
  pl_recall of the selected positives when the unlabelled clips' true labels are known) come from epoch_logs().

Single-label datasets (data.single_label_csv; ctx.single_label) run every mode here in its original single-label
form, through the operations of SingleLabelTask instead of MultiLabelTask (self.task): p = softmax(z); sharpening
p^(1/T) renormalised over the classes; distribution alignment renormalised; pseudo-labels one-hot argmax, kept per
clip where the top probability reaches tau_pos (FMUC: top mean - its std >= tau_pos; tau_neg unused); losses softmax
cross-entropy per clip, normalised by the number of clips (rows) rather than rows x C; the co-training divergence the
categorical Jensen-Shannon; FGSM against the argmax class. Mean Teacher and MixMatch keep the MSE between
probability vectors per entry, as their papers' code does.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import mixup, spec_augment
from pipeline.modes import Mode, PseudoLabelStats, register_mode

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


def confidence_mask(p: torch.Tensor, tau_pos, tau_neg: float):
    """Hard pseudo-labels 1[p >= 0.5] (B, C) and the mask of confident entries: p >= tau_pos (a float, or (C,) per
    class) or p <= tau_neg."""
    return (p >= 0.5).float(), (p >= tau_pos) | (p <= tau_neg)


def class_thresholds(pos_rate: torch.Tensor, tau_pos: float) -> torch.Tensor:
    """Per-class positive thresholds for rare classes: 0.5 + (tau_pos - 0.5) * rate_c / max rate, so the most
    frequent labelled class keeps tau_pos, rarer ones need less confidence, and none goes below 0.5 (a selected
    positive is always a hard positive)."""
    return 0.5 + (tau_pos - 0.5) * pos_rate / pos_rate.max().clamp_min(EPS)


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
    """Sum of a (rows, n) loss matrix over rows x n_classes: a mean per (clip, class) entry, constant normaliser."""
    return loss.sum() / (loss.shape[0] * n_classes)


def masked_bce(z: torch.Tensor, t: torch.Tensor, mask=None, n_classes: int | None = None) -> torch.Tensor:
    """BCE of logits z (B, n) against targets t where mask (B, n) is set, normalised by the constant B x n_classes
    (n_classes defaults to n), not by the number of masked entries."""
    return TASKS[False].masked(z, t, mask, n_classes)


class MultiLabelTask:
    """The sigmoid (multi-label) form of the operations the modes share; SingleLabelTask has the softmax form."""
    single_label = False

    @staticmethod
    def probs(z):
        return torch.sigmoid(z.float())

    sharpen = staticmethod(sharpen)
    align = staticmethod(align)

    @staticmethod
    def select(p, tau_pos, tau_neg):
        """Hard pseudo-labels (B, C) and the mask (B, C) of the entries kept (confidence_mask)."""
        return confidence_mask(p, tau_pos, tau_neg)

    @staticmethod
    def select_mc(mean, std, tau_pos, tau_neg):
        """From MC-dropout passes: positives where mean - std >= tau_pos, negatives where mean + std <= tau_neg."""
        return (mean >= 0.5).float(), (mean - std >= tau_pos) | (mean + std <= tau_neg)

    @staticmethod
    def hard(p):
        return (p >= 0.5).float()

    @staticmethod
    def entry_loss(z, t):
        """(B, n) loss per entry: BCE of logits z against targets t."""
        return F.binary_cross_entropy_with_logits(z.float(), t.float(), reduction="none")

    @staticmethod
    def denominator(rows: int, n_classes: int) -> int:
        return rows * n_classes

    def masked(self, z, t, mask=None, n_classes=None):
        """Masked loss over a constant denominator (rows x C here: masked_bce; rows for single-label)."""
        loss = self.entry_loss(z, t)
        return (loss if mask is None else loss * mask).sum() / self.denominator(len(z), n_classes or z.shape[1])

    @staticmethod
    def divergence(p1, p2):
        """Co-training divergence: binary Jensen-Shannon per entry, averaged."""
        return binary_js(p1, p2).mean()


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
    def denominator(rows: int, n_classes: int) -> int:
        return rows

    @staticmethod
    def divergence(p1, p2):
        return categorical_js(p1, p2).mean()


TASKS = {False: MultiLabelTask(), True: SingleLabelTask()}


@contextlib.contextmanager
def frozen_bn(*models, no_dropout: bool = False):
    """BN layers leave their running statistics (and counters) untouched inside: in train mode they normalise with
    the batch statistics, in eval mode with the running ones, as usual. no_dropout: dropout off too, so the network
    is a deterministic function of its input (VAT's finite differences, FGSM)."""
    bns = [m for model in models for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    drops = [(m, m.training) for model in models for m in dropout_modules(model)] if no_dropout else []
    for m in bns:
        m.track_running_stats = False
    for m, _ in drops:
        m.training = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
        for m, t in drops:
            m.training = t


def dropout_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@contextlib.contextmanager
def mc_dropout(model):
    """Monte-Carlo dropout: everything in eval mode (BN uses and keeps its running statistics) except dropout."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    for m in dropout_modules(model):
        m.training = True
    try:
        yield
    finally:
        for m, t in was.items():
            m.training = t


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
    g, = torch.autograd.grad(loss, x)
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
        return self.buf[:min(self.count, len(self.buf))].mean(0)

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

    def logits(self, x, model=None) -> torch.Tensor:
        """Head h's logits of the original classes (first C outputs), float32."""
        return (model or self.model)(x, heads=["h"])["h"][:, :self.C].float()

    def strong(self, x):
        """Strong SpecAugment: hp strong_masks frequency and time masks, each up to strong_width of the axis."""
        m, w = int(self.hp["strong_masks"]), float(self.hp["strong_width"])
        return spec_augment(x, m, m, w, w, generator=self.g)

    def reverse(self, x, t, m):
        """Configured time reversal of a batch with targets t and entry mask m (B, C) -> (B, n_out): a kept clip gets
        [t | 0], a reversed one [0 | t]; the all-zero half is known, so its mask is 1."""
        if self.model.n_out == self.C:
            return x, t, m
        x2, r = self.ctx.aug.reverse(x, torch.ones_like(t), self.g)        # r = [1 - rev | rev]
        rev, z, o = r[:, -1:] > 0.5, torch.zeros_like(t), torch.ones_like(m)
        return (x2, torch.where(rev, torch.cat([z, t], 1), torch.cat([t, z], 1)),
                torch.where(rev, torch.cat([o, m], 1), torch.cat([m, o], 1)))

    def mix(self, xs, ts, ms=None, alpha=0.75):
        """MixMatch mixing: concatenate clips (targets, masks), reverse, mixup with lambda' = max(l, 1 - l),
        l ~ Beta(alpha, alpha), over the whole batch. The mixed mask is m * m[perm]: an entry counts only where both
        sources are trusted. -> x, t (N, n_out), m (N, n_out)."""
        x, t = torch.cat(xs), torch.cat(ts).float()
        m = torch.ones_like(t) if ms is None else torch.cat(ms).float()
        x, t, m = self.reverse(x, t, m)
        x, t, _, perm = mixup(x, t, alpha, self.g)
        return x, t, m * m[perm]

    def epoch_logs(self):
        return self.stats.logs()


# ----------------------------------------------------------------------------------------------------------- modes

@register_mode("mean_teacher")
class MeanTeacher(SSLMode):
    """Mean Teacher (Tarvainen & Valpola, NeurIPS 2017).

    Teacher = EMA of the student (parameters and BN running statistics). Consistency = MSE between the student's
    and the teacher's sigmoids (per class, per-entry mean) on labelled and unlabelled clips under two independently
    drawn SpecAugment views, one per network; weight w_max exp(-5 (1 - t)^2), t = progress / rampup. The teacher
    runs in train mode (batch statistics, as the reference code) with its buffers untouched; it is the model that is
    validated and saved.
    """
    defaults = {"mu": 1, "ema_decay": 0.999, "w_max": 10.0, "rampup": 0.3}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ema = EMA(self.model, self.hp["ema_decay"])

    def consistency(self, x):
        xs, xt = self.ctx.aug.spec(x, self.g), self.ctx.aug.spec(x, self.g)       # two independent views
        teacher = self.ema.model.train(self.model.training)
        with torch.no_grad(), frozen_bn(teacher):
            pt = self.task.probs(self.logits(xt, teacher))
        return per_entry((self.task.probs(self.logits(xs)) - pt) ** 2, self.C)

    def step(self, batch, progress):
        sup = self.supervised_loss(batch["x"], batch["y"])
        cons = self.consistency(torch.cat([batch["x"], batch["ux"]]))
        w = self.hp["w_max"] * sigmoid_ramp(progress, self.hp["rampup"])
        return sup + w * cons, {"sup": sup.detach(), "cons": cons.detach(), "w_cons": w}

    def after_step(self):
        self.ema.update(self.model)

    def eval_model(self):
        return self.ema.model

    def state_dict(self):
        return {"teacher": self.ema.state_dict()}

    def load_state_dict(self, state):
        self.ema.load_state_dict(state["teacher"])


@register_mode("deep_co_training")
class DeepCoTraining(SSLMode):
    """Deep Co-Training (Qiao et al., ECCV 2018), two views, multi-label.

    Two networks of the same architecture, the second with its own initialisation. Loss = the configured supervised
    loss of each + ramp * (w_cot L_cot + w_dif L_dif) with the sigmoid ramp. L_cot = binary Jensen-Shannon between
    their sigmoids on unlabelled clips, averaged over classes. L_dif: each network makes FGSM examples against its own
    hard labels 1[p >= 0.5] (step eps times each clip's std, see fgsm) on labelled and unlabelled clips, and the other
    network must agree with it there: BCE(z2(adv1), p1) + BCE(z1(adv2), p2), per entry, targets detached. Both
    networks see one shared SpecAugment view of the clips. The first network is validated and saved.
    """
    defaults = {"mu": 1, "w_cot": 1.0, "w_dif": 0.5, "eps": 0.02, "rampup": 0.3}

    def __init__(self, ctx):
        super().__init__(ctx)
        from models import create_model
        self.net2 = create_model(**self.model.config).to(ctx.device)
        if ctx.cfg.train.channels_last:
            self.net2.to(memory_format=torch.channels_last)

    def parameters(self):
        return itertools.chain(self.model.parameters(), self.net2.parameters())

    def step(self, batch, progress):
        net1, net2, b, C = self.model, self.net2.train(self.model.training), len(batch["x"]), self.C
        sup = self.supervised_loss(batch["x"], batch["y"]) + self.supervised_loss(batch["x"], batch["y"], model=net2)
        v = self.ctx.aug.spec(torch.cat([batch["x"], batch["ux"]]), self.g)
        task = self.task
        p1, p2 = task.probs(self.logits(v, net1)), task.probs(self.logits(v, net2))
        cot = task.divergence(p1[b:], p2[b:])
        adv1, adv2 = fgsm(net1, v, self.hp["eps"], C, task), fgsm(net2, v, self.hp["eps"], C, task)
        with frozen_bn(net1, net2):
            dif = task.masked(self.logits(adv1, net2), p1.detach()) + task.masked(self.logits(adv2, net1), p2.detach())
        w = sigmoid_ramp(progress, self.hp["rampup"])
        loss = sup + w * (self.hp["w_cot"] * cot + self.hp["w_dif"] * dif)
        return loss, {"sup": sup.detach(), "cot": cot.detach(), "dif": dif.detach(), "ramp": w}

    def state_dict(self):
        return {"net2": self.net2.state_dict()}

    def load_state_dict(self, state):
        self.net2.load_state_dict(state["net2"])


@register_mode("mixmatch")
class MixMatch(SSLMode):
    """MixMatch (Berthelot et al., NeurIPS 2019), multi-label.

    Guess q = sharpen(mean over K SpecAugment views of sigmoid(z)), per class, T (never normalised across classes).
    The labelled clips (one SpecAugment view, targets y) and the K unlabelled views (targets q) are concatenated,
    time-reversed as configured and mixed up (alpha, lambda' >= 0.5) over the whole batch. Labelled rows: the
    configured loss; unlabelled rows: MSE between sigmoids and mixed targets (per-entry mean, as the paper's MSE),
    weight lambda_u ramped linearly over `rampup`. pl_* stats use the hard guesses q >= 0.5 (all kept).
    """
    defaults = {"mu": 1, "K": 2, "T": 0.5, "alpha": 0.75, "lambda_u": 75.0, "rampup": 0.2}

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        us = [self.ctx.aug.spec(ux, self.g) for _ in range(int(self.hp["K"]))]
        with torch.no_grad(), frozen_bn(self.model):
            q = self.task.sharpen(torch.stack([self.task.probs(self.logits(u)) for u in us]).mean(0), self.hp["T"])
        self.stats.update((q >= 0.5).float(), torch.ones_like(q), batch.get("utruth"), batch.get("uy"))
        xm, tm, _ = self.mix([self.ctx.aug.spec(x, self.g), *us], [y] + [q] * len(us), alpha=self.hp["alpha"])
        out = self.model(xm, heads=["h"])
        sup = self.ctx.loss_fn({k: v[:b] for k, v in out.items()}, tm[:b])
        unl = per_entry((self.task.probs(out["h"][b:]) - tm[b:]) ** 2, self.C)
        w = self.hp["lambda_u"] * linear_ramp(progress, self.hp["rampup"])
        return sup + w * unl, {"sup": sup.detach(), "unl": unl.detach(), "w_u": w}


@register_mode("remixmatch")
class ReMixMatch(SSLMode):
    """ReMixMatch (Berthelot et al., ICLR 2020), multi-label, without the rotation loss (no meaning for spectrograms).

    Distribution alignment per class: p_weak * pi_l / pi_u clipped to [0, 1], pi_u the mean weak prediction over the
    last da_batches batches, pi_l the mean labelled target over as many labelled batches; then per-class sharpening
    (T). Augmentation anchoring: the weak (unaugmented) view's target q is the target of K strong views (strong
    SpecAugment). Mixing as in MixMatch; labelled rows the configured loss, unlabelled rows BCE on the mixed targets
    (lambda_u), plus BCE of the first strong view before mixing against q (lambda_u1); both per entry, ramped linearly.
    """
    defaults = {"mu": 1, "K": 2, "T": 0.5, "alpha": 0.75, "lambda_u": 1.5, "lambda_u1": 0.5, "rampup": 0.2,
                "da_batches": 128, "strong_masks": 3, "strong_width": 0.2}

    def __init__(self, ctx):
        super().__init__(ctx)
        n = int(self.hp["da_batches"])
        self.pi_l, self.pi_u = RunningMean(n, self.C, ctx.device), RunningMean(n, self.C, ctx.device)

    def guess(self, y, ux):
        with torch.no_grad(), frozen_bn(self.model):
            p = self.task.probs(self.logits(ux))
        self.pi_l.update(y.float().mean(0))
        self.pi_u.update(p.mean(0))
        return self.task.sharpen(self.task.align(p, self.pi_l.value(), self.pi_u.value()), self.hp["T"])

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        q = self.guess(y, ux)
        self.stats.update((q >= 0.5).float(), torch.ones_like(q), batch.get("utruth"), batch.get("uy"))
        us = [self.strong(ux) for _ in range(int(self.hp["K"]))]
        xm, tm, _ = self.mix([self.ctx.aug.spec(x, self.g), *us], [y] + [q] * len(us), alpha=self.hp["alpha"])
        n = len(xm)
        out = self.model(torch.cat([xm, us[0]]), heads=["h"])
        sup = self.ctx.loss_fn({k: v[:b] for k, v in out.items()}, tm[:b])
        unl = self.task.masked(out["h"][b:n], tm[b:], n_classes=self.C)
        pre = self.task.masked(out["h"][n:, :self.C], q)
        w = linear_ramp(progress, self.hp["rampup"])
        loss = sup + w * (self.hp["lambda_u"] * unl + self.hp["lambda_u1"] * pre)
        return loss, {"sup": sup.detach(), "unl": unl.detach(), "unl_pre": pre.detach(), "ramp": w}

    def state_dict(self):
        return {"pi_l": self.pi_l.state_dict(), "pi_u": self.pi_u.state_dict()}

    def load_state_dict(self, state):
        self.pi_l.load_state_dict(state["pi_l"])
        self.pi_u.load_state_dict(state["pi_u"])


@register_mode("fixmatch")
class FixMatch(SSLMode):
    """FixMatch (Sohn et al., NeurIPS 2020), multi-label.

    Pseudo-labels from the weak (unaugmented) view, y_c = 1[p_c >= 0.5], kept per entry where confident: p >= tau_pos
    (positives) or p <= tau_neg (negatives). Unlabelled loss = lambda_u * masked BCE of the strong view (strong
    SpecAugment) normalised by the constant B_u x C; no ramp. per_class_threshold: tau_pos_c = 0.5 + (tau_pos - 0.5)
    * r_c / max r, r_c the class's positive rate over the labelled batches so far (Laplace-smoothed), so rare
    classes get positives at lower confidence (never below 0.5); negatives keep tau_neg.
    """
    defaults = {"mu": 2, "tau_pos": 0.95, "tau_neg": 0.05, "lambda_u": 1.0, "strong_masks": 3, "strong_width": 0.2,
                "per_class_threshold": False}

    def __init__(self, ctx):
        super().__init__(ctx)
        if not self.hp["tau_neg"] < 0.5 <= self.hp["tau_pos"]:
            raise ValueError(f"ssl.{self.name}: need tau_neg < 0.5 <= tau_pos, got tau_neg={self.hp['tau_neg']}, "
                             f"tau_pos={self.hp['tau_pos']}")
        self.pos, self.n = torch.zeros(self.C, device=ctx.device), 0

    def thresholds(self, y):
        """tau_pos, or the per-class thresholds after counting this labelled batch."""
        self.pos += y.detach().float().sum(0)
        self.n += len(y)
        if not self.hp.get("per_class_threshold"):
            return self.hp["tau_pos"]
        return class_thresholds((self.pos + 1) / (self.n + 2), self.hp["tau_pos"])

    def select(self, batch):
        """(pseudo-labels, mask) (B_u, C) from the weak view."""
        tau = self.thresholds(batch["y"])
        with torch.no_grad(), frozen_bn(self.model):
            p = self.task.probs(self.logits(batch["ux"]))
        return self.task.select(p, tau, self.hp["tau_neg"])

    def step(self, batch, progress):
        yhat, mask = self.select(batch)
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        sup = self.supervised_loss(batch["x"], batch["y"])
        unl = self.task.masked(self.logits(self.strong(batch["ux"])), yhat, mask)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(),
                                                   "kept": mask.float().mean()}

    def state_dict(self):
        return {"pos": self.pos.clone(), "n": self.n}

    def load_state_dict(self, state):
        self.pos.copy_(state["pos"])
        self.n = int(state["n"])


@register_mode("fixmatch_mixup")
class FixMatchMixup(FixMatch):
    """FixMatch with MixMatch-style mixing: labelled clips (configured SpecAugment, targets y, mask 1) and the strong
    unlabelled views (pseudo-labels, confidence mask) are concatenated, time-reversed as configured and mixed up
    (alpha, lambda' >= 0.5); targets mix linearly, masks multiply (m * m[perm]: a mixed entry counts only when both
    sources are trusted; the other-orientation half of a clip's 2C outputs is known to be 0 and always counts).
    Loss = masked BCE of the labelled rows (sum over outputs, mean over clips: losses.bce's scale; the configured
    loss cannot take per-entry masks, so this mode uses BCE and leaves cosine heads untrained) + lambda_u * masked
    BCE of the unlabelled rows / (B_u x C).
    """
    defaults = {**FixMatch.defaults, "alpha": 0.75}

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        yhat, mask = self.select(batch)
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        xm, tm, mm = self.mix([self.ctx.aug.spec(x, self.g), self.strong(ux)], [y, yhat],
                              [torch.ones_like(y), mask.float()], self.hp["alpha"])
        loss = self.task.entry_loss(self.model(xm, heads=["h"])["h"], tm) * mm
        sup, unl = loss[:b].sum() / b, loss[b:].sum() / self.task.denominator(len(loss) - b, self.C)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(),
                                                   "kept": mask.float().mean()}


@register_mode("fmuc")
class FixMatchUncertainty(FixMatch):
    """FixMatch with uncertainty-aware selection (MC dropout as in UPS, Rizve et al., ICLR 2021).

    N passes of the weak view with dropout active and BN frozen (eval mode but dropout), p_n = sigmoid(z_n / T);
    a positive is kept where mean - std >= tau_pos, a negative where mean + std <= tau_neg (std over the passes,
    unbiased); labels 1[mean >= 0.5]; the rest as fixmatch. Needs a model with dropout: with model.dropout = 0 the
    train stage builds the model with this mode's `dropout` (0.3; recorded in the checkpoint's model config); a model
    without dropout handed to the mode directly is an error.
    """
    defaults = {"mu": 2, "passes": 5, "T": 2.0, "tau_pos": 0.9, "tau_neg": 0.1, "lambda_u": 1.0, "strong_masks": 3,
                "strong_width": 0.2, "dropout": 0.3}

    @classmethod
    def model_dropout(cls, cfg) -> float:
        return cfg.model.dropout or cls.hyperparameters(cfg)["dropout"]

    def __init__(self, ctx):
        super().__init__(ctx)
        if not dropout_modules(self.model):
            raise ValueError("train.mode=fmuc needs MC dropout, but the model has no dropout: set model.dropout > 0 "
                             "(e.g. model.dropout=0.3)")

    def mc_probs(self, ux):
        """(N, B_u, C) sigmoids of the N MC-dropout passes (temperature T)."""
        with torch.no_grad(), mc_dropout(self.model):
            return torch.stack([self.task.probs(self.logits(ux) / self.hp["T"]) for _ in range(int(self.hp["passes"]))])

    def select(self, batch):
        ps = self.mc_probs(batch["ux"])
        return self.task.select_mc(ps.mean(0), ps.std(0), self.hp["tau_pos"], self.hp["tau_neg"])


@register_mode("vat")
class VAT(SSLMode):
    """Virtual Adversarial Training (Miyato et al., TPAMI 2018), multi-label.

    D(r) = BCE(z(x + r), p(x)) on the C original classes with p detached; one power iteration from a random unit
    direction d scaled by xi gives g = grad_r D(xi d); the loss is the binary KL (BCE minus the entropy of p, same
    gradient) at r = eps g / |g|, per entry, on labelled and unlabelled clips, weighted alpha, plus the supervised
    loss. xi and eps are relative to each clip's L2 norm: xi = xi_rel ||x||, eps = eps_rel ||x|| (with normalised
    log-mels eps_rel = 0.05 is an RMS perturbation of about 0.05 feature std). The clean and perturbed passes leave
    BN running statistics alone and run without dropout (else dropout noise, not r, would set the direction).
    """
    defaults = {"mu": 1, "alpha": 1.0, "eps_rel": 0.05, "xi_rel": 1e-3}

    def perturbation(self, x, p):
        """r_adv (B, ...) with ||r_b|| = eps_rel ||x_b||."""
        norm = _per_sample(x.flatten(1).norm(dim=1), x)
        d = torch.randn(x.shape, generator=self.g, device=self.g.device).to(x.device)
        r = (self.hp["xi_rel"] * norm * d / _per_sample(d.flatten(1).norm(dim=1), x).clamp_min(1e-12))
        r.requires_grad_(True)
        with frozen_bn(self.model, no_dropout=True):
            dist = self.task.entry_loss(self.logits(x + r), p).sum()
        g, = torch.autograd.grad(dist, r)
        return (self.hp["eps_rel"] * norm * g / _per_sample(g.flatten(1).norm(dim=1), x).clamp_min(1e-12)).detach()

    def step(self, batch, progress):
        sup = self.supervised_loss(batch["x"], batch["y"])
        v = torch.cat([batch["x"], batch["ux"]])
        with torch.no_grad(), frozen_bn(self.model, no_dropout=True):
            z = self.logits(v)
        p = self.task.probs(z)
        r = self.perturbation(v, p)
        with frozen_bn(self.model, no_dropout=True):
            za = self.logits(v + r)
        lds = self.task.masked(za, p) - self.task.masked(z, p)
        return sup + self.hp["alpha"] * lds, {"sup": sup.detach(), "vat": lds.detach()}


@register_mode("pseudo_label")
class PseudoLabel(SSLMode):
    """Pseudo-labelling rounds inside one fit (Lee 2013; the noisy-set relabelling of FSDKaggle2019 entries).

    On the first step the teacher becomes a frozen copy of the initial model (the warm-up / train.init_from model:
    start from one, a random teacher selects little). Each batch it labels the unlabelled clips in eval mode:
    positives p >= tau_pos, negatives p <= tau_neg, the rest masked; the student trains on the supervised loss plus
    lambda_u * masked BCE of a SpecAugment view of those clips / (B_u x C). The teacher is refreshed from the student
    at each new round: rounds equal shares of training (default 2: once, half-way; 1: never), or every refresh_epochs
    epochs when that is > 0. The student is validated and saved.
    """
    defaults = {"mu": 2, "tau_pos": 0.7, "tau_neg": 0.3, "lambda_u": 1.0, "rounds": 2, "refresh_epochs": 0}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.teacher, self.round = None, 0

    def round_at(self, progress):
        if self.hp["refresh_epochs"] > 0:
            return int(progress * self.ctx.cfg.train.epochs // self.hp["refresh_epochs"])
        rounds = max(1, int(self.hp["rounds"]))
        return min(int(progress * rounds), rounds - 1)

    def step(self, batch, progress):
        r = self.round_at(progress)
        if self.teacher is None:
            self.teacher, self.round = copy.deepcopy(self.model).requires_grad_(False), r
        elif r != self.round:
            self.teacher.load_state_dict(self.model.state_dict())
            self.round = r
        with torch.no_grad():
            p = self.task.probs(self.logits(batch["ux"], self.teacher.eval()))
        yhat, mask = self.task.select(p, self.hp["tau_pos"], self.hp["tau_neg"])
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        sup = self.supervised_loss(batch["x"], batch["y"])
        unl = self.task.masked(self.logits(self.ctx.aug.spec(batch["ux"], self.g)), yhat, mask)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(),
                                                   "kept": mask.float().mean()}

    def state_dict(self):
        return {"teacher": None if self.teacher is None else self.teacher.state_dict(), "round": self.round}

    def load_state_dict(self, state):
        if state.get("teacher") is not None:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
        self.round = int(state.get("round", 0))
