"""Where a fit's numbers go besides metrics.csv: TensorBoard event files, written as the run goes (as Lightning's
loggers, a small class the training loop calls; pipeline.engine.fit makes one per fit with make_logger).

    logger = make_logger(cfg, out_dir, steps_per_epoch, start_epoch)     # NullLogger with train.tensorboard false
    logger.step(global_step, {"loss": loss, "loss_focal": ...}, lr)       # every optimiser step
    logger.epoch(epoch, row, samples_per_second)                          # every epoch: metrics.csv's row
    logger.close()

    make tensorboard          # tensorboard --logdir runs: every run's curves, live

Event files go to runs/<run>/tb/<stage>/ (tb/warmup, tb/train/fold_<k>; a fit outside runs/<run>/: out_dir/tb).
Tags: per step train/loss, train/<each loss term> (loss_focal, loss_arcface, ...; _g for head g), train/<what the
mode logs a step>, train/lr; per epoch val/<metric> (val/lwlrap, any other val_* column such as unheard clips'),
pseudo_labels/<pl_* column> (precision, recall, kept share, where the mode has them), epoch/<metrics.csv's other
columns: the epoch's mean loss, the mode's own figures>, speed/samples_per_second, speed/data_wait_share,
speed/epoch_seconds; the resolved config as text (tag config). Steps count optimiser steps from 1; an epoch's values
sit at its last step ((epoch + 1) * steps per epoch).

A step's values stay tensors on the device; every STEPS_PER_WRITE steps they are copied to the CPU together (no
device synchronisation per step) and a thread of the logger writes them; the files are flushed every FLUSH_SECS
seconds and at every epoch's end, before last.pt is written. A resumed fit (last.pt of epoch E) opens its writer
with purge_step E * steps + 1: TensorBoard drops what the killed run wrote after that epoch, so the curves go on
with each step once. A fit started again for another config moves the old curves aside (keep_old_curves:
tb/<stage>.<old key>), as it does last.pt.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

STEPS_PER_WRITE = 25
FLUSH_SECS = 10


def tb_folder(cfg, out_dir) -> Path:
    """runs/<run>/tb/<out_dir relative to runs/<run>/> for a fit in runs/<run>/ (tb/warmup, tb/train/fold_0), else
    out_dir/tb."""
    run = Path("runs") / cfg.run.name
    try:
        rel = Path(out_dir).resolve().relative_to(run.resolve())
    except ValueError:
        return Path(out_dir) / "tb"
    return run / "tb" / rel


def keep_old_curves(cfg, out_dir, tag: str) -> Path | None:
    """Move the curves of a fit written for another config aside, as tb/<stage>.<tag> (TensorBoard shows them as a
    run of their own); returns where, or None when there were none."""
    folder = tb_folder(cfg, out_dir)
    if not folder.is_dir():
        return None
    kept = folder.with_name(f"{folder.name}.{tag}")
    if kept.exists():
        import shutil

        shutil.rmtree(kept)
    folder.rename(kept)
    return kept


def after_existing(folder):
    """Wait, if need be, until this second is later than the newest event file's in `folder`. TensorBoard reads a
    folder's files in name order, and a name starts with the second its file was made: a run restarted within the
    second (a kill, then the same command at once) would otherwise write a file that sorts before the killed run's,
    and the purge that hides the killed run's last steps would come first."""
    stamps = [p.name.split(".")[3] for p in Path(folder).glob("events.out.tfevents.*")]
    newest = max((int(t) for t in stamps if t.isdigit()), default=None)
    while newest is not None and int(time.time()) <= newest:
        time.sleep(0.05)


class NullLogger:
    """The logger of a fit that writes no curves (train.tensorboard false, ranks other than 0)."""

    def step(self, global_step: int, values: dict, lr: float):
        pass

    def epoch(self, epoch: int, row: dict, samples_per_second: float):
        pass

    def close(self):
        pass


def _tag(key: str) -> str:
    """The TensorBoard tag of a metrics.csv column."""
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key.startswith("pl_"):
        return "pseudo_labels/" + key[3:]
    if key == "data_wait_share":
        return "speed/data_wait_share"
    if key == "seconds":
        return "speed/epoch_seconds"
    return "epoch/" + key


