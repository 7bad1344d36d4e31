"""The embedded demo dataset: FSDKaggle2019-layout audio tagging data rendered from a General MIDI soundfont.

The real instrument and sound-effect recordings in TimGM6mb.sf2 (shipped with pretty_midi) are played with
tinysoundfont in varied note patterns (pitch, velocity, tempo, timing, kit) to make 24 classes, named after
FSDKaggle2019 classes where a General MIDI sound fits. Clips carry 1 to 3 labels (mixed overlapping or in sequence)
over a quiet background of noise and hum. The noisy split is domain-shifted (filtering, reverb, louder noise, gain,
clipping; mostly 15-s clips) and about 40% of its label sets are corrupted (a label replaced, added or dropped):
train_noisy.csv holds the corrupted labels, train_noisy_truth.csv the true ones.

    python -m pipeline.datasets.demo [--out data/demo] [--preset default|tiny] [--n-curated N] [--n-noisy N]
                                     [--n-test N] [--seed 0] [--workers 2]

    out/train_curated/ train_noisy/ test/     wavs: 44.1 kHz mono 16-bit PCM, fnames of 8 hex digits
    out/train_curated.csv train_noisy.csv train_noisy_truth.csv test_labels.csv     fname,labels
    out/sample_submission.csv                  fname + the sorted class names, all 0
    out/single_label.csv                       fname,label,fold: the curated and test clips that carry one label,
                                               as a single-label dataset (data.single_label_csv=single_label.csv)
                                               with 5 predefined folds, stratified by class
    out/demo_meta.json                         the build parameters (written last) and a few statistics

Every clip's labels, length and audio derive from (seed, split, index) alone, so a seed gives byte-identical files
whatever the number of workers. The build goes to a temporary sibling folder that is renamed onto `out` at the end;
a rerun with the same parameters is a no-op, one with other parameters replaces the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

from pipeline.utils import atomic_write_json, get_logger
from pipeline.utils import progress as progress_bar

VERSION = 2  # bump whenever the generator's output changes (2: single_label.csv)
SR = 44100
SPLITS = ("train_curated", "train_noisy", "test")
NOISE_RATE = 0.4  # share of noisy clips whose label set is corrupted
LABEL_COUNTS, LABEL_P = (1, 2, 3), (0.75, 0.20, 0.05)
TAIL = 1.5  # seconds a source may ring on after its last note-off
KITS = (0, 8, 16, 24, 25, 32, 40)  # drum kits (bank 128): Standard, Room, Power, Electronic, TR 808, Jazz, Brush
SF2 = None  # set lazily: os.path.join(dirname(pretty_midi.__file__), "TimGM6mb.sf2")

_LEN_DEFAULT = {"median": 4.0, "sigma": 0.7, "min": 0.3, "max": 30.0, "noisy": 15.0}
_LEN_TINY = {"median": 1.5, "sigma": 0.7, "min": 0.3, "max": 4.0, "noisy": 4.0}
PRESETS = {
    "default": {"train_curated": 480, "train_noisy": 480, "test": 240, "lengths": _LEN_DEFAULT},
    "tiny": {"train_curated": 48, "train_noisy": 40, "test": 30, "lengths": _LEN_TINY},
}

# Each class: a note-pattern kind and its sounds: `progs` (GM programs, bank 0) over the key range `keys`, and/or
# `kit` (drum-kit notes, a random kit per clip); the other fields tune the pattern.
CLASSES = {
    "Accordion": dict(kind="line", progs=(21, 23), keys=(53, 81), sustain=True, chords=0.3),
    "Acoustic_guitar": dict(kind="line", progs=(24, 25), keys=(40, 79), chords=0.1),
    "Applause": dict(kind="held", progs=(126,), keys=(55, 72), swell=(0.1, 0.5)),
    "Bass_drum": dict(kind="hits", kit=(35, 36), sub=(1, 2), density=(0.4, 0.9)),
    "Bass_guitar": dict(kind="line", progs=(32, 33, 34, 35, 36, 37), keys=(28, 55)),
    "Bicycle_bell": dict(
        kind="bursts", progs=(112,), keys=(84, 100), kit=(53, 81), n=(2, 8), gap=(0.05, 0.1), pause=(0.6, 2.5), hold=0.4
    ),
    "Chirp_and_tweet": dict(
        kind="bursts",
        progs=(123,),
        keys=(60, 96),
        palette=(3, 8),
        n=(1, 6),
        gap=(0.07, 0.2),
        pause=(0.2, 1.5),
        hold=0.2,
    ),
    "Church_bell": dict(
        kind="bursts", progs=(14,), keys=(36, 64), palette=(1, 4), n=(1, 4), gap=(0.6, 1.5), pause=(0.8, 3.0), hold=3.0
    ),
    "Clapping": dict(kind="hits", kit=(39,), sub=(1, 2), density=(0.7, 1.0), bpm=(90, 200), layers=3),
    "Electric_guitar": dict(kind="line", progs=(26, 27, 28, 29, 30), keys=(40, 84), chords=0.2),
    "Flute": dict(kind="line", progs=(72, 73, 74), keys=(60, 96), sustain=True),
    "Glockenspiel": dict(kind="line", progs=(9,), keys=(72, 108)),
    "Gong": dict(
        kind="bursts",
        kit=(49, 52, 57),
        tune=(-24, -10),
        palette=(1, 2),
        n=(1, 2),
        gap=(1.0, 2.5),
        pause=(2.0, 5.0),
        hold=4.0,
    ),
    "Harmonica": dict(kind="line", progs=(22,), keys=(60, 84), sustain=True, chords=0.3),
    "Hi-hat": dict(kind="hits", kit=(42, 42, 42, 44, 46), sub=(2, 4), density=(0.5, 1.0)),
    "Knock": dict(
        kind="bursts",
        progs=(115,),
        keys=(36, 60),
        kit=(37, 76, 77),
        n=(2, 5),
        gap=(0.12, 0.3),
        pause=(0.8, 3.0),
        hold=0.1,
    ),
    "Marimba_and_xylophone": dict(kind="line", progs=(12, 13), keys=(48, 96)),
    "Piano": dict(kind="line", progs=(0, 1, 2), keys=(36, 96), chords=0.3),
    "Strum": dict(kind="strum", progs=(24, 25, 26, 27)),
    "Telephone_ring": dict(
        kind="bursts", progs=(124,), keys=(55, 72), n=(6, 14), gap=(0.08, 0.16), pause=(1.5, 4.0), hold=0.15
    ),
    "Tick-tock": dict(
        kind="hits",
        progs=(115,),
        keys=(60, 84),
        kit=(31, 33, 76, 77),
        sub=(1,),
        density=(1.0, 1.0),
        bpm=(50, 130),
        alternate=True,
    ),
    "Trumpet": dict(kind="line", progs=(56, 59), keys=(55, 82), sustain=True),
    "Violin": dict(kind="line", progs=(40, 110), keys=(55, 91), sustain=True),
    "Waves_and_surf": dict(kind="held", progs=(122,), keys=(48, 72), swell=(0.5, 0.9)),
}
CLASS_NAMES = sorted(CLASSES)
SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9), (0, 3, 5, 7, 10))
CHORDS = (
    (40, 47, 52, 56, 59, 64),
    (45, 52, 57, 61, 64),
    (50, 57, 62, 66),
    (43, 47, 50, 55, 59, 67),
    (48, 52, 55, 60, 64),
    (45, 52, 57, 60, 64),
    (40, 47, 52, 55, 59, 64),
    (50, 57, 62, 65),
)


# ---- note patterns: each returns [(start s, key, velocity, hold s)] for a source of L seconds ----


def _start(rng, L):
    return rng.uniform(0, min(0.05, L / 10))


def _vel(rng, base, sd=10):
    return int(np.clip(base + rng.normal(0, sd), 20, 127))


def _line(rng, L, keys, spec):
    """A melody (random walk on a scale) with occasional chords."""
    sustain = spec.get("sustain", False)
    beat = 60 / rng.uniform(60, 110 if sustain else 160)
    steps, probs = ((0.5, 1, 2), (0.3, 0.45, 0.25)) if sustain else ((0.25, 0.5, 1), (0.3, 0.5, 0.2))
    lo, hi = keys[0], keys[-1]
    root = int(rng.integers(lo, max(lo + 1, hi - 11)))
    scale = SCALES[rng.integers(len(SCALES))]
    pitches = [root + 12 * o + s for o in range(-2, 5) for s in scale if lo <= root + 12 * o + s <= hi]
    pos, base, t, notes = int(rng.integers(len(pitches))), rng.uniform(50, 115), _start(rng, L), []
    while t < L:
        step = rng.choice(steps, p=probs) * beat
        if not notes or rng.random() > 0.1:
            hold = step * (rng.uniform(0.85, 1.0) if sustain else rng.uniform(0.5, 1.6))
            ks = [pitches[pos]]
            if rng.random() < spec.get("chords", 0.0):
                ks += [pitches[j] for j in (pos + 2, pos + 4) if j < len(pitches)]
            v = _vel(rng, base)
            notes += [(t, k, v, hold) for k in ks]
        pos = int(np.clip(pos + rng.integers(-2, 3), 0, len(pitches) - 1))
        t += step * rng.uniform(0.97, 1.03)
    return notes


def _strum(rng, L, keys, spec):
    """Strummed guitar chords: down-strokes on the beat, up-strokes (top strings) between, each string delayed."""
    half, capo, base = 30 / rng.uniform(70, 140), int(rng.integers(0, 6)), rng.uniform(60, 115)
    times, t, i = [], _start(rng, L), 0
    while t < L:
        if i == 0 or rng.random() < (0.9 if i % 2 == 0 else 0.5):
            times.append((t, i))
        t += half * rng.uniform(0.97, 1.03)
        i += 1
    notes, chord = [], CHORDS[0]
    for j, (t, i) in enumerate(times):
        if j == 0 or i % 8 == 0:
            chord = CHORDS[rng.integers(len(CHORDS))]
        ks = chord if i % 2 == 0 else chord[-int(rng.integers(3, 5)) :][::-1]
        hold = (times[j + 1][0] if j + 1 < len(times) else L) - t
        dly, v = rng.uniform(0.008, 0.03), _vel(rng, base - 10 * (i % 2))
        notes += [(t + n * dly, k + capo, _vel(rng, v, 5), max(hold - n * dly, 0.05)) for n, k in enumerate(ks)]
    return notes


def _hits(rng, L, keys, spec):
    """Hits on a tempo grid (drum patterns, clapping with 1 to 3 clappers, alternating tick-tock)."""
    step = 60 / rng.uniform(*spec.get("bpm", (70, 160))) / rng.choice(spec["sub"])
    dens, base = rng.uniform(*spec["density"]), rng.uniform(60, 115)
    pair = rng.choice(sorted(set(keys)), 2, replace=False) if spec.get("alternate") else None
    layers = int(rng.integers(1, spec.get("layers", 1) + 1))
    t, i, notes = _start(rng, L), 0, []
    while t < L:
        if i == 0 or rng.random() < dens:
            for layer in range(layers):
                k = int(pair[i % 2]) if pair is not None else int(rng.choice(keys))
                dt = abs(rng.normal(0, 0.015)) if layer else 0.0
                notes.append((t + dt, k, _vel(rng, base + (10 if i % 4 == 0 else 0)), 0.1))
        t += step * rng.uniform(0.98, 1.02)
        i += 1
    return notes


def _bursts(rng, L, keys, spec):
    """Bursts of repeated strikes separated by pauses (knocks, tweets, rings, bells, gongs)."""
    m = int(rng.integers(spec.get("palette", (1, 1))[0], spec.get("palette", (1, 1))[1] + 1))
    palette = rng.choice(keys, min(m, len(keys)), replace=False)
    gap, base, t, notes = rng.uniform(*spec["gap"]), rng.uniform(70, 120), _start(rng, L), []
    while t < L:
        for _ in range(int(rng.integers(spec["n"][0], spec["n"][1] + 1))):
            notes.append((t, int(rng.choice(palette)), _vel(rng, base), spec["hold"]))
            t += gap * rng.uniform(0.85, 1.15)
        t += rng.uniform(*spec["pause"])
    return notes


def _held(rng, L, keys, spec):
    """One or two looped effects (applause, seashore) held for the whole source."""
    ks = rng.choice(keys, int(rng.integers(1, 3)), replace=False)
    return [(_start(rng, L), int(k), _vel(rng, 100, 15), L) for k in ks]


PATTERNS = {"line": _line, "strum": _strum, "hits": _hits, "bursts": _bursts, "held": _held}

# ---- rendering ----

_SYNTH = None


def _synth():
    """One synthesizer per process, the soundfont loaded once."""
    global _SYNTH, SF2
    if _SYNTH is None:
        import pretty_midi
        import tinysoundfont

        SF2 = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
        syn = tinysoundfont.Synth(samplerate=SR)
        _SYNTH = (syn, syn.sfload(SF2))
    return _SYNTH


def _play(bank, preset, drums, tune, notes, stop, n):
    """Render notes (note-offs no later than `stop` s) to n mono float64 samples."""
    syn, sfid = _synth()
    ch = 9 if drums else 0
    syn.sounds_off()
    syn.generate_simple(4096)  # let voices left by the previous source finish their quick release
    syn.program_select(ch, sfid, bank, preset, is_drums=drums)
    syn.set_tuning(ch, float(tune))
    syn.pitchbend(ch, 8192)
    events = []
    for t, k, v, hold in notes:
        if int(t * SR) < n:
            events += [(int(t * SR), 1, int(k), int(v)), (int(min(t + hold, stop) * SR), 0, int(k), 0)]
    out, pos = [], 0
    for s, on, k, v in sorted(events):  # at equal times note-offs (0) come first
        if min(s, n) > pos:
            out.append(np.frombuffer(syn.generate_simple(min(s, n) - pos), np.float32).reshape(-1, 2).mean(1))
            pos = min(s, n)
        if s >= n:
            break
        syn.noteon(ch, k, v) if on else syn.noteoff(ch, k)
    if n > pos:
        out.append(np.frombuffer(syn.generate_simple(n - pos), np.float32).reshape(-1, 2).mean(1))
    syn.sounds_off()
    x = np.concatenate(out).astype(np.float64)
    x[-min(n, 220) :] *= np.linspace(1, 0, min(n, 220))  # 5-ms fade where a ringing source is cut
    return x


def _level(x):
    """Level of the active part: RMS over the 50-ms frames within 20 dB of the loudest frame."""
    f = len(x) // 2205
    if f < 2:
        return float(np.sqrt(np.mean(x**2)))
    r = np.sqrt(np.mean(x[: f * 2205].reshape(f, 2205) ** 2, axis=1))
    return float(np.sqrt(np.mean(r[r >= 0.1 * r.max()] ** 2)))


def render_source(name, rng, seconds, limit=None):
    """One class's sound for `seconds` (plus up to TAIL s of ringing, at most `limit` samples), active level 0.1."""
    spec = CLASSES[name]
    if "kit" in spec and ("progs" not in spec or rng.random() < 0.5):
        bank, preset, drums, keys = 128, int(rng.choice(KITS)), True, list(spec["kit"])
    else:
        lo, hi = spec.get("keys", (40, 84))
        bank, preset, drums, keys = 0, int(rng.choice(spec["progs"])), False, list(range(lo, hi + 1))
    notes = PATTERNS[spec["kind"]](rng, seconds, keys, spec)
    tune = rng.uniform(*spec["tune"]) if "tune" in spec else 0.0 if drums else rng.uniform(-0.3, 0.3)
    n = int(round((seconds + TAIL) * SR)) if limit is None else min(int(round((seconds + TAIL) * SR)), limit)
    x = _play(bank, preset, drums, tune, notes, seconds, max(n, 1))
    if "swell" in spec:  # slow swells (waves breaking, applause rising and falling)
        depth, period, phase = rng.uniform(*spec["swell"]), rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
        x *= 1 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * np.arange(len(x)) / SR / period + phase))
    level = _level(x)
    if not np.isfinite(level) or level < 1e-6:
        raise RuntimeError(f"demo data: class {name} rendered silence (program {bank}:{preset}, notes {notes[:3]})")
    return x * (0.1 / level)


