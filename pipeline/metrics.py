"""lwlrap: label-weighted label-ranking average precision, overall and per class.

The overall value is sklearn's label_ranking_average_precision_score with each clip weighted by its number of true
labels, clips with no true label left out. Per-class values use the same ranking (tied scores count as ranked above,
as in sklearn), so that the overall value is the mean of the per-class values weighted by each class's share of true
labels.

    overall, per_class = lwlrap(y_true, y_score)     # (N, C) arrays; per_class (C,) with NaN for absent classes

Single-label datasets are scored by accuracy (argmax) and the weighted one-vs-rest ROC AUC (sklearn's roc_auc_score,
each class weighted by its number of clips), as in the ESC / UrbanSound8K semi-supervised literature:

    scores = single_label_scores(y_true, y_prob)     # {"accuracy", "weighted_auc", "per_class_accuracy"}
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import label_ranking_average_precision_score, roc_auc_score


def _keep(y_true):
    return np.asarray(y_true).sum(axis=1) > 0


def lwlrap_overall(y_true, y_score) -> float:
    y_true = np.asarray(y_true) > 0
    keep = _keep(y_true)
    if not keep.any():
        return float("nan")
    return float(
        label_ranking_average_precision_score(
            y_true[keep], np.asarray(y_score, np.float64)[keep], sample_weight=y_true[keep].sum(axis=1)
        )
    )


def per_class_precision(y_true, y_score, chunk: int = 256):
    """(N, C) precision at each true (clip, label) pair; 0 where the label is not true.

    precision = (true labels scoring >= s_c) / (labels scoring >= s_c), ties counted as ranked above (sklearn).
    Computed for `chunk` clips at a time as (chunk, C, C) comparisons: no Python loop over clips."""
    y_true = np.asarray(y_true) > 0
    s = np.asarray(y_score, np.float64)
    prec = np.zeros(s.shape)
    for a in range(0, len(s), chunk):
        ys, ss = y_true[a : a + chunk], s[a : a + chunk]
        at_or_above = ss[:, None, :] >= ss[:, :, None]  # (n, C label, C other): other scores >= label
        num = (at_or_above & ys[:, None, :]).sum(2)
        prec[a : a + chunk] = np.where(ys, num / at_or_above.sum(2), 0.0)
    return prec


def lwlrap(y_true, y_score):
    """Overall lwlrap (sklearn) and per-class lwlrap (C,), NaN for classes with no true label."""
    y_true = np.asarray(y_true) > 0
    if y_true.shape != np.shape(y_score):
        raise ValueError(f"lwlrap: y_true {y_true.shape} and y_score {np.shape(y_score)} differ in shape")
    prec = per_class_precision(y_true, y_score)
    counts = y_true.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, prec.sum(axis=0) / counts, np.nan)
    return lwlrap_overall(y_true, y_score), per_class


def accuracy(y_true, y_score) -> float:
    """Share of clips whose highest-scoring class is their label; y_true (N, C) one-hot."""
    y_true = np.asarray(y_true)
    return float((np.asarray(y_score).argmax(1) == y_true.argmax(1)).mean()) if len(y_true) else float("nan")


def weighted_auc(y_true, y_score) -> float:
    """One-vs-rest ROC AUC averaged over classes weighted by their clip counts (sklearn, average="weighted").
    Classes absent from y_true (or present in every clip) have no AUC and are left out of the average."""
    y_true = np.asarray(y_true) > 0
    keep = y_true.any(0) & ~y_true.all(0)
    if not keep.any():
        return float("nan")
    return float(roc_auc_score(y_true[:, keep], np.asarray(y_score, np.float64)[:, keep], average="weighted"))


def single_label_scores(y_true, y_score) -> dict:
    """accuracy, weighted_auc and per_class_accuracy (C,) (the class's recall; NaN for absent classes)."""
    y_true = np.asarray(y_true)
    if y_true.shape != np.shape(y_score):
        raise ValueError(f"y_true {y_true.shape} and y_score {np.shape(y_score)} differ in shape")
    label, hit = y_true.argmax(1), np.asarray(y_score).argmax(1) == y_true.argmax(1)
    counts = np.bincount(label, minlength=y_true.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(counts > 0, np.bincount(label, weights=hit, minlength=y_true.shape[1]) / counts, np.nan)
    return {"accuracy": float(hit.mean()), "weighted_auc": weighted_auc(y_true, y_score), "per_class_accuracy": per}
