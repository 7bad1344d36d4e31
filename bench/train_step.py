"""Benchmark of the training step: samples/s of vgg8 on the CPU, its FLOPs, the share of the machine's measured matmul
peak it reaches, and the share of step time spent waiting for data.

    .venv/bin/python bench/train_step.py                    # default: demo width (all variants) + full width, ~7 min
    .venv/bin/python bench/train_step.py --no-full          # demo width only (~2.5 min)
    .venv/bin/python bench/train_step.py --compile-full --full-threads1 --profile     # everything (~11 min)

Settings (configs/demo.yaml with these overrides, data: 96 curated demo clips in a FeatureCache):
    demo   vgg8 width 0.25, 64 mels, 128-frame crops, batch 32
    full   vgg8 width 1.0, 128 mels, 192-frame crops, batch 64 (the reference's crops, base.yaml's batch)
Variants (one row each; every row first runs --warmup / --full-warmup untimed steps, then times --steps / --full-steps):
    plain            random batch already in memory, forward, BCE on head h, NAdam step: a plain training loop
    engine           what pipeline.engine.fit does per step, as it did on a CPU before 30 Nov 2026 (NCHW, glibc's
                     malloc defaults): pipeline.engine.batch_stream over a real FeatureCache (random crops, one batch
                     ahead in a thread), the supervised mode's step (SpecAugment, time reversal, mixup, focal + binary
                     ArcFace from the config), NAdam, LambdaLR, the finiteness check and the logs summed as tensors
    +channels_last   the model and the batches in channels_last (NHWC) memory format, as fit does whenever
                     train.channels_last is true (the default; on a CPU too since 30 Nov 2026, before on CUDA only)
    +compile         torch.compile(mode.step), as train.compile=true does; a cold compile (empty inductor cache), its
                     time is in the `1st step` column
    +malloc          in a fresh process that calls pipeline.utils.keep_freed_memory() before building the model, as
                     fit does since 30 Nov 2026 (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1): glibc keeps
                     the memory freed at the end of a step for the next one instead of unmapping it and page-faulting
                     it back (zeroed) in every step
    +malloc env      in a fresh process started with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2^40 (how the
                     23 Nov 2026 `+malloc` rows were measured): the same from process start, with a trim threshold
                     above the 2^31-1 that mallopt's int argument allows
    threads 1 / 2    torch.set_num_threads
    engine.fit       pipeline.engine.fit itself, as configured (channels_last, keep_freed_memory), in a fresh
                     process: epochs of --steps / --full-steps steps, enough of them for --warmup / --full-warmup
                     steps or more before the last (2 epochs at least); the last epoch's time and its own
                     data_wait_share, a check that `engine +channels_last +malloc` measures what the engine does
                     (its `1st step` column: the first epoch's time per step)
The engine as configured is `engine +channels_last +malloc` (and `engine.fit (as is)`); the `engine` rows are the
engine before the change. keep_freed_memory() changes glibc's malloc for the rest of the process, so every row that
changes it (`+malloc`, `+malloc env`, `engine.fit`) runs in a child process of its own and this process never calls
it: every in-process row is measured with glibc's defaults (a warning is printed if MALLOC_* variables are set).
FLOPs: forward FLOPs per sample counted with torch.utils.flop_counter.FlopCounterMode; a training step is taken as
3 x forward (the counted forward + backward is printed too). Peak: the best float32 torch.matmul (4096 x 4096)
GFLOP/s at the same thread count, measured in the same run (before and after the rows; the higher is used); also the
best 3x3 convolution (oneDNN, channels_last), for reference: MKL's sgemm may not use AVX-512 on a non-Intel CPU.
Data wait: time spent getting the next batch (next() on batch_stream, torch.from_numpy, layout change) over the whole
step time, as the engine's data_wait_share; `batch_stream alone` is the time it needs to make one batch by itself.
Other processes on the machine disturb the figures: before each row the script waits (up to --quiet-wait s) for an
idle machine, and the `others` column says how many cores other processes used during the row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

SETTINGS = {
    "demo": dict(width=0.25, n_mels=64, frames=128, batch=32),
    "full": dict(width=1.0, n_mels=128, frames=192, batch=64),
}


# ------------------------------------------------------------------------------------------------- data
def make_data(tmp: Path) -> Path:
    """A small dataset with realistic lengths (96 curated clips), or the test suite's tones when the demo one fails."""
    try:
        from pipeline.datasets import demo as demo_data

        return demo_data.build(
            tmp / "demo", preset="default", n_curated=96, n_noisy=8, n_test=8, workers=2, progress=False
        )
    except Exception as e:  # noqa: BLE001
        print(f"pipeline.datasets.demo unavailable ({type(e).__name__}: {e}); using tests/conftest.make_dataset")
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_dataset

        return make_dataset(tmp / "tones", n_curated=96, n_noisy=8, n_test=8)


