"""The log-mel feature cache: one float16 array per split on disk, memory-mapped when read.

    make features CONFIG=configs/demo.yaml          # or: python -m pipeline.features --config FILE [key=value ...]

Each clip: read (any rate, stereo mixed to mono), resampled to features.sample_rate, STFT (Hann, n_fft, hop) and mel
projection once, leading/trailing frames more than features.trim_db below the clip's loudest frame dropped (the trim
is decided on the STFT frames already computed, not by a second pass over the audio), then 10 log10(max(mel, floor)).

Layout: <features.cache_dir>/<dataset>-<hash of the feature parameters and dataset path>/
    params.json, config.yaml, log.txt
    <split>.f16          float16 (total_frames, n_mels), clips one after another
    <split>.index.csv    fname, offset, frames, note      (note: why a clip was kept untrimmed or padded)
    <split>.json         shape, sums for the normalisation statistics, and the completion key (written last)

A split is valid only when its <split>.json holds the key for these parameters and these fnames; everything is
written under temporary names first, so an interrupted run leaves nothing read as valid, and a rerun with the same
parameters does nothing. Work runs in `run.workers` processes with a bounded number of clips in flight, so memory
does not grow with the dataset.

    cache = FeatureCache.open(cfg, "curated")       # normalised (F, T) float32 arrays by fname
    cache.get("0a1b2c3d.wav"), cache.frames, cache.fnames
"""
from __future__ import annotations

import hashlib
import json
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import cli, save_config
from pipeline.data import SPLITS, dataset
from pipeline.utils import (atomic_path, atomic_to_csv, atomic_write_json, get_logger, progress, read_json,
                            remove_stale_temps)

PARAM_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "trim_db", "log_floor")
CHUNK = 8  # clips per task


class FeatureError(RuntimeError):
    """A clip could not be turned into features; the message names the file."""


def feature_params(cfg) -> dict:
    return {k: cfg.features[k] for k in PARAM_KEYS}


def cache_dir(cfg) -> Path:
    root = Path(cfg.data.root).resolve()
    key = {"params": feature_params(cfg), "root": str(root)}
    if cfg.data.single_label_csv is not None:      # its clips fill the splits: never mixed with the FSD layout's
        key["single_label_csv"] = cfg.data.single_label_csv
    key = json.dumps(key, sort_keys=True)
    return Path(cfg.features.cache_dir) / f"{root.name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def split_key(params: dict, fnames) -> str:
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())
    for f in fnames:
        h.update(f.encode() + b"\0")
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
            mel = librosa.filters.mel(sr=params["sample_rate"], n_fft=params["n_fft"], n_mels=params["n_mels"],
                                      fmin=params["fmin"], fmax=params["fmax"])      # (n_mels, n_bins) float32
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
                if 0 <= f.frames < 2 ** 31:
                    raw = f.read(out=self._buf("raw", (f.frames, f.channels), dtype))   # the frames read
                else:                                  # length unknown to the header
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
        return np.array(y, dtype=np.float32)           # a copy: y may be a view of a work buffer

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
        x[half:half + len(y)] = y
        x[half + len(y):] = 0
        view = sliding_window_view(x, n_fft)[::hop]                              # (frames, n_fft), no copy
        frames = np.multiply(view, self.window, out=self._buf("frames", view.shape))
        spec = scipy.fft.rfft(frames, axis=1, overwrite_x=True)                 # (frames, n_bins) complex64
        power = np.square(spec.real, out=self._buf("power", spec.shape))
        power += np.square(spec.imag, out=self._buf("imag2", spec.shape))       # (frames, n_bins) float32
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
        power_t = self._buf("power_t", (power.shape[1], last - first))           # the sparse product takes
        np.copyto(power_t, power[first:last].T)                                 # (n_bins, frames) C-ordered
        mel = self.mel @ power_t                                                # (n_mels, frames) float32
        np.maximum(mel, np.float32(p["log_floor"]), out=mel)
        np.log10(mel, out=mel)
        mel *= np.float32(10.0)
        logmel = np.ascontiguousarray(mel.T)                                    # (frames, n_mels)
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
        out.append((logmel.astype(np.float16), note, float(logmel.sum(dtype=np.float64)),
                    float(np.square(logmel, dtype=np.float64).sum())))
    return out


def _chunked(paths, n):
    for i in range(0, len(paths), n):
        yield paths[i:i + n]


