"""Benchmark of data-parallel training on the CPU: the time of one training step with 1 and 2 processes (torchrun's
layout: one process per rank, gloo), at demo and full width, and how much of a step the gradient exchange takes.

    .venv/bin/python bench/ddp.py                  # demo and full width (~6 min on 2 idle cores)
    .venv/bin/python bench/ddp.py --no-full        # demo width only
    .venv/bin/python bench/ddp.py --steps 40 --full-steps 6

Settings (bench/train_step.py's): demo = vgg8 width 0.25, 64 mels, 128-frame crops, global batch 32; full = vgg8
width 1.0, 128 mels, 192-frame crops, global batch 64; 80 classes (FSDKaggle2019's), time reversal and ArcFace as
configs/demo.yaml. A step is what pipeline.engine.fit runs for the supervised mode (SpecAugment, reversal, mixup,
focal + ArcFace, NAdam, channels_last, keep_freed_memory), on a random batch already in memory: data loading and
features are measured by bench/train_step.py and bench/features.py, not here.
Rows (each in fresh processes started as torch.multiprocessing.spawn does, joined over gloo as torchrun would):
    1 proc x 1 thread      one process, the whole batch, train.threads=1
    1 proc x 2 threads     one process, the whole batch, both cores (the single-process way to use this machine)
    2 procs x 1 thread     pipeline.distributed as fit sets it up: each rank half the batch, DistributedDataParallel,
                           BatchNorm statistics averaged after the step (the CPU has no SyncBatchNorm); every other
                           timed step runs inside DDP's no_sync() (no gradient exchange: the ranks' compute alone), so
                           both kinds of step meet the same load from other processes
Columns: step ms (median over the timed steps; the slowest rank's), samples/s (global batch / step), x 1 proc (samples/s
over the 1 x 1 row), no_sync ms (median of the no_sync steps), exposed ms (step - no_sync: what the gradient exchange
adds once DDP has overlapped what it can with the backward pass), share (exposed / step), all-reduce ms (one gloo
all-reduce of every gradient as one float32 tensor, alone, median of 20), BN avg ms (distributed.average_buffers
alone, in every step), others (cores other processes used during the row: the machine is shared, read rows with it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from train_step import SETTINGS, Others, wait_quiet  # noqa: E402

N_CLASSES = 80


def _rank(rank, threads, setting, warmup, steps, out):
    """One rank of a row: `warmup` untimed then `steps` timed steps (with 2 ranks as many no_sync steps between
    them); saves its step times and, with 2 ranks, the all-reduce and BN-average times to out/<rank>.pt."""
    import numpy as np

    from pipeline import distributed
    from pipeline.config import load_config
    from pipeline.engine import build_mode, build_model, build_optimizer
    from pipeline.utils import keep_freed_memory

    s = SETTINGS[setting]
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            "run.device=cpu",
            "run.progress=false",
            f"train.threads={threads}",
            f"features.n_mels={s['n_mels']}",
            f"model.params={{width: {s['width']}}}",
            f"train.frames={s['frames']}",
            f"train.batch_size={s['batch']}",
        ],
    )
    world = distributed.setup(cfg)
    torch.set_num_threads(threads)
    keep_freed_memory()
    model = build_model(cfg, N_CLASSES, seed=0).to(memory_format=torch.channels_last)
    mode = build_mode(cfg, model, "supervised", N_CLASSES, torch.device("cpu"), torch.Generator().manual_seed(rank))
    average_bn = distributed.prepare(mode, torch.device("cpu"), cfg.train.sync_bn)
    opt = build_optimizer(cfg, mode.parameters())
    b = s["batch"] // world.size
    g = torch.Generator().manual_seed(rank)
    y = (torch.rand(b, N_CLASSES, generator=g) < 0.02).float()
    y[torch.arange(b), torch.randint(0, N_CLASSES, (b,), generator=g)] = 1
    batch = {
        "x": torch.randn(b, 1, s["n_mels"], s["frames"], generator=g).contiguous(memory_format=torch.channels_last),
        "y": y,
        "idx": np.arange(b),
    }
    model.train()

    def step(no_sync=False):
        with ExitStack() as stack:
            if no_sync:
                for w in mode.wrappers.values():
                    stack.enter_context(w.no_sync())
            loss, _ = mode.step(batch, 0.5)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if average_bn:
            distributed.average_buffers(mode.networks())

    for _ in range(warmup):
        step()
    distributed.barrier()
    times = {False: [], True: []}
    for i in range(steps * (1 + world.parallel)):
        no_sync = world.parallel and i % 2 == 1
        t0 = time.perf_counter()
        step(no_sync)
        times[no_sync].append(time.perf_counter() - t0)
    res = {"times": times[False], "free": times[True], "params": sum(p.numel() for p in model.parameters())}
    if world.parallel:
        import torch.distributed as dist

        flat = torch.zeros(res["params"])
        for key, fn in (
            ("allreduce", lambda: dist.all_reduce(flat)),
            ("bn_avg", lambda: distributed.average_buffers(mode.networks())),
        ):
            for _ in range(3):
                fn()
            dist.barrier()
            t = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            res[key] = float(np.median(t))
    torch.save(res, Path(out) / f"{rank}.pt")


def run_row(setting: str, procs: int, threads: int, warmup: int, steps: int) -> dict:
    import numpy as np

    from pipeline import distributed

    with tempfile.TemporaryDirectory() as out:
        others = Others().start()
        distributed.spawn(_rank, threads, setting, warmup, steps, out, size=procs)
        row = {"others": others.stop()}
        res = [torch.load(Path(out) / f"{r}.pt") for r in range(procs)]
    row["step"] = max(float(np.median(r["times"])) for r in res)
    row["free"] = max(float(np.median(r["free"])) for r in res) if res[0]["free"] else None
    row["params"] = res[0]["params"]
    row["samples"] = SETTINGS[setting]["batch"] / row["step"]
    for k in ("allreduce", "bn_avg"):
        row[k] = res[0].get(k)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row at demo width")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--full-steps", type=int, default=3, help="timed steps per row at full width (~10-20 s each)")
    ap.add_argument("--full-warmup", type=int, default=1)
    ap.add_argument("--no-full", action="store_true", help="demo width only")
    ap.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds to wait before each row for other processes to go quiet"
    )
    a = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # each rank sets its own thread count
    rows = []
    for setting in ["demo"] + ([] if a.no_full else ["full"]):
        warmup, steps = (a.warmup, a.steps) if setting == "demo" else (a.full_warmup, a.full_steps)
        for label, procs, threads in (
            ("1 proc x 1 thread", 1, 1),
            ("1 proc x 2 threads", 1, 2),
            ("2 procs x 1 thread", 2, 1),
        ):
            wait_quiet(a.quiet_wait)
            r = run_row(setting, procs, threads, warmup, steps)
            r.update(setting=setting, label=label)
            rows.append(r)
            print(f"  {setting} {label}: {1000 * r['step']:.0f} ms/step (others {r['others']:.2f})", flush=True)
    print(
        f"\n{'setting':<8}{'row':<21}{'params':>9}{'step ms':>9}{'samples/s':>11}{'x 1 proc':>10}{'no_sync ms':>12}"
        f"{'exposed ms':>12}{'share':>7}{'all-reduce ms':>15}{'BN avg ms':>11}{'others':>8}"
    )
    for r in rows:
        base = next(b for b in rows if b["setting"] == r["setting"] and b["label"].startswith("1 proc x 1"))
        exposed = None if r["free"] is None else r["step"] - r["free"]
        cells = [
            "" if v is None else f.format(v)
            for v, f in (
                (r["free"] and 1000 * r["free"], "{:.0f}"),
                (exposed and 1000 * exposed, "{:.0f}"),
                (exposed and exposed / r["step"], "{:.0%}"),
                (r["allreduce"] and 1000 * r["allreduce"], "{:.1f}"),
                (r["bn_avg"] and 1000 * r["bn_avg"], "{:.2f}"),
            )
        ]
        print(
            f"{r['setting']:<8}{r['label']:<21}{r['params'] / 1e6:>8.2f}M{1000 * r['step']:>9.0f}"
            f"{r['samples']:>11.1f}{r['samples'] / base['samples']:>10.2f}{cells[0]:>12}{cells[1]:>12}{cells[2]:>7}"
            f"{cells[3]:>15}{cells[4]:>11}{r['others']:>8.2f}"
        )
    print(
        "step: median over the timed steps (slowest rank); no_sync: the 2-process steps without gradient exchange "
        "(every other step); exposed: step - no_sync; share: exposed / step; all-reduce: every gradient as one "
        "float32 tensor over gloo, alone; others: cores used by other processes during the row"
    )
    return rows


if __name__ == "__main__":
    main()
