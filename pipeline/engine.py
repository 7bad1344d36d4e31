"""The training engine shared by the warm-up and train stages: data streams, optimiser and schedule, the epoch loop,
validation with sliding windows, atomic checkpoints and resume, metrics CSV and curves.

    result = fit(cfg, out_dir, model, mode_name, labelled, unlabelled=None, val=None, log=log)

A fit writes into out_dir: last.pt (everything needed to resume: model, optimiser, schedule, mode state, RNG states,
history without its timings), previous.pt (the epoch before), best.pt (the best validated model), metrics.csv,
and done.json last; each .pt with its sha256 in <name>.pt.sha256, checked when it is loaded. Started again after a
kill at any moment, it resumes from last.pt at the epoch boundary (from previous.pt when last.pt is damaged) and,
given the same seed and thread count, ends with the same bytes as an uninterrupted run on the CPU. Started with
another config, it keeps the old run's last.pt, best.pt and metrics.csv as last.<key>.pt, best.<key>.pt and
metrics.<key>.csv (the old key's first 12 characters) and trains from the start.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import distributed
from pipeline.augment import build_albu, build_batch_augment, crop_or_pad
from pipeline.config import config_hash, to_plain
from pipeline.data import is_single_label
from pipeline.loggers import NullLogger, keep_old_curves, make_logger
from pipeline.losses import build_loss
from pipeline.metrics import accuracy, lwlrap
from pipeline.model_files import SAFETENSORS, plain, read_safetensors
from pipeline.modes import TrainContext, create_mode
from pipeline.predict import predict_clips
from pipeline.utils import (
    DamagedFile,
    NotPlainWeights,
    UserError,
    amp_dtype,
    atomic_to_csv,
    keep_freed_memory,
    load_weights_only,
    make_scaler,
    mark_done,
    move_with_checksum,
    progress,
    remove_stale_outputs,
    save_torch,
    set_position,
    verify_checksum,
)

# Sections that decide what a training stage computes (progress bars, workers, inference do not).
TRAIN_SECTIONS = ("data", "features", "folds", "model", "loss", "augment", "train", "teacher_student", "ssl")


# train.* keys that change how fast a fold trains or how it is looked at, not what it learns: a run resumes
# across a change of them.
PERFORMANCE_KEYS = ("threads", "amp", "channels_last", "compile", "eval_every", "tensorboard")
# train.* keys of how a run is spread over processes (pipeline/distributed.py; the number of processes is no config
# key either): a run resumes across a change of them.
PARALLEL_KEYS = ("sync_bn",)


# What the warm-up (stage 1: supervised on the noisy set, every curated clip for validation) never reads: a change
# of them leaves a finished warm-up valid.
WARMUP_UNUSED = {
    "sections": ("folds", "teacher_student", "ssl"),
    "train": ("mode", "init_from", "calib_fraction", "noisy_labelled"),
    "data": ("labelled_fraction", "unlabelled_noisy"),
}


def _key_sections(cfg) -> dict:
    """The train sections as plain dicts, less the choice of folds and the performance knobs; for the warm-up's
    config (its `_meta.stage`), less what the warm-up does not read (WARMUP_UNUSED)."""
    warmup = ((cfg.get("_meta") or {}).get("stage") == "warmup") if hasattr(cfg, "get") else False
    plain = {
        k: to_plain(cfg[k]) for k in TRAIN_SECTIONS if k in cfg and not (warmup and k in WARMUP_UNUSED["sections"])
    }
    for k in ("folds", "full", *PERFORMANCE_KEYS, *PARALLEL_KEYS):
        plain.get("train", {}).pop(k, None)
    if warmup:
        for section in ("train", "data"):
            for k in WARMUP_UNUSED[section]:
                plain.get(section, {}).pop(k, None)
    elif plain.get("train", {}).get("init_from") == "warmup" and "warmup" in cfg:
        plain["warmup"] = to_plain(cfg["warmup"])  # folds that start from the warm-up change with it
    return plain


def train_key(cfg) -> str:
    """What decides a fold's training: the train sections, less the choice of which folds to run and the
    performance knobs (PERFORMANCE_KEYS)."""
    return config_hash(_key_sections(cfg)) + f"-s{cfg.run.seed}"


def changed_keys(old_cfg, cfg, limit: int = 12) -> list[str]:
    """Dotted keys of the train sections whose values differ between two configs (plain dicts or Cfg)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict) and v and k not in ("params", "ssl"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(_key_sections(old_cfg or {})), flat(_key_sections(cfg))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return diff[:limit] + ([f"... {len(diff) - limit} more"] if len(diff) > limit else [])


@dataclass
class ClipSet:
    """Clips of FeatureCache splits: clip i is row pos[i] of caches[src[i]]; targets (N, C), true labels or None."""

    caches: list
    src: np.ndarray
    pos: np.ndarray
    y: np.ndarray
    truth: np.ndarray | None = None
    fnames: list | None = None

    def __len__(self):
        return len(self.pos)

    def get(self, i) -> np.ndarray:
        """Clip i as (n_mels, frames) float32."""
        return self.caches[self.src[i]].get(int(self.pos[i]))

    def subset(self, rows) -> ClipSet:
        """The clips at `rows` (an index array), in that order."""
        rows = np.asarray(rows, int)
        return ClipSet(
            self.caches,
            self.src[rows],
            self.pos[rows],
            self.y[rows],
            None if self.truth is None else self.truth[rows],
            None if self.fnames is None else [self.fnames[i] for i in rows],
        )

    @property
    def cache(self):
        """The single cache of a one-split ClipSet (validation and prediction read it by fname)."""
        if len(self.caches) != 1:
            raise ValueError("this ClipSet spans several caches")
        return self.caches[0]


def concat_clipsets(a: ClipSet, b: ClipSet) -> ClipSet:
    """The clips of a then b (truth kept only when both have it)."""
    truth = None if a.truth is None or b.truth is None else np.concatenate([a.truth, b.truth])
    return ClipSet(
        a.caches + b.caches,
        np.concatenate([a.src, b.src + len(a.caches)]),
        np.concatenate([a.pos, b.pos]),
        np.concatenate([a.y, b.y]),
        truth,
        (a.fnames or []) + (b.fnames or []),
    )


def batch_stream(
    clips: ClipSet, batch_size: int, steps: int, frames: int, rng: np.random.Generator, albu=None, shard: tuple = (0, 1)
):
    """Yield `steps` batches (x (B, 1, F, frames) float32, y (B, C), rows (B,)) from shuffled passes over the clips,
    a random crop (or repeat-pad) per clip. Prepared one batch ahead in a thread.
    shard (rank, size) of a data-parallel run: rng, the same on every rank, draws one shared order; this rank yields
    its share (distributed.share) of each global batch of batch_size clips, B = batch_size / size, and crops them
    with a generator of its own drawn from rng."""
    n = len(clips)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch_size // n))])
    rank, size = shard
    part = distributed.share(batch_size, rank, size)
    if size > 1:
        rng = np.random.default_rng(rng.integers(0, 2**63, size=size)[rank])

    def make(s):
        rows = order[s * batch_size : (s + 1) * batch_size][part]
        xs = []
        for r in rows:
            spec = crop_or_pad(clips.get(r), frames, rng)
            xs.append(albu(spec, rng) if albu else spec)
        return np.stack(xs)[:, None], clips.y[rows], rows

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def worker():
        try:
            for s in range(steps):
                if stop.is_set():
                    return
                q.put(make(s))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        for _ in range(steps):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def build_optimizer(cfg, params):
    t = cfg.train
    if t.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer: unknown {t.optimizer!r} (nadam | adam | sgd)")


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """Schedule multiplier at optimiser step `step`: linear ramp from 0 over lr_warmup_epochs, then cosine to 0."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "constant":
        return 1.0
    warm = t.lr_warmup_epochs * steps_per_epoch if t.schedule == "warmup_cosine" else 0
    if t.schedule not in ("warmup_cosine", "cosine"):
        raise ValueError(f"train.schedule: unknown {t.schedule!r} (warmup_cosine | cosine | constant)")
    if step < warm:
        return (step + 1) / warm
    span = max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def save_checkpoint(path, model, cfg, classes, **extra):
    """Atomically write a self-describing checkpoint: model_config + weights + config + classes + extra."""
    state = {
        "model_config": model.config,
        "model": model.state_dict(),
        "cfg": to_plain(cfg),
        "classes": list(classes),
        **extra,
    }
    # in the forms weights-only loading reads back (numpy values as tensors and numbers), with its sha256 beside it
    # (path.sha256), checked by load_checkpoint
    save_torch(plain(state), path)


def load_checkpoint(path):
    """A checkpoint's contents, read weights-only (torch.load(weights_only=True): a file that would run code when
    unpickled is refused, NotPlainWeights, nothing in it run); one whose bytes are not those its sha256 sidecar
    recorded is a DamagedFile error naming it and the stage that writes it again."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    stage = next((s for s in ("warmup", "train", "infer") if s in path.parts[:-1]), None)
    verify_checksum(path, f"delete {path.parent} and run `make {stage}` again" if stage else "write it again")
    try:
        return load_weights_only(path)
    except NotPlainWeights:
        raise
    except Exception as e:  # a corrupt or foreign file
        raise UserError(f"{path}: not a readable checkpoint: {e}") from None


