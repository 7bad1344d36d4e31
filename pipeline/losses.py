"""Multi-label training losses on logits (and cosines), and the configured weighted sum of them.

Every loss takes logits (B, C) and targets y (B, C) in [0, 1] (soft after mixup) and returns a scalar: the sum over
classes, averaged over the batch; with a per-sample `weight` (B,) the average is the weighted mean
sum_b w_b l_b / sum_b w_b (0 when every weight is 0), for losses masked per sample. Computation is in float32 even
under mixed precision.

    loss_fn = build_loss(cfg.loss)              # weights bce / focal / arcface / hinge from the config
    out = model(x)                              # {"h": logits (B, C), "h_cos": cosines (B, C), ...}
    loss = loss_fn(out, y)                      # scalar: sum of weight * term
    loss_fn.terms(out, y)                       # {"focal": tensor, "arcface": tensor} for logging
    loss_fn(out, y, head="g", weight=mask)      # another head; masked samples get weight 0

Single-label datasets (build_loss(cfg.loss, single_label=True)) take the softmax form of each term under the same
config key: bce -> cross-entropy, focal -> the multi-class focal loss of Lin et al., arcface -> ArcFace as published
(the margin on the target class, softmax cross-entropy), hinge -> torch's multi-class margin loss (target: the
argmax of y). Soft targets (mixup) enter cross-entropy as -sum_c y_c log p_c.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "bce",
    "focal",
    "arcface",
    "hinge",
    "ce",
    "softmax_focal",
    "softmax_arcface",
    "multiclass_hinge",
    "build_loss",
    "LossFn",
]


def _reduce(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(B,) -> scalar: the mean, or the weighted mean when weight (B,) is given."""
    if weight is None:
        return per_sample.mean()
    weight = weight.to(per_sample)
    return (per_sample * weight).sum() / weight.sum().clamp_min(1e-12)


def _f32(logits: torch.Tensor, y: torch.Tensor):
    return logits.float(), y.to(torch.float32)


def bce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy: logits (B, C), y (B, C) in [0, 1] -> scalar."""
    logits, y = _f32(logits, y)
    return _reduce(F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1), weight)


def focal(
    logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary focal loss -sum_c (1-p)^gamma y log p + p^gamma (1-y) log(1-p), p = sigmoid(logits).

    logits (B, C), y (B, C) in [0, 1] (soft targets enter the formula as written) -> scalar. From logsigmoid, so
    stable for any logit; (1-p)^gamma = exp(gamma * logsigmoid(-z)). For hard targets this is torchvision's
    sigmoid_focal_loss(alpha=-1) summed over classes, averaged over the batch.
    """
    logits, y = _f32(logits, y)
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p, log(1 - p)
    loss = -(torch.exp(gamma * log_q) * y * log_p + torch.exp(gamma * log_p) * (1 - y) * log_q)
    return _reduce(loss.sum(1), weight)


