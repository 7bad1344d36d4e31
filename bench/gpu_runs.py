"""The checks of bench/gpu_check.py as they run on the device, each in a process of its own (`gpu_check.py --child
SPEC`), with the stages' own main(cfg) functions: the tiny chain, two semi-supervised modes, predict_dir on both
devices, torchrun with a killed rank, and the full-width measurements (bench/train_step.py's fit timing, FLOP count
and batch_stream cost). KINDS maps a check's kind to its function: spec (a dict, gpu_check.plan) -> figures (a dict).
Stages write runs/, submissions/ and bundles/ under the working directory: the check's <work>."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEMO = ROOT / "configs" / "demo.yaml"
DDP_EPOCHS, DDP_STEPS = 3, 30  # the torchrun run: long enough epochs to stop its ranks within epoch 2


def workers() -> int:
    return min(8, os.cpu_count() or 1)


def chain_overrides(spec: dict, *extra) -> list[str]:
    """The tiny chain's overrides of configs/demo.yaml for a check: data, cache, the chain (gpu_check.CHAIN), the
    check's run name, device, precision and extra keys. A CPU run takes min(8, cores) threads (or OMP_NUM_THREADS)."""
    ov = [f"data.root={spec['root']}", f"features.cache_dir={Path(spec['work']) / 'cache'}", f"run.workers={workers()}"]
    ov += list(spec["chain"])
    if "run" in spec:
        ov.append(f"run.name={spec['run']}")
    if "device" in spec:
        ov.append(f"run.device={spec['device']}")
        if spec["device"] == "cpu":
            ov.append(f"train.threads={int(os.environ.get('OMP_NUM_THREADS') or workers())}")
    if spec.get("amp", "off") != "off":
        ov.append(f"train.amp={spec['amp']}")
    return [*ov, *spec.get("extra", []), *extra]


def chain_cfg(spec: dict, stage: str | None, *extra):
    from pipeline.config import load_config

    return load_config(DEMO, chain_overrides(spec, *extra), stage=stage)


# ------------------------------------------------------------------------------------------------ correctness
def run_device(spec: dict) -> dict:
    import torch

    base = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if spec["device"] == "cpu":
        return {**base, "gpu": f"none (CPU {platform.machine()})", "count": 0}
    p = torch.cuda.get_device_properties(0)
    return {
        **base,
        "gpu": p.name,
        "count": torch.cuda.device_count(),
        "memory_gib": p.total_memory / 2**30,
        "capability": f"{p.major}.{p.minor}",
        "bf16": torch.cuda.is_bf16_supported(),
    }


def run_data(spec: dict) -> dict:
    """The tiny demo set (pipeline.datasets.demo, preset tiny) and the chain's feature cache."""
    from pipeline import features
    from pipeline.datasets import demo

    root = demo.build(Path(spec["root"]), preset="tiny", workers=workers(), progress=False)
    features.main(chain_cfg(spec, "features"))
    return {
        "root": str(root),
        "clips": {s: len(list((Path(root) / s).glob("*.wav"))) for s in ("train_curated", "test")},
    }


def run_figures(run: Path) -> dict:
    """What a run's files say: every loss of every metrics.csv finite, the devices and precisions its logs name
    ('cuda torch.bfloat16'), the last loss of fold 0, and the gradient scaler's scale in fold 0's last.pt (None
    when the scaler was off)."""
    from pipeline.engine import load_checkpoint

    tables = [pd.read_csv(m) for m in sorted(run.rglob("metrics.csv"))]
    losses = [t[[c for c in t.columns if c.startswith("loss")]].to_numpy(float) for t in tables]
    devices = set()
    for log in run.rglob("log.txt"):
        devices |= {f"{d.split(':')[0]} {p}" for d, p in re.findall(r"device (\S+), precision (\S+) ", log.read_text())}
    last = sorted(run.glob("train/fold_*/last.pt"))
    scaler = (load_checkpoint(last[0]).get("scaler") or {}) if last else {}
    fold0 = run / "train" / "fold_0" / "metrics.csv"
    return {
        "losses_finite": bool(losses) and all(np.isfinite(x).all() and x.size for x in losses),
        "devices": sorted(devices),
        "scaler_scale": float(scaler["scale"]) if scaler.get("scale") is not None else None,
        "loss": float(pd.read_csv(fold0)["loss"].iloc[-1]) if fold0.exists() else float("nan"),
    }


def run_chain(spec: dict) -> dict:
    """features, folds, warmup, train, infer (+ ensemble), score on the check's device and precision; with
    spec["bundle"], also `make bundle` of the run."""
    from pipeline import bundle, features, folds, infer, train, warmup
    from pipeline.score import score_files

    def cfg(stage):
        return chain_cfg(spec, stage)

    features.main(cfg("features"))  # the cache the data check built: a no-op
    folds.main(cfg("folds"))
    warmup.main(cfg("warmup"))
    train.main(cfg("train"))
    out = infer.main(cfg("infer"))
    root = Path(spec["root"])
    scored = score_files(out["submission"], root / "test_labels.csv", root / "sample_submission.csv")
    figs = {"amp": spec["amp"], "compare": spec.get("compare"), "test_lwlrap": float(scored["lwlrap"])}
    figs.update(oof_lwlrap=float(out["oof_lwlrap"]), **run_figures(Path("runs") / spec["run"]))
    if spec.get("bundle"):
        figs["bundle"] = str(Path(bundle.main(cfg("bundle"))["dir"]).resolve())
    return figs