def load_model(path):
    """(model, checkpoint) of a self-describing checkpoint (load_checkpoint): the model built from its model_config
    with its weights, on the CPU."""
    from models import create_model

    ck = load_checkpoint(path)
    model = create_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    return model, ck


def checkpoint_state(path) -> dict:
    """The model weights of a checkpoint (a fattag checkpoint's "model", or a plain state dict) or of a .safetensors
    file (an export's fold model, pipeline/bundle.py)."""
    if Path(path).suffix == SAFETENSORS:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        return read_safetensors(path)[0]
    ck = load_checkpoint(path)
    state = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds no model weights (a fattag checkpoint or a state dict of tensors)")
    return state


def init_from_checkpoint(model, path, log=None):
    """Load matching weights from a checkpoint; heads missing there (e.g. g) start as copies of its head h."""
    state = checkpoint_state(path)
    own = model.state_dict()
    for k in list(own):
        if k not in state:
            for head in ("heads.", "arc."):
                if k.startswith(head) and k.split(".")[1] != "h":
                    src = head + "h." + ".".join(k.split(".")[2:])
                    if src in state:
                        state[k] = state[src]
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise UserError(f"{path}: no weights match this model ({model.config.get('name')})")
    model.load_state_dict(loaded, strict=False)
    model.init_keys = set(getattr(model, "init_keys", ())) | set(loaded)  # what a second network copies (co-training)
    if log:
        log.info(f"initialised {len(loaded)}/{len(own)} tensors from {path}")
    return model