def _noise(rng, n):
    """Unit-RMS white, pink or brown noise."""
    x = rng.standard_normal(n + 2000)
    color = rng.integers(3)
    if color == 1:  # pink (Kellet's economy filter)
        x = signal.lfilter(
            [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400], x
        )
    elif color == 2:  # brown, high-passed so it does not drift
        x = signal.lfilter([1], [1, -0.995], x)
    x = x[2000:]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _hum(rng, n):
    f0, t = (50.0, 60.0)[rng.integers(2)], np.arange(n) / SR
    x = sum(rng.uniform(0.1, 1) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) for h in (1, 2, 3, 5))
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _db(rng, lo, hi):
    return 10 ** (rng.uniform(lo, hi) / 20)


def _domain_shift(rng, x):
    """The noisy split's recording conditions: reverb, filtering, louder noise."""
    n = len(x)
    if rng.random() < 0.5:  # reverb: exponentially decaying noise
        rt = rng.uniform(0.3, 1.5)
        m = int(rt * SR)
        ir = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)
        ir = signal.lfilter([0.3], [1, -0.7], ir)
        ir /= np.sqrt(np.sum(ir**2))
        w = rng.uniform(0.2, 0.6)
        x = (1 - w) * x + w * signal.oaconvolve(x, ir)[:n]
    if rng.random() < 0.7:  # band-limiting: cheap microphone, phone, codec
        kind = rng.integers(3)
        if kind == 0:
            sos = signal.butter(4, rng.uniform(1500, 6000), "lowpass", fs=SR, output="sos")
        elif kind == 1:
            sos = signal.butter(2, rng.uniform(150, 800), "highpass", fs=SR, output="sos")
        else:
            sos = signal.butter(3, [rng.uniform(250, 400), rng.uniform(3000, 3800)], "bandpass", fs=SR, output="sos")
        x = signal.sosfilt(sos, x)
    return x + _noise(rng, n) * _level(x) * _db(rng, -20, -3)  # SNR 3 to 20 dB