def run_ssl(spec: dict) -> dict:
    """A few steps of a semi-supervised mode on fold 0 from scratch (the folds stage first)."""
    from pipeline import folds, train

    ov = [f"train.mode={spec['mode']}", "train.init_from=null", "train.folds=[0]", "train.epochs=2"]
    ov.append("train.steps_per_epoch=5")
    folds.main(chain_cfg(spec, "folds", *ov))
    train.main(chain_cfg(spec, "train", *ov))
    return {"amp": spec["amp"], "mode": spec["mode"], "steps": 10, **run_figures(Path("runs") / spec["run"])}


def run_predict_dir(spec: dict) -> dict:
    """python -m pipeline.predict_dir on the bundle with --device cpu, then the check's device, same --amp."""
    from pipeline import predict_dir

    root = Path(spec["root"])
    args = ["--bundle", spec["bundle"], "--audio", str(root / "test"), "--quiet", "--amp", spec["amp"]]
    args += ["--sample-submission", str(root / "sample_submission.csv"), "--workers", str(workers())]
    subs, secs = {}, {}
    for dev in ("cpu", spec["device"]):
        t = time.perf_counter()
        subs[dev] = predict_dir.main([*args, "--device", dev, "--out", f"predict_dir-{spec['amp']}-{dev}.csv"])
        secs[dev] = time.perf_counter() - t
    a, b = (subs[d].set_index("fname").sort_index() for d in ("cpu", spec["device"]))
    diff = np.abs(a.to_numpy(float) - b.loc[a.index, a.columns].to_numpy(float))
    return {
        "amp": spec["amp"],
        "clips": len(a),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cpu_s": secs["cpu"],
        "device_s": secs[spec["device"]],
    }


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid (from /proc): torchrun's ranks."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def kill_a_rank(agent: subprocess.Popen, last: Path, limit: float) -> int:
    """Once the run's last.pt exists: stop every rank (SIGSTOP), read last.pt's epoch, kill the first rank started
    with -9 and let the others go on (SIGCONT). Returns that epoch."""
    from pipeline.engine import load_checkpoint

    deadline = time.time() + limit
    while not last.exists():
        if agent.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"no {last} to kill a rank after (torchrun exit {agent.poll()})")
        time.sleep(0.005)
    ranks = children(agent.pid)
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    epoch = int(load_checkpoint(last)["epoch"])
    os.kill(ranks[0], signal.SIGKILL)
    for pid in ranks[1:]:
        os.kill(pid, signal.SIGCONT)
    return epoch


def run_torchrun(spec: dict) -> dict:
    """`python -m pipeline.torchrun --nproc_per_node=N --max-restarts=1 -m pipeline.train` (supervised, fold 0,
    DDP_EPOCHS epochs, from scratch), one rank killed with -9 once last.pt is written; torchrun restarts the
    group, which must resume from last.pt and finish."""
    from pipeline.engine import load_checkpoint

    run = Path("runs") / spec["run"]
    shutil.rmtree(run, ignore_errors=True)  # a fresh run every time: the kill needs epochs still to train
    ov = ["train.mode=supervised", "train.init_from=null", "train.folds=[0]", f"train.epochs={DDP_EPOCHS}"]
    ov = chain_overrides(spec, *ov, f"train.steps_per_epoch={DDP_STEPS}")
    cmd = [sys.executable, "-m", "pipeline.torchrun", "--standalone", f"--nproc_per_node={spec['procs']}"]
    cmd += ["--max-restarts=1", "--monitor-interval=0.1", "-m", "pipeline.train", "--config", str(DEMO), *ov]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(cmd, env=env)
    try:
        killed = kill_a_rank(agent, run / "train" / "fold_0" / "last.pt", spec["timeout"] / 2)
        rc = agent.wait(timeout=spec["timeout"] / 2)
    finally:
        if agent.poll() is None:
            agent.kill()
    if rc != 0:
        raise RuntimeError(f"torchrun exited {rc} after rank 0 was killed at epoch {killed}")
    log = (run / "train" / "log.txt").read_text()
    group = re.search(r"data-parallel: (\d+) processes \((\w+)\)", log)
    return {
        "procs": spec["procs"],
        "epochs": DDP_EPOCHS,
        "killed_at_epoch": killed,
        "resumed": f"from epoch {killed}/{DDP_EPOCHS}" in log,
        "final_epoch": int(load_checkpoint(run / "train" / "fold_0" / "last.pt")["epoch"]),
        "backend": group.group(2) if group else None,
        "sync_bn": "synchronised (SyncBatchNorm)" in log,
        **{k: v for k, v in run_figures(run).items() if k in ("losses_finite", "devices")},
    }


