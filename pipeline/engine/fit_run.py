"""A fit's set-up: FitRun, what the fit loop's steps share, and set_up_fit, which makes it before the first epoch
(process group, device and threads, seeds, the mode and its batch sizes and steps, optimiser, schedule,
augmentation, precision).

    run = set_up_fit(cfg, out_dir, model, "supervised", classes, labelled, None, log, seed_offset=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import distributed
from pipeline.augment import build_albu
from pipeline.engine.batches import ClipSet
from pipeline.engine.build import build_mode
from pipeline.engine.keys import train_key
from pipeline.engine.optim import build_optimizer, lr_factor
from pipeline.loggers import NullLogger
from pipeline.utils import amp_dtype, keep_freed_memory, make_scaler, remove_stale_outputs


@dataclass
class FitRun:
    """What fit's steps share: the set-up (set_up_fit), the state a resume restores (history, best, start) and the
    pieces every epoch uses."""

    cfg: Any
    out_dir: Path
    model: Any
    mode: Any
    classes: list
    log: Any
    world: distributed.World
    device: torch.device
    seed: int
    rng: np.random.Generator  # epoch orders: the same on every rank
    gen: torch.Generator  # the mode's random draws: each rank its own
    key: str  # train_key(cfg): what last.pt, best.pt and done.json are written for
    b_lab: int
    b_unl: int
    steps: int  # steps per epoch
    opt: Any
    sched: Any
    scaler: Any
    albu: Any
    step_fn: Any
    dtype: Any
    average_bn: bool
    history: list = field(default_factory=list)
    best: float = -1.0
    start: int = 0
    logger: Any = field(default_factory=NullLogger)  # where the curves go besides metrics.csv (pipeline/loggers.py)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pt"


FIT_OUTPUTS = ("last.pt", "previous.pt", "best.pt", "metrics.csv", "curves.png", "done.json", "oof.csv")


def run_setting(out_dir, device, dtype, cfg) -> str:
    """The log line that names what a run's numbers depend on beyond its config: device, precision, threads."""
    return (
        f"{out_dir}: device {device}, precision {dtype or 'float32'} (train.amp={cfg.train.amp}), "
        f"{torch.get_num_threads()} torch thread(s) (another count gives other weights: README, Reproducibility)"
    )


def batch_keys(mode_name: str, b_lab: int, b_unl: int) -> dict:
    """{the config key that sets it: clips per step} of a mode's labelled and unlabelled streams."""
    if mode_name == "teacher_student":
        return {"teacher_student.n_curated": b_lab, "teacher_student.n_noisy": b_unl}
    keys = {"train.batch_size": b_lab}
    if b_unl:
        keys[f"train.batch_size x ssl.{mode_name}.mu"] = b_unl
    return keys


def set_up_fit(
    cfg,
    out_dir: Path,
    model,
    mode_name: str,
    classes,
    labelled: ClipSet,
    unlabelled: ClipSet | None,
    log,
    seed_offset: int,
) -> FitRun:
    """Everything before the first epoch: the process group, out_dir cleared of a killed run's temporaries, the
    device and threads, the seeds, the mode, its batch sizes and steps, optimiser, schedule, augmentation, precision."""
    world = distributed.setup(cfg)
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # what a killed run of this fold left under temporary names: never read, reclaimed now
        remove_stale_outputs(out_dir, FIT_OUTPUTS, log)
    device = distributed.get_device(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    keep_freed_memory()
    seed = cfg.run.seed + seed_offset
    torch.manual_seed(distributed.rank_seed(seed, world.rank))  # dropout: each rank its own draws
    rng = np.random.default_rng(seed)  # epoch orders: the same on every rank
    gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(seed, world.rank))
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)

    mode = build_mode(
        cfg,
        model,
        mode_name,
        len(classes),
        device,
        gen,
        log,
        float(labelled.y[:, : len(classes)].sum(1).mean()) if len(labelled) else 1.0,
    )
    if mode.uses_unlabelled and (unlabelled is None or len(unlabelled) == 0):
        raise ValueError(f"train.mode={mode_name} needs unlabelled (or noisy) clips and there are none")
    b_lab, b_unl = mode.batch_sizes()
    if world.parallel:
        distributed.check_batch_sizes(batch_keys(mode_name, b_lab, b_unl), world.size)
    average_bn = distributed.prepare(mode, device, cfg.train.sync_bn, log)
    steps = cfg.train.steps_per_epoch or max(1, round(len(labelled) / b_lab))
    mode.ctx.total_steps = steps * cfg.train.epochs
    opt = build_optimizer(cfg, mode.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg))
    albu = build_albu(list(cfg.augment.albumentations))
    step_fn = torch.compile(mode.step) if cfg.train.compile else mode.step
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = make_scaler(cfg.train.amp, device)
    if log:
        log.info(run_setting(out_dir, device, dtype, cfg))
    return FitRun(
        cfg=cfg,
        out_dir=out_dir,
        model=model,
        mode=mode,
        classes=classes,
        log=log,
        world=world,
        device=device,
        seed=seed,
        rng=rng,
        gen=gen,
        key=train_key(cfg),
        b_lab=b_lab,
        b_unl=b_unl,
        steps=steps,
        opt=opt,
        sched=sched,
        scaler=scaler,
        albu=albu,
        step_fn=step_fn,
        dtype=dtype,
        average_bn=average_bn,
    )
