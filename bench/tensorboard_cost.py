"""Benchmark: a training step's time with and without TensorBoard's curves (train.tensorboard), in one process.

    .venv/bin/python bench/tensorboard_cost.py [--steps 25] [--repeats 3] [--threads 2]

pipeline.engine.fit itself at bench/train_step.py's demo width (vgg8 width 0.25, 64 mels, 128-frame crops, batch
32, 96 demo clips; the supervised mode, no validation), with train.tensorboard false and true in turn, in the order
off on on off (repeated --repeats times) so that a drift of the machine falls on both alike. Each fit runs 2 epochs
of --steps steps; its step time is its second epoch's seconds (the steps, and with TensorBoard every step's values
kept, written every pipeline.loggers.STEPS_PER_WRITE steps, and the epoch's values written and flushed) over the
steps. Prints every fit, then the median step time of each setting, their difference, how many cores other
processes used meanwhile (the figures of a shared machine move with them), and the logger's own work per step
measured alone (logger_cost), which the noise of whole steps hides.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_step import SETTINGS, Others, clipset, config_for, make_data  # noqa: E402


def one_fit(cfg, clips, classes, out: Path, tensorboard: bool, steps: int, threads: int) -> float:
    """Seconds per step of the second epoch of a 2-epoch fit."""
    import torch

    from pipeline.config import to_cfg, to_plain
    from pipeline.engine import build_model, fit

    plain = to_plain(cfg)
    plain["train"].update(epochs=2, steps_per_epoch=steps, threads=threads, lr_warmup_epochs=1, tensorboard=tensorboard)
    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    cfg2 = to_cfg(plain)
    hist = fit(cfg2, out, build_model(cfg2, len(classes)), "supervised", classes, clips)["history"]
    return float(hist.iloc[-1]["seconds"]) / steps


def logger_cost(folder: Path, steps: int = 2000, terms: int = 4) -> tuple[float, float]:
    """(seconds per step the training thread spends in the logger, seconds per step of all the logger's work, its
    writing thread's included) of pipeline.loggers.TensorBoardLogger alone: step() with the loss and `terms` more
    0-d CPU tensors and the learning rate, an epoch row every 100 steps, close(). Without the noise of a training
    step around it."""
    import time

    import torch

    from pipeline.loggers import TensorBoardLogger

    values = {f"loss_{i}": torch.tensor(0.5 + i) for i in range(terms)} | {"loss": torch.tensor(1.0)}
    t0 = time.perf_counter()
    logger = TensorBoardLogger(folder, steps_per_epoch=100)
    in_step = 0.0
    for s in range(steps):
        t = time.perf_counter()
        logger.step(s + 1, values, 1e-3)
        in_step += time.perf_counter() - t
        if (s + 1) % 100 == 0:
            logger.epoch((s + 1) // 100 - 1, {"loss": 1.0, "val_lwlrap": 0.5, "data_wait_share": 0.1}, 100.0)
    logger.close()
    return in_step / steps, (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=25, help="steps per epoch (default 25: one write of the steps)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of off, on, on, off (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads (default: all cores)")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fattag-tb-bench-"))
    try:
        s = SETTINGS["demo"]
        cfg = config_for(make_data(tmp), tmp, s)
        clips, classes = clipset(cfg)
        times: dict = {False: [], True: []}
        others = Others().start()
        for r in range(a.repeats):
            for tb in (False, True, True, False):
                t = one_fit(cfg, clips, classes, tmp / f"fit-{r}-{int(tb)}", tb, a.steps, a.threads)
                times[tb].append(t)
                print(f"round {r + 1} tensorboard {'on ' if tb else 'off'}: {1000 * t:.1f} ms/step", flush=True)
        busy = others.stop()
        own = logger_cost(tmp / "logger")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    spread = {tb: (min(v), max(v)) for tb, v in times.items()}
    print(
        f"\nvgg8 width {s['width']}, batch {s['batch']}, {s['frames']} frames, {a.threads} thread(s), "
        f"{a.steps} steps an epoch, {len(times[False])} fits each; other processes used {busy:.2f} cores\n"
        f"| train.tensorboard | ms / step (median) | min - max |\n|---|---|---|\n"
        f"| false | {1000 * off:.1f} | {1000 * spread[False][0]:.1f} - {1000 * spread[False][1]:.1f} |\n"
        f"| true | {1000 * on:.1f} | {1000 * spread[True][0]:.1f} - {1000 * spread[True][1]:.1f} |\n"
        f"difference: {1000 * (on - off):+.2f} ms a step ({100 * (on / off - 1):+.1f}%)\n"
        f"the logger alone (logger_cost): {1e6 * own[0]:.0f} us a step in the training thread's step() calls, "
        f"{1e6 * own[1]:.0f} us a step with its writing thread's work ({100 * own[1] / off:.2f}% of a step here)"
    )


if __name__ == "__main__":
    main()