# ------------------------------------------------------------------------------------------------ measurement
def sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, dtype, n: int, seconds: float = 1.5, reps: int = 10) -> float:
    """Best TFLOP/s of torch.matmul of two n x n matrices of dtype on device, `reps` products per timing."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    torch.matmul(a, b, out=c)
    sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
    return best


def measure_peak(spec: dict) -> dict:
    import torch

    reps = 10 if spec["device"] != "cpu" else 1
    return {
        "n": spec["n"],
        "bf16_tflops": matmul_tflops(spec["device"], torch.bfloat16, spec["n"], reps=reps),
        "fp16_tflops": matmul_tflops(spec["device"], torch.float16, spec["n"], reps=reps),
    }


def measure_config(spec: dict, *extra):
    """bench/train_step.py's config of the check's setting (full: width 1, 128 mels, 192 frames) at its batch, on
    the check's device and precision, with its 128-mel cache under <work>/measure; returns (cfg, setting)."""
    import train_step as ts

    s = dict(ts.SETTINGS[spec["setting"]], batch=spec["batch"])
    extra = [f"run.device={spec['device']}", f"train.amp={spec['amp']}", *extra]
    return ts.config_for(Path(spec["root"]), Path(spec["work"]) / "measure", s, extra), s


def measure_train(spec: dict) -> dict:
    """pipeline.engine.fit through bench/train_step.run_fit: samples/s, TFLOP/s (supervised: 3 x the counted
    forward FLOPs), data-wait share, batch_stream's own cost per batch, peak GPU memory."""
    import torch
    import train_step as ts

    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset
    from pipeline.engine import build_model, make_clipset

    ts.IN_CHILD = True  # this check's process is its own: fit's keep_freed_memory() changes nothing else
    b, mode = spec["batch"], spec["mode"]
    n_cur = max(1, round(6 * b / 64))  # the reference's 6 curated + 58 noisy clips a step, at this batch
    cfg, s = measure_config(spec, f"teacher_student.n_curated={n_cur}", f"teacher_student.n_noisy={b - n_cur}")
    clips, classes = ts.clipset(cfg)
    unlabelled = None
    if mode != "supervised":
        ds = load_dataset(cfg.data.root, check_audio=False)
        unlabelled = make_clipset(FeatureCache.open(cfg, "noisy"), ds.noisy, classes)
    fwd = ts.flops_per_sample(build_model(cfg, len(classes)), s)[0] if mode == "supervised" else None
    batch_s = ts.batch_cost(clips, s)
    cuda = torch.device(spec["device"]).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = Path(spec["work"]) / "measure" / f"fit-{mode}-{spec['amp']}"
    r = ts.run_fit(cfg, clips, classes, 0, spec["steps"], spec["warm"], out, mode=mode, unlabelled=unlabelled)
    sps = b / r["step"]
    return {
        "amp": spec["amp"],
        "mode": mode,
        "batch": b,
        "samples_per_s": sps,
        "tflops": sps * 3 * fwd / 1e12 if fwd else None,
        "data_wait": r["wait"],
        "batch_ms": 1e3 * batch_s,
        "step_ms": 1e3 * r["step"],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "loss": r["loss"],
    }


def measure_infer(spec: dict) -> dict:
    """pipeline.predict.predict_with over the test clips at the reference's inference (full: hop 16), TTA and
    reversal, the check's precision, channels_last: window passes/s over spec["infer_repeats"] rounds after one
    untimed round."""
    import torch
    import train_step as ts

    from pipeline.cache import FeatureCache
    from pipeline.engine import build_model
    from pipeline.predict import plan_windows, predict_settings, predict_with

    hop = 16 if spec["setting"] == "full" else 32
    cfg, _ = measure_config(spec, f"infer.hop={hop}", f"infer.batch_size={spec['infer_batch']}")
    _, classes = ts.clipset(cfg)
    cache = FeatureCache.open(cfg, "test")
    st = predict_settings(cfg)
    model = build_model(cfg, len(classes), seed=0).export_inference().to(spec["device"])
    frames = cache.frames[[cache.position(f) for f in cache.fnames]]
    tta = list(st["tta_counts"]) if st["tta"] else None
    passes = len(plan_windows(frames, st["frames"], st["hop"], tta, st["tta_count_windows"])[0])
    with torch.no_grad():
        predict_with(model, cache, cache.fnames, len(classes), st, spec["device"])  # cuDNN's choices, first calls
        t = time.perf_counter()
        for _ in range(spec["infer_repeats"]):
            predict_with(model, cache, cache.fnames, len(classes), st, spec["device"])
        sec = time.perf_counter() - t
    return {
        "amp": spec["amp"],
        "batch": st["batch_size"],
        "hop": st["hop"],
        "window_passes": passes,
        "windows_per_s": passes * spec["infer_repeats"] / sec,
    }


KINDS = {
    "device": run_device,
    "data": run_data,
    "chain": run_chain,
    "ssl": run_ssl,
    "predict_dir": run_predict_dir,
    "torchrun": run_torchrun,
    "peak": measure_peak,
    "train_step": measure_train,
    "infer": measure_infer,
}