def _render_clip(task):
    """Render one clip from (seed, split, index) and its true labels; write it as 16-bit PCM."""
    seed, split, index, labels, n, path = task
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
    noisy = split == "train_noisy"
    labels = list(rng.permutation(labels))
    k = len(labels)
    if k > 1 and rng.random() < 0.5:  # in sequence: consecutive segments, slightly overlapping
        edges = np.concatenate([[0], np.cumsum(rng.uniform(0.5, 1.5, k))])
        edges = (edges / edges[-1] * n).astype(int)
        spans = [(edges[j], min(n, edges[j + 1] + int(0.2 * SR))) for j in range(k)]
    else:  # overlapping: every source over the whole clip
        spans = [(0, n)] * k
    if noisy:  # in the noisy set a source covers only part of its span
        cut = [(a, b, max(1, int(rng.uniform(0.4, 1.0) * (b - a)))) for a, b in spans]
        spans = [(s, s + w) for a, b, w in cut for s in [a + int(rng.uniform(0, 1) * (b - a - w))]]
    x = np.zeros(n)
    for name, (a, b) in zip(labels, spans):
        a = min(a, n - 1)
        b = max(min(b, n), a + 1)
        src = render_source(name, rng, (b - a) / SR, limit=n - a)
        x[a : a + len(src)] += src * _db(rng, -12 if noisy else -6, 0)
    level = _level(x)
    x += _noise(rng, n) * level * _db(rng, -55, -35)
    if rng.random() < 0.4:
        x += _hum(rng, n) * level * _db(rng, -55, -35)
    if noisy:
        x = _domain_shift(rng, x)
    peak = np.abs(x).max() + 1e-12
    if noisy:
        x *= _db(rng, -24, -1) / peak
        if rng.random() < 0.15:  # overdriven recording: clipped at the chosen peak
            p = np.abs(x).max()
            x = np.clip(x * _db(rng, 3, 12), -p, p)
    else:
        x *= _db(rng, -12, -1) / peak
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    sf.write(path, pcm, SR, subtype="PCM_16")
    return split, n


