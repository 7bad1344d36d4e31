"""Benchmark of the feature stage: fattag's log-mel cache (pipeline.cache.extract_split) against a plain
single-process librosa loop over the same files, with throughput and the peak memory of the whole process tree.

    .venv/bin/python bench/features.py                          # default: N = 160 and 4N = 640 clips, ~2-3 min
    .venv/bin/python bench/features.py --clips 60 --scale 2     # quicker
    .venv/bin/python bench/features.py --data data/demo         # wavs of an existing dataset instead of a new one

The audio is the demo dataset (pipeline.datasets.demo, preset "default": 44.1 kHz 16-bit mono, curated clips of
0.3-30 s with a median of ~4 s, noisy clips of mostly 15 s), built once into a temporary folder with scale x N clips
(40% curated, 40% noisy, 20% test); when pipeline.datasets.demo is missing or fails, tones-and-noise wavs with the same
length distribution are written instead. The N-clip set is a random subset of the scale x N one that also holds its
longest clip (the per-clip work arrays grow with the longest clip; the comparison is about the number of clips).
Every file is read once before the runs, so all of them read from the page cache.

Each measured configuration runs in a fresh Python process (so imports, caches and worker pools start cold, and
peak memory is its own):
    librosa   per file: librosa.load(sr=32000) (soxr_hq), effects.trim(top_db=55), feature.melspectrogram
              (n_fft=1024, hop=500, 128 mels), power_to_db. One warm-up file first, not timed (numba compiles).
    fattag    extract_split(...) with run.workers = 1 or 2, writing the float16 cache into a temporary folder.
              Warm-up first, not timed: a 1-clip extract_split (imports, the mel filterbank). Each timed call
              includes everything else (with 2 workers: starting the pool of worker processes).
Columns:
    start     seconds of the untimed warm-up
    1st       seconds of the first timed pass (a process that has not yet worked at full size is slower: its
              allocator and caches warm up)
    wall      seconds of the fastest of --repeat timed passes (the steady state, and the least disturbed by other
              processes); clips/s, x RT (seconds of audio per second) and vs librosa (x RT over the librosa loop's
              x RT at N) derive from it
    CPU       user + sys seconds of the process and its workers during that pass
    tree PSS / RSS   peak over the whole run of the summed proportional / resident set sizes of the process and all
              its descendants, polled every 20 ms from /proc (PSS counts pages that forked workers share once, RSS
              counts them in each process)
    maxrss    getrusage peaks (exact): the main process, and the largest single worker
    others    cores used by other processes of the machine meanwhile
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SR = 32000
PARAMS = {
    "sample_rate": SR,
    "n_fft": 1024,
    "hop_length": 500,
    "n_mels": 128,
    "fmin": 0.0,
    "fmax": None,
    "trim_db": 55.0,
    "log_floor": 1e-10,
}
SPLIT_DIRS = ("train_curated", "train_noisy", "test")


# ------------------------------------------------------------------------------------------------ the audio
def write_fallback(out: Path, n: int, seed: int = 0) -> Path:
    """n 44.1 kHz PCM_16 wavs: tones, chirps, clicks and noise; log-normal lengths (median 4 s) in [0.3, 30] s."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr = 44100
    d = out / "train_curated"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        secs = float(np.clip(np.exp(rng.normal(np.log(4.0), 0.8)), 0.3, 30.0))
        t = np.arange(int(secs * sr)) / sr
        y = 0.003 * rng.standard_normal(len(t))
        for _ in range(rng.integers(1, 4)):
            f0, f1 = rng.uniform(80, 4000, 2)
            env = np.clip(np.sin(np.pi * t / secs * rng.integers(1, 6)), 0, None) ** 2
            y += rng.uniform(0.05, 0.3) * env * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * secs)) * t)
        clicks = rng.random(len(t)) < 2e-4
        y[clicks] += rng.uniform(-0.5, 0.5, clicks.sum())
        lead = np.zeros(int(rng.uniform(0, 0.5) * sr))  # leading silence for the trim
        sf.write(d / f"{i:08x}.wav", np.clip(np.concatenate([lead, y]), -1, 1).astype(np.float32), sr, subtype="PCM_16")
    return out


