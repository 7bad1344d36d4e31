"""Stage 1 of the reference system: warm up the network on the noisy set with its noisy labels.

    make warmup CONFIG=configs/demo.yaml       # or: python -m pipeline.warmup --config FILE [key=value ...]

The `warmup` config section overlays `train` for this stage (reference: 100 epochs, w = 10, l = 90, batch 64);
train.* overrides on the command line win (train.epochs=1 shortens it). Validation lwlrap is measured on the whole
curated set, which this stage never trains on. Output: runs/<run.name>/warmup/{last.pt, best.pt, metrics.csv,
curves.png, config.yaml, done.json}; `train.init_from: warmup` starts the folds from last.pt.
It runs once per run: processes that need it together (fold-parallel runs) wait on warmup/.lock for the one
that trains it.
Data-parallel: `torchrun --nproc_per_node=N -m pipeline.warmup ...` or `make warmup NPROC=N` (pipeline/distributed.py).
"""

from __future__ import annotations

from pipeline import distributed
from pipeline.cache import FeatureCache
from pipeline.config import cli, save_config
from pipeline.curves import plot_curves
from pipeline.data import dataset
from pipeline.engine import build_model, fit, make_clipset, train_key
from pipeline.utils import file_lock, get_logger, is_done, run_dir


def lock_path(cfg):
    return run_dir(cfg, "warmup") / ".lock"


def main(cfg) -> dict:
    """The warm-up, once per run: processes that share a run (fold-parallel train runs, pipeline/train.py) take
    warmup/.lock in turn, so the first trains it and the others wait, then find it done and reuse its last.pt. The
    ranks of one torchrun run train it together (they would wait on one another for ever), so they take no lock:
    start fold-parallel runs of torchrun jobs after `make warmup`."""
    if distributed.world().parallel:
        return warm_up(cfg)
    with file_lock(lock_path(cfg), get_logger(folder=run_dir(cfg, "warmup")), "the warm-up"):
        return warm_up(cfg)


def warm_up(cfg) -> dict:
    out = run_dir(cfg, "warmup")
    world = distributed.setup(cfg)
    log = distributed.logger(out)  # rank 0 alone writes log.txt (and every other file)
    if distributed.from_main(is_done(out, train_key(cfg))):
        log.info(f"warm-up already done for this config: {out}")
        return {"dir": out}
    ds = dataset(cfg)
    if ds.single_label:
        raise ValueError(
            "data.single_label_csv is set: the warm-up needs a noisy set with labels, which single-label "
            "datasets do not have; train from scratch (train.init_from=null) or from a checkpoint path"
        )
    if len(ds.noisy) == 0:
        raise ValueError(f"{cfg.data.root}: no train_noisy.csv clips to warm up on")
    if world.main:
        save_config(cfg, out)
    noisy = make_clipset(FeatureCache.open(cfg, "noisy"), ds.noisy, ds.classes)
    curated = make_clipset(FeatureCache.open(cfg, "curated"), ds.curated, ds.classes)
    model = build_model(cfg, ds.n_classes, seed=cfg.run.seed)
    log.info(
        f"warm-up on {len(noisy)} noisy clips, {cfg.train.epochs} epochs, model {cfg.model.name} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)"
    )
    result = fit(cfg, out, model, "supervised", ds.classes, noisy, val=curated, log=log)
    if world.main:
        plot_curves({"warmup": result["history"]}, out / "curves.png", "warm-up")
    log.info(f"warm-up done: curated lwlrap {result['best']:.4f} (best epoch)")
    return {"dir": out, **result}


if __name__ == "__main__":
    cli("warmup", "Stage 1: warm up on the noisy set.", main=main)