# ---- the plan: labels, lengths and fnames of every clip ----


def _corrupt(rng, labels):
    """A wrong label set: one label replaced, one added (if < 3) or one dropped (if > 1)."""
    ops = ["replace"] + (["add"] if len(labels) < 3 else []) + (["drop"] if len(labels) > 1 else [])
    op, others = ops[rng.integers(len(ops))], [c for c in CLASS_NAMES if c not in labels]
    out = list(labels)
    if op == "replace":
        out[rng.integers(len(out))] = others[rng.integers(len(others))]
    elif op == "add":
        out.append(others[rng.integers(len(others))])
    else:
        out.pop(rng.integers(len(out)))
    return sorted(out)


def draw_labels(rng, i, classes, counts, p) -> list[str]:
    """Clip i's sorted label set: classes[i % len(classes)] (balanced primary labels) and k - 1 others, k drawn
    from counts with probabilities p."""
    first = classes[i % len(classes)]
    k = int(rng.choice(counts, p=p))
    rest = [c for c in classes if c != first]
    return sorted([first] + [str(c) for c in rng.choice(rest, k - 1, replace=False)])


def make_plan(seed, sizes, lengths):
    """{split: [dict(index, fname, labels, given, corrupted, n)]}: everything but the audio, from (seed, split, i)."""
    plan, taken = {}, set()
    for sid, split in enumerate(SPLITS):
        rows = []
        for i in range(sizes[split]):
            rng = np.random.default_rng([seed, sid, i, 0])
            labels = draw_labels(rng, i, CLASS_NAMES, LABEL_COUNTS, LABEL_P)
            if split == "train_noisy":
                sec = lengths["noisy"] if rng.random() < 0.85 else rng.uniform(1.0, lengths["noisy"])
            else:
                sec = np.clip(
                    rng.lognormal(np.log(lengths["median"]), lengths["sigma"]), lengths["min"], lengths["max"]
                )
            corrupted = split == "train_noisy" and rng.random() < NOISE_RATE
            given = _corrupt(rng, labels) if corrupted else labels
            salt = 0
            while True:
                fname = hashlib.blake2b(f"{seed}:{split}:{i}:{salt}".encode(), digest_size=4).hexdigest() + ".wav"
                if fname not in taken:
                    break
                salt += 1
            taken.add(fname)
            rows.append(
                dict(index=i, fname=fname, labels=labels, given=given, corrupted=corrupted, n=int(round(sec * SR)))
            )
        plan[split] = rows
    return plan