def extract_split(paths, fnames, out_dir: Path, split: str, params: dict, workers: int, show=True, log=None):
    """Write <split>.f16 / .index.csv / .json for the given wav paths; returns the split's json record."""
    rows, total, s1, s2 = [], 0, 0.0, 0.0
    bin_path = out_dir / f"{split}.f16"
    remove_stale_temps(bin_path, log)                 # a killed build's partial file: never read, now reclaimed
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fout:
        bar = progress(total=len(paths), enabled=show, desc=f"features {split}", unit="clip")
        chunks = _chunked(list(paths), CHUNK)
        names = iter(fnames)

        def consume(results):
            nonlocal total, s1, s2
            for arr, note, a, b in results:
                fname = next(names)
                fout.write(arr.tobytes())
                rows.append((fname, total, len(arr), note))
                if note and log:
                    log.info(f"{split} {fname}: {note}")
                total += len(arr)
                s1 += a
                s2 += b
            bar.update(len(results))

        if workers <= 1:
            _init_worker(params)
            for chunk in chunks:
                consume(_work(chunk))
        else:
            Extractor(params)  # the mel filterbank, built once here: forked workers inherit it (and its imports)
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(params,)) as ex:
                pending = deque()
                for chunk in chunks:              # at most 2 chunks per worker in flight: bounded memory
                    pending.append(ex.submit(_work, chunk))
                    if len(pending) >= 2 * workers:
                        consume(pending.popleft().result())
                while pending:
                    consume(pending.popleft().result())
        bar.close()
    index = pd.DataFrame(rows, columns=["fname", "offset", "frames", "note"])
    atomic_to_csv(index, out_dir / f"{split}.index.csv", index=False)
    return {"split": split, "shape": [total, params["n_mels"]], "dtype": "float16", "clips": len(rows),
            "sum": s1, "sumsq": s2, "count": total * params["n_mels"]}


def build_cache(cfg, ds=None, log=None) -> Path:
    """Extract every split that is not already valid in the cache; return the cache folder."""
    ds = ds or dataset(cfg, check_audio=True)
    out = cache_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    log = log or get_logger(folder=out)
    params = feature_params(cfg)
    atomic_write_json(out / "params.json", {"params": params, "root": str(Path(cfg.data.root).resolve())})
    did = []
    for split in ("noisy", "curated", "test"):
        df = ds.split(split)
        if len(df) == 0:
            continue
        key = split_key(params, df["fname"])
        meta = out / f"{split}.json"
        if meta.exists() and read_json(meta).get("key") == key:
            continue
        if meta.exists():
            meta.unlink()  # stale: it no longer marks the split valid while we rebuild it
        paths = [ds.wav_dirs[split] / f for f in df["fname"]]
        log.info(f"extracting {split}: {len(paths)} clips with {cfg.run.workers} process(es)")
        record = extract_split(paths, list(df["fname"]), out, split, params, cfg.run.workers,
                               show=cfg.run.progress, log=log)
        atomic_write_json(meta, {**record, "key": key})  # the completion mark, written last
        did.append(split)
    save_config(cfg, out)
    log.info(f"feature cache {out}: " + (f"built {', '.join(did)}" if did else "up to date, nothing to do"))
    return out


# --------------------------------------------------------------------------- reading
class FeatureCache:
    """Read one split of the cache: memory-mapped, normalised on the fly. Arrays are (n_mels, frames) float32."""

    def __init__(self, folder, split: str, mean=0.0, std=1.0):
        folder = Path(folder)
        meta_path = folder / f"{split}.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: no completed '{split}' features here; run `make features`")
        self.meta = read_json(meta_path)
        self.folder, self.split = folder, split
        self.index = pd.read_csv(folder / f"{split}.index.csv", dtype={"fname": str}, keep_default_na=False)
        self.fnames = self.index["fname"].tolist()
        self.offsets = self.index["offset"].to_numpy()
        self.frames = self.index["frames"].to_numpy()
        self._pos = {f: i for i, f in enumerate(self.fnames)}
        self.mean, self.std = float(mean), float(std)
        self._arr = None

    @property
    def arr(self):
        if self._arr is None:  # opened lazily so that forked loader workers each map it themselves
            self._arr = np.memmap(self.folder / f"{self.split}.f16", dtype=np.float16, mode="r",
                                  shape=tuple(self.meta["shape"]))
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
        x = np.asarray(self.arr[off + start: off + stop], dtype=np.float32).T
        return (x - self.mean) / self.std

    @classmethod
    def open(cls, cfg, split: str) -> "FeatureCache":
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
    m = read_json(path)
    mean = m["sum"] / m["count"]
    std = max(np.sqrt(max(m["sumsq"] / m["count"] - mean ** 2, 0.0)), 1e-6)
    return mean, std


def main(cfg) -> Path:
    if cfg.features.norm_split not in ("none", *SPLITS):
        raise ValueError(f"features.norm_split must be none or one of {list(SPLITS)}, got {cfg.features.norm_split}")
    return build_cache(cfg)


if __name__ == "__main__":
    cli("features", "Build the log-mel feature cache.", main=main)
