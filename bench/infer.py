"""Benchmark of inference: throughput of `python -m pipeline.predict_dir` at demo and full width, its feature and
network shares, the effects of channels_last, batch size and malloc settings, the projected time of a FAT2019-sized
test set, and the network's inference FLOP/s against the training step's on the same machine.

    .venv/bin/python bench/infer.py                     # ~6-8 min on 2 cores
    .venv/bin/python bench/infer.py --no-full           # demo width only (~1.5 min)
    .venv/bin/python bench/infer.py --threads 2 --clips 48 --full-rows 128

Data: the demo dataset (pipeline.datasets.demo, preset "default": 44.1 kHz 16-bit wavs; --clips test clips of 0.3-30 s,
median ~4 s), its feature cache (for the normalisation statistics a bundle records) and a bundle of random-weight
vgg8 models (throughput does not depend on the weights) written by pipeline.bundle itself from fold checkpoints
put in runs/<set>/train/. Settings (the widths of bench/train_step.py):
    demo   configs/demo.yaml: vgg8 width 0.25, 64 mels, 128-frame windows, hop 32, 3 models
    full   the reference's inference: vgg8 width 1.0, 128 mels, 192-frame windows, hop 16, 1 model (5 in the
           projection)
Both with TTA (tta_counts 9,5,3,2,2,1,1, windows counted as in the paper) and time reversal: every window pass is two
forward passes (the window and its reversal).
Rows:
    features      pipeline.predict_dir.extract over all the clips with 1 and 2 worker processes: clips/s, x RT
                  (seconds of audio per second; the pool's start is included)
    network       pipeline.predict.predict_with over features in memory, one model, in a fresh process: NCHW or
                  channels_last, batch 32 / 128 / 256, with glibc's malloc defaults or after
                  pipeline.utils.keep_freed_memory() (as predict_dir and fit run). windows/s: window passes per second
                  (TTA passes included, each with its reversed pass); GFLOP/s: windows/s x 2 x forward FLOPs per
                  window (FlopCounterMode); at full width over the first clips that make --full-rows window passes
    train step    bench/train_step.run_plain (channels_last, NAdam, BCE on head h) in the keep_freed_memory process:
                  GFLOP/s = samples/s x 3 x forward FLOPs, same machine, threads and width: the reference of the
                  inference target (>= 80%)
    predict_dir   python -m pipeline.predict_dir on the bundle in a fresh process, end to end (start-up and imports
                  included): clips/s, windows/s of the networks, and the split it prints between log-mels and
                  networks (features / network: shares of the whole run); at full width over the clips of the
                  full-width rows (given as an --audio CSV)
Projection: FAT2019's test set, taken as 3,400 clips whose lengths follow FSDKaggle2019's test set (4,481 clips,
12.9 h: 10.4 s on average; Fonseca et al. 2019): log-normal, median 7.5 s, sigma 0.8, clipped to 0.3-30 s, no
silence trimmed; its window passes counted with pipeline.predict.plan_windows at full-width settings; time = audio /
(the better features x RT, 1 or 2 workers) + 5 x window passes / (the best full-width network windows/s).
Other processes on the machine disturb the figures: each row waits (up to --quiet-wait s) for an idle machine and
the `others` column gives the cores other processes used during it (bench/train_step.Others).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import train_step as ts  # noqa: E402  (Others, wait_quiet, flops_per_sample, run_plain, SETTINGS)

SETTINGS = {"demo": dict(ts.SETTINGS["demo"], hop=32, models=3), "full": dict(ts.SETTINGS["full"], hop=16, models=1)}
FPS = 32000 / 500  # feature frames per second of audio (features.sample_rate / hop_length)
MALLOC = {False: "glibc defaults", True: "keep_freed_memory"}


# ------------------------------------------------------------------------------------------------ set-up
def config(tmp: Path, name: str, root: Path):
    from pipeline.config import load_config

    s = SETTINGS[name]
    return load_config(
        ROOT / "configs" / "demo.yaml",
        [
            f"data.root={root}",
            f"features.cache_dir={tmp / 'cache'}",
            "run.progress=false",
            "run.workers=2",
            f"run.name={name}",
            f"features.n_mels={s['n_mels']}",
            f"model.params={{width: {s['width']}}}",
            f"train.frames={s['frames']}",
            f"infer.hop={s['hop']}",
        ],
    )


def make_bundle(tmp: Path, name: str, root: Path) -> Path:
    """Random-weight fold checkpoints in runs/<name>/train, then pipeline.bundle.main: the bundle folder."""
    from pipeline import bundle
    from pipeline.cache import build_cache
    from pipeline.data import load_dataset
    from pipeline.engine import build_model, save_checkpoint
    from pipeline.utils import mark_done

    cfg = config(tmp, name, root)
    ds = load_dataset(root)
    build_cache(cfg, ds, log=ts._quiet_logger())
    for k in range(SETTINGS[name]["models"]):
        fold = Path("runs") / name / "train" / f"fold_{k}"
        save_checkpoint(fold / "best.pt", build_model(cfg, ds.n_classes, seed=k), cfg, ds.classes)
        mark_done(fold, "bench")
    return bundle.main(cfg)["dir"].resolve()


def rows_of(frames, name: str, settings: dict) -> int:
    """Window passes (TTA included) of clips of these frame counts."""
    from pipeline.predict import plan_windows

    return len(
        plan_windows(
            frames, SETTINGS[name]["frames"], settings["hop"], settings["tta_counts"], settings["tta_count_windows"]
        )[0]
    )


def classes_of(cfg):
    from pipeline.data import read_classes

    return read_classes(cfg.data.root)


# ------------------------------------------------------------------------------------------------ rows
def feature_rows(paths, fnames, bundle_dir: Path, quiet_wait: float) -> list[dict]:
    import soundfile as sf

    from pipeline.predict_dir import extract, load_bundle

    b = load_bundle(bundle_dir)
    audio = sum(sf.info(str(p)).duration for p in paths)
    out = []
    for workers in (1, 2):
        ts.wait_quiet(quiet_wait)
        o = ts.Others().start()
        t = time.perf_counter()
        extract(paths, fnames, b, workers, show=False)
        sec = time.perf_counter() - t
        out.append(
            {
                "row": "features",
                "variant": f"{workers} worker(s), {len(paths)} clips",
                "sec": sec,
                "clips/s": len(paths) / sec,
                "xRT": audio / sec,
                "others": o.stop(),
            }
        )
    return out


def network_rows(spec: dict) -> list[dict]:
    """In a fresh process (run_child): the network rows of spec["variants"] ([channels_last, batch]) and, with
    spec["train"], the training-step row; after keep_freed_memory() when spec["malloc"]."""
    from pipeline.cache import FeatureCache
    from pipeline.engine import build_model
    from pipeline.predict import predict_settings, predict_with
    from pipeline.utils import keep_freed_memory

    torch.set_num_threads(spec["threads"])
    if spec["malloc"]:
        keep_freed_memory()
    name, fnames = spec["name"], spec["fnames"]
    s = SETTINGS[name]
    cfg = config(Path(spec["tmp"]), name, Path(spec["root"]))
    cache = FeatureCache.open(cfg, "test")
    base = predict_settings(cfg)
    n_classes = len(classes_of(cfg))
    fwd = ts.flops_per_sample(build_model(cfg, n_classes), s)[0]
    rows = rows_of(cache.frames[[cache.position(f) for f in fnames]], name, base)
    out = []
    for cl, batch in spec["variants"]:
        torch.manual_seed(0)
        model = build_model(cfg, n_classes).export_inference()
        settings = dict(base, channels_last=cl, batch_size=batch)
        predict_with(model, cache, fnames[:1], n_classes, settings)  # untimed: first-call costs
        ts.wait_quiet(spec["quiet_wait"])
        o = ts.Others().start()
        t = time.perf_counter()
        predict_with(model, cache, fnames, n_classes, settings)
        sec = time.perf_counter() - t
        out.append(
            {
                "row": "network",
                "variant": f"{'channels_last' if cl else 'NCHW'} b{batch}, {MALLOC[spec['malloc']]}",
                "sec": sec,
                "windows": rows,
                "windows/s": rows / sec,
                "GFLOP/s": rows * 2 * fwd / sec / 1e9,
                "fwd": fwd,
                "others": o.stop(),
            }
        )
    if spec["train"]:
        steps, warm = (spec["full_steps"], 1) if name == "full" else (8, 2)
        ts.wait_quiet(spec["quiet_wait"])
        o = ts.Others().start()
        r = ts.run_plain(n_classes, s, spec["threads"], steps, warm, channels_last=True)
        sps = s["batch"] / r["step"]
        out.append(
            {
                "row": "train step",
                "variant": f"channels_last b{s['batch']}, {MALLOC[spec['malloc']]}",
                "sec": r["step"],
                "samples/s": sps,
                "GFLOP/s": sps * 3 * fwd / 1e9,
                "others": o.stop(),
            }
        )
    return out


def run_child(spec: dict) -> list[dict]:
    """network_rows(spec) in a fresh process: keep_freed_memory() changes its process for good."""
    out = Path(spec["tmp"]) / f"child-{spec['name']}-{int(spec['malloc'])}.json"
    subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({**spec, "out": str(out)})],
        check=True,
        env=dict(os.environ, OMP_NUM_THREADS=str(spec["threads"])),
    )
    return json.loads(out.read_text())


def e2e_row(bundle_dir: Path, audio: Path, n_clips: int, rows: int, threads: int, quiet_wait: float, tmp: Path) -> dict:
    """python -m pipeline.predict_dir, from the bundle folder, in a fresh process."""
    ts.wait_quiet(quiet_wait)
    o = ts.Others().start()
    t = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.predict_dir",
            "--bundle",
            ".",
            "--audio",
            str(audio),
            "--out",
            str(tmp / "sub.csv"),
            "--workers",
            "2",
            "--threads",
            str(threads),
            "--quiet",
        ],
        cwd=bundle_dir,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
        capture_output=True,
        text=True,
        check=True,
    )
    sec = time.perf_counter() - t
    m = re.search(r"(\d+) model\(s\).*log-mels ([\d.]+) s, networks ([\d.]+) s", run.stdout)
    models, feat, net = int(m.group(1)), float(m.group(2)), float(m.group(3))
    return {
        "row": "predict_dir",
        "variant": f"{models} model(s), end to end",
        "sec": sec,
        "clips/s": n_clips / sec,
        "windows/s": rows * models / net,
        "feature share": feat / sec,
        "network share": net / sec,
        "others": o.stop(),
    }


def projection(full_net: float, feat_xrt: float, settings: dict, n: int = 3400, folds: int = 5) -> str:
    rng = np.random.default_rng(0)
    secs = np.clip(np.exp(rng.normal(np.log(7.5), 0.8, n)), 0.3, 30.0)
    rows = rows_of((secs * FPS).astype(int) + 1, "full", settings)
    t_feat, t_net = secs.sum() / feat_xrt, folds * rows / full_net
    return (
        f"projection, FAT2019 test set (assumed: {n} clips, {secs.mean():.1f} s mean, {secs.sum() / 3600:.1f} h): "
        f"{rows} window passes per model ({rows / n:.1f} per clip); features {t_feat / 60:.1f} min "
        f"({feat_xrt:.0f} x RT) + {folds} full-width vgg8 models {t_net / 60:.1f} min ({full_net:.2f} windows/s "
        f"each) = {(t_feat + t_net) / 60:.1f} min"
    )


def fmt_row(name: str, r: dict) -> str:
    def f(k, width, spec):
        return format(r[k], f">{width}{spec}") if k in r else format("-", f">{width}")

    return (
        f"{name:<5}{r['row']:<12}{r['variant']:<38}{f('sec', 8, '.2f')}{f('clips/s', 9, '.2f')}"
        f"{f('xRT', 6, '.0f')}{f('windows/s', 11, '.1f')}{f('samples/s', 11, '.1f')}{f('GFLOP/s', 9, '.1f')}"
        f"{f('feature share', 10, '.0%')}{f('network share', 9, '.0%')}{r['others']:>8.2f}"
    )


HEAD = (
    f"{'set':<5}{'row':<12}{'variant':<38}{'sec':>8}{'clips/s':>9}{'x RT':>6}{'windows/s':>11}{'samples/s':>11}"
    f"{'GFLOP/s':>9}{'features':>10}{'network':>9}{'others':>8}"
)


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=32, help="demo test clips (default 32)")
    ap.add_argument("--full-rows", type=int, default=96, help="window passes of the full-width rows (default 96)")
    ap.add_argument("--full-steps", type=int, default=2, help="timed full-width training steps (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--no-full", action="store_true", help="demo width only")
    ap.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for an idle machine per row")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        Path(spec["out"]).write_text(json.dumps(network_rows(spec)))
        return
    from pipeline.cache import FeatureCache
    from pipeline.data import load_dataset
    from pipeline.datasets import demo as demo_data
    from pipeline.predict import predict_settings

    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="fattag-bench-infer-"))
    os.chdir(tmp)  # runs/ and bundles/ of the benchmark live here
    root = demo_data.build(
        tmp / "demo", preset="default", n_curated=8, n_noisy=8, n_test=args.clips, workers=2, progress=False
    )
    fnames = list(load_dataset(root).test["fname"])
    lines, summary, feat_xrt = [], [], None
    print(HEAD + "\n" + "-" * len(HEAD), flush=True)
    for name in ("demo",) + (() if args.no_full else ("full",)):
        bdir = make_bundle(tmp, name, root)
        cfg = config(tmp, name, root)
        settings = predict_settings(cfg)
        cache = FeatureCache.open(cfg, "test")
        frames = cache.frames[[cache.position(f) for f in fnames]]
        use = fnames
        if name == "full":  # the first clips that make --full-rows window passes
            use = fnames[
                : next(
                    (i + 1 for i in range(len(fnames)) if rows_of(frames[: i + 1], name, settings) >= args.full_rows),
                    len(fnames),
                )
            ]
        rows = rows_of(frames[: len(use)], name, settings)
        rs = feature_rows([root / "test" / f for f in fnames], fnames, bdir, args.quiet_wait) if name == "demo" else []
        feat_xrt = feat_xrt or max(r["xRT"] for r in rs)  # the better of 1 and 2 workers
        spec = dict(
            name=name,
            tmp=str(tmp),
            root=str(root),
            fnames=use,
            threads=args.threads,
            quiet_wait=args.quiet_wait,
            full_steps=args.full_steps,
        )
        rs += run_child({**spec, "malloc": False, "variants": [[False, 128], [True, 128]], "train": False})
        rs += run_child(
            {**spec, "malloc": True, "variants": [[False, 128], [True, 32], [True, 128], [True, 256]], "train": True}
        )
        audio = tmp / f"{name}.csv"
        pd.DataFrame({"fname": use, "path": [str(root / "test" / f) for f in use]}).to_csv(audio, index=False)
        rs.append(e2e_row(bdir, audio, len(use), rows, args.threads, args.quiet_wait, tmp))
        for r in rs:
            lines.append(fmt_row(name, r))
            print(lines[-1], flush=True)
        nets = {r["variant"]: r for r in rs if r["row"] == "network"}
        best = max(nets.values(), key=lambda r: r["windows/s"])
        cl, nchw = nets["channels_last b128, keep_freed_memory"], nets["NCHW b128, keep_freed_memory"]
        plain = nets["channels_last b128, glibc defaults"]
        tr = next(r for r in rs if r["row"] == "train step")
        summary.append(
            f"{name}: {len(use)} clips, {rows} window passes per model, forward {best['fwd'] / 1e9:.3f} GFLOP/window; "
            f"inference as configured (channels_last b128, keep_freed_memory) {cl['GFLOP/s']:.1f} GFLOP/s = "
            f"{cl['GFLOP/s'] / tr['GFLOP/s']:.0%} of the training step's {tr['GFLOP/s']:.1f} (target >= 80%), best "
            f"{best['variant']} {best['GFLOP/s'] / tr['GFLOP/s']:.0%}; channels_last "
            f"{cl['windows/s'] / nchw['windows/s']:.2f}x NCHW; keep_freed_memory "
            f"{cl['windows/s'] / plain['windows/s']:.2f}x glibc defaults"
        )
        if name == "full":
            summary.append(projection(best["windows/s"], feat_xrt, settings))
    print("\n" + HEAD + "\n" + "-" * len(HEAD) + "\n" + "\n".join(lines))
    print("\n".join(summary))
    print(f"{args.threads} torch thread(s); {time.time() - t_start:.0f} s in all; data in {tmp}")


if __name__ == "__main__":
    main()
