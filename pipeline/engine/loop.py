"""The fit loop: fit, epochs of training steps, each epoch validated, written and logged.

    result = fit(cfg, out_dir, model, mode_name, classes, labelled, unlabelled=None, val=None, log=log)

Per epoch: calibrate_epoch (a mode's pseudo-label thresholds), train_epoch (next_batch puts the batch streams'
batches on the device, train_step runs the mode's step and the optimiser), validate_epoch, then
pipeline/engine/resume.py's write_checkpoints and log_epoch; done.json last.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import distributed
from pipeline.engine.batches import ClipSet, batch_stream
from pipeline.engine.fit_run import FitRun, set_up_fit
from pipeline.engine.optim import update
from pipeline.engine.resume import resume_fit, write_checkpoints
from pipeline.engine.validation import predict_set, val_metric, validate
from pipeline.loggers import make_logger
from pipeline.utils import mark_done, progress, set_position


def fit(
    cfg,
    out_dir,
    model,
    mode_name: str,
    classes,
    labelled: ClipSet,
    unlabelled: ClipSet | None = None,
    val: ClipSet | None = None,
    log=None,
    seed_offset: int = 0,
    calib: ClipSet | None = None,
) -> dict:
    """Train `model` with `mode_name`; resume from out_dir/last.pt when it was written for this config.
    calib: held-out labelled clips whose predictions set a mode's pseudo-label thresholds at each epoch start
    (rule class_threshold; pipeline/modes/pseudo.py).
    Under torchrun (pipeline/distributed.py) every rank calls fit alike: each trains on its share of every batch,
    rank 0 alone writes into out_dir, and `log` should be distributed.logger()'s.

    The steps: set_up_fit, resume_fit, then per epoch calibrate_epoch, train_epoch, validate_epoch,
    write_checkpoints (best.pt, metrics.csv, last.pt) and log_epoch; done.json last. Along the way run.logger
    (pipeline/loggers.py) writes TensorBoard's curves: every step's loss terms and learning rate, every epoch's
    row."""
    run = set_up_fit(cfg, Path(out_dir), model, mode_name, classes, labelled, unlabelled, log, seed_offset)
    resume_fit(run)
    run.logger = make_logger(cfg, run.out_dir, run.steps, run.start, run.world.main)  # TensorBoard's curves
    try:
        for epoch in range(run.start, cfg.train.epochs):
            set_position(epoch=epoch + 1)  # what an interruption's one line names (pipeline.utils.user_errors)
            t0 = time.time()
            calibrate_epoch(run, calib)
            t1 = time.time()
            row = train_epoch(run, epoch, labelled, unlabelled, t0)
            speed = run.steps * (run.b_lab + run.b_unl) / max(time.time() - t1, 1e-9)  # training samples per second
            improved = validate_epoch(run, epoch, row, val)
            row["seconds"] = time.time() - t0
            run.history.append(row)
            run.logger.epoch(epoch, row, speed)  # before last.pt: a kill in between resumes and writes it again
            write_checkpoints(run, epoch, row, improved)
            log_epoch(run, epoch, row)
    finally:
        run.logger.close()
    if run.world.main:
        mark_done(run.out_dir, run.key, best=run.best, epochs=cfg.train.epochs)
    distributed.barrier()  # the other ranks leave once rank 0's files are complete (done.json included)
    return {"best": run.best, "history": pd.DataFrame(run.history)}


def calibrate_epoch(run: FitRun, calib: ClipSet | None):
    """At an epoch's start, the mode sets its pseudo-label thresholds from its predictions of the held-out clips."""
    if calib is not None and len(calib):
        net, head = run.mode.calibration_model()
        run.mode.calibrate(predict_set(net, run.cfg, calib, run.device, run.n_classes, head=head), calib.y)


