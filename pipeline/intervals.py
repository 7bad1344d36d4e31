"""Uncertainty of lwlrap: 95% intervals from a bootstrap that resamples groups (recordings, audio groups; clips
where there are none), and the paired difference of two predictions on the same clips.

Clips cut from one recording are not independent, so the resampled unit is the group: a clip's first listed group
stands for it (folds.csv's `groups` column lists the largest first; a clip that mixes two recordings is resampled
with one of them). Nothing is refitted: lwlrap is a ratio of per-clip sums (each true label's precision over the
number of true labels, pipeline.metrics.per_class_precision), so a resample is a weighted sum, B resamples one
matrix product.

    ci = interval(y_true, y_score, units)                        # {"lwlrap", "lo", "hi", "level", "resamples", ...}
    d = paired(y_true, score_a, score_b, units)                  # {"diff", "lo", "hi", "per_class": {...}, ...}
    units = units_of(groups)                                     # (N,) int unit per clip from each clip's groups
"""

from __future__ import annotations

import numpy as np

from pipeline.metrics import per_class_precision

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the same resamples for every run: paired comparisons and reruns agree


def units_of(groups) -> np.ndarray:
    """(N,) unit index per clip from each clip's groups (lists of names, or ;-joined strings, or None for a clip
    of its own): a clip's first group names its unit."""
    names = {}
    out = np.empty(len(groups), np.int64)
    for i, g in enumerate(groups):
        if isinstance(g, str):
            g = [s for s in g.split(";") if s]
        key = g[0] if g else f"clip:{i}"
        out[i] = names.setdefault(key, len(names))
    return out


def terms(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) precision sums and (N, C) true-label counts per clip and class: lwlrap = sum(num) / sum(den), a
    class's lwlrap the same over its column."""
    y = np.asarray(y_true) > 0
    return per_class_precision(y, y_score), y.astype(np.float64)


def _weights(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """(B, U) how often each unit is drawn in each of B resamples of U units with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(resamples, n_units))
    flat = draws + n_units * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * n_units).reshape(resamples, n_units).astype(np.float64)


def _by_unit(x: np.ndarray, units: np.ndarray, n_units: int) -> np.ndarray:
    """(U, C) sums of x's rows per unit."""
    out = np.zeros((n_units, x.shape[1]))
    np.add.at(out, units, x)
    return out


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    s = samples[np.isfinite(samples)]
    if not len(s):
        return float("nan"), float("nan")
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def _resampled(num, den, units, resamples, seed):
    """(B,) overall and (B, C) per-class lwlrap of the resamples; num, den: (N, C) terms."""
    units = np.asarray(units)
    n_units = int(units.max()) + 1 if len(units) else 0
    W = _weights(n_units, resamples, seed)
    N, D = W @ _by_unit(num, units, n_units), W @ _by_unit(den, units, n_units)  # (B, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        return N.sum(1) / D.sum(1), N / D


def interval(y_true, y_score, units=None, resamples=RESAMPLES, level=LEVEL, seed=SEED) -> dict:
    """lwlrap with its bootstrap interval; units: (N,) group index per clip (None: each clip its own)."""
    num, den = terms(y_true, y_score)
    keep = den.sum(1) > 0
    units = np.arange(len(den)) if units is None else np.asarray(units)
    num, den, units = num[keep], den[keep], np.unique(units[keep], return_inverse=True)[1]
    value = float(num.sum() / den.sum()) if den.sum() else float("nan")
    overall, _ = _resampled(num, den, units, resamples, seed)
    lo, hi = _bounds(overall, level)
    return dict(lwlrap=value, lo=lo, hi=hi, level=level, resamples=resamples, units=int(units.max(initial=-1) + 1))


def ci_text(ci: dict, key: str = "lwlrap") -> str:
    """'0.6012 [0.5801, 0.6220]'."""
    return f"{ci[key]:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}]"


def paired(y_true, score_a, score_b, units=None, classes=None, resamples=RESAMPLES, level=LEVEL, seed=SEED) -> dict:
    """B - A in lwlrap on the same clips, with the interval of the paired bootstrap (the same resampled units for
    both), and per class the difference with its interval ("outside": the interval excludes 0)."""
    na, den = terms(y_true, score_a)
    nb, _ = terms(y_true, score_b)
    keep = den.sum(1) > 0
    units = np.arange(len(den)) if units is None else np.asarray(units)
    na, nb, den, units = na[keep], nb[keep], den[keep], np.unique(units[keep], return_inverse=True)[1]
    oa, ca = _resampled(na, den, units, resamples, seed)
    ob, cb = _resampled(nb, den, units, resamples, seed)
    diff = float((nb.sum() - na.sum()) / den.sum()) if den.sum() else float("nan")
    lo, hi = _bounds(ob - oa, level)
    counts = den.sum(0)
    per_class = {}
    for c in np.flatnonzero(counts > 0):
        d = float((nb[:, c].sum() - na[:, c].sum()) / counts[c])
        clo, chi = _bounds(cb[:, c] - ca[:, c], level)
        name = classes[c] if classes is not None else str(c)
        per_class[name] = dict(diff=d, lo=clo, hi=chi, outside=bool(clo > 0 or chi < 0), n=int(counts[c]))
    return dict(
        a=float(na.sum() / den.sum()),
        b=float(nb.sum() / den.sum()),
        diff=diff,
        lo=lo,
        hi=hi,
        level=level,
        resamples=resamples,
        units=int(units.max(initial=-1) + 1),
        per_class=per_class,
    )


def across_seeds(a, b, level=LEVEL) -> dict:
    """Per-seed paired differences a - b (aligned lists): mean, sample sd and the t-interval of the mean over the
    seeds ({"mean", "sd", "lo", "hi", "n"}; sd and the interval NaN with fewer than two seeds)."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n < 2:
        return dict(mean=float(d.mean()) if n else float("nan"), sd=float("nan"), lo=float("nan"), hi=float("nan"), n=n)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return dict(mean=float(d.mean()), sd=sd, lo=float(d.mean() - half), hi=float(d.mean() + half), n=n)
