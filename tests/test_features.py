import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import cache as features
from pipeline import extractor
from pipeline.cache import FeatureCache, build_cache, cache_dir, norm_stats
from pipeline.cache import build as cache_build  # what build_split calls
from pipeline.cache import merge as cache_merge  # the split's index write
from pipeline.cache import shards as cache_shards
from pipeline.data import DataError
from pipeline.extractor import FeatureError


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
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=32000, n_fft=1024, hop_length=500, n_mels=32, pad_mode="constant"),
        top_db=None,
    )
    ours = cache.get(f)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref)[:, 2:-2].max() < 0.1  # float16 storage of dB values


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
    real = extractor._work

    def dying(paths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(paths)

    monkeypatch.setattr(extractor, "_work", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg)
    out = cache_dir(cfg)
    done = {p.stem for p in out.glob("*.json")} - {"params"}
    assert "curated" not in done  # the split being written when it died is not marked valid
    assert not list(out.glob(".*"))  # temporaries removed
    with pytest.raises(FileNotFoundError):
        FeatureCache(out, "curated")
    monkeypatch.setattr(extractor, "_work", real)
    build_cache(cfg)
    assert len(FeatureCache(out, "curated")) == 20


def test_stereo_other_rate_short_and_silent_clips(dataset, cfg_for):
    names = pd.read_csv(dataset / "train_curated.csv")["fname"]
    d = dataset / "train_curated"
    rng = np.random.default_rng(0)
    sf.write(d / names[0], rng.standard_normal((22050, 2)) * 0.1, 22050)  # stereo at 22.05 kHz
    sf.write(d / names[1], rng.standard_normal(100) * 0.1, 44100)  # shorter than one frame
    sf.write(d / names[2], np.zeros(44100), 44100)  # all silent
    sf.write(d / names[3], np.full(44100, np.nan, np.float32), 44100, subtype="FLOAT")  # all NaN
    cfg = cfg_for(dataset)
    cache = FeatureCache(build_cache(cfg), "curated")
    assert abs(cache.frames[0] - 64) <= 2  # 1 s at 64 frames/s
    notes = cache.index.set_index("fname")["note"]
    assert "shorter than one frame" in notes[names[1]] and "silent" in notes[names[2]]
    assert "32000 non-finite samples set to 0" in notes[names[3]]  # counted at 32 kHz and "silent" in notes[names[3]]
    assert np.isfinite(cache.get(names[2])).all() and np.isfinite(cache.get(names[3])).all()
    # the split's count of each kind, in its json and in one log line (what was done with them)
    assert cache.meta["notes"] == {
        "with non-finite samples (set to 0)": 1,
        "shorter than one FFT frame (zero-padded)": 1,
        "silent (kept untrimmed)": 2,
    }
    log = (cache_dir(cfg) / "log.txt").read_text()
    assert (
        "curated: 1 clip(s) with non-finite samples (set to 0), 1 clip(s) shorter than one FFT frame "
        "(zero-padded), 2 clip(s) silent (kept untrimmed)"
    ) in log


def test_unreadable_file_named(dataset, cfg_for):
    name = pd.read_csv(dataset / "train_curated.csv")["fname"][4]
    (dataset / "train_curated" / name).write_bytes(b"RIFF garbage")
    with pytest.raises(DataError, match=name):
        build_cache(cfg_for(dataset))


def test_extractor_names_bad_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"xx")
    ext = extractor.Extractor(
        {
            "sample_rate": 32000,
            "n_fft": 1024,
            "hop_length": 500,
            "n_mels": 32,
            "fmin": 0.0,
            "fmax": None,
            "trim_db": 55.0,
            "log_floor": 1e-10,
        }
    )
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
    stale = [tmp_path / ".noisy.tmp-ab_c1234.f16", tmp_path / ".noisy.ab_c1234.f16"]  # what a kill -9 leaves (and
    for p in stale:  # the form before tmp-)
        p.write_bytes(b"\0" * 500)
    others = [
        tmp_path / ".curated.tmp-abc12345.f16",  # another file's
        tmp_path / ".noisy.x.tmp-abc12345.f16",  # noisy.x.f16's, whose name starts like ours
        tmp_path / ".noisy.tmp-abc12345.npy",
    ]  # another suffix
    for p in others:
        p.write_bytes(b"\0" * 10)
    assert remove_stale_temps(target) == 1000
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    with atomic_path(target) as tmp:
        assert remove_stale_temps(tmp_path / "noisy.x.f16") == 10 and tmp.exists()  # a neighbour's cleanup spares it
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and remove_stale_temps(target) == 0


