"""Audio to log-mel: the per-clip computation of the feature cache (pipeline.cache) and of offline prediction
(pipeline.predict_dir), run in this process or in worker processes.

    ext = Extractor(params)                           # params: pipeline.cache.feature_params(cfg)
    logmel, note = ext("clip.wav")                    # (frames, n_mels) float32, and why a clip was padded or kept
    for results in logmels(paths, params, workers=4): # one list per chunk of CHUNK clips, in the order of paths
        for arr, note, s, s2 in results: ...          # float16 (frames, n_mels), note, sum and sum of squares

Each clip: read (any rate, stereo mixed to mono), resampled to features.sample_rate, STFT (Hann, n_fft, hop) and mel
projection once, leading/trailing frames more than features.trim_db below the clip's loudest frame dropped (the trim
is decided on the STFT frames already computed, not by a second pass over the audio), then 10 log10(max(mel, floor)).
The result depends on neither the number of worker processes nor the machine's load: each clip is computed alone,
single-threaded, and the results are consumed in the order of the paths.
"""

from __future__ import annotations

import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CHUNK = 8  # clips per task


class FeatureError(RuntimeError):
    """A clip could not be turned into features; the message names the file."""


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

    def power(self, y: np.ndarray) -> np.ndarray:
        """(frames, n_bins) float32 power spectrogram of samples y (len >= n_fft), a view of a work buffer."""
        import scipy.fft
        from numpy.lib.stride_tricks import sliding_window_view

        n_fft, hop = self.p["n_fft"], self.p["hop_length"]
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
        return power

    def __call__(self, path):
        """Returns (logmel (frames, n_mels) float32, note str)."""
        p = self.p
        y = self.load(path)
        notes = []
        if not np.isfinite(y).all():
            notes.append(f"{int((~np.isfinite(y)).sum())} non-finite samples set to 0")
            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        if len(y) < p["n_fft"]:
            notes.append(f"shorter than one frame ({len(y)} samples), zero-padded")
            y = np.pad(y, (0, p["n_fft"] - len(y)))
        power = self.power(y)
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


def _init_worker(params, pool: bool = False):
    """The extractor of this process. A pool's workers leave SIGINT and SIGTERM to the parent, which stops the
    pool and reports the interruption in one line (a Ctrl-C reaches every process of the terminal's group)."""
    global _EXTRACTOR
    if pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _EXTRACTOR = Extractor(params)


def _init_pool_worker(params):
    _init_worker(params, pool=True)


def _work(paths):
    """[(float16 (frames, n_mels) log-mel, note, sum, sum of squares)] of a chunk of paths (sums over float32)."""
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


def logmels(paths, params: dict, workers: int = 1):
    """Yield _work's list for each chunk of CHUNK paths, in the order of `paths`: in this process (workers <= 1 or
    one chunk) or in `workers` processes with at most two chunks per worker in flight, so memory does not grow with
    the number of clips. Interrupted (KeyboardInterrupt, or the generator closed), the pool drops the queued chunks
    and stops within a chunk's time. A clip that cannot be read raises FeatureError naming it."""
    chunks = list(_chunked(list(paths), CHUNK))
    if workers <= 1 or len(chunks) <= 1:
        if chunks:
            _init_worker(params)
        for chunk in chunks:
            yield _work(chunk)
        return
    Extractor(params)  # the mel filterbank, built once here: forked workers inherit it (and its imports)
    ex = ProcessPoolExecutor(min(workers, len(chunks)), initializer=_init_pool_worker, initargs=(params,))
    try:
        pending = deque()
        for chunk in chunks:
            pending.append(ex.submit(_work, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
