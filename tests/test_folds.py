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
    per_fold = np.stack([y[a == k].sum(0) for k in range(5)])  # (folds, classes) label counts
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all()  # every class spread evenly


def test_stage_writes_once(dataset, cfg_for):
    cfg = cfg_for(dataset, "folds.n_splits=3", "folds.group_by=none")
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
        folds.main(cfg_for(dataset, "folds.n_splits=50", "folds.group_by=none"))


def test_group_folds_keep_each_recording_in_one_fold():
    rng = np.random.default_rng(0)
    n_cls, rec_per_cls = 6, 7
    recs = [(c, f"r{c}-{j}") for c in range(n_cls) for j in range(rec_per_cls)]
    groups, y = [], np.zeros((600, n_cls))
    for i in range(600):
        c, r = recs[rng.integers(len(recs))]
        groups.append([r])
        y[i, c] = 1
        if i % 10 == 0:  # a tenth of the clips mix a second recording
            c2, r2 = recs[rng.integers(len(recs))]
            groups[-1].append(r2)
            y[i, c2] = 1
    fold, leak = folds.make_group_folds(groups, y, 5, seed=1)
    single = [i for i, g in enumerate(groups) if len(g) == 1]
    by_rec = {}
    for i in single:
        by_rec.setdefault(groups[i][0], set()).add(fold[i])
    assert all(len(f) == 1 for f in by_rec.values())  # a recording's clips stay in one fold
    assert 0 < leak <= 0.1
    per_class = np.stack([y[fold == k].sum(0) for k in range(5)])
    assert (per_class > 0).all()  # every class in every fold (7 recordings over 5 folds)
    assert np.bincount(fold).min() > 600 / 5 * 0.5
    assert (fold == folds.make_group_folds(groups, y, 5, seed=1)[0]).all()


def test_the_stage_groups_by_the_sources_column_when_present(dataset, cfg_for):
    import pandas as pd

    cur = pd.read_csv(dataset / "train_curated.csv")
    cur["sources"] = [f"rec{i % 6}" for i in range(len(cur))]
    cur.to_csv(dataset / "train_curated.csv", index=False)
    df = folds.main(cfg_for(dataset, "folds.n_splits=3"))
    rec = cur.set_index("fname").loc[df["fname"], "sources"].to_numpy()
    assert all(df["fold"][rec == r].nunique() == 1 for r in set(rec))
    plain = folds.main(cfg_for(dataset, "folds.n_splits=3", "folds.group_by=none", "run.name=plain"))
    assert any(plain["fold"][rec == r].nunique() > 1 for r in set(rec))
    with pytest.raises(ValueError, match="folds.group_by=speaker: train_curated.csv has no column 'speaker'"):
        folds.main(cfg_for(dataset, "folds.n_splits=3", "folds.group_by=speaker", "run.name=x"))


def test_unheard_clips_share_no_recording_with_the_training_folds():
    groups = [["a"], ["a", "b"], ["b"], ["c"], ["c", "d"], ["d"]]
    fold = np.array([0, 0, 1, 0, 1, 1])
    # fold 0 validates clips 0, 1, 3: clip 1 holds b (heard in fold 1's clip 2), clip 3 holds c (heard in clip 4),
    # clip 0's a is only in fold 0
    assert folds.unheard(groups, fold, 0).tolist() == [True, False, False, False, False, False]
    assert folds.unheard(groups, fold, 1).tolist() == [False] * 5 + [True]  # only clip 5's d is fold 1's alone
    assert folds.unheard(groups, np.array([0, 0, 0, 1, 1, 1]), 1).tolist() == [False] * 3 + [True] * 3


def test_unheard_mask_follows_the_stage_grouping(dataset, cfg_for):
    import pandas as pd

    from pipeline.data import load_dataset

    cfg = cfg_for(dataset, "folds.n_splits=3", "folds.group_by=none")
    ds = load_dataset(dataset, check_audio=False)
    df = folds.main(cfg)
    assert folds.unheard_mask(cfg, ds, df, ds.curated["fname"]) is None  # not grouped: nothing to say
    cur = pd.read_csv(dataset / "train_curated.csv")
    cur["sources"] = [f"rec{i % 6}" + (";rec1" if i == 0 else "") for i in range(len(cur))]
    cur.to_csv(dataset / "train_curated.csv", index=False)
    cfg = cfg_for(dataset, "folds.n_splits=3", "run.name=grouped")
    ds = load_dataset(dataset, check_audio=False)
    df = folds.main(cfg)
    clean = folds.unheard_mask(cfg, ds, df, list(reversed(ds.curated["fname"])))[::-1]  # in the order asked
    f = df.set_index("fname").loc[cur["fname"], "fold"].to_numpy()
    recs = [set(r.split(";")) for r in cur["sources"]]
    want = [not any(recs[i] & recs[j] for j in range(len(recs)) if f[j] != f[i]) for i in range(len(recs))]
    assert clean.tolist() == want
    assert clean.any() and not clean.all()  # rec1 held in two folds' clips, or clip 0 mixing two folds


def test_audio_grouping_needs_the_feature_cache_and_says_so(dataset, cfg_for):
    with pytest.raises(FileNotFoundError, match="make features"):
        folds.main(cfg_for(dataset, "folds.n_splits=3"))  # auto, no sources column: audio


def test_classes_from_one_source_fall_back_to_stratified_folds(dataset, cfg_for, caplog):
    """The tone dataset renders every clip of a class from one tone, as the demo set renders each instrument from
    one soundfont sample: grouping it would leave classes out of training, so the folds are label-stratified."""
    from pipeline import features
    from pipeline.data import load_dataset

    cfg = cfg_for(dataset, "folds.n_splits=3")
    features.main(cfg)
    with caplog.at_level("INFO", logger="fattag"):
        df = folds.main(cfg)
    assert "folds are label-stratified, not grouped" in caplog.text
    ds = load_dataset(dataset, check_audio=False)
    assert (df["fold"].to_numpy() == make_folds(ds.targets(ds.curated), 3, cfg.run.seed)).all()
    assert "groups" not in df.columns