# --------------------------------------------------------------------------- shards and incremental builds
def _files(out):
    """Every file a finished cache holds per split, as bytes (params.json and the logs aside)."""
    return {
        f"{s}{ext}": (out / f"{s}{ext}").read_bytes()
        for s in ("noisy", "curated", "test")
        for ext in (".f16", ".index.csv", ".json")
    }


def _count_extracted(monkeypatch):
    """Patch the per-chunk worker to count the clips it extracts (run.workers=1 runs it in this process)."""
    seen = []
    real = extractor._work

    def counting(paths):
        seen.extend(p.name for p in paths)
        return real(paths)

    monkeypatch.setattr(extractor, "_work", counting)
    return seen


def test_three_shards_equal_unsharded_bytes(dataset, cfg_for, tmp_path):
    whole = build_cache(cfg_for(dataset))
    cfg = cfg_for(dataset, f"features.cache_dir={tmp_path / 'sharded'}")
    out = cache_dir(cfg)
    build_cache(cfg, shard=(1, 3))
    build_cache(cfg, shard=(0, 3))
    assert not (out / "curated.json").exists()  # two of three shards: nothing merged yet
    with pytest.raises(FileNotFoundError, match="no completed"):
        FeatureCache(out, "curated")
    assert len(list(out.glob("curated.*.part*of3.json"))) == 2
    build_cache(cfg, shard=(2, 3))  # the last one merges
    assert _files(out) == _files(whole)
    assert not list(out.glob("*.part*")) and not list(out.glob(".*"))  # parts and temporaries gone
    assert norm_stats(cfg, out) == norm_stats(cfg_for(dataset), whole)


def test_unsharded_run_completes_a_sharded_build(dataset, cfg_for, tmp_path, monkeypatch):
    """`make features` after a shard was killed extracts the missing shard only, then merges."""
    whole = _files(build_cache(cfg_for(dataset)))
    cfg = cfg_for(dataset, f"features.cache_dir={tmp_path / 'sharded'}")
    build_cache(cfg, shard=(0, 2))
    seen = _count_extracted(monkeypatch)
    out = build_cache(cfg)
    assert _files(out) == whole
    assert 0 < len(seen) < 38 and len(seen) == len(set(seen))  # shard 1's clips only (38 clips in all)


