"""Pseudo-label selection rules for multi-label sigmoid outputs, shared by the modes that select pseudo-labels
(teacher_student, fixmatch, fixmatch_mixup, fmuc, pseudo_label).

With about 1.3 positives among dozens of classes a sigmoid rarely crosses a fixed threshold such as 0.5 early in
training, although the outputs rank the classes well. The rules (key `rule` of each mode's hyperparameters):

    threshold        positives where p >= tau (the papers' rule; tau = tau_pos, or teacher_student.eta)
    class_threshold  positives where p >= tau_c, one threshold per class chosen on held-out labelled clips
                     (train.calib_fraction of the labelled training clips, never trained on) as the lowest threshold
                     whose precision there reaches `target_precision`; refreshed at every epoch start. A class with
                     fewer than MIN_POSITIVES held-out positives takes the pooled threshold of all classes; a class
                     (or pool) that never reaches the target selects nothing.
    topk             the k highest p of each clip, k = `topk` or, when 0, the labelled set's label cardinality
                     rounded (at least 1)

    labeller = PseudoLabeller(hp, n_classes, cardinality)   # hp: rule, tau_pos, target_precision, topk
    labeller.calibrate(p_heldout (N, C), y_heldout (N, C))  # class_threshold only
    positives = labeller.positives(p)                       # (B, C) bool
"""

from __future__ import annotations

import numpy as np
import torch

RULES = ("threshold", "class_threshold", "topk")
MIN_POSITIVES = 3
NEVER = 1.0 + 1e-6  # a threshold no sigmoid reaches


def topk_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) bool: the k largest entries of each row (ties broken by position)."""
    k = max(1, min(int(k), p.shape[1]))
    idx = p.topk(k, dim=1).indices
    return torch.zeros_like(p, dtype=torch.bool).scatter_(1, idx, True)


def precision_threshold(scores: np.ndarray, truth: np.ndarray, target: float) -> float:
    """The lowest threshold t with precision(scores >= t) >= target on these (score, truth) pairs; NEVER when no
    threshold reaches it. Candidate thresholds are the scores themselves."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(float)
    precision = np.cumsum(t) / np.arange(1, len(t) + 1)
    # a threshold at score s_i selects every entry with score >= s_i: the last of a run of ties counts
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok = (precision >= target) & last_of_tie & (t.cumsum() > 0)
    return float(s[ok].min()) if ok.any() else NEVER


def precision_thresholds(p: np.ndarray, y: np.ndarray, target: float, min_pos: int = MIN_POSITIVES) -> np.ndarray:
    """(C,) per-class thresholds for a target precision on held-out clips p, y (N, C); classes with fewer than
    min_pos positives take the pooled threshold (all classes' entries together)."""
    y = y >= 0.5
    pooled = precision_threshold(p.ravel(), y.ravel(), target)
    return np.array(
        [
            precision_threshold(p[:, c], y[:, c], target) if y[:, c].sum() >= min_pos else pooled
            for c in range(p.shape[1])
        ]
    )


class PseudoLabeller:
    """The positive-selection rule of a mode (see the module docstring)."""

    def __init__(self, hp: dict, n_classes: int, cardinality: float = 1.0, tau_key: str = "tau_pos"):
        self.rule = hp.get("rule", "threshold")
        if self.rule not in RULES:
            raise ValueError(f"rule: unknown {self.rule!r}; one of {list(RULES)}")
        self.tau = float(hp[tau_key])
        self.target = float(hp.get("target_precision", 0.8))
        self.k = int(hp.get("topk", 0)) or max(1, round(cardinality))
        self.n_classes = n_classes
        self.class_tau: torch.Tensor | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.rule == "class_threshold"

    def calibrate(self, p: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-class thresholds from held-out predictions p and labels y (N, C); returns them."""
        tau = precision_thresholds(np.asarray(p, float), np.asarray(y)[:, : self.n_classes], self.target)
        self.class_tau = torch.as_tensor(tau, dtype=torch.float32)
        return tau

    def positives(self, p: torch.Tensor) -> torch.Tensor:
        """(B, C) bool positives of probabilities p (B, C)."""
        if self.rule == "topk":
            return topk_mask(p, self.k)
        if self.rule == "class_threshold":
            if self.class_tau is None:  # not calibrated yet (a direct call before any epoch): select nothing
                return torch.zeros_like(p, dtype=torch.bool)
            return p >= self.class_tau.to(p.device)
        return p >= self.tau

    def logs(self) -> dict:
        """The thresholds in force (class_threshold: their mean and the share of classes that select nothing)."""
        if self.rule != "class_threshold" or self.class_tau is None:
            return {}
        t = self.class_tau
        return {
            "pl_tau_mean": float(t[t < NEVER].mean()) if (t < NEVER).any() else float("nan"),
            "pl_tau_never": float((t >= NEVER).float().mean()),
        }