def train_epoch(run: FitRun, epoch: int, labelled: ClipSet, unlabelled: ClipSet | None, t0: float) -> dict:
    """One epoch of run.steps training steps; returns its metrics row (epoch, lr, the mean of each logged value
    over the steps and the ranks, the mode's epoch logs, the share of time spent waiting for data since t0)."""
    cfg, world = run.cfg, run.world
    run.model.train()
    s_lab, s_unl = run.rng.integers(0, 2**63, size=2)  # one generator per stream: threads never share one
    shard = (world.rank, world.size)
    lab = batch_stream(labelled, run.b_lab, run.steps, cfg.train.frames, np.random.default_rng(s_lab), run.albu, shard)
    unl = (
        batch_stream(unlabelled, run.b_unl, run.steps, cfg.train.frames, np.random.default_rng(s_unl), shard=shard)
        if run.b_unl
        else None
    )
    sums: dict = {}
    wait = 0.0
    bar = progress(
        range(run.steps),
        enabled=cfg.run.progress and world.main,
        leave=False,
        desc=f"{run.out_dir.parent.name}/{run.out_dir.name} epoch {epoch + 1}/{cfg.train.epochs}",
    )
    for s in bar:
        tw = time.time()
        batch = next_batch(run, lab, unl, unlabelled)
        wait += time.time() - tw
        train_step(run, batch, epoch, s, sums)
        if s % 10 == 9:
            bar.set_postfix(loss=f"{float(sums['loss']) / (s + 1):.4f}")
    bar.close()
    for it in (lab, unl):
        if it is not None:
            it.close()
    sums = distributed.mean_values(sums)  # data-parallel: the mean over the ranks' shares
    return {
        "epoch": epoch + 1,
        "lr": run.opt.param_groups[0]["lr"],
        **{k: float(v) / run.steps for k, v in sums.items()},
        **run.mode.epoch_logs(),
        "data_wait_share": wait / max(time.time() - t0, 1e-9),
    }


def next_batch(run: FitRun, lab, unl, unlabelled: ClipSet | None) -> dict:
    """The next step's batch on the device: x, y, idx of the labelled stream; ux, uy, uidx, utruth of the
    unlabelled one when the mode draws one; channels_last where configured."""
    device = run.device
    x, y, rows = next(lab)
    batch = {"x": torch.from_numpy(x).to(device), "y": torch.from_numpy(y).to(device), "idx": rows}
    if unl is not None:
        ux, uy, urows = next(unl)
        batch.update(
            ux=torch.from_numpy(ux).to(device),
            uy=torch.from_numpy(uy).to(device),
            uidx=urows,
            utruth=None if unlabelled.truth is None else torch.from_numpy(unlabelled.truth[urows]).to(device),
        )
    if run.cfg.train.channels_last:
        for k in ("x", "ux"):
            if k in batch:
                batch[k] = batch[k].contiguous(memory_format=torch.channels_last)
    return batch


def train_step(run: FitRun, batch: dict, epoch: int, s: int, sums: dict):
    """One optimiser step of the mode on `batch` (step s of `epoch`); adds its loss and logs to `sums`."""
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
        loss, logs = run.step_fn(batch, (epoch * run.steps + s) / run.mode.ctx.total_steps)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{run.out_dir}: non-finite loss at epoch {epoch + 1} step {s + 1}")
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # fp16: scaled gradients, steps skipped on overflow
    lr = run.opt.param_groups[0]["lr"]  # this step's
    update(run.opt, run.sched, run.scaler, run.mode, run.average_bn)
    terms = run.mode.ctx.loss_fn.take_terms()  # each loss term of the step (its curves)
    run.logger.step(epoch * run.steps + s + 1, {"loss": loss.detach(), **logs, **terms}, lr)
    for k, v in {"loss": loss.detach(), **logs}.items():  # tensors stay on the device: no sync per step
        sums[k] = sums.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)


def validate_epoch(run: FitRun, epoch: int, row: dict, val: ClipSet | None) -> bool:
    """Validate on the epochs train.eval_every picks (and the last), adding val_<metric> to `row` and updating
    run.best; returns whether this epoch's model is the best so far (always, without a validation set)."""
    cfg = run.cfg
    if val is None:
        return True
    if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
        metric = "val_" + val_metric(cfg)
        row[metric] = validate(run.mode.eval_model(), cfg, val, run.device, run.n_classes)[0]
        improved = row[metric] > run.best
        run.best = max(run.best, row[metric])
        return improved
    return False


def log_epoch(run: FitRun, epoch: int, row: dict):
    if run.log:
        run.log.info(
            f"{run.out_dir} epoch {epoch + 1}/{run.cfg.train.epochs} "
            + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",) and isinstance(v, float))
        )
