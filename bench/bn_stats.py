"""Validation of fold 0's model of bench/quality.py runs as trained and with its BatchNorm statistics recomputed
(torch.optim.swa_utils.update_bn: a cumulative average over training batches): how much a backbone's running
statistics lag behind its weights at the run's budget (WRN's BN momentum 0.001, FixMatch's, moves them 47% of the way
in 640 steps).

    .venv/bin/python bench/bn_stats.py q2_cur_wrn16_s42 [more runs] [--batches 60] [--threads 1]
    (reads runs/<run>/train/config.yaml, its folds and fold_0/best.pt; writes nothing)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import ROOT, cfg_for, fold_lwlrap, markdown_table

from pipeline.cache import FeatureCache  # noqa: E402  (common puts the repository on sys.path)
from pipeline.data import load_dataset  # noqa: E402
from pipeline.engine import batch_stream, load_model, make_clipset, validate  # noqa: E402
from pipeline.folds import read_folds  # noqa: E402


def measure(run: str, batches: int) -> tuple[float, float]:
    """(fold-0 val lwlrap as trained: its oof.csv, with BN statistics recomputed over `batches` training batches)."""
    cfg = cfg_for(ROOT / "runs" / run / "train" / "config.yaml", [], "train")
    fdir = ROOT / "runs" / run / "train" / "fold_0"
    ds = load_dataset(cfg.data.root, check_audio=False)
    cache = FeatureCache.open(cfg, "curated")
    fold = read_folds(cfg)["fold"].to_numpy()  # in ds.curated's order, as train reads it
    val = make_clipset(cache, ds.curated[fold == 0], ds.classes)
    train = make_clipset(cache, ds.curated[fold != 0], ds.classes)
    model, _ = load_model(fdir / "best.pt")
    stream = batch_stream(train, cfg.train.batch_size, batches, cfg.train.frames, np.random.default_rng(0))
    with torch.no_grad():
        torch.optim.swa_utils.update_bn((torch.as_tensor(x) for x, _, _ in stream), model)
    recomputed, _ = validate(model.eval(), cfg, val, "cpu", ds.n_classes)
    return fold_lwlrap(cfg, fdir), recomputed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--batches", type=int, default=60, help="training batches the statistics are averaged over")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for run in a.runs:
        before, after = measure(run, a.batches)
        rows.append([run, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"])
    print(markdown_table(["run", "fold-0 val as trained", f"BN recomputed ({a.batches} batches)", "difference"], rows))


if __name__ == "__main__":
    main()
