import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import features
from pipeline.features import FeatureCache, FeatureError, build_cache, cache_dir, norm_stats
from pipeline.data import DataError


def test_cache_layout_and_values(dataset, cfg_for):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    assert out == cache_dir(cfg)
    for split in ("curated", "noisy", "test"):
        cache = FeatureCache(out, split)
        meta = cache.meta
        assert meta["dtype"] == "float16" and meta["shape"][1] == 32
        assert (out / f"{split}.f16").stat().st_size == meta["shape"][0] * 32 * 2
        assert cache.frames.sum() == meta["shape"][0] and (np.diff(cache.offsets) == cache.frames[:-1]).all()
        x = cache.get(cache.fnames[0])
        assert x.shape == (32, cache.frames[0]) and x.dtype == np.float32 and np.isfinite(x).all()
    # noisy-set normalisation: the noisy split has mean 0, std 1 once normalised
    noisy = FeatureCache.open(cfg, "noisy")
    allx = np.concatenate([noisy.get(f) for f in noisy.fnames], axis=1)
    assert abs(allx.mean()) < 1e-2 and abs(allx.std() - 1) < 1e-2


def test_matches_librosa_reference(dataset, cfg_for):
    """Same log-mel as librosa's load + melspectrogram + power_to_db (no trim, no top_db clip)."""
    import librosa
    cfg = cfg_for(dataset, "features.trim_db=null", "features.norm_split=none")
    cache = FeatureCache(build_cache(cfg), "curated")
    f = cache.fnames[1]
    y, _ = librosa.load(dataset / "train_curated" / f, sr=32000, res_type="soxr_hq")
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=32000, n_fft=1024, hop_length=500,
                                                             n_mels=32, pad_mode="constant"), top_db=None)
    ours = cache.get(f)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref)[:, 2:-2].max() < 0.1   # float16 storage of dB values


def test_trim_removes_silence(tmp_path, dataset, cfg_for):
    fname = pd.read_csv(dataset / "train_curated.csv")["fname"][0]
    y, sr = sf.read(dataset / "train_curated" / fname)
    sf.write(dataset / "train_curated" / fname, np.concatenate([np.zeros(sr), y, np.zeros(sr)]), sr)
    trimmed = FeatureCache(build_cache(cfg_for(dataset)), "curated")
    untrimmed = FeatureCache(build_cache(cfg_for(dataset, "features.trim_db=null")), "curated")
    i = trimmed.position(fname)
    # 2 s of digital silence = 128 frames at 64 frames/s
    assert untrimmed.frames[i] - trimmed.frames[i] >= 120


def test_rerun_is_noop_and_changed_params_new_dir(dataset, cfg_for):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.f16")}
    assert build_cache(cfg) == out
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.glob("*.f16")}
    other = cache_dir(cfg_for(dataset, "features.hop_length=400"))
    assert other != out


def test_interrupted_run_leaves_nothing_valid(dataset, cfg_for, monkeypatch):
    cfg = cfg_for(dataset)
    calls = {"n": 0}
    real = features._work

    def dying(paths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(paths)

    monkeypatch.setattr(features, "_work", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg)
    out = cache_dir(cfg)
    done = {p.stem for p in out.glob("*.json")} - {"params"}
    assert "curated" not in done  # the split being written when it died is not marked valid
    assert not list(out.glob(".*"))  # temporaries removed
    with pytest.raises(FileNotFoundError):
        FeatureCache(out, "curated")
    monkeypatch.setattr(features, "_work", real)
    build_cache(cfg)
    assert len(FeatureCache(out, "curated")) == 20


def test_stereo_other_rate_short_and_silent_clips(dataset, cfg_for):
    names = pd.read_csv(dataset / "train_curated.csv")["fname"]
    d = dataset / "train_curated"
    rng = np.random.default_rng(0)
    sf.write(d / names[0], rng.standard_normal((22050, 2)) * 0.1, 22050)          # stereo at 22.05 kHz
    sf.write(d / names[1], rng.standard_normal(100) * 0.1, 44100)                 # shorter than one frame
    sf.write(d / names[2], np.zeros(44100), 44100)                                # all silent
    cfg = cfg_for(dataset)
    cache = FeatureCache(build_cache(cfg), "curated")
    assert abs(cache.frames[0] - 64) <= 2           # 1 s at 64 frames/s
    notes = cache.index.set_index("fname")["note"]
    assert "shorter than one frame" in notes[names[1]] and "silent" in notes[names[2]]
    assert np.isfinite(cache.get(names[2])).all()
    assert "silent" in (cache_dir(cfg) / "log.txt").read_text()


def test_unreadable_file_named(dataset, cfg_for):
    name = pd.read_csv(dataset / "train_curated.csv")["fname"][4]
    (dataset / "train_curated" / name).write_bytes(b"RIFF garbage")
    with pytest.raises(DataError, match=name):
        build_cache(cfg_for(dataset))


def test_extractor_names_bad_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"xx")
    ext = features.Extractor({"sample_rate": 32000, "n_fft": 1024, "hop_length": 500, "n_mels": 32, "fmin": 0.0,
                              "fmax": None, "trim_db": 55.0, "log_floor": 1e-10})
    with pytest.raises(FeatureError, match="bad.wav"):
        ext(p)


def test_two_workers_same_bytes(dataset, cfg_for, tmp_path):
    a = build_cache(cfg_for(dataset))
    b = build_cache(cfg_for(dataset, "run.workers=2", f"features.cache_dir={tmp_path / 'c2'}"))
    assert (a / "noisy.f16").read_bytes() == (b / "noisy.f16").read_bytes()


def test_norm_stats_none(dataset, cfg_for):
    assert norm_stats(cfg_for(dataset, "features.norm_split=none")) == (0.0, 1.0)


def test_stale_temporary_files_of_a_killed_build_are_removed(tmp_path):
    from pipeline.utils import atomic_path, remove_stale_temps
    target = tmp_path / "noisy.f16"
    stale = tmp_path / ".noisy.abc123.f16"
    stale.write_bytes(b"\0" * 1000)                      # what a build killed with -9 leaves
    other = tmp_path / ".curated.abc123.f16"
    other.write_bytes(b"\0" * 10)
    assert remove_stale_temps(target) == 1000
    assert not stale.exists() and other.exists()          # only the same file's temporaries
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and remove_stale_temps(target) == 0