# ---- the build ----


def _params(preset, seed, sizes, lengths):
    return {
        "version": VERSION,
        "preset": preset,
        "seed": int(seed),
        "sizes": dict(sizes),
        "lengths": dict(lengths),
        "classes": list(CLASS_NAMES),
        "sample_rate": SR,
        "soundfont": "TimGM6mb.sf2",
        "noisy_label_error_rate": NOISE_RATE,
    }


def read_meta(out, name="demo_meta.json"):
    """A finished build's parameters (its meta json less the statistics), None where there is none."""
    try:
        meta = json.loads((out / name).read_text())
        return {k: v for k, v in meta.items() if k != "stats"}
    except (OSError, ValueError):
        return None


def swap_in(tmp: Path, out: Path):
    """Rename a finished build folder onto out: the old folder moved aside first, then deleted."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))  # deleted below
        os.rename(out, trash / out.name)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


def dataset_parser(prog: str, doc: str, out: str, presets) -> argparse.ArgumentParser:
    """The command line a dataset builder shares (demo, real)."""
    ap = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=out, help=f"output folder (default {out})")
    ap.add_argument("--preset", default="default", choices=sorted(presets))
    ap.add_argument("--n-curated", type=int, help="number of curated clips (overrides the preset)")
    ap.add_argument("--n-noisy", type=int, help="number of noisy clips (overrides the preset)")
    ap.add_argument("--n-test", type=int, help="number of test clips (overrides the preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes (the output does not depend on it)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _csv(rows, path, key="labels"):
    df = pd.DataFrame({"fname": [r["fname"] for r in rows], "labels": [",".join(r[key]) for r in rows]})
    df.sort_values("fname").to_csv(path, index=False, lineterminator="\n")


def single_label_rows(plan, seed, n_folds=5) -> pd.DataFrame:
    """fname (relative to the dataset root), label, fold (1..n_folds) of the one-label curated and test clips. The
    clips, class by class and in a seeded order within each class, are dealt round-robin over the folds (the count
    running on from one class to the next): every fold gets each class's clips in turn, and the folds' sizes differ
    by one at most."""
    rows = [
        (f"{split}/{r['fname']}", r["labels"][0])
        for split in ("train_curated", "test")
        for r in plan[split]
        if len(r["labels"]) == 1
    ]
    df = pd.DataFrame(rows, columns=["fname", "label"]).sort_values("fname").reset_index(drop=True)
    rng = np.random.default_rng([seed, 7])
    order = np.concatenate([rng.permutation(np.asarray(idx)) for _, idx in sorted(df.groupby("label").groups.items())])
    df["fold"] = 0
    df.loc[order, "fold"] = 1 + np.arange(len(order)) % n_folds
    return df


def build(
    out_dir, preset="default", seed=0, n_curated=None, n_noisy=None, n_test=None, workers=2, progress=True
) -> Path:
    """Build the demo dataset into out_dir (a no-op when it already holds this build); return out_dir."""
    log, out = get_logger(), Path(out_dir)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    sizes = {s: PRESETS[preset][s] if n is None else int(n) for s, n in zip(SPLITS, (n_curated, n_noisy, n_test))}
    if seed < 0 or any(v < 0 for v in sizes.values()):
        raise ValueError(f"seed and clip counts must be >= 0, got seed {seed}, {sizes}")
    lengths = PRESETS[preset]["lengths"]
    params = _params(preset, seed, sizes, lengths)
    old = read_meta(out) if out.is_dir() else None
    if old == params:
        log.info(f"demo data: {out} already holds this build (preset {preset}, seed {seed}, {sizes}); nothing to do")
        return out
    if out.exists() and old is None and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"demo data: {out} exists and is not a demo build (no demo_meta.json); refusing to replace it"
        )
    if old is not None:
        changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        log.info(f"demo data: {out} holds a build with other parameters ({', '.join(changed)}); rebuilding it")
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: the folder gets the usual mode (umask), not 0700
    try:
        plan = make_plan(seed, sizes, lengths)
        tasks = []
        for split in SPLITS:
            (tmp / split).mkdir()
            tasks += [
                (int(seed), split, r["index"], r["labels"], r["n"], str(tmp / split / r["fname"])) for r in plan[split]
            ]
        tasks.sort(key=lambda t: -t[4])  # longest first: better load balance
        log.info(f"demo data: rendering {len(tasks)} clips ({sizes}) with {workers} worker(s) into {out}")
        bar = progress_bar(total=len(tasks), enabled=progress, desc="demo data", unit="clip")
        if workers <= 1:
            for t in tasks:
                _render_clip(t)
                bar.update()
        else:
            with mp.get_context().Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_clip, tasks):
                    bar.update()
        bar.close()
        _csv(plan["train_curated"], tmp / "train_curated.csv")
        _csv(plan["train_noisy"], tmp / "train_noisy.csv", key="given")
        _csv(plan["train_noisy"], tmp / "train_noisy_truth.csv")
        _csv(plan["test"], tmp / "test_labels.csv")
        sub = pd.DataFrame(0, index=range(len(plan["test"])), columns=CLASS_NAMES)
        sub.insert(0, "fname", sorted(r["fname"] for r in plan["test"]))
        sub.to_csv(tmp / "sample_submission.csv", index=False, lineterminator="\n")
        single_label_rows(plan, seed).to_csv(tmp / "single_label.csv", index=False, lineterminator="\n")
        stats = {
            "hours": {s: round(sum(r["n"] for r in plan[s]) / SR / 3600, 4) for s in SPLITS},
            "noisy_corrupted": sum(r["corrupted"] for r in plan["train_noisy"]),
        }
        atomic_write_json(tmp / "demo_meta.json", {**params, "stats": stats})  # last: marks the build complete
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        f"demo data: built {out} in {time.time() - t0:.1f} s ({stats['hours']} h of audio, "
        f"{stats['noisy_corrupted']}/{sizes['train_noisy']} noisy label sets corrupted)"
    )
    return out


def main(argv=None):
    a = dataset_parser("python -m pipeline.datasets.demo", __doc__, "data/demo", PRESETS).parse_args(argv)
    build(a.out, a.preset, a.seed, a.n_curated, a.n_noisy, a.n_test, a.workers, not a.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
