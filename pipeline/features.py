"""The log-mel feature cache: one float16 array per split on disk, memory-mapped when read.

    make features CONFIG=configs/demo.yaml          # or: python -m pipeline.features --config FILE [key=value ...]

Each clip: read (any rate, stereo mixed to mono), resampled to features.sample_rate, STFT (Hann, n_fft, hop) and mel
projection once, leading/trailing frames more than features.trim_db below the clip's loudest frame dropped (the trim
is decided on the STFT frames already computed, not by a second pass over the audio), then 10 log10(max(mel, floor)).

Layout: <features.cache_dir>/<dataset>-<hash of the feature parameters and dataset path>/
    params.json, config.yaml, log.txt
    <split>.f16          float16 (total_frames, n_mels), clips one after another in the CSV's order
    <split>.index.csv    fname, offset, frames, note (why a clip was kept untrimmed or padded), the wav's size and
                         mtime_ns, and the clip's log-mel sum and sum of squares
    <split>.json         shape, sums for the normalisation statistics, the parameters, and the completion key
                         (written last; "stale": true while the split is rebuilt, and then it is refused)
    <split>.lock         the file lock of the split's merges

A split is valid only when its <split>.json holds the key for these parameters and these clips (fnames, sizes,
mtimes); everything is written under temporary names first, so an interrupted run leaves nothing read as valid, and
a rerun with the same parameters does nothing. Work runs in `run.workers` processes with a bounded number of clips in
flight, so memory does not grow with the dataset.

Incremental and sharded builds: a rebuild reuses the previous build's rows of every clip whose fname, size and
mtime are unchanged and extracts only the others (new or changed clips). Those are extracted into parts,
<split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock} (plan: a hash of what is reused and what is extracted, so
shards that saw different data never mix): one part in a plain build, shard i's share with `--shard i/n`
(python -m pipeline.features --shard i/n | auto, parse_shard). The process that completes the last part merges the
reused rows and the parts into the split's files in the CSV's order, the same bytes as a one-process build of every
clip, then removes the parts and what killed shards left; a plain build after a sharded one extracts only the parts
still missing.

    cache = FeatureCache.open(cfg, "curated")       # normalised (F, T) float32 arrays by fname
    cache.get("0a1b2c3d.wav"), cache.frames, cache.fnames
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import cli, save_config
from pipeline.data import SPLITS, dataset
from pipeline.utils import (
    UserError,
    atomic_path,
    atomic_to_csv,
    atomic_write_json,
    file_lock,
    get_logger,
    progress,
    read_json,
    remove_stale_temps,
    user_errors,
)

PARAM_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "trim_db", "log_floor")
CHUNK = 8  # clips per task


class FeatureError(RuntimeError):
    """A clip could not be turned into features; the message names the file."""


def feature_params(cfg) -> dict:
    return {k: cfg.features[k] for k in PARAM_KEYS}


def cache_dir(cfg) -> Path:
    root = Path(cfg.data.root).resolve()
    key = {"params": feature_params(cfg), "root": str(root)}
    if cfg.data.single_label_csv is not None:  # its clips fill the splits: never mixed with the FSD layout's
        key["single_label_csv"] = cfg.data.single_label_csv
    key = json.dumps(key, sort_keys=True)
    return Path(cfg.features.cache_dir) / f"{root.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def split_key(params: dict, clips: pd.DataFrame) -> str:
    """What makes a split's cache valid: the feature parameters, and each clip's fname, size and mtime, in order."""
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    for f, size, mtime in zip(clips["fname"], clips["size"], clips["mtime_ns"]):
        h.update(f"{f}\0{size}\0{mtime}\0".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- per-clip extraction (worker side)
_EXTRACTOR = None


class Extractor:
    """Turns a wav file into a (frames, n_mels) float32 log-mel array. One per process (holds the mel matrix).

    numpy / scipy only, float32 throughout, single-threaded (the parallelism is the worker processes): no torch
    import in the workers (it costs ~2 s and ~350 MB of private memory per process) and no BLAS thread pool.
    The mel projection uses the filterbank's sparsity (about 2 nonzero weights per FFT bin): a sparse product is
    ~60x fewer operations than the dense (frames, 513) x (513, n_mels) one. The filterbank is librosa's, computed
    once per process and parameter set (`_MELS`), so workers forked after the parent built one skip librosa's import.
    The large per-clip arrays live in work buffers reused from clip to clip (grown to the longest clip seen: about
    40 MB for 30 s): fresh multi-MB arrays for every clip cost a page fault per 4 kB page, up to a third of the time.
    """

    _MELS: dict = {}  # (sample_rate, n_fft, n_mels, fmin, fmax) -> CSR (n_mels, n_fft // 2 + 1) float32

    def __init__(self, params: dict):
        self.p = params
        key = tuple(params[k] for k in ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"))
        if key not in Extractor._MELS:
            import librosa.filters
            import scipy.sparse

            mel = librosa.filters.mel(
                sr=params["sample_rate"],
                n_fft=params["n_fft"],
                n_mels=params["n_mels"],
                fmin=params["fmin"],
                fmax=params["fmax"],
            )  # (n_mels, n_bins) float32
            Extractor._MELS[key] = scipy.sparse.csr_matrix(mel)
        self.mel = Extractor._MELS[key]
        n = params["n_fft"]
        # periodic Hann (torch.hann_window, scipy get_window('hann', n, fftbins=True)), rounded to float32
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
        self._bufs: dict = {}

    def _buf(self, name: str, shape, dtype=np.float32) -> np.ndarray:
        """A work array of `shape`, a view of a buffer kept from clip to clip (grown when too small)."""
        size = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self._bufs[name] = np.empty(max(size, int(1.25 * buf.size) if buf is not None else 0), dtype)
        return buf[:size].reshape(shape)

    def load(self, path) -> np.ndarray:
        """Mono float32 samples at features.sample_rate, a new array. 16-bit PCM is read as int16 and scaled by
        2^-15 (the same values as libsndfile's float conversion, for half the cost); other formats as float32."""
        import soundfile as sf
        import soxr

        try:
            with sf.SoundFile(str(path)) as f:
                sr, pcm16 = f.samplerate, f.subtype == "PCM_16"
                dtype = np.int16 if pcm16 else np.float32
                if 0 <= f.frames < 2**31:
                    raw = f.read(out=self._buf("raw", (f.frames, f.channels), dtype))  # the frames read
                else:  # length unknown to the header
                    raw = f.read(dtype=dtype.__name__, always_2d=True)
        except Exception as e:  # soundfile raises several types
            raise FeatureError(f"{path}: unreadable audio: {e}") from None
        if raw.size == 0:
            raise FeatureError(f"{path}: empty audio file (0 samples)")
        if pcm16:
            y = np.multiply(raw, np.float32(1 / 32768), out=self._buf("pcm", raw.shape), dtype=np.float32)
        else:
            y = raw
        y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
        if sr != self.p["sample_rate"]:
            return soxr.resample(y, sr, self.p["sample_rate"], quality="HQ").astype(np.float32, copy=False)
        return np.array(y, dtype=np.float32)  # a copy: y may be a view of a work buffer

    def __call__(self, path):
        """Returns (logmel (frames, n_mels) float32, note str)."""
        import scipy.fft
        from numpy.lib.stride_tricks import sliding_window_view

        p = self.p
        n_fft, hop = p["n_fft"], p["hop_length"]
        y = self.load(path)
        notes = []
        if not np.isfinite(y).all():
            notes.append(f"{int((~np.isfinite(y)).sum())} non-finite samples set to 0")
            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        if len(y) < n_fft:
            notes.append(f"shorter than one frame ({len(y)} samples), zero-padded")
            y = np.pad(y, (0, n_fft - len(y)))
        # centred frames, zero-padded by n_fft // 2 at both ends (torch.stft / librosa center=True, constant pad)
        half = n_fft // 2
        x = self._buf("padded", (len(y) + 2 * half,))
        x[:half] = 0
        x[half : half + len(y)] = y
        x[half + len(y) :] = 0
        view = sliding_window_view(x, n_fft)[::hop]  # (frames, n_fft), no copy
        frames = np.multiply(view, self.window, out=self._buf("frames", view.shape))
        spec = scipy.fft.rfft(frames, axis=1, overwrite_x=True)  # (frames, n_bins) complex64
        power = np.square(spec.real, out=self._buf("power", spec.shape))
        power += np.square(spec.imag, out=self._buf("imag2", spec.shape))  # (frames, n_bins) float32
        del spec
        first, last = 0, power.shape[0]
        if p["trim_db"] is not None:
            energy = power.sum(axis=1)
            peak = float(energy.max())
            if peak <= 0:
                notes.append("silent, kept untrimmed")
            else:
                loud = np.flatnonzero(energy > np.float32(peak * 10 ** (-p["trim_db"] / 10)))
                first, last = loud[0], loud[-1] + 1
        power_t = self._buf("power_t", (power.shape[1], last - first))  # the sparse product takes
        np.copyto(power_t, power[first:last].T)  # (n_bins, frames) C-ordered
        mel = self.mel @ power_t  # (n_mels, frames) float32
        np.maximum(mel, np.float32(p["log_floor"]), out=mel)
        np.log10(mel, out=mel)
        mel *= np.float32(10.0)
        logmel = np.ascontiguousarray(mel.T)  # (frames, n_mels)
        if not np.isfinite(logmel).all():
            raise FeatureError(f"{path}: non-finite log-mel values")
        return logmel, "; ".join(notes)


def _init_worker(params):
    global _EXTRACTOR
    _EXTRACTOR = Extractor(params)


def _work(paths):
    out = []
    for path in paths:
        logmel, note = _EXTRACTOR(path)
        out.append(
            (
                logmel.astype(np.float16),
                note,
                float(logmel.sum(dtype=np.float64)),
                float(np.square(logmel, dtype=np.float64).sum()),
            )
        )
    return out


def _chunked(paths, n):
    for i in range(0, len(paths), n):
        yield paths[i : i + n]


def extract_split(paths, fnames, out_dir: Path, split: str, params: dict, workers: int, show=True, log=None):
    """Write <split>.f16 / .index.csv for the given wav paths (the index holds each clip's offset, frames, note and
    its log-mel sum and sum of squares, the normalisation statistics' terms); returns the split's json record."""
    rows, total, s1, s2 = [], 0, 0.0, 0.0
    bin_path = out_dir / f"{split}.f16"
    remove_stale_temps(bin_path, log)  # a killed build's partial file: never read, now reclaimed
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fout:
        bar = progress(total=len(paths), enabled=show, desc=f"features {split}", unit="clip")
        chunks = _chunked(list(paths), CHUNK)
        names = iter(fnames)

        def consume(results):
            nonlocal total, s1, s2
            for arr, note, a, b in results:
                fname = next(names)
                fout.write(arr.tobytes())
                rows.append((fname, total, len(arr), note, a, b))
                if note and log:
                    log.info(f"{split} {fname}: {note}")
                total += len(arr)
                s1 += a
                s2 += b
            bar.update(len(results))

        if not paths:
            pass
        elif workers <= 1:
            _init_worker(params)
            for chunk in chunks:
                consume(_work(chunk))
        else:
            Extractor(params)  # the mel filterbank, built once here: forked workers inherit it (and its imports)
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(params,)) as ex:
                pending = deque()
                for chunk in chunks:  # at most 2 chunks per worker in flight: bounded memory
                    pending.append(ex.submit(_work, chunk))
                    if len(pending) >= 2 * workers:
                        consume(pending.popleft().result())
                while pending:
                    consume(pending.popleft().result())
        bar.close()
    index = pd.DataFrame(rows, columns=["fname", "offset", "frames", "note", "sum", "sumsq"])
    atomic_to_csv(index, out_dir / f"{split}.index.csv", index=False)
    return {
        "split": split,
        "shape": [total, params["n_mels"]],
        "dtype": "float16",
        "clips": len(rows),
        "sum": s1,
        "sumsq": s2,
        "count": total * params["n_mels"],
    }


