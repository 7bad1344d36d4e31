"""Shared pieces of the quality benchmarks: run stages in-process, score a fold model on the test set, mean +- sd
and the paired difference over seeds, write a table into a marked section of docs/results.md. bench/harness.py
builds the tables that compare variants over seeds on them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import CONFIG_DIR, load_config  # noqa: E402
from pipeline.utils import atomic_write_text  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"


def cfg_for(config, overrides, stage):
    return load_config(CONFIG_DIR / config if not Path(config).exists() else config, overrides, stage=stage)


def truth_root(root) -> Path:
    """A dataset folder beside `root` (<root>_truth) in which train_noisy.csv is root's train_noisy_truth.csv and
    every other entry a symlink to root's: the noisy clips with their true labels, the ceiling of any label
    cleaning (bench/quality.py's *_oracle rows). Built once, under a temporary name renamed into place."""
    root = Path(root).resolve()
    truth = root / "train_noisy_truth.csv"
    if not truth.exists():
        raise SystemExit(f"{truth}: no such file; the oracle rows need the noisy clips' true labels")
    out = root.with_name(f"{root.name}_truth")
    if out.exists():
        return out
    tmp = root.with_name(f".{root.name}_truth.tmp")
    if tmp.exists():
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    tmp.mkdir()
    for f in root.iterdir():
        if f.name != "train_noisy.csv":
            (tmp / f.name).symlink_to(f)
    (tmp / "train_noisy.csv").write_bytes(truth.read_bytes())
    tmp.rename(out)
    return out


def titled(config, overrides, title: str) -> str:
    """A results section's title: 'Real-sound set: ' + title for a config on the real-sound set (data.root named
    real), the title itself otherwise."""
    if Path(cfg_for(config, list(overrides), None).data.root).name != "real":
        return title
    return f"Real-sound set: {title[:1].lower()}{title[1:]}"


def train_seconds(folder) -> float:
    """Training time recorded in a fit's metrics.csv (so reused runs report what they cost)."""
    import pandas as pd

    return float(pd.read_csv(Path(folder) / "metrics.csv")["seconds"].sum())


def test_lwlrap(cfg, fold_dir, tta: bool, reversal: bool = True, count_windows: str | None = None) -> float:
    """Test-set lwlrap of one fold model (its best.pt), with or without length-adaptive TTA (count_windows: how
    the clip's windows are counted to choose the TTA passes; default infer.tta_count_windows)."""
    import json

    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset
    from pipeline.engine import load_model
    from pipeline.metrics import lwlrap
    from pipeline.predict import predict_clips

    best = Path(fold_dir) / "best.pt"
    key = json.dumps(
        [
            best.stat().st_mtime_ns,
            tta,
            reversal,
            count_windows or cfg.infer.tta_count_windows,
            cfg.infer.hop,
            cfg.infer.batch_size,
            cfg.run.seed,
            cfg.data.root,
        ]
    )
    memo = Path(fold_dir) / "bench_test_lwlrap.json"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    if key in known:
        return known[key]
    ds = load_dataset(cfg.data.root, check_audio=False)
    model, _ = load_model(best)
    cache = FeatureCache.open(cfg, "test")
    p = predict_clips(
        model,
        cache,
        list(ds.test["fname"]),
        cfg.train.frames,
        cfg.infer.hop,
        ds.n_classes,
        batch_size=cfg.infer.batch_size,
        tta_counts=list(cfg.infer.tta_counts) if tta else None,
        reversal=reversal and model.n_out == 2 * ds.n_classes,
        aug_cfg=cfg.augment,
        seed=cfg.run.seed,
        tta_count_windows=count_windows or cfg.infer.tta_count_windows,
    )
    known[key] = float(lwlrap(ds.targets(ds.test), p)[0])
    atomic_write_text(memo, json.dumps(known))
    return known[key]


def unheard_lwlrap(cfg, run: str, fold_dirs) -> float:
    """lwlrap of the out-of-fold predictions (fold_dirs' oof.csv, pooled) on the validation clips none of whose
    recordings any clip of their fold's training set holds (pipeline.folds.unheard_mask): validation on unheard
    recordings only. NaN where the folds are not grouped."""
    import pandas as pd

    from pipeline.data import labels_to_matrix, load_dataset
    from pipeline.folds import unheard_mask
    from pipeline.metrics import lwlrap

    ds = load_dataset(cfg.data.root, check_audio=False)
    folds = pd.read_csv(Path("runs") / run / "folds" / "folds.csv", dtype={"fname": str})
    oof = pd.concat([pd.read_csv(Path(d) / "oof.csv", dtype={"fname": str}) for d in fold_dirs], ignore_index=True)
    keep = unheard_mask(cfg, ds, folds, oof["fname"])
    if keep is None or not keep.any():
        return float("nan")
    y = labels_to_matrix(ds.curated.set_index("fname").loc[oof["fname"][keep], "labels"], ds.classes)
    return float(lwlrap(y, oof[ds.classes].to_numpy()[keep])[0])


def recording_sd(root, fnames, truth, a, b, n: int = 2000, seed: int = 0) -> float:
    """Standard deviation of lwlrap(a) - lwlrap(b) over the test clips fnames when the split's recordings are
    redrawn with replacement (each clip goes with the first recording <root>/test_sources.csv names): the luck of
    which recordings the test split holds, which no number of training seeds averages away. NaN without the file.
    A clip's precisions depend on its own scores only, so each redraw sums precomputed per-clip figures."""
    import numpy as np
    import pandas as pd

    from pipeline.metrics import per_class_precision

    path = Path(root) / "test_sources.csv"
    if not path.exists():
        return float("nan")
    first = pd.read_csv(path, dtype=str).set_index("fname").loc[list(fnames), "sources"].str.split(";").str[0]
    groups = pd.factorize(first)[0]
    n_groups = groups.max() + 1
    gain = np.bincount(groups, per_class_precision(truth, a).sum(1) - per_class_precision(truth, b).sum(1), n_groups)
    labels = np.bincount(groups, (np.asarray(truth) > 0).sum(1), n_groups)
    draws = np.random.default_rng(seed).integers(0, n_groups, (n, n_groups))
    return float(np.std(gain[draws].sum(1) / labels[draws].sum(1), ddof=1))


def fold_lwlrap(cfg, fold_dir) -> float:
    """lwlrap of one fold's held-out predictions (fold_dir/oof.csv): the fold's figure even when the run's pooled
    summary covers more folds (bench/quality.py's phase 4 trains the other folds of a row's run)."""
    import pandas as pd

    from pipeline.data import labels_to_matrix, load_dataset
    from pipeline.metrics import lwlrap

    ds = load_dataset(cfg.data.root, check_audio=False)
    oof = pd.read_csv(Path(fold_dir) / "oof.csv", dtype={"fname": str})
    y = labels_to_matrix(ds.curated.set_index("fname").loc[oof["fname"], "labels"], ds.classes)
    return lwlrap(y, oof[ds.classes].to_numpy())[0]


def mean_std(values, digits: int = 4) -> str:
    """'mean +- std' (sample std, ddof 1) of the finite values, '-' when there are none."""
    import numpy as np

    v = np.array([x for x in values if x is not None and x == x], float)
    if not len(v):
        return "-"
    if len(v) == 1:  # one value: no spread to give
        return f"{v[0]:.{digits}f}" + ("" if len(values) == 1 else " (n=1)")
    sd = v.std(ddof=1)
    return f"{v.mean():.{digits}f} +- {sd:.{digits}f}" + ("" if len(v) == len(values) else f" (n={len(v)})")


def paired_diff(a, b) -> str:
    """Per-seed differences a - b of two aligned lists: 'mean +- sd [95% t-interval over the seeds]'
    (pipeline.intervals.across_seeds, the paired comparison every table uses), '-' with fewer than two."""
    from pipeline.intervals import across_seeds

    d = across_seeds(a, b)
    if d["n"] < 2:
        return "-"
    return f"{d['mean']:+.4f} +- {d['sd']:.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def markdown_table(header, rows) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "-" if v != v else f"{v:.4f}"  # NaN: not measured for this row
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: Path = RESULTS):
    """Replace (or append) the section between <!-- name --> markers in docs/results.md (or `path`)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = path.read_text() if path.exists() else "# Results\n\nTables printed by the benchmark scripts.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)
