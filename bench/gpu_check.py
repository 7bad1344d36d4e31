"""`make gpu-check`: one short command, for the first minutes a GPU is at hand, that runs every CUDA path of the
pipeline once and turns docs/benchmarks.md's GPU projections into measurements.

    make gpu-check                                    # = .venv/bin/python bench/gpu_check.py
    .venv/bin/python bench/gpu_check.py [--scale 0.5] [--budget 480] [--work runs/gpu-check] [--json FILE]
                                        [--only NAME,NAME] [--docs]

On a machine without CUDA it exits 2 at once with one line. On one GPU of an H100's class it should take about 8
minutes (an estimate until its first run; --budget, default 480 s: a check not started by then is skipped and
named); --scale 0.5 halves the measurement sizes for a smaller or slower card. Every check runs in a fresh process of
its own (a crash, a hang past its timeout or a CUDA error ends that check alone), its output in
<work>/logs/<check>.log. <work> keeps the data and finished runs, so a rerun (--only) redoes only what is missing;
delete it for a fresh start.

Correctness (the tiny demo set, `python -m pipeline.datasets.demo --preset tiny`, and its 64-mel cache; vgg8 width
0.25, 64-frame crops, 2 folds; warm-up 2 epochs, then teacher-student 30 epochs of 10 steps; CHAIN):
    chain cpu float32      the reference: features, folds, warmup, train (teacher_student), infer + ensemble, score
                           on the CPU in float32; then `make bundle` of it for the predict_dir rows
    chain bf16 / fp16      the same chain on CUDA under train.amp=bf16, and fp16 (its gradient scaler must be active:
                           last.pt's scaler state holds a scale)
    chain bf16 NCHW        train.channels_last=false (the rows above run channels_last, the default)
    chain bf16 compile     train.compile=true (torch.compile of the mode's step; the slowest row: it runs last)
        Each chain passes when it finishes, every loss in its metrics.csv files is finite, its log names the device
        and precision asked for, its submission passes pipeline.score's format check, and its test and out-of-fold
        lwlrap are within TOL["test_lwlrap"] / TOL["oof_lwlrap"] of the CPU chain's.
    ssl mean_teacher, ssl deep_co_training    a few steps of a mode with an EMA teacher and of one with two networks
                           (and adversarial inputs), fold 0 on CUDA in bf16: they finish with finite losses
    predict_dir float32 / bf16    `predict_dir --device cuda` against `--device cpu` on the CPU chain's bundle, with
                           --amp off and the bundle's bf16: the largest difference of a probability within
                           TOL["predict_float32"] / TOL["predict_bf16"]
    torchrun               `python -m pipeline.torchrun --nproc_per_node=N --max-restarts=1 -m pipeline.train` (N = 2
                           with 2 GPUs, else 1; nccl and SyncBatchNorm when N = 2); one rank is killed with -9 once
                           epoch 1's last.pt is written: torchrun restarts the group, which must resume and finish
Measurement (full width, bench/train_step.py's `full` setting: vgg8 width 1.0, 128 mels x 192 frames, batch 64):
    peak                   the card's best torch.matmul TFLOP/s in bf16 and fp16 (8192^2), measured in this run
    train bf16 / fp16      pipeline.engine.fit itself (bench/train_step.run_fit; supervised, channels_last):
                           samples/s, achieved TFLOP/s (3 x the counted forward FLOPs) and its share of the peak of
                           the same precision, the data-wait share of the step (fit's data_wait_share; target < 5%),
                           batch_stream's own time per batch (train_step.batch_cost: where the time goes when the
                           stream cannot keep up), peak GPU memory (torch.cuda.max_memory_allocated)
    train teacher_student  the same in bf16 for the reference's stage 2 (6 curated + 58 noisy clips a step)
    infer                  pipeline.predict.predict_with at the reference's inference (hop 16, TTA, reversal,
                           bf16, channels_last): window passes/s (each pass is 2 forward passes)
    projection             the reference recipe on FSDKaggle2019 (5 folds, 100 warm-up + 300 stage-2 epochs, with
                           validation; and the 5-model test-set inference) from these figures (FSD, projection())
Output: one table on the terminal, <work>/gpu_check.json (or --json) with every figure and verdict; --docs also
writes the table into docs/benchmarks.md's `gpu_check` section with the card's name. Exit status 0 when every check
passed, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEMO = ROOT / "configs" / "demo.yaml"
NO_CUDA = "gpu-check: no CUDA device here (torch.cuda.is_available() is false): run it on a GPU machine"

# Stated tolerances. lwlrap: the CPU and CUDA chains share the seed (weights, folds, epoch orders and crops are
# drawn on the CPU) but not the augmentation draws (the mode's generator lives on the device), so they differ as
# runs with another augmentation stream do. Measured on the CPU (this chain at run.seed 1 with 5 augmentation
# streams: pipeline.distributed.rank_seed offset, which seeds the mode's generator alone): test lwlrap 0.442 0.405
# 0.498 0.462 0.490 (sd 0.038, 30 clips), OOF 0.425 0.430 0.401 0.399 0.392 (sd 0.017); a chain that learns nothing
# scores ~0.2 (the class prior 0.23, random scores 0.17 +- 0.04). Test 0.15 and OOF 0.08 are 2.8 and 3.3 sd of a
# two-run difference (bf16 rounding adds its own), and both well inside the ~0.2 gap to no learning.
# predict_dir: the same bundle and TTA masks (drawn on the CPU); CUDA convolutions run in TF32 by default (10-bit
# mantissa), bf16 autocast keeps 8 bits. data_wait: docs/benchmarks.md's target for the training step.
TOL = {"test_lwlrap": 0.15, "oof_lwlrap": 0.08, "predict_float32": 5e-3, "predict_bf16": 5e-2, "data_wait": 0.05}

# The tiny chain (configs/demo.yaml plus these); run.name, run.device and train.* of each row are added.
CHAIN = [
    "run.progress=false",
    "model.params={width: 0.25}",
    "train.frames=64",
    "train.batch_size=16",
    "teacher_student.n_curated=8",
    "teacher_student.n_noisy=8",
    "train.mode=teacher_student",
    "train.init_from=warmup",
    "folds.n_splits=2",
    "train.epochs=30",
    "train.steps_per_epoch=10",
    "warmup.epochs=2",
    "train.eval_hop=32",
    "infer.hop=32",
]
# --force-device cpu (a wiring check without a GPU): the chain at its cheapest
SMOKE_CHAIN = ["model.params={width: 0.125}", "train.epochs=1", "train.steps_per_epoch=3", "warmup.epochs=1"]
REFERENCE = "chain cpu float32"
PRECISION = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "off": "float32"}

# FSDKaggle2019 under configs/base.yaml (docs/benchmarks.md, "Projection: 8 GPUs"; bench/infer.py's projection)
FSD = {
    "warmup_samples": 100 * 310 * 64,  # 100 epochs of 310 steps of 64 noisy clips
    "stage2_samples": 5 * 300 * 663 * 64,  # 5 folds x 300 epochs x ~663 teacher-student steps of 64 clips
    "warmup_val_windows": 100 * 22_000,  # the whole curated set (~22 k windows at eval_hop 96) after each epoch
    "stage2_val_windows": 5 * 300 * 4_500,  # the held-out fold (~4.5 k windows) after each epoch
    "test_window_passes": 5 * 107_334,  # 5 models, hop 16, TTA, each pass the window and its reversal
}


# ------------------------------------------------------------------------------------------------ sizes and plan
def sizes(scale: float, smoke: bool = False) -> dict:
    """What --scale sets: the measurement's batch (64 at scale 1, a multiple of 8), its timed and untimed steps, the
    matmul size of the peak, inference repeats and batch. The correctness chain is the same at every scale (its
    scores are compared with the CPU's). smoke: the cheapest sizes, at demo width (--force-device cpu)."""
    if not scale > 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    s = 0.05 if smoke else scale
    return {
        "setting": "demo" if smoke else "full",
        "batch": max(8, 8 * round(64 * s / 8)),
        "steps": max(3, round(50 * s)),
        "warm": max(2, round(10 * s)),
        "matmul_n": max(256, 256 * round(8192 * min(s, 1.0) / 256)),
        "infer_repeats": max(1, round(10 * s)),
        "infer_batch": max(16, 16 * round(128 * s / 16)),
    }


def check(name, kind, timeout, **kw) -> dict:
    return {"name": name, "kind": kind, "timeout": timeout, **kw}


def plan(work: Path, device: str, procs: int, sz: dict, smoke: bool = False) -> list[dict]:
    """The checks after `device`, in the order they run: data, measurements (short and bounded), the chains, the
    modes, predict_dir, torchrun, and compile last (the slowest). `needs`: checks that must have run first."""
    root = str(work / "data" / "tiny")
    chain = [*CHAIN, *(SMOKE_CHAIN if smoke else [])]
    common = {"work": str(work), "root": root, "chain": chain}
    measure = {**common, **sz, "needs": ["data"]}
    out = [check("data", "data", 180, **common)]
    out += [check("peak", "peak", 60, device=device, n=sz["matmul_n"], needs=[])]
    for amp, mode in (("bf16", "supervised"), ("fp16", "supervised"), ("bf16", "teacher_student")):
        name = f"train {amp}" if mode == "supervised" else f"train {mode} {amp}"
        out.append(check(name, "train_step", 180, device=device, amp=amp, mode=mode, **measure))
    out.append(check("infer bf16", "infer", 120, device=device, amp="bf16", **measure))
    ref = {**common, "needs": ["data"]}
    out.append(check(REFERENCE, "chain", 300, device="cpu", amp="off", run="gc-cpu", bundle=True, **ref))
    rows = [("chain bf16", "bf16", "gc-bf16", []), ("chain fp16 (scaler)", "fp16", "gc-fp16", [])]
    rows += [("chain bf16 NCHW", "bf16", "gc-nchw", ["train.channels_last=false"])]
    for name, amp, run, extra in rows:
        out.append(check(name, "chain", 200, device=device, amp=amp, run=run, extra=extra, compare=REFERENCE, **ref))
    for mode in ("mean_teacher", "deep_co_training"):
        out.append(check(f"ssl {mode}", "ssl", 150, device=device, amp="bf16", mode=mode, run=f"gc-{mode}", **ref))
    bundle = str(work / "bundles" / "gc-cpu")
    for amp in ("off", "bf16"):
        name = f"predict_dir {'float32' if amp == 'off' else amp}"
        out.append(check(name, "predict_dir", 150, device=device, amp=amp, bundle=bundle, **common, needs=[REFERENCE]))
    out.append(check("torchrun", "torchrun", 300, device=device, procs=procs, run="gc-ddp", **ref))
    if not smoke:  # a cold torch.compile per network: minutes on a CPU, for no more wiring than chain bf16's
        compiled = dict(device=device, amp="bf16", run="gc-compile", extra=["train.compile=true"], compare=REFERENCE)
        out.append(check("chain bf16 compile", "chain", 360, **compiled, **ref))
    return out


# ------------------------------------------------------------------------------------------------ orchestration
def run_checks(checks: list[dict], runner, budget_s: float, clock=time.monotonic, say=print) -> list[dict]:
    """Run each check with runner(spec) -> figures (a dict), in order; a check whose `needs` did not run, or that
    would start after budget_s, is skipped; a runner's exception is the check's error (one line). Each result: name,
    kind, status (ran | error | skipped), why, seconds and the figures. The spec's timeout is cut to what is left of
    the budget (+ 60 s)."""
    t0, status, results = clock(), {}, []
    for spec in checks:
        r = {"name": spec["name"], "kind": spec["kind"], "device": spec.get("device"), "status": "skipped"}
        r.update(why="", seconds=0.0)
        missing = [n for n in spec.get("needs", []) if status.get(n) != "ran"]
        left = budget_s - (clock() - t0)
        if missing:
            r["why"] = f"needs {', '.join(missing)}"
        elif left <= 0:
            r["why"] = f"the time budget ({budget_s:.0f} s) was spent"
        else:
            t = clock()
            try:
                r.update(runner({**spec, "timeout": min(spec["timeout"], left + 60)}))
                r["status"] = "ran"
            except Exception as e:  # noqa: BLE001  (one check's failure is its row, not the end of the run)
                r.update(status="error", why=one_line(e))
            r["seconds"] = clock() - t
        status[spec["name"]] = r["status"]
        results.append(r)
        say(f"  {r['name']}: {r['status']} ({r['seconds']:.0f} s){' ' + r['why'] if r['why'] else ''}")
    return results


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


# ------------------------------------------------------------------------------------------------ verdicts
def judge_chain(r: dict, ref: dict | None) -> list[str]:
    device = device_type(r["device"])
    want = f"{device} {PRECISION[r['amp']] if device == 'cuda' else 'float32'}"
    bad = [] if r["losses_finite"] else ["a loss is not finite"]
    if [d for d in r["devices"] if d != want] or not r["devices"]:
        bad.append(f"ran as {r['devices']}, not {want}")
    if r["amp"] == "fp16" and device == "cuda" and not r.get("scaler_scale"):
        bad.append("fp16 without an active gradient scaler")
    if r.get("compare") and ref is None:
        bad.append(f"no {r['compare']} to compare with (it did not run)")
    elif r.get("compare"):
        for key in ("test_lwlrap", "oof_lwlrap"):
            d = r[key] - ref[key]
            if not abs(d) <= TOL[key]:
                bad.append(f"{key} {r[key]:.3f} is {d:+.3f} from the CPU's {ref[key]:.3f} (tolerance {TOL[key]})")
    return bad


def judge(r: dict, by_name: dict) -> list[str]:
    """What is wrong with a check that ran (empty: it passed)."""
    kind = r["kind"]
    if kind == "chain":
        return judge_chain(r, by_name.get(r.get("compare")) if r.get("compare") else None)
    if kind == "ssl":
        return [] if r["losses_finite"] else ["a loss is not finite"]
    if kind == "predict_dir":
        tol = TOL["predict_float32" if r["amp"] == "off" else "predict_bf16"]
        return [] if r["max_abs_diff"] <= tol else [f"max |p_cuda - p_cpu| {r['max_abs_diff']:.2e} > {tol:.0e}"]
    if kind == "torchrun":
        bad = [] if r["resumed"] else ["did not resume from last.pt after the kill"]
        if r["final_epoch"] != r["epochs"]:
            bad.append(f"ended at epoch {r['final_epoch']} of {r['epochs']}")
        if r["procs"] > 1 and device_type(r["device"]) == "cuda" and not (r["backend"] == "nccl" and r["sync_bn"]):
            bad.append(f"backend {r['backend']}, SyncBatchNorm {r['sync_bn']} (want nccl, SyncBatchNorm)")
        return bad
    if kind == "train_step":
        return [] if math.isfinite(r.get("loss", float("nan"))) else ["the loss is not finite"]
    return []


def evaluate(results: list[dict]) -> list[dict]:
    """Each result with verdict (pass | FAIL | skipped) and problems."""
    by_name = {r["name"]: r for r in results if r["status"] == "ran"}
    out = []
    for r in results:
        if r["status"] == "skipped":
            out.append({**r, "verdict": "skipped", "problems": [r["why"]]})
        elif r["status"] == "error":
            out.append({**r, "verdict": "FAIL", "problems": [r["why"]]})
        else:
            problems = judge(r, by_name)
            out.append({**r, "verdict": "FAIL" if problems else "pass", "problems": problems})
    return out


def device_type(device: str) -> str:
    return device.split(":")[0]


# ------------------------------------------------------------------------------------------------ figures
def measurements(results: list[dict]) -> dict:
    """{check name: its figures} of the measurement rows that ran, with the achieved TFLOP/s' share of the peak of
    the same precision."""
    rows = {r["name"]: r for r in results if r["status"] == "ran"}
    peak = rows.get("peak", {})
    out = {}
    for name, r in rows.items():
        if r["kind"] == "train_step":
            m = {k: r[k] for k in ("amp", "mode", "batch", "samples_per_s", "tflops", "data_wait", "batch_ms")}
            m.update(step_ms=r["step_ms"], peak_mem_gib=r["peak_mem_gib"])
            if r["tflops"] is not None and peak.get(f"{r['amp']}_tflops"):
                m["of_peak"] = r["tflops"] / peak[f"{r['amp']}_tflops"]
            out[name] = m
        elif r["kind"] in ("infer", "peak"):
            out[name] = {k: v for k, v in r.items() if k not in ("name", "kind", "status", "why", "seconds")}
    return out


def projection(m: dict) -> dict | None:
    """Hours of the reference recipe on FSDKaggle2019 on this card (FSD): warm-up and stage 2 at the measured bf16
    samples/s (stage 2 at the teacher-student step's when measured), validation and test inference at the measured
    forward passes/s. None without the bf16 training and inference figures."""
    sup, inf = m.get("train bf16"), m.get("infer bf16")
    if not sup or not inf:
        return None
    ts_row = m.get("train teacher_student bf16") or sup
    fwd = 2 * inf["windows_per_s"]  # a window pass is the window and its reversal
    h = {
        "warmup_h": (FSD["warmup_samples"] / sup["samples_per_s"] + FSD["warmup_val_windows"] / fwd) / 3600,
        "stage2_h": (FSD["stage2_samples"] / ts_row["samples_per_s"] + FSD["stage2_val_windows"] / fwd) / 3600,
        "validation_share": (FSD["warmup_val_windows"] + FSD["stage2_val_windows"]) / fwd / 3600,
        "test_inference_min": FSD["test_window_passes"] / inf["windows_per_s"] / 60,
    }
    h["validation_share"] /= h["warmup_h"] + h["stage2_h"]
    h["total_h"] = h["warmup_h"] + h["stage2_h"] + h["test_inference_min"] / 60
    return h


def figures(r: dict) -> str:
    """The figures column of a result's table row."""
    k = r["kind"]
    if r["status"] != "ran":
        return ""
    if k == "device":
        mem = f", {r['memory_gib']:.1f} GiB" if r.get("memory_gib") else ""
        return f"{r['gpu']}{mem}, {r['count']} GPU(s), torch {r['torch']}, CUDA {r['cuda']}"
    if k == "chain":
        return f"test {r['test_lwlrap']:.3f}, OOF {r['oof_lwlrap']:.3f}; {', '.join(r['devices'])}" + (
            f"; scaler scale {r['scaler_scale']:g}" if r.get("scaler_scale") else ""
        )
    if k == "ssl":
        return f"{r['steps']} steps, last loss {r['loss']:.4f}; {', '.join(r['devices'])}"
    if k == "predict_dir":
        return f"max |diff| {r['max_abs_diff']:.2e}, mean {r['mean_abs_diff']:.2e}; {r['clips']} clips"
    if k == "torchrun":
        return (
            f"{r['procs']} process(es), {r['backend'] or 'no process group'}"
            + (", SyncBatchNorm" if r["sync_bn"] else "")
            + f"; killed at epoch {r['killed_at_epoch']}, resumed, ended at {r['final_epoch']}/{r['epochs']}"
        )
    if k == "peak":
        return f"matmul {r['n']}^2: bf16 {r['bf16_tflops']:.1f}, fp16 {r['fp16_tflops']:.1f} TFLOP/s"
    if k == "train_step":
        tf = f", {r['tflops']:.1f} TFLOP/s" if r["tflops"] is not None else ""
        return (
            f"{r['samples_per_s']:.0f} samples/s{tf}, data wait {100 * r['data_wait']:.1f}%, "
            f"batch_stream {r['batch_ms']:.1f} ms/batch, step {r['step_ms']:.1f} ms, peak {r['peak_mem_gib']:.2f} GiB"
        )
    if k == "infer":
        return f"{r['windows_per_s']:.0f} window passes/s ({r['window_passes']} a round, batch {r['batch']})"
    return ""


def table(results: list[dict]) -> str:
    w = max(len(r["name"]) for r in results) + 2
    lines = [f"{'check':<{w}}{'result':<9}{'s':>6}  figures / problems", "-" * (w + 40)]
    for r in results:
        text = "; ".join(r["problems"]) if r["problems"] else figures(r)
        if r["problems"] and r["status"] == "ran":
            text = figures(r) + " | " + text
        lines.append(f"{r['name']:<{w}}{r['verdict']:<9}{r['seconds']:>6.0f}  {text}")
    return "\n".join(lines)


def summary_lines(m: dict, proj: dict | None) -> list[str]:
    """The measurement's reading: share of the peak, data wait against its target, and the projection."""
    out = []
    for name, r in m.items():
        if "samples_per_s" not in r:
            continue
        share = f", {100 * r['of_peak']:.0f}% of the {r['amp']} matmul peak" if "of_peak" in r else ""
        fed = "fed" if r["data_wait"] < TOL["data_wait"] else "NOT fed"
        out.append(
            f"{name}: {r['samples_per_s']:.0f} samples/s at batch {r['batch']}{share}; data wait "
            f"{100 * r['data_wait']:.1f}% (target < {100 * TOL['data_wait']:.0f}%: {fed}; batch_stream alone "
            f"{r['batch_ms']:.1f} ms a batch against a {r['step_ms']:.1f} ms step)"
        )
    if proj:
        out.append(
            f"projection, reference recipe on FSDKaggle2019 (5 folds, 100 + 300 epochs): warm-up "
            f"{proj['warmup_h']:.2f} h + stage 2 {proj['stage2_h']:.2f} h (validation "
            f"{100 * proj['validation_share']:.0f}% of them) + test inference {proj['test_inference_min']:.1f} min "
            f"= {proj['total_h']:.2f} h on one card"
        )
    return out


def report(info: dict, results: list[dict], args, seconds: float) -> dict:
    m = measurements(results)
    return {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": info,
        "scale": args.scale,
        "sizes": sizes(args.scale, smoke=args.force_device == "cpu"),
        "tolerances": TOL,
        "passed": all(r["verdict"] == "pass" for r in results),
        "seconds": seconds,
        "checks": results,
        "measurements": m,
        "projection": projection(m),
    }


def write_json(path: Path, rep: dict):
    from pipeline.utils import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rep, indent=1, default=str) + "\n")