def make_audio(folder: Path, n: int) -> tuple[Path, str]:
    try:
        from pipeline.datasets import demo as demo_data

        sizes = dict(n_curated=round(0.4 * n), n_noisy=round(0.4 * n))
        sizes["n_test"] = n - sizes["n_curated"] - sizes["n_noisy"]
        return demo_data.build(
            folder / "demo", preset="default", workers=2, progress=False, **sizes
        ), "pipeline.datasets.demo (preset default)"
    except Exception as e:  # noqa: BLE001  (missing or broken generator: fall back to synthetic wavs)
        print(f"pipeline.datasets.demo unavailable ({type(e).__name__}: {e}); writing synthetic wavs", flush=True)
        return write_fallback(folder / "synthetic", n), "synthetic tones and noise"


def list_wavs(root: Path) -> list[Path]:
    dirs = [root / d for d in SPLIT_DIRS if (root / d).is_dir()]
    files = sorted(p for d in dirs for p in d.glob("*.wav")) if dirs else sorted(root.rglob("*.wav"))
    if not files:
        raise SystemExit(f"{root}: no wav files")
    return files


def durations(files) -> np.ndarray:
    import soundfile as sf

    return np.array([sf.info(str(f)).duration for f in files])


# ------------------------------------------------------------------------------- other processes on the machine
HZ = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / HZ  # user nice system (idle iowait) irq softirq steal


def wait_quiet(max_wait: float, below: float = 0.15) -> float:
    """Wait (up to max_wait s) for a 1-s window in which other processes use less than `below` cores; returns the
    cores they used in the last window."""
    import resource

    t_end = time.time() + max_wait
    while True:
        b0, s0 = busy_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        s1 = resource.getrusage(resource.RUSAGE_SELF)
        others = busy_seconds() - b0 - (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime)
        if others < below or time.time() > t_end:
            return max(others, 0.0)