def val_metric(cfg) -> str:
    """The validation metric that picks best.pt: lwlrap, or accuracy for single-label datasets."""
    return "accuracy" if is_single_label(cfg) else "lwlrap"


def predict_set(model, cfg, clips: ClipSet, device, n_classes, **kw) -> np.ndarray:
    """(N, C) sliding-window predictions (train.frames, train.eval_hop) of a one-split ClipSet's whole clips; in a
    data-parallel run each rank predicts its share of the clips and every rank gets all of them."""
    return distributed.sharded(
        lambda names: predict_clips(
            model,
            clips.cache,
            names,
            cfg.train.frames,
            cfg.train.eval_hop,
            n_classes,
            batch_size=cfg.infer.batch_size,
            device=device,
            **kw,
        ),
        clips.fnames,
    )


def validate(model, cfg, val: ClipSet, device, n_classes):
    """(validation metric, (N, C) clip probabilities) of sliding-window predictions over the whole clips (every
    rank of a data-parallel run predicts its share; all get the gathered result)."""
    single = is_single_label(cfg)
    p = predict_set(model, cfg, val, device, n_classes, softmax=single, amp=cfg.train.amp)
    return (accuracy(val.y, p) if single else lwlrap(val.y, p)[0]), p


def build_mode(cfg, model, mode_name: str, n_classes: int, device, gen, log=None, cardinality: float = 1.0):
    """The training mode `mode_name` over `model` (on `device`): its TrainContext with the configured loss and batch
    augmentation, random draws from `gen`; cardinality: the labelled clips' mean label count (rule topk)."""
    single = is_single_label(cfg)
    if single and model.n_out != n_classes:
        raise ValueError(
            "data.single_label_csv is set: single-label (softmax) training needs model.time_reversal "
            "false (reversed clips as new classes are a multi-label device)"
        )
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss, single),
        build_batch_augment(cfg.augment, n_classes, model.n_out != n_classes),
        n_classes,
        device,
        gen,
        log=log,
        single_label=single,
        extra={"cardinality": cardinality},
    )
    return create_mode(mode_name, ctx)


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