def docs_body(rep: dict, text: str) -> str:
    d = rep["device"]
    return (
        f"Measured on {rep['when'][:10]} on **{d.get('gpu')}** ({d.get('count')} GPU(s), torch {d.get('torch')}, "
        f"CUDA {d.get('cuda')}) by `make gpu-check` (scale {rep['scale']}, {rep['seconds'] / 60:.1f} min):\n\n"
        f"```\n{text}\n```\n"
    )


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="measurement sizes x this (default 1: an H100)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds; checks not started by then are skipped")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu-check", help="data, runs and logs")
    ap.add_argument("--json", type=Path, default=None, help="the JSON report (default <work>/gpu_check.json)")
    ap.add_argument("--only", default="", help="comma-separated check names to run (with what they need)")
    ap.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md (gpu_check)")
    ap.add_argument("--force-device", choices=["cpu"], default=None, help=argparse.SUPPRESS)  # wiring test only
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not a.scale > 0 or not a.budget > 0:
        ap.error("--scale and --budget must be > 0")
    return a


def select(checks: list[dict], only: str) -> list[dict]:
    """The checks --only names, with the checks they need or compare with (recursively), in plan order."""
    if not only:
        return checks
    by_name = {c["name"]: c for c in checks}
    want, todo = set(), [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in todo if n not in by_name]
    if unknown:
        raise SystemExit(f"gpu-check: --only: no check named {unknown}; the checks: {list(by_name)}")
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo += [*by_name[n].get("needs", []), *([by_name[n]["compare"]] if by_name[n].get("compare") else [])]
    return [c for c in checks if c["name"] in want]