def test_adding_and_changing_clips_extracts_only_those(dataset, cfg_for, tmp_path, monkeypatch):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    cur = pd.read_csv(dataset / "train_curated.csv")
    y, sr = sf.read(dataset / "train_curated" / cur["fname"][0])
    sf.write(dataset / "train_curated" / "new_clip.wav", y[: sr // 2], sr, subtype="PCM_16")  # one new clip
    sf.write(dataset / "train_curated" / cur["fname"][3], y[: sr // 3], sr, subtype="PCM_16")  # one changed
    cur = pd.concat([cur.drop(index=5), pd.DataFrame({"fname": ["new_clip.wav"], "labels": [cur["labels"][0]]})])
    cur.to_csv(dataset / "train_curated.csv", index=False)  # one removed
    seen = _count_extracted(monkeypatch)
    build_cache(cfg)
    assert sorted(seen) == sorted(["new_clip.wav", cur["fname"].iloc[3]])
    assert "curated: 2 of 20 clips to extract, 18 reused" in (out / "log.txt").read_text()
    fresh = build_cache(cfg_for(dataset, f"features.cache_dir={tmp_path / 'fresh'}"))
    assert _files(out) == _files(fresh)  # reuse gives the bytes of a fresh build
    assert FeatureCache(out, "curated").fnames == cur["fname"].tolist()
    seen.clear()
    build_cache(cfg)  # up to date: nothing extracted
    assert seen == []


def test_stale_split_refused_while_shards_rebuild_it(dataset, cfg_for):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    wav = dataset / "train_curated" / pd.read_csv(dataset / "train_curated.csv")["fname"][2]
    original, st = wav.read_bytes(), wav.stat()
    y, sr = sf.read(wav)
    sf.write(wav, y[: sr // 4], sr, subtype="PCM_16")
    build_cache(cfg, shard=(0, 2))
    with pytest.raises(FileNotFoundError, match="being rebuilt"):
        FeatureCache(out, "curated")
    with pytest.raises(FileNotFoundError, match="being rebuilt"):
        norm_stats(cfg_for(dataset, "features.norm_split=curated"), out)
    assert len(FeatureCache(out, "noisy")) == 10  # the unchanged splits stay readable
    wav.write_bytes(original)  # the change undone: the old files are valid again
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    build_cache(cfg)
    assert len(FeatureCache(out, "curated")) == 20
    sf.write(wav, y[: sr // 4], sr, subtype="PCM_16")
    build_cache(cfg, shard=(0, 2))
    build_cache(cfg, shard=(1, 2))
    assert FeatureCache(out, "curated").frames[2] < 20  # a quarter of a second


def test_killed_shards_leave_nothing_behind(dataset, cfg_for, tmp_path):
    cfg = cfg_for(dataset, f"features.cache_dir={tmp_path / 'sharded'}")
    out = cache_dir(cfg)
    build_cache(cfg, shard=(0, 3))
    plan = next(out.glob("curated.*.part0of3.json")).name.split(".")[1]
    killed = out / f".curated.{plan}.part1of3.tmp-deadbeef.f16"  # shard 1 killed with -9 mid-write
    older = out / ".curated.0123456789ab.part0of2.tmp-cafe1234.f16"  # a shard of an earlier plan, killed
    stray = out / "curated.0123456789ab.part1of2.f16"
    for p in (killed, older, stray):
        p.write_bytes(b"\0" * 64)
    build_cache(cfg, shard=(1, 3))
    assert not killed.exists() and older.exists()  # shard 1 reclaims its own temporary
    build_cache(cfg, shard=(2, 3))
    assert not older.exists() and not stray.exists()  # the merge sweeps the rest
    assert not list(out.glob(".*")) and not list(out.glob("*.part*"))


def test_kill_inside_a_merge_neither_wedges_nor_leaks(dataset, cfg_for, tmp_path, monkeypatch):
    """Killed after a one-part merge moved the part's rows into place (before the split's json): the rerun
    extracts again and completes. Killed after the split's json, before the sweep: the next run sweeps the parts."""
    cfg = cfg_for(dataset, f"features.cache_dir={tmp_path / 'k'}")
    out = cache_dir(cfg)
    real = cache_merge.atomic_to_csv

    class Killed(Exception):
        pass

    def die_at_split_index(df, path, **kw):
        if Path(path).name == "curated.index.csv":
            raise Killed
        return real(df, path, **kw)

    monkeypatch.setattr(cache_merge, "atomic_to_csv", die_at_split_index)
    with pytest.raises(Killed):
        build_cache(cfg)
    assert (out / "curated.f16").exists() and list(out.glob("curated.*.part0of1.json"))  # the wedge's state
    monkeypatch.setattr(cache_merge, "atomic_to_csv", real)
    build_cache(cfg)
    whole = {p.name: p.read_bytes() for p in out.glob("curated.*") if "part" not in p.name}
    assert not list(out.glob("curated.*part*"))
    monkeypatch.setattr(cache_build, "_sweep", lambda *a, **k: None)  # killed before the sweep
    (out / "curated.json").unlink()
    build_cache(cfg)
    monkeypatch.undo()
    build_cache(cfg)  # up to date: sweeps what was left
    assert not list(out.glob("curated.*part*"))
    assert {p.name: p.read_bytes() for p in out.glob("curated.*") if "part" not in p.name} == whole


def test_a_build_merged_while_another_extracts_is_not_misread(dataset, cfg_for, tmp_path, monkeypatch):
    """Two plans reuse the same previous build; the one that merges second finds the files replaced under it and
    plans again on top of the new build, instead of reading the new .f16 at the old build's offsets."""
    from pipeline.cache import build_split, clip_table, feature_params
    from pipeline.data import dataset as load_dataset
    from pipeline.utils import get_logger

    cfg = cfg_for(dataset, f"features.cache_dir={tmp_path / 'race'}")
    out = build_cache(cfg)
    ds = load_dataset(cfg, check_audio=True)
    clips, params, log = clip_table(ds, "curated"), feature_params(cfg), get_logger()
    wav = dataset / "train_curated" / clips["fname"].iloc[3]
    y, sr = sf.read(wav)
    sf.write(wav, y[: sr // 2], sr, subtype="PCM_16")  # this process's change: one clip re-extracted
    ours = clip_table(load_dataset(cfg, check_audio=True), "curated")
    real = cache_build._extract_part

    def interloper_merges_first(*a, **k):
        monkeypatch.setattr(cache_build, "_extract_part", real)
        assert build_split(out, "curated", clips.iloc[1:], params, cfg, None, log)  # a build without the 1st clip
        real(*a, **k)

    monkeypatch.setattr(cache_build, "_extract_part", interloper_merges_first)
    assert build_split(out, "curated", ours, params, cfg, None, log)
    fresh = build_cache(cfg_for(dataset, f"features.cache_dir={tmp_path / 'fresh'}"))
    assert {k: v for k, v in _files(out).items() if k.startswith("curated")} == {
        k: v for k, v in _files(fresh).items() if k.startswith("curated")
    }
    assert not list(out.glob("curated.*part*"))


def test_parse_shard_flags_and_environment():
    from pipeline.cache import parse_shard
    from pipeline.utils import UserError

    assert parse_shard(None, {}) is None and parse_shard(None, {"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4)  # torchrun
    assert parse_shard("auto", {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert parse_shard("auto", slurm) == (2, 4)
    for text, env, match in [
        ("4/4", {}, "outside 0..3"),
        ("1-3", {}, "expected i/n"),
        ("auto", {}, "neither"),
        ("auto", {**slurm, "SLURM_ARRAY_TASK_ID": "9"}, "outside 0..3"),
        ("auto", {"RANK": "x", "WORLD_SIZE": "2"}, "not integers"),
        (None, {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ]:
        with pytest.raises(UserError, match=match):
            parse_shard(text, env)


def test_bad_shard_flag_is_one_line_error(dataset):
    import subprocess
    import sys

    from pipeline.utils import ROOT

    run = subprocess.run(
        [sys.executable, "-m", "pipeline.features", f"data.root={dataset}", "--shard", "3/3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert (
        run.stderr.strip() == "fattag features: error: --shard 3/3: shard 3 of 3 is outside 0..2 (shards are "
        "counted from 0; a SLURM array with gaps needs --shard i/n)"
    )


def test_two_shard_processes_at_once_merge_once(dataset, cfg_for, tmp_path):
    """`python -m pipeline.features --shard i/2` started together: one of them merges, and the cache is a whole
    build's, byte for byte (as torchrun would start them: RANK / WORLD_SIZE)."""
    import subprocess
    import sys

    from pipeline.utils import ROOT

    whole = _files(build_cache(cfg_for(dataset)))
    cache = tmp_path / "sharded"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.features",
        "--config",
        str(ROOT / "configs" / "base.yaml"),
        f"data.root={dataset}",
        f"features.cache_dir={cache}",
        "run.workers=1",
        "run.progress=false",
        "features.n_mels=32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(cmd, env={**env, "RANK": str(i)}, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    out = cache_dir(cfg_for(dataset, f"features.cache_dir={cache}"))
    assert _files(out) == whole
    assert not list(out.glob("*.part*")) and not list(out.glob(".*"))
    assert sum("shard 0/2" in e for e in errs) == 1 and sum("shard 1/2" in e for e in errs) == 1


def test_same_shard_started_twice_is_an_error(dataset, cfg_for):
    from pipeline.data import dataset as load_dataset
    from pipeline.utils import UserError, file_lock

    cfg = cfg_for(dataset)
    clips = features.clip_table(load_dataset(cfg), "noisy")
    plan = cache_shards._plan(features.split_key(features.feature_params(cfg), clips), None, clips)
    lock = cache_dir(cfg) / f"noisy.{plan}.part0of2.lock"
    with file_lock(lock):  # shard 0/2 running in another process
        with pytest.raises(UserError, match=r"part0of2.lock: shard 0/2 of noisy is held by another process"):
            build_cache(cfg, shard=(0, 2))
    build_cache(cfg, shard=(0, 2))
    assert (cache_dir(cfg) / f"noisy.{plan}.part0of2.json").exists()