# --------------------------------------------------------------------------- shards, reuse and merge
SHARD_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))
INDEX_COLUMNS = ["fname", "offset", "frames", "note", "size", "mtime_ns", "sum", "sumsq"]
COPY_FRAMES = 1 << 18  # frames per write when a merge copies rows (64 MB at 128 mels)


def parse_shard(text: str | None, env=None) -> tuple[int, int] | None:
    """(i, n) for `--shard i/n`; `--shard auto` takes torchrun's RANK / WORLD_SIZE, else a SLURM array's
    SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT. Without --shard, a torchrun launch
    (WORLD_SIZE > 1) shards by its ranks, anything else builds whole splits (None)."""
    env = os.environ if env is None else env
    if text is None:
        world = env.get("WORLD_SIZE", "") or "1"
        if not world.isdigit():
            raise UserError(f"WORLD_SIZE={world!r} in the environment is not an integer (torchrun sets it)")
        if int(world) <= 1:
            return None
        text = "auto"
    if text == "auto":
        for rank, size in SHARD_ENV:
            if env.get(size):
                try:
                    first = int(env.get("SLURM_ARRAY_TASK_MIN") or 0) if rank.startswith("SLURM") else 0
                    i, n = int(env[rank]) - first, int(env[size])
                except (KeyError, ValueError):
                    raise UserError(
                        f"--shard auto: {rank}={env.get(rank)!r} / {size}={env[size]!r} are not "
                        f"integers; give --shard i/n"
                    ) from None
                source = f"{rank}={env.get(rank)} {size}={n}"
                break
        else:
            raise UserError(
                "--shard auto: neither torchrun's RANK / WORLD_SIZE nor a SLURM array's "
                "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT is set; give --shard i/n"
            )
    else:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(
                f"--shard {text}: expected i/n (shard i of n, counted from 0), e.g. --shard 0/4, or auto"
            ) from None
        source = f"--shard {text}"
    if not 0 <= i < n:
        raise UserError(
            f"{source}: shard {i} of {n} is outside 0..{n - 1} (shards are counted from 0; a SLURM "
            f"array with gaps needs --shard i/n)"
        )
    return i, n