def run_setting(out_dir, device, dtype, cfg) -> str:
    """The log line that names what a run's numbers depend on beyond its config: device, precision, threads."""
    return (
        f"{out_dir}: device {device}, precision {dtype or 'float32'} (train.amp={cfg.train.amp}), "
        f"{torch.get_num_threads()} torch thread(s) (another count gives other weights: README, Reproducibility)"
    )


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


def resume_fit(run: FitRun):
    """Resume from last.pt when it was written for this config (restore_fit); when it was written for another,
    rank 0 keeps the old run's files aside (keep_old_run) and training starts from epoch 0."""
    ck = read_last(run)
    if ck is None:
        return
    if ck.get("key") == run.key:
        restore_fit(run, ck)
    elif run.world.main:
        keep_old_run(run, ck)


def read_last(run: FitRun) -> dict | None:
    """last.pt's contents, or None. In a data-parallel run every rank reads it before rank 0 may move it, and they
    must have read the same one (a UserError otherwise)."""
    last = run.last
    ck = last_or_previous(run)
    if run.world.parallel:
        seen = distributed.all_gather(None if ck is None else (ck.get("key"), ck.get("epoch")))
        if len(set(seen)) > 1:
            raise UserError(
                f"{last}: the ranks read different checkpoints ({seen}); a run of several machines "
                f"needs its runs/ folder on a file system they all share"
            )
        distributed.barrier()
    return ck


def last_or_previous(run: FitRun) -> dict | None:
    """last.pt's contents; when it is damaged, or missing while previous.pt is there (killed between keeping the
    one and writing the other), previous.pt's: the run resumes one epoch earlier."""
    prev = run.out_dir / "previous.pt"
    if run.last.exists():
        try:
            return load_checkpoint(run.last)
        except UserError as e:  # damaged (DamagedFile) or unreadable
            if not prev.exists():
                raise
            why = "damaged" if isinstance(e, DamagedFile) else "unreadable"
            if run.log:
                run.log.warning(f"{run.last}: {why}; resuming from previous.pt, one epoch earlier")
    if prev.exists():
        if run.log:
            run.log.info(f"{run.out_dir}: resuming from previous.pt")
        return load_checkpoint(prev)
    return None


# Measured, not computed: kept out of last.pt (whose bytes then depend on the config and seed alone) and read back
# from metrics.csv on a resume.
TIMINGS = ("seconds", "data_wait_share")


def untimed(history: list) -> list:
    """The history last.pt keeps: timings None, every value a plain JSON one. The JSON round trip is a canonical
    form: rows computed in this process and rows read back from a checkpoint pickle to the same bytes (pickle
    writes a key shared by several rows once, so which string objects the rows share shows in the file)."""
    rows = [{k: (None if k in TIMINGS else v) for k, v in row.items()} for row in history]
    return json.loads(json.dumps(rows, default=float))


