import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from pipeline.metrics import lwlrap


def canonical(y, s):
    keep = y.sum(1) > 0
    return label_ranking_average_precision_score(y[keep], s[keep], sample_weight=y[keep].sum(1))


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((60, 12)) < 0.15).astype(int)
    y[:3] = 0  # clips with no true label are left out
    s = np.round(rng.random((60, 12)), 1)  # coarse scores: many ties
    overall, per_class = lwlrap(y, s)
    assert abs(overall - canonical(y, s)) < 1e-6
    counts = y.sum(0)
    # the overall value is the label-share-weighted mean of the per-class values
    assert abs(np.nansum(per_class * counts) / counts.sum() - overall) < 1e-6


def test_hand_example():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    s = np.array([[0.1, 0.5, 0.2], [0.9, 0.8, 0.3]])
    # clip 0: label 0 ranks 3rd -> 1/3. clip 1: label 1 ranks 2nd -> 1/2; label 2 ranks 3rd with 2 true -> 2/3
    overall, per = lwlrap(y, s)
    assert overall == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)
    assert per == pytest.approx([1 / 3, 1 / 2, 2 / 3])


def test_perfect_and_absent_class():
    y = np.array([[1, 0, 0], [0, 1, 0]])
    overall, per = lwlrap(y, y.astype(float))
    assert overall == 1.0 and np.isnan(per[2])


def test_ties_count_as_ranked_above():
    # all scores tied: precision = n_true / C, not the position-dependent argsort answer
    y = np.array([[1, 0, 0, 0]])
    assert lwlrap(y, np.zeros((1, 4)))[0] == pytest.approx(0.25)