def config_for(root: Path, tmp: Path, s: dict, extra=()):
    from pipeline.config import load_config

    return load_config(
        ROOT / "configs" / "demo.yaml",
        [
            f"data.root={root}",
            f"features.cache_dir={tmp / 'cache'}",
            "run.progress=false",
            "run.workers=2",
            f"features.n_mels={s['n_mels']}",
            f"model.params={{width: {s['width']}}}",
            f"train.frames={s['frames']}",
            f"train.batch_size={s['batch']}",
            *extra,
        ],
    )


def clipset(cfg):
    from pipeline.cache import FeatureCache, build_cache
    from pipeline.data import load_dataset
    from pipeline.engine import make_clipset

    ds = load_dataset(cfg.data.root)
    build_cache(cfg, ds, log=_quiet_logger())
    return make_clipset(FeatureCache.open(cfg, "curated"), ds.curated, ds.classes), ds.classes


def _quiet_logger():
    import logging

    log = logging.getLogger("fattag-bench")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


# ------------------------------------------------------------------------------- other processes on the machine
HZ = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / HZ  # user nice system (idle iowait) irq softirq steal


def usage() -> tuple[float, float, int]:
    """(user s, sys s, minor page faults) of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def timed_usage(u0, u1, steps: int) -> dict:
    """sys share of the CPU time and minor page faults per step between two usage() readings."""
    user, sys_, flt = (b - a for a, b in zip(u0, u1))
    return {"sys": sys_ / max(user + sys_, 1e-9), "faults": flt / max(steps, 1)}


def own_seconds() -> float:
    import resource

    r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(x.ru_utime + x.ru_stime for x in r)


class Others:
    """Cores used by other processes of the machine between start() and stop()."""

    def start(self):
        self.b, self.o, self.t = busy_seconds(), own_seconds(), time.time()
        return self

    def stop(self) -> float:
        return max(busy_seconds() - self.b - (own_seconds() - self.o), 0.0) / max(time.time() - self.t, 1e-9)


def wait_quiet(max_wait: float, below: float = 0.15) -> float:
    """Wait (up to max_wait s) for a 1-s window in which other processes use less than `below` cores."""
    t_end = time.time() + max_wait
    while True:
        o = Others().start()
        time.sleep(1.0)
        others = o.stop()
        if others < below or time.time() > t_end:
            return others


# ------------------------------------------------------------------------------------------------- peak
def matmul_peak(threads: int, n: int = 4096, seconds: float = 2.0) -> float:
    """Best float32 torch.matmul GFLOP/s at `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.matmul(a, b, out=c)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def conv_peak(threads: int, c: int = 256, hw: int = 48, batch: int = 8, seconds: float = 2.0) -> float:
    """Best GFLOP/s of a float32 3x3 convolution (c -> c channels, hw x hw, channels_last, forward, no grad) at
    `threads` threads: what oneDNN reaches on vgg8-like layers (it uses AVX-512 where MKL's sgemm may not)."""
    torch.set_num_threads(threads)
    x = torch.randn(batch, c, hw, hw).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    best, t_end = 0.0, None
    with torch.no_grad():
        conv(x)
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            conv(x)
            best = max(best, 2 * 9 * c * c * hw * hw * batch / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_sample(model, s: dict) -> tuple[float, float]:
    """(forward, counted forward + backward) FLOPs per sample of the model in training mode."""
    from torch.utils.flop_counter import FlopCounterMode

    b = 4
    x = torch.randn(b, 1, s["n_mels"], s["frames"])
    with FlopCounterMode(display=False) as fc:
        model(x)
    fwd = fc.get_total_flops() / b
    with FlopCounterMode(display=False) as fc:
        out = model(x)
        sum(v.float().sum() for k, v in out.items() if k != "emb").backward()
    model.zero_grad(set_to_none=True)
    return fwd, fc.get_total_flops() / b


# ------------------------------------------------------------------------------------------------- variants
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
IN_CHILD = False  # set in the child processes of run_child; keep_freed_memory() is only ever called there


def run_child(
    root: Path,
    tmp: Path,
    name: str,
    kind: str,
    threads: int,
    steps: int,
    warmup: int,
    channels_last: bool = False,
    malloc: str | None = None,
) -> dict:
    """A row in a fresh process of its own (`python bench/train_step.py --child-row ...`), for what would change
    this process for good. kind "engine": run_engine, with malloc "mallopt" (pipeline.utils.keep_freed_memory()
    called first, as fit does), "env" (the process started with MALLOC_ENV: no mmap for large blocks, no trimming)
    or None; kind "fit": run_fit, pipeline.engine.fit as it is (it calls keep_freed_memory itself)."""
    import json
    import subprocess

    out = tmp / f"child-{name}-{kind}-{threads}-{int(channels_last)}-{malloc}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child-row",
        json.dumps(
            dict(
                root=str(root),
                tmp=str(tmp),
                name=name,
                kind=kind,
                threads=threads,
                steps=steps,
                warmup=warmup,
                channels_last=channels_last,
                malloc=malloc,
                out=str(out),
            )
        ),
    ]
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if malloc == "env":
        env.update(MALLOC_ENV)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return json.loads(out.read_text())


def child_row(spec: str):
    import json

    global IN_CHILD
    IN_CHILD = True
    a = json.loads(spec)
    s = SETTINGS[a["name"]]
    cfg = config_for(Path(a["root"]), Path(a["tmp"]), s)
    clips, classes = clipset(cfg)
    if a["kind"] == "fit":
        r = run_fit(cfg, clips, classes, a["threads"], a["steps"], a["warmup"], Path(a["tmp"]) / f"fit-{a['name']}")
    else:
        if a["malloc"] == "mallopt":
            from pipeline.utils import keep_freed_memory

            if not keep_freed_memory():
                print(
                    "warning: keep_freed_memory() did nothing here (not glibc?): the +malloc row is not one", flush=True
                )
        r = run_engine(cfg, clips, classes, a["threads"], a["steps"], a["warmup"], channels_last=a["channels_last"])
    Path(a["out"]).write_text(json.dumps(r))


def run_plain(n_classes: int, s: dict, threads: int, steps: int, warmup: int, channels_last=False) -> dict:
    from models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("vgg8", n_classes, params={"width": s["width"]})
    model.train()
    x = torch.randn(s["batch"], 1, s["n_mels"], s["frames"])
    y = (torch.rand(s["batch"], model.n_out) < 0.02).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    times, u0 = [], usage()
    for i in range(warmup + steps):
        if i == warmup:
            u0 = usage()
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, heads=["h"])["h"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())
        times.append(time.perf_counter() - t)
    return {
        "step": float(np.median(times[warmup:])) if steps else 0.0,
        "first": times[0],
        "wait": None,
        **timed_usage(u0, usage(), steps),
    }


def run_engine(cfg, clips, classes, threads: int, steps: int, warmup: int, channels_last=False, compile_=False) -> dict:
    """The inner loop of pipeline.engine.fit (supervised mode), step by step, with the data wait timed."""
    from pipeline.augment import build_batch_augment
    from pipeline.engine import batch_stream, build_model, build_optimizer, lr_factor
    from pipeline.losses import build_loss
    from pipeline.modes import TrainContext, create_mode

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    n_classes = len(classes)
    model = build_model(cfg, n_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss),
        build_batch_augment(cfg.augment, n_classes, model.n_out != n_classes),
        n_classes,
        device,
        gen,
    )
    mode = create_mode("supervised", ctx)
    b_lab, _ = mode.batch_sizes()
    total = warmup + steps
    ctx.total_steps = total
    opt = build_optimizer(cfg, mode.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, total, cfg))
    step_fn = torch.compile(mode.step) if compile_ else mode.step
    model.train()
    stream = batch_stream(clips, b_lab, total, cfg.train.frames, np.random.default_rng(0))
    times, waits, sums, u0 = [], [], {}, usage()
    try:
        for s in range(total):
            if s == warmup:
                u0 = usage()
            t = time.perf_counter()
            x, y, rows = next(stream)
            batch = {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "idx": rows}
            if channels_last:
                batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
            waits.append(time.perf_counter() - t)
            loss, logs = step_fn(batch, s / total)
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            mode.after_step()
            for k, v in {"loss": loss.detach(), **logs}.items():  # as fit: summed on the device, no sync
                sums[k] = sums.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
            times.append(time.perf_counter() - t)
        u1 = usage()
        loss = float(sums["loss"]) / total  # fit's per-epoch means: one sync at the end
    finally:
        stream.close()
    return {
        "step": float(np.median(times[warmup:])),
        "first": times[0],
        "loss": loss,
        "wait": float(np.sum(waits[warmup:]) / np.sum(times[warmup:])),
        **timed_usage(u0, u1, steps),
    }


def run_fit(
    cfg, clips, classes, threads: int, steps: int, warmup: int, out: Path, mode="supervised", unlabelled=None
) -> dict:
    """pipeline.engine.fit itself: epochs of `steps` steps, as many as it takes to run `warmup` steps or more
    before the last one (2 at least); the last epoch's figures (and its mean loss). Only in a child process
    (run_child, or bench/gpu_check.py's checks): fit calls keep_freed_memory(), which changes the whole process
    for good. mode / unlabelled: another training mode and its unlabelled ClipSet (bench/gpu_check.py's
    teacher-student row)."""
    assert IN_CHILD, "run_fit would change glibc's malloc settings of this process: run it through run_child"
    from pipeline.config import to_cfg, to_plain
    from pipeline.engine import build_model, fit
    from pipeline.modes import mode_class

    plain = to_plain(cfg)
    epochs = 1 + max(1, -(-warmup // steps))
    plain["train"].update(epochs=epochs, steps_per_epoch=steps, threads=threads, lr_warmup_epochs=1)
    cfg2 = to_cfg(plain)
    torch.manual_seed(0)
    model = build_model(cfg2, len(classes), heads=mode_class(mode).heads)
    out = out / f"threads-{threads}"
    shutil.rmtree(out, ignore_errors=True)
    hist = fit(cfg2, out, model, mode, classes, clips, unlabelled)["history"]
    row = hist.iloc[-1]
    return {
        "step": float(row["seconds"]) / steps,
        "first": float(hist.iloc[0]["seconds"]) / steps,
        "wait": float(row["data_wait_share"]),
        "loss": float(row["loss"]),
        "sys": None,
        "faults": None,
    }


def batch_cost(clips, s: dict, n: int = 20) -> float:
    """Seconds batch_stream needs per batch when nothing else runs (its producer thread is the bottleneck)."""
    from pipeline.engine import batch_stream

    stream = batch_stream(clips, s["batch"], n + 2, s["frames"], np.random.default_rng(1))
    next(stream)
    next(stream)
    t = time.perf_counter()
    for _ in range(n):
        next(stream)
    stream.close()
    return (time.perf_counter() - t) / n


# ------------------------------------------------------------------------------------------------- main
def profile_step(n_classes: int, s: dict, threads: int, batch: int, channels_last: bool, top: int = 8) -> str:
    """torch.profiler table (self CPU time) of one plain training step, after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    from models import create_model

    torch.set_num_threads(threads)
    model = create_model("vgg8", n_classes, params={"width": s["width"]})
    x = torch.randn(batch, 1, s["n_mels"], s["frames"])
    y = (torch.rand(batch, model.n_out) < 0.02).float()
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, heads=["h"])["h"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=34)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per demo-width row (default 8)")
    ap.add_argument("--full-steps", type=int, default=1, help="timed steps per full-width row (default 1)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first, demo width (default 3)")
    ap.add_argument(
        "--full-warmup",
        type=int,
        default=2,
        help="untimed steps first, full width (default 2: with keep_freed_memory the heap still grows "
        "in the second step)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the multi-thread rows")
    ap.add_argument("--no-full", action="store_true", help="skip the full-width rows")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (a cold compile takes ~1 min)")
    ap.add_argument("--compile-full", action="store_true", help="also torch.compile at full width")
    ap.add_argument("--full-threads1", action="store_true", help="also the 1-thread engine rows at full width")
    ap.add_argument(
        "--no-malloc",
        action="store_true",
        help="skip the rows with glibc malloc keeping freed memory (each in its own process); "
        "the engine.fit rows (their own processes too) still run",
    )
    ap.add_argument("--no-fit", action="store_true", help="skip the engine.fit (as is) rows")
    ap.add_argument("--child-row", help=argparse.SUPPRESS)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler tables of one plain step, NCHW and channels_last, per setting",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each row, wait up to this many seconds for other processes to leave the CPUs "
        "idle (default 10; 0: do not wait)",
    )
    a = ap.parse_args(argv)
    if a.child_row:
        return child_row(a.child_row)

    T = a.threads
    t_all = time.time()
    if any(k in os.environ for k in MALLOC_ENV):
        print(
            "warning: "
            + " ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ)
            + " set: the in-process rows are not measured with glibc's defaults",
            flush=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix="fattag-bench-train-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # a cold compile, as on a fresh machine
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    rows, info, profiles = [], {}, []

    def row(name, label, th, fn):
        if a.quiet_wait > 0:
            wait_quiet(a.quiet_wait)
        others = Others().start()
        r = fn(th)
        r.update(setting=name, variant=label, threads=th, batch=SETTINGS[name]["batch"], others=others.stop())
        rows.append(r)
        print(f"  done: {name} {label} threads={th}: {r['step']:.3f} s/step (first {r['first']:.1f} s)", flush=True)

    try:
        t = time.time()
        root = make_data(tmp)
        if a.quiet_wait > 0:
            wait_quiet(a.quiet_wait)
        peaks = {th: matmul_peak(th) for th in sorted({1, T})}
        cpeaks = {th: conv_peak(th) for th in sorted({1, T})}
        print(
            f"data and caches in {time.time() - t:.0f} s; matmul peak "
            + ", ".join(f"{th} thread(s) {p:.0f} GFLOP/s" for th, p in peaks.items()),
            flush=True,
        )
        for name in ["demo"] + ([] if a.no_full else ["full"]):
            s = SETTINGS[name]
            cfg = config_for(root, tmp, s)
            clips, classes = clipset(cfg)
            from pipeline.engine import build_model

            fwd, fwdbwd = flops_per_sample(build_model(cfg, len(classes)), s)
            info[name] = dict(fwd=fwd, fwdbwd=fwdbwd, batch_s=batch_cost(clips, s))
            steps, warm = (a.steps, a.warmup) if name == "demo" else (a.full_steps, a.full_warmup)
            nc = len(classes)
            # in-process rows (glibc's malloc defaults: nothing in this process calls keep_freed_memory)
            variants = [
                ("plain", T, lambda th: run_plain(nc, s, th, steps, warm)),
                ("plain +channels_last", T, lambda th: run_plain(nc, s, th, steps, warm, channels_last=True)),
                ("engine", T, lambda th: run_engine(cfg, clips, classes, th, steps, warm)),
                (
                    "engine +channels_last",
                    T,
                    lambda th: run_engine(cfg, clips, classes, th, steps, warm, channels_last=True),
                ),
            ]
            if (name == "demo" or a.full_threads1) and T != 1:
                variants.append(("engine", 1, lambda th: run_engine(cfg, clips, classes, th, steps, warm)))
                variants.append(
                    (
                        "engine +channels_last",
                        1,
                        lambda th: run_engine(cfg, clips, classes, th, steps, warm, channels_last=True),
                    )
                )
            if (name == "demo" and not a.no_compile) or (name == "full" and a.compile_full):
                variants.append(
                    (
                        "engine +channels_last +compile",
                        T,
                        lambda th: run_engine(cfg, clips, classes, th, steps, warm, channels_last=True, compile_=True),
                    )
                )
            if name == "demo":  # an untimed warm-up of the process (allocator, oneDNN) before the first row
                run_plain(nc, s, T, 0, 3)
            # rows in a fresh process each: keep_freed_memory() (or MALLOC_ENV) there, never in this process
            if not a.no_malloc:
                for cl, malloc in ((False, "mallopt"), (True, "mallopt"), (True, "env")):
                    label = "engine" + " +channels_last" * cl + (" +malloc" if malloc == "mallopt" else " +malloc env")
                    variants.append(
                        (
                            label,
                            T,
                            lambda th, cl=cl, m=malloc: run_child(
                                root, tmp, name, "engine", th, steps, warm, channels_last=cl, malloc=m
                            ),
                        )
                    )
            if not a.no_fit:
                variants.append(
                    ("engine.fit (as is)", T, lambda th: run_child(root, tmp, name, "fit", th, steps, warm))
                )
            for label, th, fn in variants:
                row(name, label, th, fn)
            if a.profile:
                for cl in (False, True):
                    profiles.append(
                        (
                            f"{name}, plain step, {'channels_last' if cl else 'NCHW'}, {T} threads",
                            profile_step(nc, s, T, s["batch"], cl),
                        )
                    )
        if a.quiet_wait > 0:
            wait_quiet(a.quiet_wait)
        peaks = {th: max(p, matmul_peak(th)) for th, p in peaks.items()}
        cpeaks = {th: max(p, conv_peak(th)) for th, p in cpeaks.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(T)

    print("\nTraining step, vgg8 on the CPU (float32)")
    for name in info:
        s, f = SETTINGS[name], info[name]
        print(
            f"  {name}: width {s['width']}, {s['n_mels']} mels x {s['frames']} frames, batch {s['batch']}: "
            f"forward {f['fwd'] / 1e9:.3f} GFLOP/sample, training 3 x forward = {3 * f['fwd'] / 1e9:.3f} "
            f"GFLOP/sample (counted forward + backward {f['fwdbwd'] / 1e9:.3f}); batch_stream alone "
            f"{f['batch_s'] * 1e3:.1f} ms/batch"
        )
    print(
        "  matmul peak (float32 torch.matmul 4096^2): "
        + ", ".join(f"{th} thread(s) {p:.0f} GFLOP/s" for th, p in peaks.items())
    )
    print(
        "  conv peak (float32 3x3 conv 256->256, 48x48, channels_last, oneDNN): "
        + ", ".join(f"{th} thread(s) {p:.0f} GFLOP/s" for th, p in cpeaks.items())
    )
    head = (
        f"{'setting':<8}{'variant':<34}{'thr':>4}{'step s':>9}{'samples/s':>11}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'of conv':>9}{'data wait':>11}{'sys':>6}{'faults':>9}{'1st step s':>12}{'others':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = info[r["setting"]]
        sps = r["batch"] / r["step"]
        gf = sps * 3 * f["fwd"] / 1e9
        wait = "-" if r["wait"] is None else f"{100 * r['wait']:.1f}%"
        sys_ = "-" if r["sys"] is None else f"{100 * r['sys']:.0f}%"
        flt = "-" if r["faults"] is None else f"{r['faults'] / 1e3:.0f}k"
        print(
            f"{r['setting']:<8}{r['variant']:<34}{r['threads']:>4}{r['step']:>9.3f}{sps:>11.1f}{gf:>9.1f}"
            f"{100 * gf / peaks[r['threads']]:>8.0f}%{100 * gf / cpeaks[r['threads']]:>8.0f}%{wait:>11}"
            f"{sys_:>6}{flt:>9}{r['first']:>12.1f}{r['others']:>8.2f}"
        )
    print(
        "step s: median of the timed steps; GFLOP/s: samples/s x 3 x forward FLOPs; of peak: of the matmul peak at "
        "the row's thread count; of conv: of the 3x3 conv peak; sys: kernel share of the CPU time; faults: minor "
        "page faults per step; 1st step: the first (untimed) step, compile included; others: cores used by other "
        "processes of the machine during the row (0 = quiet; above ~0.2 the row is disturbed)"
    )
    for title, table in profiles:
        print(f"\nprofile: {title}\n{table}")
    print("\ntargets: data wait < 5% of step time; full width >= 50% of the matmul peak")
    for name in info:
        eng = [r for r in rows if r["setting"] == name and r["wait"] is not None]
        share = {
            id(r): r["batch"] / r["step"] * 3 * info[name]["fwd"] / 1e9 / peaks[r["threads"]]
            for r in rows
            if r["setting"] == name
        }
        best = max((r for r in rows if r["setting"] == name), key=lambda r: share[id(r)])

        def find(variant):
            return next(
                (r for r in rows if r["setting"] == name and r["variant"] == variant and r["threads"] == T), None
            )

        def fmt(r, base=None):
            if r is None:
                return "(not run)"
            sps = r["batch"] / r["step"]
            return f"{sps:.1f} samples/s, {100 * share[id(r)]:.0f}%" + (
                f", {base['step'] / r['step']:.2f}x" if base is not None else ""
            )

        before, now, fitr = find("engine"), find("engine +channels_last +malloc"), find("engine.fit (as is)")
        print(
            f"  {name}: data wait {max(r['wait'] for r in eng) * 100:.1f}% at most; share of the matmul peak: plain "
            f"{100 * share[id(find('plain'))]:.0f}%, best {100 * share[id(best)]:.0f}% ({best['variant']}, "
            f"{best['threads']} thread(s))"
        )
        print(
            f"    engine before (NCHW, glibc defaults): {fmt(before)}; engine as configured (+channels_last "
            f"+malloc): {fmt(now, before)}; engine.fit (as is): {fmt(fitr, before)}"
        )
    print(f"total {time.time() - t_all:.0f} s; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


if __name__ == "__main__":
    main()