class TensorBoardLogger(NullLogger):
    """Scalars of one fit in `folder` through torch.utils.tensorboard's SummaryWriter (see the module docstring).
    The training thread only keeps each step's values and, every STEPS_PER_WRITE steps, copies them to the CPU;
    a thread of the logger turns them into events (SummaryWriter's protobufs cost ~70 us a scalar), so a step pays
    microseconds. epoch() waits until everything before it is in the files."""

    def __init__(self, folder, steps_per_epoch: int, start_epoch: int = 0, config_text: str | None = None):
        import queue
        import threading

        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.steps = Path(folder), int(steps_per_epoch)
        after_existing(self.folder)
        # purge_step: TensorBoard hides every event at this step or later written before this writer (a killed
        # run's steps after its last.pt); from the start (0) that is all of them, the config text too
        purge = start_epoch * self.steps + 1 if start_epoch else 0
        self.writer = SummaryWriter(str(self.folder), purge_step=purge, flush_secs=FLUSH_SECS)
        self.pending: list = []  # (step, {tag: tensor or number}) not yet copied to the CPU
        self.queue: queue.Queue = queue.Queue()  # [(tag, value, step)] for the writing thread; None: its end
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write_loop, name="tensorboard", daemon=True)
        self.thread.start()
        if start_epoch == 0 and config_text:
            self.writer.add_text("config", config_text, 0)

    def _write_loop(self):
        while (cells := self.queue.get()) is not None:
            try:
                for tag, value, step in cells:
                    self.writer.add_scalar(tag, value, step)
            except BaseException as e:  # noqa: BLE001  (raised in the training thread at the next epoch)
                self.error = e
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def step(self, global_step: int, values: dict, lr: float):
        """Keep a step's values (0-d tensors stay on the device) and its learning rate; hand them to the writing
        thread every STEPS_PER_WRITE steps."""
        self.pending.append((global_step, {**{f"train/{k}": v for k, v in values.items()}, "train/lr": lr}))
        if len(self.pending) >= STEPS_PER_WRITE:
            self.write_steps()

    def write_steps(self):
        """The pending steps' values, their tensors copied to the CPU in one transfer, to the writing thread."""
        import torch

        cells = [(s, k, v) for s, vals in self.pending for k, v in vals.items()]
        self.pending = []
        tensors = [v for _, _, v in cells if torch.is_tensor(v)]
        host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist() if tensors else [])
        self.queue.put([(k, next(host) if torch.is_tensor(v) else float(v), s) for s, k, v in cells])

    def epoch(self, epoch: int, row: dict, samples_per_second: float):
        """The epoch's metrics.csv row (every finite number but epoch and lr) and its speed, at its last step;
        returns once they and every step before are in the files."""
        self.write_steps()
        at = (epoch + 1) * self.steps
        cells = [(_tag(k), float(v), at) for k, v in row.items() if k not in ("epoch", "lr") and _finite(v)]
        self.queue.put([*cells, ("speed/samples_per_second", float(samples_per_second), at)])
        self.queue.join()
        if self.error is not None:
            raise self.error
        self.writer.flush()

    def close(self):
        self.write_steps()
        self.queue.put(None)
        self.thread.join()
        self.writer.close()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def config_text(cfg) -> str:
    """The resolved config as TensorBoard's text (markdown: an indented YAML block)."""
    import yaml

    from pipeline.config import to_plain

    return "\n".join("    " + line for line in yaml.safe_dump(to_plain(cfg), sort_keys=False).splitlines())


def make_logger(cfg, out_dir, steps_per_epoch: int, start_epoch: int, main: bool = True) -> NullLogger:
    """The fit's logger: TensorBoardLogger in tb_folder(cfg, out_dir) when train.tensorboard is on (rank 0 of a
    data-parallel run only), else NullLogger."""
    if not (main and cfg.train.tensorboard):
        return NullLogger()
    return TensorBoardLogger(tb_folder(cfg, out_dir), steps_per_epoch, start_epoch, config_text(cfg))
