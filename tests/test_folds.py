import numpy as np
import pytest

from pipeline import folds
from pipeline.folds import make_folds, read_folds


def test_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 10)) < 0.12).astype(int)
    y[y.sum(1) == 0, 0] = 1
    a, b = make_folds(y, 5, seed=1), make_folds(y, 5, seed=1)
    assert (a == b).all() and set(a) == set(range(5))
    assert not (a == make_folds(y, 5, seed=2)).all()
    per_fold = np.stack([y[a == k].sum(0) for k in range(5)])     # (folds, classes) label counts
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all()          # every class spread evenly


def test_stage_writes_once(dataset, cfg_for):
    cfg = cfg_for(dataset, "folds.n_splits=3")
    df = folds.main(cfg)
    assert sorted(df["fold"].unique()) == [0, 1, 2] and len(df) == 20
    path = folds.folds_path(cfg)
    mtime = path.stat().st_mtime_ns
    folds.main(cfg)
    assert path.stat().st_mtime_ns == mtime
    assert (read_folds(cfg)["fold"] == df["fold"]).all()
    (path.parent / "done.json").unlink()
    with pytest.raises(FileNotFoundError, match="make folds"):
        read_folds(cfg)


def test_too_many_folds(dataset, cfg_for):
    with pytest.raises(ValueError, match="n_splits=50"):
        folds.main(cfg_for(dataset, "folds.n_splits=50"))