# ------------------------------------------------------------------------------------- memory of a process tree
def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from the parent pids in /proc/*/stat."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            vals = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("Rss:", "Pss:"))}
        return vals.get("Rss", 0), vals.get("Pss", 0)
    except (OSError, ValueError):
        return 0, 0


class TreeMemory(threading.Thread):
    """Polls the summed RSS and PSS of a process tree; .peak_rss / .peak_pss in bytes."""

    def __init__(self, pid: int, every: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_rss, self.peak_pss, self.max_procs = pid, every, 0, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            pids = _tree(self.pid)
            rss, pss = map(sum, zip(*(_rss_pss_kb(p) for p in pids)))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss * 1024), max(self.peak_pss, pss * 1024)
            self.max_procs = max(self.max_procs, len(pids))
            self.done.wait(self.every)


# --------------------------------------------------------------------------------- measured configurations
def child(kind: str, files: list[str], workers: int, repeat: int) -> dict:
    """Runs in a fresh process: warm up, then time `repeat` passes over `files`. Returns the figures as a dict:
    wall / cpu of the fastest pass, first = wall of the first pass."""
    import resource

    def cpu():
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="fattag-bench-feat-"))
    try:
        if kind == "librosa":
            import librosa

            def one(path):
                y, _ = librosa.load(path, sr=SR)
                y, _ = librosa.effects.trim(y, top_db=55)
                s = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=500, n_mels=128)
                return librosa.power_to_db(s)

            def warm():
                one(files[0])

            def run():
                for path in files:
                    one(path)
        else:
            from pipeline import cache as features

            def warm():
                features.extract_split(files[:1], ["warm.wav"], tmp, "warm", PARAMS, 1, show=False)

            def run():
                features.extract_split(files, [Path(f).name for f in files], tmp, "bench", PARAMS, workers, show=False)

        t = time.perf_counter()
        warm()
        out["start"] = time.perf_counter() - t
        passes = []
        for _ in range(repeat):
            c, t = cpu(), time.perf_counter()
            run()
            passes.append((time.perf_counter() - t, cpu() - c))
        out["wall"], out["cpu"] = min(passes)
        out["first"] = passes[0][0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["maxrss_child"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return out


def run_child(kind: str, files: list[Path], workers: int, repeat: int, tmp: Path, poll: bool) -> dict:
    """Run one configuration in a fresh process; with `poll`, poll its process tree's memory meanwhile."""
    import resource

    lst = tmp / f"files-{kind}-{workers}-{len(files)}.json"
    lst.write_text(json.dumps([str(f) for f in files]))
    res = tmp / f"result-{kind}-{workers}-{len(files)}.json"
    r0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    b0, t0 = busy_seconds(), time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--files",
            str(lst),
            "--workers",
            str(workers),
            "--repeat",
            str(repeat),
            "--result",
            str(res),
        ],
        cwd=ROOT,
    )
    mon = TreeMemory(proc.pid)
    if poll:
        mon.start()
    rc = proc.wait()
    if poll:
        mon.done.set()
        mon.join()
    r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    ours = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1))
    others = max(busy_seconds() - b0 - ours, 0.0) / (time.time() - t0)
    if rc != 0:
        raise SystemExit(f"measured run {kind} workers={workers} failed with exit status {rc}")
    out = json.loads(res.read_text())
    out.update(tree_rss=mon.peak_rss, tree_pss=mon.peak_pss, procs=mon.max_procs, others=others)
    return out


def measure(kind: str, files: list[Path], workers: int, repeat: int, tmp: Path) -> dict:
    """Timing run (`repeat` passes, nothing polling: reading /proc/<pid>/smaps_rollup walks the process's page
    tables under its mmap lock and would slow it down), then a 1-pass memory run polled every 20 ms."""
    out = run_child(kind, files, workers, repeat, tmp, poll=False)
    mem = run_child(kind, files, workers, 1, tmp, poll=True)
    out.update(
        tree_rss=mem["tree_rss"],
        tree_pss=mem["tree_pss"],
        procs=mem["procs"],
        maxrss_self=max(out["maxrss_self"], mem["maxrss_self"]),
        maxrss_child=max(out["maxrss_child"], mem["maxrss_child"]),
    )
    return out


# ------------------------------------------------------------------------------------------------- report
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=160, help="N: clips of the small set (default 160)")
    ap.add_argument("--scale", type=int, default=4, help="the large set has scale x N clips (default 4)")
    ap.add_argument("--workers", default="1,2", help="worker counts of fattag runs (default 1,2)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed passes per configuration; the fastest is shown (default 3)"
    )
    ap.add_argument("--data", type=Path, help="use the wavs of this folder (FSDKaggle2019 layout or any tree)")
    ap.add_argument("--keep", type=Path, help="build the audio here and keep it (default: a temporary folder)")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each configuration, wait up to this many seconds for other processes to leave "
        "the CPUs idle (default 10; 0: do not wait)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        Path(a.result).write_text(
            json.dumps(child(a.child, json.loads(Path(a.files).read_text()), int(a.workers), a.repeat))
        )
        return

    worker_counts = [int(w) for w in a.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fattag-bench-"))
    t_all = time.time()
    try:
        n_big = a.clips * a.scale
        if a.data:
            root, source = a.data, f"{a.data}"
        else:
            where = a.keep or tmp
            t = time.time()
            root, source = make_audio(where, n_big)
            print(f"audio: {source}, {n_big} clips built in {time.time() - t:.0f} s into {root}", flush=True)
        files = list_wavs(root)
        order = np.random.default_rng(0).permutation(len(files))
        big = [files[i] for i in order[:n_big]]
        d_big = durations(big)
        longest = int(np.argmax(d_big))  # moved into the N set too: memory grows with the longest
        big.insert(0, big.pop(longest))  # clip (work arrays), and we compare clip counts here
        d_big = durations(big)
        small = big[: a.clips]
        d_small = d_big[: a.clips]
        dur_small, dur_big = d_small.sum(), d_big.sum()
        for f in big:  # into the page cache, so every configuration reads from memory
            f.read_bytes()
        print(
            f"sets: N = {len(small)} clips ({dur_small:.0f} s of audio, median {np.median(d_small):.1f} s, longest "
            f"{d_small.max():.1f} s), {len(big)} clips ({dur_big:.0f} s, median {np.median(d_big):.1f} s, longest "
            f"{d_big.max():.1f} s)",
            flush=True,
        )

        runs = []
        for files_ in (small, big) if len(big) > len(small) else (small,):
            runs += [("librosa", files_, 1)] + [("fattag", files_, w) for w in worker_counts]
        rows = []
        for kind, files_, w in runs:
            if a.quiet_wait > 0:
                wait_quiet(a.quiet_wait)
            r = measure(kind, files_, w, a.repeat, tmp)
            r.update(kind=kind, workers=w, clips=len(files_), audio=dur_small if files_ is small else dur_big)
            rows.append(r)
            print(f"  done: {kind} workers={w} clips={len(files_)}: {r['wall']:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = {r["clips"]: r["audio"] / r["wall"] for r in rows if r["kind"] == "librosa"}  # x RT of the loop

    def vs(r):
        return r["audio"] / r["wall"] / base[r["clips"]]

    mb = 2**20
    head = (
        f"{'configuration':<22}{'clips':>6}{'audio s':>9}{'start s':>8}{'1st s':>7}{'wall s':>8}{'clips/s':>9}"
        f"{'x RT':>7}"
        f"{'vs librosa':>11}{'CPU s':>7}{'tree PSS':>10}{'tree RSS':>10}{'maxrss main':>12}"
        f"{'maxrss wkr':>11}{'others':>8}"
    )
    print("\nFeature stage: log-mel (32 kHz, n_fft 1024, hop 500, 128 mels, trim 55 dB), warm page cache")
    print(head)
    print("-" * len(head))
    for r in rows:
        name = "librosa loop (1 proc)" if r["kind"] == "librosa" else f"fattag workers={r['workers']}"
        xrt = r["audio"] / r["wall"]
        wk = f"{r['maxrss_child'] / mb:.0f} MB" if r["kind"] == "fattag" and r["workers"] > 1 else "-"
        print(
            f"{name:<22}{r['clips']:>6}{r['audio']:>9.0f}{r['start']:>8.2f}{r['first']:>7.2f}{r['wall']:>8.2f}"
            f"{r['clips'] / r['wall']:>9.1f}{xrt:>7.0f}{vs(r):>10.2f}x{r['cpu']:>7.1f}"
            f"{r['tree_pss'] / mb:>7.0f} MB{r['tree_rss'] / mb:>7.0f} MB{r['maxrss_self'] / mb:>9.0f} MB"
            f"{wk:>11}{r['others']:>8.2f}"
        )
    print(
        "others: cores used by other processes of the machine meanwhile (0 = quiet; above ~0.2 the figures "
        "are disturbed)"
    )
    print(
        "\ntargets: fattag workers=1 >= 1.3x and workers=2 >= 1.7x the 1-process librosa loop on the same clips; "
        "peak memory flat in clips"
    )
    for w in worker_counts:
        sel = [r for r in rows if r["kind"] == "fattag" and r["workers"] == w]
        need = 1.3 if w == 1 else 1.7
        ratios = ", ".join(f"{vs(r):.2f}x at {r['clips']} clips" for r in sel)
        ok = all(vs(r) >= need for r in sel)
        mem = " -> ".join(f"{r['tree_pss'] / mb:.0f} MB ({r['clips']})" for r in sel)
        print(f"  workers={w}: {ratios} (target {need}x: {'met' if ok else 'NOT met'}); tree PSS {mem}")
    print(f"total {time.time() - t_all:.0f} s; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


if __name__ == "__main__":
    main()