def main(argv=None, runner=None, has_cuda=None) -> int:
    """The command: refuses without CUDA (exit 2), else runs the checks with `runner` (ChildRunner by default;
    tests pass a fake), prints the table, writes the JSON (and --docs). Returns the exit status."""
    a = parse_args(argv)
    if a.child:
        return child(a.child)
    if a.force_device is None:
        if has_cuda is None:
            import torch

            has_cuda = torch.cuda.is_available
        if not has_cuda():
            print(NO_CUDA, file=sys.stderr)
            return 2
    device = a.force_device or "cuda"
    work = a.work.resolve()
    runner = runner or ChildRunner(work, env_device=a.force_device)
    t0 = time.monotonic()
    print(f"gpu-check: {device}, scale {a.scale}, budget {a.budget:.0f} s, work {work}", flush=True)
    first = run_checks([check("device", "device", 60, device=device)], runner, a.budget)
    info = {k: v for k, v in first[0].items() if k not in ("name", "kind", "status", "why", "seconds")}
    procs = 2 if info.get("count", 0) >= 2 else 1
    checks = select(plan(work, device, procs, sizes(a.scale, smoke=a.force_device == "cpu"), a.force_device), a.only)
    results = evaluate(first + run_checks(checks, runner, a.budget - (time.monotonic() - t0)))
    rep = report(info, results, a, time.monotonic() - t0)
    text = "\n".join([table(results), *summary_lines(rep["measurements"], rep["projection"])])
    print("\n" + text)
    path = a.json or work / "gpu_check.json"
    write_json(path, rep)
    if a.docs:
        from common import BENCHMARKS, write_section

        write_section("gpu_check", docs_body(rep, text), path=BENCHMARKS)
    print(f"wrote {path}; {'every check passed' if rep['passed'] else 'NOT every check passed'}")
    return 0 if rep["passed"] else 1


