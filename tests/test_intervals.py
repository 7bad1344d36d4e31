"""Intervals (pipeline/intervals.py) and make compare (pipeline/compare.py): the group bootstrap covers the known value
at about its nominal rate, the paired difference finds a planted gain and no gain where there is none, and compare
refuses runs trained on different folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import compare as cmp
from pipeline.intervals import across_seeds, interval, paired, units_of
from pipeline.metrics import lwlrap


def population(n_groups, per_group, n_classes, rng, spread=1.5):
    """Clips in groups (a recording's clips): each group draws one class and one difficulty, shared by its clips."""
    g = np.repeat(np.arange(n_groups), per_group)
    cls = rng.integers(0, n_classes, n_groups)[g]
    y = np.eye(n_classes)[cls]
    hard = rng.normal(0, spread, n_groups)[g]  # clips of one recording are easy or hard together
    score = rng.normal(0, 1, y.shape) + y * (1.0 + hard[:, None])
    return y, score, g


def test_group_bootstrap_covers_the_known_value_at_about_its_nominal_rate():
    rng = np.random.default_rng(0)
    y, s, g = population(4000, 4, 6, rng)
    truth = lwlrap(y, s)[0]
    cover_groups = cover_clips = 0
    reps = 120
    for _ in range(reps):
        pick = rng.choice(4000, 60, replace=False)
        rows = np.flatnonzero(np.isin(g, pick))
        ci = interval(y[rows], s[rows], g[rows], resamples=400, seed=int(rng.integers(1 << 30)))
        cover_groups += ci["lo"] <= truth <= ci["hi"]
        ci = interval(y[rows], s[rows], None, resamples=400)
        cover_clips += ci["lo"] <= truth <= ci["hi"]
    assert 0.88 <= cover_groups / reps <= 1.0  # nominal 0.95
    assert cover_clips / reps < cover_groups / reps - 0.1  # resampling clips ignores the groups: too narrow


def test_paired_difference_finds_a_planted_gain_and_none_where_there_is_none():
    rng = np.random.default_rng(1)
    y, a, g = population(300, 3, 5, rng, spread=0.5)
    b = a + 1.5 * y * (y.argmax(1) == 2)[:, None]  # b ranks class 2 better, nothing else
    d = paired(y, a, b, g, classes=list("vwxyz"))
    assert d["diff"] > 0 and d["lo"] > 0
    assert d["per_class"]["x"]["outside"] and d["per_class"]["x"]["lo"] > 0
    assert not any(v["outside"] for c, v in d["per_class"].items() if c != "x")
    same = paired(y, a, a.copy(), g)
    assert same["diff"] == 0 and same["lo"] <= 0 <= same["hi"]
    assert np.isclose(d["b"] - d["a"], d["diff"]) and np.isclose(d["a"], lwlrap(y, a)[0])


def test_units_and_seed_differences():
    assert units_of(["r1;r2", "r2", None, "r1", ""]).tolist() == [0, 1, 2, 0, 3]
    d = across_seeds([0.5, 0.6, 0.7], [0.4, 0.5, 0.5])
    assert np.isclose(d["mean"], 0.1333333) and d["lo"] < d["mean"] < d["hi"] and d["n"] == 3
    assert np.isnan(across_seeds([0.5], [0.4])["lo"])


def fake_run(name, cfg, ds, folds, scores):
    """runs/<name>/{folds/folds.csv, train/config.yaml, train/oof.csv} as `make folds train` leave them."""
    from pathlib import Path

    from pipeline.config import save_config

    train = Path("runs") / name / "train"
    (Path("runs") / name / "folds").mkdir(parents=True, exist_ok=True)
    folds.to_csv(Path("runs") / name / "folds" / "folds.csv", index=False)
    save_config(cfg, train)
    oof = pd.DataFrame(scores, columns=ds.classes)
    oof.insert(0, "fname", ds.curated["fname"])
    oof.to_csv(train / "oof.csv", index=False)


def test_compare_finds_a_planted_difference_and_refuses_other_folds(dataset, cfg_for, capsys):
    from pipeline.data import load_dataset

    cfg = cfg_for(dataset)
    ds = load_dataset(dataset, check_audio=False)
    rng = np.random.default_rng(2)
    y = ds.targets(ds.curated)
    a = rng.random(y.shape)
    b = a + 2.0 * y  # b ranks every true label first
    folds = pd.DataFrame({"fname": ds.curated["fname"], "fold": np.arange(len(y)) % 3})
    fake_run("a", cfg, ds, folds, a)
    fake_run("b", cfg, ds, folds, b)
    result = cmp.main(["a", "b"])
    row = result["rows"][1]
    assert row["oof_diff"]["diff"] > 0.1 and row["oof_diff"]["lo"] > 0
    assert np.isclose(row["oof"]["lwlrap"], 1.0)
    out = capsys.readouterr().out
    assert "runs/a/compare/a_vs_b.json" in out and "+0." in out
    moved = folds.assign(fold=(folds["fold"] + 1) % 3)
    fake_run("c", cfg, ds, moved, b)
    with pytest.raises(SystemExit) as e:
        cmp.main(["a", "c"])
    assert e.value.code == 2
    assert "different folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmp.main(["a", "nope"])
    assert "runs/nope/train/config.yaml: not found" in capsys.readouterr().err
