"""Audio grouping (pipeline/audio_groups.py): clips cut from one recording are found from their log-mels alone,
different recordings are not joined, a shared background chains nothing, and a class from one source falls back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import soundfile as sf

from pipeline import audio_groups as ag

SR = 16000
PARAMS = dict(sample_rate=SR, n_fft=512, hop_length=250, n_mels=64, fmin=0.0, fmax=None, trim_db=None, log_floor=1e-10)
FPS = SR / 250


def recording(rng, seconds=8.0):
    """A stand-in for a field recording: a dense sequence of short band-limited noise bursts (steps, knocks,
    rustles) and a few tones, at random times, bands and levels."""
    n = int(seconds * SR)
    x = np.zeros(n)
    freqs = np.fft.rfftfreq(4096, 1 / SR)
    pos = 0
    while pos < n:
        L = int(rng.uniform(0.03, 0.15) * SR)
        lo = rng.uniform(100, 6000)
        band = (freqs > lo) & (freqs < lo * rng.uniform(1.2, 2.5))
        burst = np.fft.irfft(np.fft.rfft(rng.standard_normal(4096)) * band)[:L]
        x[pos : pos + L] += rng.uniform(0.1, 1) * burst[: n - pos] * np.hanning(L)[: n - pos] * 20
        pos += L + int(rng.uniform(0.02, 0.25) * SR)
    t = np.arange(n) / SR
    for _ in range(int(seconds)):
        s, d = rng.uniform(0, seconds - 0.5), rng.uniform(0.2, 0.8)
        m = (t >= s) & (t < s + d)
        x[m] += rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(300, 3000) * t[m]) * np.hanning(m.sum())
    return x


def logmel(x):
    from pipeline.extractor import Extractor

    ext = Extractor(PARAMS)
    power = np.array(ext.power(np.asarray(x, np.float32)))
    return 10 * np.log10(np.maximum(power @ ext.mel.T.toarray(), 1e-10))


def excerpt(rng, x, seconds):
    n = int(seconds * SR)
    s = int(rng.integers(0, len(x) - n))
    return x[s : s + n]


def groups_of(clips, y, **kw):
    index = ag.Index.build([logmel(c) for c in clips], 64, FPS, show=False).without_stop_words()
    width = 2 * max(len(c) for c in clips) // 250 + 9
    pairs, edges = ag.curated_segments(index, 8, width, show=False)
    found = ag.Found(pairs, edges)
    kw = {"min_purity": 0.6, "max_class_share": 0.9, **kw}
    groups, info = ag.clip_groups(found, np.asarray(y), **kw)
    return groups, info, found


def shares(groups, i, j) -> bool:
    return bool(set(groups[i]) & set(groups[j]))


def test_excerpts_at_other_offsets_levels_lengths_and_mixtures_are_grouped():
    rng = np.random.default_rng(1)
    a, b, other = recording(rng), recording(rng), recording(rng)
    # excerpts of one 5-s stretch of a, at offsets that are no whole number of frames (4003 samples = 16.01 hops)
    clips = [
        a[: 3 * SR],
        a[4003 : 4003 + 2 * SR] * 0.05,  # -26 dB, another length
        a[8000 : 8000 + 4 * SR] + 0.3 * other[: 4 * SR],  # another sound mixed over it (-10 dB), whole frames
        np.tile(a[SR + 77 : int(2.5 * SR) + 77], 2),  # repetition
        b[: 4 * SR],
        b[int(1.3 * SR) + 61 : int(5.3 * SR) + 61],  # b: another recording of the same class
    ]
    y = np.zeros((6, 2))
    y[:, 0] = 1
    groups, info, _ = groups_of(clips, y, max_class_share=1.0)
    for i in (1, 2, 3):
        assert shares(groups, 0, i), (i, groups)
    assert shares(groups, 4, 5), groups
    assert not any(shares(groups, i, j) for i in range(4) for j in (4, 5)), groups  # two recordings of one class


def test_a_background_shared_by_many_clips_chains_nothing():
    rng = np.random.default_rng(2)
    bed = recording(rng, 12.0)
    events = [recording(rng, 4.0) for _ in range(6)]
    clips, y = [], np.zeros((12, 6))
    for k in range(12):  # two clips per event recording (overlapping), all over one bed 9 dB down
        e = events[k // 2]
        x = e[: 3 * SR] if k % 2 == 0 else e[SR : 4 * SR]
        clips.append(x[: 3 * SR] + 0.35 * bed[k * SR // 2 : k * SR // 2 + 3 * SR][: len(x[: 3 * SR])])
        y[k, k // 2] = 1  # each event recording its own class
    groups, info, found = groups_of(clips, y, max_class_share=1.0)
    for k in range(0, 12, 2):
        assert shares(groups, k, k + 1), (k, groups)
    for i in range(12):
        for j in range(12):
            if i // 2 != j // 2:
                assert not shares(groups, i, j), (i, j, groups)
    bed = [(a, b) for a, b in found.pairs.tolist() if a // 2 != b // 2]
    assert len(bed) >= 8  # the bed was heard across the clips (and those stretches left out)
    assert info["largest_share"] <= 2 / 12 + 1e-3


def test_a_class_from_one_source_falls_back():
    rng = np.random.default_rng(3)
    src = [recording(rng, 6.0) for _ in range(3)]
    clips = [src[k % 3][(k // 3) * SR // 4 : (k // 3) * SR // 4 + 3 * SR] for k in range(15)]
    y = np.zeros((15, 3))
    y[np.arange(15), np.arange(15) % 3] = 1  # class c is every excerpt of source c
    y[np.arange(15) % 3 == 2, 2] = 0
    y[np.arange(15) % 3 == 2, 1] = 1  # class 1: source 1 and source 2, 5 clips each
    groups, info, _ = groups_of(clips, y, max_class_share=0.5)
    assert info["whole_class"] == ["0"] and info["fallback"]
    groups, info, _ = groups_of(clips, y, max_class_share=1.0)
    assert not info["fallback"] and info["kept"] == 3


def test_segments_of_clips_without_a_common_label_and_impure_recordings_are_dropped():
    # segments 0-2 join clips 0-1, 1-2, 2-3 (one recording by their edges); 3 joins 4-5; 4 joins 0-4 (no label in
    # common: a background); clips 0..2 carry class 0 and 1, clip 3 class 2 only
    y = np.eye(3)[[0, 0, 1, 2, 0, 0]]
    y[1, 1] = y[2, 0] = 1
    found = ag.Found(np.array([[0, 1], [1, 2], [2, 3], [4, 5], [0, 3]]), np.array([[0, 1], [1, 2], [2, 4]]))
    groups, info = ag.clip_groups(found, y, min_purity=0.6, max_class_share=1.0)
    # segment 2 (clips 2-3) shares no label, nor does 4: recordings {0,1,2} and {4,5}; the edge 2-4 is ignored
    assert groups[0] == groups[1] == groups[2] and groups[4] == groups[5] and groups[0] != groups[4]
    assert groups[3] == ["clip:3"]
    # a chain of multi-label clips, each pair sharing a label, no label common to most: an impure recording
    y = np.eye(4)[[[0, 1], [1, 2], [2, 3], [3, 0]]].sum(axis=1)
    found = ag.Found(np.array([[0, 1], [1, 2], [2, 3]]), np.array([[0, 1], [1, 2]]))
    groups, info = ag.clip_groups(found, y, min_purity=0.6, max_class_share=1.0)
    assert info["background"] == 1 and groups == [[f"clip:{i}"] for i in range(4)]
    groups, info = ag.clip_groups(found, y, min_purity=0.5, max_class_share=1.0)
    assert info["kept"] == 1 and groups == [["a0"]] * 4


def write_clip(folder, name, x):
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, np.asarray(x / max(np.abs(x).max(), 1e-9) * 0.5, np.float32), SR, subtype="PCM_16")


def test_folds_group_by_audio_end_to_end(tmp_path, cfg_for):
    """`auto` without a sources column groups by audio: a recording's clips share a fold, folds.csv lists each clip's
    groups, and a test clip cut from a curated clip's recording is reported in shared_audio.csv."""
    from pipeline import features, folds

    rng = np.random.default_rng(4)
    root = tmp_path / "ds"
    classes = ["Bark", "Meow", "Moo"]
    recs = [recording(rng, 10.0) for _ in range(9)]  # 3 recordings per class
    rows = []
    for k in range(27):  # 3 clips per recording, overlapping stretches
        r = k // 3
        s = (k % 3) * SR
        write_clip(root / "train_curated", f"c{k:02d}.wav", recs[r][s : s + 4 * SR] * rng.uniform(0.2, 1))
        rows.append((f"c{k:02d}.wav", classes[r // 3]))
    pd.DataFrame(rows, columns=["fname", "labels"]).to_csv(root / "train_curated.csv", index=False)
    write_clip(root / "train_noisy", "n0.wav", recording(rng, 3.0))
    pd.DataFrame([("n0.wav", "Bark")], columns=["fname", "labels"]).to_csv(root / "train_noisy.csv", index=False)
    write_clip(root / "test", "t_leak.wav", recs[4][int(1.5 * SR) : int(4.5 * SR)])
    write_clip(root / "test", "t_new.wav", recording(rng, 3.0))
    sub = pd.DataFrame({"fname": ["t_leak.wav", "t_new.wav"], **{c: 0.0 for c in classes}})
    sub.to_csv(root / "sample_submission.csv", index=False)
    cfg = cfg_for(
        root,
        "folds.n_splits=3",
        "features.sample_rate=16000",
        "features.n_fft=512",
        "features.hop_length=250",
        "features.n_mels=64",
        "folds.audio.min_match=8",
    )
    features.main(cfg)
    df = folds.main(cfg)
    by_rec = df.assign(rec=[int(f[1:3]) // 3 for f in df["fname"]])
    assert (by_rec.groupby("rec")["fold"].nunique() == 1).all(), by_rec
    assert by_rec["fold"].nunique() == 3
    assert (by_rec.groupby("rec")["groups"].nunique() == 1).all()
    shared = pd.read_csv(tmp_path / "runs" / cfg.run.name / "folds" / "shared_audio.csv")
    assert shared["fname"].tolist() == ["t_leak.wav"]
    assert set(shared["curated"].iloc[0].split(";")) <= {"c12.wav", "c13.wav", "c14.wav"}
    # a rerun reads the cached pass and changes nothing
    assert folds.main(cfg).equals(df)