def timed(history: list, metrics: Path) -> list:
    """last.pt's history with its timings read back from metrics.csv (written before it), NaN where missing."""
    try:
        old = pd.read_csv(metrics) if metrics.exists() else pd.DataFrame()
    except (OSError, ValueError):
        old = pd.DataFrame()
    for i, row in enumerate(history):
        for k in TIMINGS:
            if k in row and row[k] is None:
                row[k] = float(old[k].iloc[i]) if k in old.columns and i < len(old) else float("nan")
    return history


def restore_fit(run: FitRun, ck: dict):
    """Load model, optimiser, schedule, scaler, mode state, random states and history from a last.pt of this key."""
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.mode.load_state_dict(ck["mode"])
    run.rng.bit_generator.state = ck["rng"]["numpy"]
    torch.set_rng_state(ck["rng"]["torch"])
    run.gen.set_state(ck["rng"]["gen"])
    if run.world.parallel:
        resume_rank_rng(ck, run.world, run.seed, run.gen, run.log)
    run.history, run.best, run.start = timed(ck["history"], run.out_dir / "metrics.csv"), ck["best"], ck["epoch"]
    if run.log:
        run.log.info(f"resuming {run.out_dir} from epoch {run.start}/{run.cfg.train.epochs}")


def keep_old_run(run: FitRun, ck: dict):
    """Keep the old run's last.pt, best.pt and metrics.csv beside the new ones as <stem>.<old key>.<suffix>, and
    log which config keys changed."""
    tag = str(ck.get("key", "old")).split("-")[0][:12]
    kept = []
    for p in (run.last, run.out_dir / "best.pt", run.out_dir / "metrics.csv"):
        if p.exists():
            move_with_checksum(p, p.with_name(f"{p.stem}.{tag}{p.suffix}"))
            kept.append(f"{p.stem}.{tag}{p.suffix}")
    for p in (run.out_dir / "previous.pt", run.out_dir / "previous.pt.sha256"):
        p.unlink(missing_ok=True)  # the old run's epoch before: no use to the new one
    curves = keep_old_curves(run.cfg, run.out_dir, tag)
    if curves is not None:
        kept.append(str(curves))
    if run.log:
        run.log.info(
            f"{run.last} was written for another config (changed: "
            f"{', '.join(changed_keys(ck.get('cfg'), run.cfg)) or 'the seed'}): kept as "
            f"{', '.join(kept)}, training from the start"
        )


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


def rng_state(run: FitRun) -> dict:
    """The random states last.pt keeps for an exact resume; in a data-parallel run also each rank's own streams
    (dropout, masks, mixup), gathered on every rank."""
    state = {"numpy": run.rng.bit_generator.state, "torch": torch.get_rng_state(), "gen": run.gen.get_state()}
    if run.world.parallel:
        state["ranks"] = distributed.all_gather({"torch": state["torch"], "gen": state["gen"]})
    return state


def write_checkpoints(run: FitRun, epoch: int, row: dict, improved: bool):
    """The end of an epoch on disk (rank 0): best.pt when it improved, metrics.csv, then last.pt, the one before
    kept as previous.pt (a resume's fallback when last.pt is found damaged)."""
    cfg = run.cfg
    state = rng_state(run)  # a collective in a data-parallel run: every rank calls it
    if not run.world.main:
        return
    if improved:
        metric = "val_" + val_metric(cfg)
        save_checkpoint(
            run.out_dir / "best.pt",
            run.mode.eval_model(),
            cfg,
            run.classes,
            epoch=epoch + 1,
            key=run.key,
            **{metric: row.get(metric)},
        )
    atomic_to_csv(pd.DataFrame(run.history), run.out_dir / "metrics.csv", index=False)
    if run.last.exists():
        move_with_checksum(run.last, run.out_dir / "previous.pt")
    save_checkpoint(
        run.last,
        run.model,
        cfg,
        run.classes,
        epoch=epoch + 1,
        key=run.key,
        optimizer=run.opt.state_dict(),
        scheduler=run.sched.state_dict(),
        scaler=run.scaler.state_dict(),
        mode=run.mode.state_dict(),
        history=untimed(run.history),
        best=run.best,
        rng=state,
    )