def arcface(
    cos: torch.Tensor,
    y: torch.Tensor,
    s: float = 30.0,
    m: float = 0.5,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Binary ArcFace: BCE on s * cos(theta_c + m) for positive classes and s * cos(theta_c) for negatives.

    cos (B, C): cosines between the embedding and each class's weight vector; y (B, C) in [0, 1] -> scalar.
    theta_c = arccos(cos_c), with cos clamped to [-1 + eps, 1 - eps] for the margin term so its gradient stays
    finite at cos = +-1. cos(theta + m) = cos cos(m) - sin(theta) sin(m). Where theta + m would pass pi
    (theta > pi - m, so cos(theta + m) would turn back up), the margin term is instead cos - m sin(m), the usual
    ArcFace (insightface) fallback: monotone in cos, still below cos, with a small step at the switch. Soft targets
    interpolate the logits: s * (y cos(theta + m) + (1 - y) cos(theta)), the binary case at y in {0, 1}.
    """
    cos, y = _f32(cos, y)
    logits = _arc_logits(cos, y, s, m, eps)
    return _reduce(F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1), weight)


def _arc_logits(cos, y, s, m, eps):
    """s * (y cos(theta + m) + (1 - y) cos(theta)), with the fallback past theta = pi - m (see arcface)."""
    c = cos.clamp(-1 + eps, 1 - eps)
    margin = c * math.cos(m) - torch.sqrt(1 - c * c) * math.sin(m)
    margin = torch.where(c > math.cos(math.pi - m), margin, c - m * math.sin(m))
    return s * (y * margin + (1 - y) * cos)


def hinge(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label hinge loss of torch.nn.MultiLabelMarginLoss: logits (B, C), y (B, C) -> scalar.

    Per sample sum_{j positive, i negative} max(0, 1 - (x_j - x_i)) / C; positives are y >= 0.5, passed to torch as
    their class indices padded with -1. Mean over the batch (as torch's), or the weighted mean.
    """
    logits, y = _f32(logits, y)
    pos = y >= 0.5
    order = torch.sort((~pos).to(torch.uint8), dim=1, stable=True).indices  # positives first, in class order
    slot = torch.arange(y.shape[1], device=y.device)
    target = torch.where(slot < pos.sum(1, keepdim=True), order, -1)
    return _reduce(F.multilabel_margin_loss(logits, target, reduction="none"), weight)


def ce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy -sum_c y_c log softmax(z)_c: logits (B, C), y (B, C) one-hot or soft -> scalar."""
    logits, y = _f32(logits, y)
    return _reduce(-(y * F.log_softmax(logits, 1)).sum(1), weight)


def softmax_focal(
    logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017): -sum_c y_c (1 - p_c)^gamma log p_c, p = softmax(z); gamma = 0
    is cross-entropy."""
    logits, y = _f32(logits, y)
    log_p = F.log_softmax(logits, 1)
    return _reduce(-(y * (1 - log_p.exp()).clamp_min(0) ** gamma * log_p).sum(1), weight)


def softmax_arcface(
    cos: torch.Tensor,
    y: torch.Tensor,
    s: float = 30.0,
    m: float = 0.5,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """ArcFace as published (Deng et al. 2019): softmax cross-entropy of s cos(theta_y + m) for the target class and
    s cos(theta_c) for the others; soft targets interpolate the logits as in arcface."""
    cos, y = _f32(cos, y)
    return _reduce(-(y * F.log_softmax(_arc_logits(cos, y, s, m, eps), 1)).sum(1), weight)


def multiclass_hinge(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """torch's MultiMarginLoss: sum_{c != t} max(0, 1 - (z_t - z_c)) / C, t = argmax y."""
    logits, y = _f32(logits, y)
    return _reduce(F.multi_margin_loss(logits, y.argmax(1), reduction="none"), weight)


# term name -> (loss function, {config key: keyword of the function}), and where its input comes from
_TERMS = {
    "bce": (bce, {}),
    "focal": (focal, {"focal_gamma": "gamma"}),
    "arcface": (arcface, {"arc_s": "s", "arc_m": "m"}),
    "hinge": (hinge, {}),
}
_COS_TERMS = {"arcface"}
_SINGLE_LABEL = {"bce": ce, "focal": softmax_focal, "arcface": softmax_arcface, "hinge": multiclass_hinge}


class LossFn:
    """The weighted sum of the configured loss terms; see build_loss."""

    def __init__(self, weights: dict, params: dict, single_label: bool = False):
        self.weights = weights  # term -> weight (> 0 only)
        self.params = params  # term -> keyword arguments
        self.single_label = single_label
        self.fns = {k: (_SINGLE_LABEL if single_label else {n: f for n, (f, _) in _TERMS.items()})[k] for k in weights}
        self.seen: dict = {}  # term (and head) -> its detached values since take_terms: the curves of each term

    def terms(self, out: dict, y: torch.Tensor, head: str = "h", weight: torch.Tensor | None = None) -> dict:
        """Each term's (unweighted) value: {name: scalar tensor}. out[head] logits (B, C), out[head + "_cos"]
        cosines (B, C) when a cosine term is on, y (B, C)."""
        values = {}
        for name in self.weights:
            key = head + "_cos" if name in _COS_TERMS else head
            if key not in out:
                raise KeyError(
                    f"loss.{name} = {self.weights[name]} needs the model output '{key}', "
                    f"but the model gives only {sorted(out)}"
                )
            values[name] = self.fns[name](out[key], y, weight=weight, **self.params[name])
        return values

    def __call__(self, out: dict, y: torch.Tensor, head: str = "h", weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss: sum of weight * term, a scalar tensor."""
        terms = self.terms(out, y, head, weight)
        for k, v in terms.items():
            self.seen.setdefault(k if head == "h" else f"{k}_{head}", []).append(v.detach())
        return sum(self.weights[k] * v for k, v in terms.items())

    def take_terms(self) -> dict:
        """{"loss_<term>[_<head>]": the mean (unweighted, detached) value of the term over the calls since the last
        take_terms} (a step's terms, for its curves); forgets them."""
        out = {f"loss_{k}": v[0] if len(v) == 1 else sum(v) / len(v) for k, v in self.seen.items()}
        self.seen = {}
        return out

    def __repr__(self):
        return (
            "LossFn("
            + " + ".join(f"{w:g}*{self.fns[k].__name__}{self.params[k] or ''}" for k, w in self.weights.items())
            + ")"
        )


def build_loss(loss_cfg, single_label: bool = False) -> LossFn:
    """The `loss` config section (Cfg or plain dict) -> LossFn. Terms with weight 0 (or left out) are skipped;
    parameters left out take the functions' defaults; an unknown key or all-zero weights is an error. single_label:
    the softmax form of each term (module docstring)."""
    known = set(_TERMS) | {k for _, keys in _TERMS.values() for k in keys}
    unknown = set(loss_cfg) - known
    if unknown:
        raise ValueError(f"unknown key(s) in config section 'loss': {sorted(unknown)}; known: {sorted(known)}")
    weights = {k: float(loss_cfg[k]) for k in _TERMS if float(loss_cfg.get(k, 0.0)) != 0.0}
    if not weights:
        raise ValueError(f"config section 'loss': every term weight ({', '.join(_TERMS)}) is 0")
    params = {k: {arg: loss_cfg[key] for key, arg in _TERMS[k][1].items() if key in loss_cfg} for k in weights}
    return LossFn(weights, params, single_label)
