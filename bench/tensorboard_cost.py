"""Benchmark: a training step's time with and without TensorBoard's curves (train.tensorboard), in one process.

    .venv/bin/python bench/tensorboard_cost.py [--steps 25] [--repeats 3] [--threads 2]

pipeline.engine.fit itself at bench/train_step.py's demo width (vgg8 width 0.25, 64 mels, 128-frame crops, batch
32, 96 demo clips; the supervised mode, no validation), with train.tensorboard false and true in turn, in the order
off on on off (repeated --repeats times) so that a drift of the machine falls on both alike. Each fit runs 2 epochs
of --steps steps (after one untimed fit of each); its wall step time is its second epoch's seconds (the steps, and
with TensorBoard every step's values kept, written every pipeline.loggers.STEPS_PER_WRITE steps, and the epoch's
values written and flushed) over the steps, its CPU step time the process's CPU seconds over the whole fit (the
logger's thread included) over its steps. For each: the median of each setting and the difference paired by round
(each round's fits ran side by side) with its 95% t-interval; how many cores other processes used meanwhile (the
wall times of a shared machine move with them, the CPU times much less); and the logger's own work per step
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


def one_fit(cfg, clips, classes, out: Path, tensorboard: bool, steps: int, threads: int) -> tuple[float, float]:
    """(wall seconds per step of the second epoch, CPU seconds of this process per step over the whole fit) of a
    2-epoch fit. The CPU time counts the logger's writing thread too, and moves much less than the wall time with
    the load of other processes."""
    import resource

    import torch

    from pipeline.config import to_cfg, to_plain
    from pipeline.engine import build_model, fit

    plain = to_plain(cfg)
    plain["train"].update(epochs=2, steps_per_epoch=steps, threads=threads, lr_warmup_epochs=1, tensorboard=tensorboard)
    torch.manual_seed(0)
    shutil.rmtree(out, ignore_errors=True)
    cfg2 = to_cfg(plain)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    hist = fit(cfg2, out, build_model(cfg2, len(classes)), "supervised", classes, clips)["history"]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return float(hist.iloc[-1]["seconds"]) / steps, cpu / (2 * steps)


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


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with df degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def summary(times: dict, repeats: int) -> str:
    """The medians (min - max) of each setting and their difference paired by round, with its 95% t-interval."""
    off, on = statistics.median(times[False]), statistics.median(times[True])
    # paired by round: each round's mean on minus its mean off (its fits ran side by side, off on on off)
    diffs = [(sum(times[True][2 * r : 2 * r + 2]) - sum(times[False][2 * r : 2 * r + 2])) / 2 for r in range(repeats)]
    d = statistics.mean(diffs)
    half = t95(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    rows = "".join(
        f"| {str(tb).lower()} | {1000 * statistics.median(v):.1f} | {1000 * min(v):.1f} - {1000 * max(v):.1f} |\n"
        for tb, v in times.items()
    )
    return (
        f"| train.tensorboard | ms / step (median) | min - max |\n|---|---|---|\n{rows}"
        f"on - off, paired by round: {1000 * d:+.2f} ms [95% t-interval {1000 * (d - half):+.2f}, "
        f"{1000 * (d + half):+.2f}] ({100 * d / off:+.2f}% of a step; medians {100 * (on / off - 1):+.2f}%)"
    )


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
        for tb in (False, True):  # untimed: imports (tensorboard's among them) and first-touch allocations
            one_fit(cfg, clips, classes, tmp / "warm", tb, a.steps, a.threads)
        wall: dict = {False: [], True: []}
        cpu: dict = {False: [], True: []}
        others = Others().start()
        for r in range(a.repeats):
            for tb in (False, True, True, False):
                w, c = one_fit(cfg, clips, classes, tmp / f"fit-{r}-{int(tb)}", tb, a.steps, a.threads)
                wall[tb].append(w)
                cpu[tb].append(c)
                print(f"round {r + 1} tensorboard {'on ' if tb else 'off'}: {1000 * w:.1f} ms/step, CPU "
                      f"{1000 * c:.1f} ms/step", flush=True)  # fmt: skip
        busy = others.stop()
        own = logger_cost(tmp / "logger")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nvgg8 width {s['width']}, batch {s['batch']}, {s['frames']} frames, {a.threads} thread(s), "
        f"{a.steps} steps an epoch, {len(wall[False])} fits each; other processes used {busy:.2f} cores\n"
        f"wall time of a step (the second epoch's):\n{summary(wall, a.repeats)}\n"
        f"CPU time of this process per step (the whole fit):\n{summary(cpu, a.repeats)}\n"
        f"the logger alone (logger_cost): {1e6 * own[0]:.0f} us a step in the training thread's step() calls, "
        f"{1e6 * own[1]:.0f} us a step with its writing thread's work"
    )


if __name__ == "__main__":
    main()