def log_epoch(run: FitRun, epoch: int, row: dict):
    if run.log:
        run.log.info(
            f"{run.out_dir} epoch {epoch + 1}/{run.cfg.train.epochs} "
            + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",) and isinstance(v, float))
        )


def update(opt, sched, scaler, mode, average_bn: bool):
    """What follows a step's backward in fit: the optimiser step (through the fp16 scaler), the schedule, the BN
    statistics' average over the ranks (average_bn: distributed.prepare's answer), then the mode's own update (EMA)."""
    scaler.step(opt)
    scaler.update()
    sched.step()
    if average_bn:
        distributed.average_buffers(mode.networks())
    mode.after_step()


def batch_keys(mode_name: str, b_lab: int, b_unl: int) -> dict:
    """{the config key that sets it: clips per step} of a mode's labelled and unlabelled streams."""
    if mode_name == "teacher_student":
        return {"teacher_student.n_curated": b_lab, "teacher_student.n_noisy": b_unl}
    keys = {"train.batch_size": b_lab}
    if b_unl:
        keys[f"train.batch_size x ssl.{mode_name}.mu"] = b_unl
    return keys


def resume_rank_rng(ck: dict, world, seed: int, gen, log=None):
    """A data-parallel rank's own random streams from last.pt (rank 0's are the checkpoint's torch and gen). A
    checkpoint written by another number of processes has none for this rank: it draws fresh ones from (seed,
    rank, epoch), so the resumed run goes on but is not the run an uninterrupted one would have been."""
    ranks = ck["rng"].get("ranks") or []
    if len(ranks) == world.size:
        torch.set_rng_state(ranks[world.rank]["torch"])
        gen.set_state(ranks[world.rank]["gen"])
    elif world.rank > 0:
        s = distributed.rank_seed(seed + 7919 * int(ck["epoch"]), world.rank)
        torch.manual_seed(s)
        gen.manual_seed(s)
    elif log:
        log.warning(
            f"last.pt was written by {len(ranks) or 1} process(es), this run has {world.size}: the ranks' "
            f"random streams restart (the run goes on, not bit for bit as an uninterrupted one)"
        )


def build_model(
    cfg,
    n_classes: int,
    heads=("h",),
    seed: int | None = None,
    dropout: float | None = None,
    block_dropout: float | None = None,
):
    """The configured Tagger: model.name backbone, time-reversal outputs, heads, cosine heads if ArcFace is used.
    With `seed`, the initial weights are drawn from it (the same seed gives the same model); `dropout` replaces
    model.dropout (before the heads) and `block_dropout` model.block_dropout (in every backbone block)."""
    from models import create_model

    if seed is not None:
        torch.manual_seed(seed)
    params = dict(cfg.model.params)
    if cfg.model.name == "cnn14":
        params.setdefault("n_mels", cfg.features.n_mels)  # its bn0 normalises each mel band
    model = create_model(
        cfg.model.name,
        n_classes,
        time_reversal=cfg.model.time_reversal,
        heads=tuple(heads),
        arcface=cfg.loss.arcface > 0,
        dropout=cfg.model.dropout if dropout is None else dropout,
        block_dropout=cfg.model.block_dropout if block_dropout is None else block_dropout,
        pretrained_path=cfg.model.pretrained_path,
        params=params,
    )
    if cfg.model.pretrained_path:  # the backbone came from a file: a second network copies it (co-training)
        model.init_keys = {k for k in model.state_dict() if k.startswith("backbone.")}
    return model


def make_clipset(cache, df, classes, truth_df=None) -> ClipSet:
    """ClipSet of a dataset split's DataFrame (fname, labels) over its FeatureCache."""
    from pipeline.data import labels_to_matrix

    fnames = list(df["fname"])
    truth = None
    if truth_df is not None:
        t = truth_df.set_index("fname").loc[fnames, "labels"]
        truth = labels_to_matrix(list(t), classes)
    return ClipSet(
        [cache],
        np.zeros(len(fnames), int),
        np.array([cache.position(f) for f in fnames], int),
        labels_to_matrix(df["labels"], classes),
        truth,
        fnames,
    )