def clip_table(ds, split: str) -> pd.DataFrame:
    """fname, path, size, mtime_ns of a split's clips, in the CSV's order: what decides whether a clip's rows of an
    earlier build can be reused."""
    df = ds.split(split)
    paths = [ds.wav_dirs[split] / f for f in df["fname"]]
    stats = [os.stat(p) for p in paths]
    return pd.DataFrame(
        {
            "fname": list(df["fname"]),
            "path": paths,
            "size": [st.st_size for st in stats],
            "mtime_ns": [st.st_mtime_ns for st in stats],
        }
    )


def read_meta(path: Path) -> dict:
    """A split's json record; a missing or stale one (a rebuild under way) is a FileNotFoundError naming it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no completed '{path.stem}' features here; run `make features`")
    meta = read_json(path)
    if meta.get("stale"):
        raise FileNotFoundError(
            f"{path}: the '{path.stem}' features are out of date for the dataset and being "
            f"rebuilt; run `make features` (or let the running shards finish)"
        )
    return meta


def _read_index(path: Path) -> pd.DataFrame:
    # pandas >= 3 reads floats back exactly (round trip): the per-clip sums of a reused row are the extracted ones
    return pd.read_csv(path, dtype={"fname": str, "note": str}, keep_default_na=False)


def _open_f16(path: Path, frames: int, n_mels: int) -> np.ndarray:
    if frames == 0:  # np.memmap cannot map an empty file
        return np.empty((0, n_mels), np.float16)
    return np.memmap(path, dtype=np.float16, mode="r", shape=(frames, n_mels))


def _previous(out: Path, split: str, params: dict, log=None):
    """(meta, index) of the split's last completed build when its rows can be reused (same feature parameters,
    its files consistent), else None. A merge removes the json before it replaces the files, so a json here
    describes the .f16 and index beside it."""
    meta_path, bin_path = out / f"{split}.json", out / f"{split}.f16"
    if not meta_path.exists():
        return None
    try:
        meta, index = read_json(meta_path), _read_index(out / f"{split}.index.csv")
        ok = (
            meta.get("params") == params
            and set(INDEX_COLUMNS) <= set(index.columns)
            and int(index["frames"].sum()) == meta["shape"][0]
            and bin_path.stat().st_size == 2 * meta["shape"][0] * meta["shape"][1]
        )
    except (OSError, ValueError, KeyError):
        ok = False
    if not ok:
        if log:
            log.info(f"{split}: the previous build's rows cannot be reused (older layout or incomplete files)")
        return None
    return meta, index


class Part:
    """Shard i of n of one split's extraction plan: <split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock}; the json,
    written last, marks it complete. The lock makes one process at a time write it."""

    def __init__(self, out: Path, split: str, plan: str, i: int, n: int):
        self.out, self.i, self.n = out, i, n
        self.stem = f"{split}.{plan}.part{i}of{n}"

    def path(self, ext: str) -> Path:
        return self.out / f"{self.stem}.{ext}"

    def done(self) -> bool:
        """Complete: its json (written last) and its rows (a one-part merge moves the .f16 into place: killed
        before the split's json, the part is extracted again)."""
        return self.path("json").exists() and self.path("f16").exists()

    def rows(self) -> pd.DataFrame:
        return _read_index(self.path("index.csv"))


PART_RE = re.compile(r"^\.?(?P<split>\w+)\.(?P<plan>[0-9a-f]{12})\.part(?P<i>\d+)of(?P<n>\d+)\.")


def _plan(key: str, prev, todo: pd.DataFrame) -> str:
    """Names an extraction: the target key, the build whose rows are reused, the clips to extract. Shards that
    saw the same dataset and cache agree on it; parts of another plan are never merged."""
    h = hashlib.sha1(f"{key}\0{prev[0]['key'] if prev else ''}\0".encode())
    for f in todo["fname"]:
        h.update(f.encode() + b"\0")
    return h.hexdigest()[:12]


def _complete_count(out: Path, split: str, plan: str) -> int:
    """The n of this plan's complete parts already on disk (the most common one), or 1 when there are none."""
    counts = {}
    for p in out.glob(f"{split}.{plan}.part*of*.json"):
        m = PART_RE.match(p.name)
        if m:
            counts[int(m["n"])] = counts.get(int(m["n"]), 0) + 1
    return max(counts, key=counts.get) if counts else 1


def _extract_part(part: Part, todo: pd.DataFrame, params: dict, cfg, log, wait: bool):
    """Extract the part's share of `todo` unless it is done. Another process writing it: wait=True waits for it,
    wait=False (an explicit --shard: the same shard started twice) is a UserError naming the lock file."""
    if part.done():
        return
    with file_lock(part.path("lock"), log, f"shard {part.i}/{part.n} of {part.stem.split('.')[0]}", wait=wait):
        if part.done():  # finished by the process we waited for
            return
        m = len(todo)
        share = todo.iloc[part.i * m // part.n : (part.i + 1) * m // part.n]
        log.info(f"extracting {part.stem}: {len(share)} of the {m} clips to extract with {cfg.run.workers} process(es)")
        record = extract_split(
            list(share["path"]),
            list(share["fname"]),
            part.out,
            part.stem,
            params,
            cfg.run.workers,
            show=cfg.run.progress,
            log=log,
        )
        atomic_write_json(
            part.path("json"), {"clips": record["clips"], "frames": record["shape"][0], "shard": [part.i, part.n]}
        )


def _merge(out: Path, split: str, clips: pd.DataFrame, key: str, params: dict, prev, parts: list, log) -> dict:
    """Write <split>.f16, .index.csv and .json from the previous build's reused rows and the parts' rows, in the
    CSV's order: the same bytes as a build that extracted every clip in one process. Caller holds the split lock."""
    n_mels = params["n_mels"]
    sources, tables = [], []
    if prev is not None:
        meta, index = prev
        sources.append(_open_f16(out / f"{split}.f16", meta["shape"][0], n_mels))
        tables.append(index.assign(src=0))
    for part in parts:
        rows = part.rows()
        sources.append(_open_f16(part.path("f16"), int(rows["frames"].sum()), n_mels))
        tables.append(rows.assign(src=len(sources) - 1))
    table = pd.concat(tables, ignore_index=True).drop_duplicates("fname", keep="last").set_index("fname")
    missing = [f for f in clips["fname"] if f not in table.index]
    if missing:
        raise RuntimeError(f"{out}: the parts of '{split}' lack {len(missing)} clip(s), e.g. {missing[0]}")
    rows = table.loc[clips["fname"]].reset_index()
    src, start, frames = rows["src"].to_numpy(), rows["offset"].to_numpy(), rows["frames"].to_numpy()
    (out / f"{split}.json").unlink(missing_ok=True)  # no longer describes the files about to be replaced
    bin_path = out / f"{split}.f16"
    single = len(sources) == 1 and prev is None and len(rows) and (start == np.cumsum(frames) - frames).all()
    if single:  # one part holding every clip in order: it is the file
        os.replace(parts[0].path("f16"), bin_path)
    else:
        with atomic_path(bin_path) as tmp, open(tmp, "wb") as fout:
            run = 0
            for j in range(1, len(rows) + 1):  # copy runs of rows that lie one after another in a source
                if j < len(rows) and src[j] == src[run] and start[j] == start[j - 1] + frames[j - 1]:
                    continue
                a, b = int(start[run]), int(start[j - 1] + frames[j - 1])
                for c in range(a, b, COPY_FRAMES):
                    fout.write(sources[src[run]][c : min(b, c + COPY_FRAMES)].tobytes())
                run = j
    index = pd.DataFrame(
        {
            "fname": rows["fname"],
            "offset": np.cumsum(frames) - frames,
            "frames": frames,
            "note": rows["note"],
            "size": clips["size"].to_numpy(),
            "mtime_ns": clips["mtime_ns"].to_numpy(),
            "sum": rows["sum"],
            "sumsq": rows["sumsq"],
        }
    )
    atomic_to_csv(index, out / f"{split}.index.csv", index=False)
    total = int(frames.sum())
    record = {
        "split": split,
        "shape": [total, n_mels],
        "dtype": "float16",
        "clips": len(rows),
        "sum": math.fsum(rows["sum"]),
        "sumsq": math.fsum(rows["sumsq"]),
        "count": total * n_mels,
        "params": params,
        "key": key,
    }
    counts = note_counts(rows["note"])
    if counts:
        record["notes"] = counts
        if log:
            log.info(f"{split}: " + ", ".join(f"{n} clip(s) {what}" for what, n in counts.items()))
    atomic_write_json(out / f"{split}.json", record)  # the completion mark, written last
    return record


NOTE_KINDS = {
    "non-finite samples": "with non-finite samples (set to 0)",
    "shorter than one frame": "shorter than one FFT frame (zero-padded)",
    "silent": "silent (kept untrimmed)",
}


def note_counts(notes) -> dict:
    """How many clips of a split each kind of extraction note concerns (an all-NaN clip is non-finite and silent)."""
    counts = {what: sum(key in str(n) for n in notes) for key, what in NOTE_KINDS.items()}
    return {what: n for what, n in counts.items() if n}


def _sweep(out: Path, split: str, log=None):
    """After a merge (split lock held): remove every part of the split whose lock is free (this plan's, merged now,
    and those of killed or outdated shards) and the temporaries killed writers left (pipeline.utils
    remove_stale_temps' names)."""
    stems = set()
    for p in [*out.glob(f"{split}.*"), *out.glob(f".{split}.*")]:
        m = PART_RE.match(p.name)
        if m and m["split"] == split:
            stems.add(f"{split}.{m['plan']}.part{m['i']}of{m['n']}")
    freed = 0
    for stem in sorted(stems):
        try:
            with file_lock(out / f"{stem}.lock", wait=False):
                for ext in ("f16", "index.csv", "json"):
                    (out / f"{stem}.{ext}").unlink(missing_ok=True)
                    freed += remove_stale_temps(out / f"{stem}.{ext}")
                (out / f"{stem}.lock").unlink(missing_ok=True)
        except UserError:  # being written right now: not ours to remove
            continue
    for name in (f"{split}.f16", f"{split}.index.csv", f"{split}.json"):  # the split's own temporaries
        freed += remove_stale_temps(out / name)
    if freed and log:
        log.info(f"{split}: removed parts and temporary files of earlier or killed shards ({freed / 1e6:.1f} MB)")


def build_split(out: Path, split: str, clips: pd.DataFrame, params: dict, cfg, shard=None, log=None) -> bool:
    """Bring one split of the cache up to date; True when it is complete afterwards. Rows of the previous build are
    reused for clips with the same fname, size and mtime; the others are extracted, all of them (shard None: into
    the parts that a sharded run left missing, or one part) or shard (i, n)'s share; the process that completes
    the last part merges. Splits that are already valid are left alone."""
    key = split_key(params, clips)
    meta_path = out / f"{split}.json"
    lock = out / f"{split}.lock"
    with file_lock(lock, log, f"the '{split}' split"):
        meta = read_json(meta_path) if meta_path.exists() else {}
        if meta.get("key") == key:
            if meta.get("stale"):  # the data went back to what these files hold
                atomic_write_json(meta_path, {k: v for k, v in meta.items() if k != "stale"})
            _sweep(out, split, log)  # parts a merge killed before its sweep left behind
            return True
        prev = _previous(out, split, params, log)
        if meta and not meta.get("stale"):  # readers stop trusting it; its rows stay for reuse
            atomic_write_json(meta_path, {**meta, "stale": True})
    reused = np.zeros(len(clips), bool)
    if prev is not None:
        old = prev[1].set_index("fname")
        known = clips["fname"].isin(old.index).to_numpy()
        at = old.reindex(clips["fname"])
        reused = (
            known
            & (at["size"].to_numpy() == clips["size"].to_numpy())
            & (at["mtime_ns"].to_numpy() == clips["mtime_ns"].to_numpy())
        )
    todo = clips[~reused]
    plan = _plan(key, prev, todo)
    n = shard[1] if shard else _complete_count(out, split, plan)
    parts = [Part(out, split, plan, i, n) for i in range(n)]
    log.info(
        f"{split}: {len(todo)} of {len(clips)} clips to extract, {int(reused.sum())} reused from the previous "
        f"build" + (f"; shard {shard[0]}/{n}" if shard else "")
    )
    for part in [parts[shard[0]]] if shard else parts:
        _extract_part(part, todo, params, cfg, log, wait=shard is None)
    with file_lock(lock, log, f"the '{split}' split"):
        if meta_path.exists() and read_json(meta_path).get("key") == key:
            _sweep(out, split, log)  # another shard merged first: a part it could not sweep
            return True
        waiting = [p.i for p in parts if not p.done()]
        if waiting:
            log.info(f"{split}: shard(s) {waiting} of {n} not finished; the last one (or `make features`) merges")
            return False
        now = read_json(meta_path) if meta_path.exists() else {}
        replaced = prev is not None and reused.any() and not _same_build(prev[0], now)
        if not replaced:
            _merge(out, split, clips, key, params, prev if reused.any() else None, parts, log)
            _sweep(out, split, log)
            return True
    # another process merged a different build while this one extracted: the rows this plan would reuse no longer
    # lie where prev's index says; plan again on top of the build now on disk (this plan's parts get swept)
    log.info(f"{split}: another build was merged while this one extracted; planning again on top of it")
    return build_split(out, split, clips, params, cfg, shard, log)


def _same_build(a: dict, b: dict) -> bool:
    """Whether two of a split's json records describe the same files (the stale mark aside)."""
    return all(a.get(k) == b.get(k) for k in ("key", "shape", "sum", "sumsq"))


def build_cache(cfg, ds=None, log=None, shard=None) -> Path:
    """Bring every split of the cache up to date (shard (i, n): extract only this shard's share, merging the splits
    whose parts it completes); return the cache folder."""
    ds = ds or dataset(cfg, check_audio=True)
    out = cache_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    log = log or get_logger(folder=out)
    params = feature_params(cfg)
    atomic_write_json(out / "params.json", {"params": params, "root": str(Path(cfg.data.root).resolve())})
    did, pending = [], []
    for split in ("noisy", "curated", "test"):
        clips = clip_table(ds, split)
        if len(clips) == 0:
            continue
        meta = out / f"{split}.json"
        was = read_json(meta).get("key") if meta.exists() else None
        if not build_split(out, split, clips, params, cfg, shard, log):
            pending.append(split)
        elif was != read_json(meta).get("key"):
            did.append(split)
    save_config(cfg, out)
    state = f"built {', '.join(did)}" if did else "nothing to merge" if pending else "up to date, nothing to do"
    log.info(f"feature cache {out}: {state}" + (f"; {', '.join(pending)} wait(s) for other shards" if pending else ""))
    return out


# --------------------------------------------------------------------------- reading
class FeatureCache:
    """Read one split of the cache: memory-mapped, normalised on the fly. Arrays are (n_mels, frames) float32."""

    def __init__(self, folder, split: str, mean=0.0, std=1.0):
        folder = Path(folder)
        self.meta = read_meta(folder / f"{split}.json")
        self.folder, self.split = folder, split
        self.index = _read_index(folder / f"{split}.index.csv")
        self.fnames = self.index["fname"].tolist()
        self.offsets = self.index["offset"].to_numpy()
        self.frames = self.index["frames"].to_numpy()
        self._pos = {f: i for i, f in enumerate(self.fnames)}
        self.mean, self.std = float(mean), float(std)
        self._arr = None

    @property
    def arr(self):
        if self._arr is None:  # opened lazily so that forked loader workers each map it themselves
            self._arr = np.memmap(
                self.folder / f"{self.split}.f16", dtype=np.float16, mode="r", shape=tuple(self.meta["shape"])
            )
        return self._arr

    def __len__(self):
        return len(self.fnames)

    def position(self, fname) -> int:
        try:
            return self._pos[fname]
        except KeyError:
            raise KeyError(f"{fname}: not in the '{self.split}' feature cache {self.folder}") from None

    def get(self, key, start=0, length=None) -> np.ndarray:
        """Clip `key` (fname or position) as (n_mels, frames) float32, optionally frames [start, start+length)."""
        i = key if isinstance(key, (int, np.integer)) else self.position(key)
        off, n = int(self.offsets[i]), int(self.frames[i])
        stop = n if length is None else min(n, start + length)
        x = np.asarray(self.arr[off + start : off + stop], dtype=np.float32).T
        return (x - self.mean) / self.std

    @classmethod
    def open(cls, cfg, split: str) -> FeatureCache:
        folder = cache_dir(cfg)
        mean, std = norm_stats(cfg, folder)
        return cls(folder, split, mean, std)


def norm_stats(cfg, folder=None):
    """(mean, std) of the log-mels of features.norm_split (falls back to curated when that split is empty)."""
    split = cfg.features.norm_split
    if split in (None, "none"):
        return 0.0, 1.0
    folder = Path(folder or cache_dir(cfg))
    path = folder / f"{split}.json"
    if not path.exists() and split == "noisy":
        path = folder / "curated.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no statistics for features.norm_split={split}; run `make features`")
    m = read_meta(path)
    mean = m["sum"] / m["count"]
    std = max(np.sqrt(max(m["sumsq"] / m["count"] - mean**2, 0.0)), 1e-6)
    return mean, std


def main(cfg, shard=None) -> Path:
    """Build the cache; shard (i, n) (parse_shard) extracts only shard i's share of each split."""
    if cfg.features.norm_split not in ("none", *SPLITS):
        raise ValueError(f"features.norm_split must be none or one of {list(SPLITS)}, got {cfg.features.norm_split}")
    return build_cache(cfg, shard=shard)


def _shard_arg(ap):
    ap.add_argument(
        "--shard",
        default=None,
        metavar="i/n|auto",
        help="extract only shard i of n (from 0) of each split; the last shard to finish merges. auto: "
        "torchrun's RANK / WORLD_SIZE or a SLURM array's SLURM_ARRAY_TASK_ID / _COUNT (a torchrun "
        "launch shards by its ranks without this flag)",
    )


if __name__ == "__main__":
    _cfg, _args = cli("features", "Build the log-mel feature cache.", extra=_shard_arg)
    with user_errors("features"):
        main(_cfg, parse_shard(_args.shard))