# ------------------------------------------------------------------------------------------------ the real runner
class ChildRunner:
    """Runs a check in a fresh process (`python bench/gpu_check.py --child SPEC.json`) in its own process group,
    in <work>: its output goes to <work>/logs/<check>.log, its figures come back as JSON. A non-zero exit is an
    error naming the log's last line; past the spec's timeout the whole group is killed."""

    def __init__(self, work: Path, env_device: str | None = None):
        self.work, self.logs = work, work / "logs"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
        if env_device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def __call__(self, spec: dict) -> dict:
        self.logs.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", spec["name"].lower()).strip("-")
        spec_path, out, log = (self.logs / f"{slug}{s}" for s in (".spec.json", ".json", ".log"))
        out.unlink(missing_ok=True)
        spec_path.write_text(json.dumps({**spec, "out": str(out)}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, cwd=self.work, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=spec["timeout"])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TimeoutError(f"past its {spec['timeout']:.0f} s (log: {log})") from None
        if rc != 0 or not out.exists():
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
            raise RuntimeError(f"exit {rc}: {tail[0]} (log: {log})")
        return json.loads(out.read_text())


def child(spec_path: str) -> int:
    """A check's own process: gpu_runs.KINDS[spec kind](spec) -> figures, written to spec["out"]."""
    from gpu_runs import KINDS

    spec = json.loads(Path(spec_path).read_text())
    try:
        figs = KINDS[spec["kind"]](spec)
    except BaseException:
        traceback.print_exc()
        raise
    Path(spec["out"]).write_text(json.dumps(figs, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
