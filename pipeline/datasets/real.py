"""The real-sound dataset: FSDKaggle2019-layout clips mixed from recorded sound effects that Debian packages ship.

The sources (real_sources.py) are field recordings and foley from ten pinned packages, mapped to classes by
the checked-in real_classes.csv (FSDKaggle2019 names where they fit). Each source recording (its numbered
cuts and its near-duplicates in other packages joined) belongs to one of three pools, curated, noisy or test,
stratified per class; a split's clips are made from its own pool only, so the test score measures generalisation
to recordings never heard in training, as FSDKaggle2019's test set does. Classes with fewer than MIN_SOURCES source
recordings are left out (and named in the meta json).

A clip carries one to three labels (mean about 1.2): each label's event is a recording of its pool, placed at a
random time and level over a background bed (recorded ambience and noise); short impulsive sources (steps, knocks,
shots) are repeated as sequences. The noisy split is four times the curated one, with FSDKaggle2019-like label
noise (about half of the clips with a wrong, missing or extra label; related classes confused more often than
others) and a domain shift (reverberation, band limiting, codec artefacts, noise, level, clipping).

    python -m pipeline.datasets.real [--out data/real] [--seed 0] [--preset default|tiny] [--cache DIR] [--workers 2]
    python -m pipeline.datasets.real --out data/real --verify  # statistics, checks and two baselines

    out/train_curated/ train_noisy/ test/      wavs: 44.1 kHz mono 16-bit PCM
    out/train_curated.csv train_noisy.csv      fname,labels,sources (the source recordings mixed into the clip)
    out/train_noisy_truth.csv test_labels.csv  fname,labels (true labels)
    out/test_sources.csv                       fname,sources
    out/sample_submission.csv                  fname + the class names, all 0
    out/SOURCES.csv                            every source file: source id, pool, class, package, version, member,
                                               licence, credit
    out/real_meta.json                         the build's parameters and statistics (written last)

Every clip derives from (seed, split, index) alone, so a seed gives byte-identical files whatever the number of
workers. The build goes to a hidden sibling folder named by its parameters; each wav is written under a temporary
name and renamed, so an interrupted build resumes where it stopped, and the folder is renamed onto `out` when
complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

from pipeline.datasets.demo import (
    _db,
    _domain_shift,
    _hum,
    _level,
    _noise,
    dataset_parser,
    draw_labels,
    read_meta,
    swap_in,
)
from pipeline.datasets.real_sources import DEFAULT_CACHE, PACKAGE, SR, SourceBank, check_free_space
from pipeline.utils import UserError, atomic_write_json, get_logger, user_errors
from pipeline.utils import progress as progress_bar

VERSION = 1  # bump whenever the builder's output changes
SPLITS = ("train_curated", "train_noisy", "test")
POOL_SHARE = {"train_curated": 0.4, "train_noisy": 0.35, "test": 0.25}  # of each class's source recordings
MIN_SOURCES = 8  # a class needs this many source recordings (at least 2 in each pool)
NOISE_RATE = 0.5  # share of noisy clips whose label set is wrong, missing or extra
RELATED = 0.7  # share of label errors that pick a class of the same family
LABEL_COUNTS, LABEL_P = (1, 2, 3), (0.83, 0.14, 0.03)
IMPULSIVE_S = 1.0  # sources shorter than this repeat as sequences (steps, knocks, shots)
FAMILIES = (  # classes a labeller confuses more often with each other than with the rest
    ("Bark", "Bleat", "Moo", "Neigh_and_whinny", "Fowl", "Chirp_and_tweet", "Growl_and_roar"),
    ("Thump_and_thud", "Clang", "Crash_and_break", "Walk_and_footsteps", "Door", "Computer_keyboard"),
    ("Gunshot_and_gunfire", "Explosion", "Gun_cocking", "Blade", "Whoosh"),
    ("Aircraft", "Machinery"),
    ("Water", "Crackle"),
    ("Screaming", "Crowd"),
)
_LEN_DEFAULT = {"median": 4.0, "sigma": 0.8, "min": 0.3, "max": 30.0, "noisy_median": 6.0, "noisy_max": 15.0}
_LEN_TINY = {"median": 1.5, "sigma": 0.6, "min": 0.3, "max": 4.0, "noisy_median": 2.0, "noisy_max": 4.0}
PRESETS = {
    "default": {"train_curated": 1500, "train_noisy": 6000, "test": 1000, "lengths": _LEN_DEFAULT},
    "tiny": {"train_curated": 60, "train_noisy": 80, "test": 40, "lengths": _LEN_TINY},
}


# ---- pools ----


def source_ids(index: pd.DataFrame) -> pd.Series:
    """A short id per source group (s + 8 hex digits of its name), the form the CSVs' sources column uses."""
    return index["group"].map(lambda g: "s" + hashlib.blake2b(g.encode(), digest_size=4).hexdigest())


def make_pools(index: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """index plus `source` and `pool` columns (every group in one pool, POOL_SHARE of each class's groups, at least
    2 per pool), for the classes with MIN_SOURCES groups or more; and the classes left out."""
    index = index[~index["class"].str.startswith("_")].copy()
    index["source"] = source_ids(index)
    counts = index.groupby("class")["source"].nunique()
    dropped = sorted(counts[counts < MIN_SOURCES].index)
    index = index[~index["class"].isin(dropped)].copy()
    pool = {}
    for c in sorted(index["class"].unique()):
        groups = sorted(index.loc[index["class"] == c, "source"].unique())
        rng = np.random.default_rng([seed, int(hashlib.sha1(c.encode()).hexdigest()[:8], 16)])
        groups = [groups[i] for i in rng.permutation(len(groups))]
        n_test = max(2, round(POOL_SHARE["test"] * len(groups)))
        n_cur = max(2, round(POOL_SHARE["train_curated"] * len(groups)))
        for j, g in enumerate(groups):
            pool[g] = "test" if j < n_test else "train_curated" if j < n_test + n_cur else "train_noisy"
    index["pool"] = index["source"].map(pool)
    return index, dropped


# ---- the plan: labels, lengths and fnames of every clip ----


def _family(cls: str, classes) -> list[str]:
    fam = next((f for f in FAMILIES if cls in f), ())
    return [c for c in fam if c != cls and c in classes]


def _other(rng, labels, classes):
    """A class not in labels: one related to a label (RELATED of the time, where one exists) or any."""
    related = sorted({c for lab in labels for c in _family(lab, classes)} - set(labels))
    if related and rng.random() < RELATED:
        return related[rng.integers(len(related))]
    rest = [c for c in classes if c not in labels]
    return rest[rng.integers(len(rest))]


def corrupt(rng, labels, classes):
    """A wrong label set: a label replaced, one added (if < 3) or one dropped (if > 1)."""
    spare = len(labels) < len(classes)
    ops = (
        ["replace", "replace"] * spare
        + (["add"] if len(labels) < 3 and spare else [])
        + (["drop"] if len(labels) > 1 else [])
    )
    if not ops:
        return sorted(labels)
    op, out = ops[rng.integers(len(ops))], list(labels)
    if op == "replace":
        out[rng.integers(len(out))] = _other(rng, labels, classes)
    elif op == "add":
        out.append(_other(rng, labels, classes))
    else:
        out.pop(rng.integers(len(out)))
    return sorted(out)


def _seconds(rng, split, lengths):
    if split == "train_noisy":
        return float(np.clip(rng.lognormal(np.log(lengths["noisy_median"]), 0.6), 0.5, lengths["noisy_max"]))
    return float(np.clip(rng.lognormal(np.log(lengths["median"]), lengths["sigma"]), lengths["min"], lengths["max"]))


def make_plan(seed, sizes, lengths, pools) -> dict[str, list[dict]]:
    """{split: [dict(index, fname, labels, sources, given, corrupted, n)]}: everything but the audio, from (seed,
    split, i); pools: {(split, class): [source ids]}, `sources` the one recording of each label's event."""
    classes = sorted({c for _, c in pools})
    plan, taken = {}, set()
    for sid, split in enumerate(SPLITS):
        rows = []
        for i in range(sizes[split]):
            rng = np.random.default_rng([seed, sid, i, 0])
            labels = draw_labels(rng, i, classes, LABEL_COUNTS, LABEL_P)
            pick = np.random.default_rng([seed, sid, i, 2])
            sources = [pools[(split, c)][pick.integers(len(pools[(split, c)]))] for c in labels]
            n = max(int(round(_seconds(rng, split, lengths) * SR)), int(0.3 * SR))
            corrupted = split == "train_noisy" and rng.random() < NOISE_RATE
            given = corrupt(rng, labels, classes) if corrupted else labels
            salt = 0
            while (
                fname := hashlib.blake2b(f"real:{seed}:{split}:{i}:{salt}".encode(), digest_size=4).hexdigest() + ".wav"
            ) in taken:
                salt += 1
            taken.add(fname)
            rows.append(
                dict(index=i, fname=fname, labels=labels, sources=sources, given=given, corrupted=corrupted, n=n)
            )
        plan[split] = rows
    return plan


# ---- rendering ----

_STATE = {}  # per process: the bank, {source id: [its bank rows]}, the ambience rows


def _init_worker(bank_folder, files, ambience):
    _STATE.update(bank=SourceBank(bank_folder), files=files, ambience=ambience)


def _sequence(rng, files, first, n):
    """An impulsive source repeated as a sequence (steps, knocks) filling up to n samples: the take's cuts in turn,
    at a steady pace with jitter, each at its own level."""
    bank, out = _STATE["bank"], np.zeros(n)
    pace, pos, row = rng.uniform(0.15, 0.8) * SR, 0, first
    count = int(rng.integers(1, 4)) if rng.random() < 0.2 else None  # a few hits, or until the span is full
    while pos < n and (count is None or count > 0):
        x = bank.audio(row)[: n - pos]
        out[pos : pos + len(x)] += x * _db(rng, -4, 0)
        pos += len(x) + int(pace * rng.uniform(0.7, 1.3))
        row = files[rng.integers(len(files))]
        count = None if count is None else count - 1
    return out[: max(1, pos)]


def _event(rng, source, n):
    """One event of a source recording (one of its files, at random), at most n samples long."""
    files = _STATE["files"][source]
    row = files[rng.integers(len(files))]
    x = _STATE["bank"].audio(row)
    if len(x) < IMPULSIVE_S * SR and len(x) < n // 2 and rng.random() < 0.8:
        return _sequence(rng, files, row, n)
    if len(x) > n:  # a random stretch, faded in and out
        s = int(rng.integers(len(x) - n + 1))
        x = x[s : s + n].astype(np.float64)
        fade = min(n // 4, 441)
        x[:fade] *= np.linspace(0, 1, fade)
        x[-fade:] *= np.linspace(1, 0, fade)
    return np.asarray(x, np.float64)


def _bed(rng, n):
    """Background: a recorded ambience (looped where short) and a little noise, unit active level."""
    amb = _STATE["ambience"]
    if not amb:
        return _noise(rng, n)
    x = _STATE["bank"].audio(amb[rng.integers(len(amb))]).astype(np.float64)
    if len(x) < n:
        x = np.tile(x, n // len(x) + 1)
    s = int(rng.integers(len(x) - n + 1))
    return x[s : s + n] / 0.1 + 0.3 * _noise(rng, n)


def _codec(rng, x):
    """Lossy-codec artefacts: a low-pass at 4-16 kHz and the quiet bins of each frame zeroed (spectral holes)."""
    f, t, z = signal.stft(x, SR, nperseg=1024)
    z[f > rng.uniform(4000, 16000)] = 0
    mag = np.abs(z)
    z[mag < mag.max(axis=0, keepdims=True) * _db(rng, -45, -25)] = 0
    return signal.istft(z, SR, nperseg=1024)[1][: len(x)]


def _mix(rng, split, sources, n):
    """The events of a clip's sources over its background, before the split's recording conditions."""
    noisy, x = split == "train_noisy", np.zeros(n)
    for source in rng.permutation(sources):
        span = n if len(sources) == 1 and rng.random() < 0.7 else max(int(n * rng.uniform(0.3, 1.0)), 1)
        e = _event(rng, str(source), span)
        start = int(rng.integers(n - len(e) + 1)) if len(e) < n else 0
        x[start : start + len(e)] += e[: n - start] * _db(rng, -12 if noisy else -6, 0)
    level = _level(x)
    return x + _bed(rng, n) * level * _db(rng, -30, -12) + _hum(rng, n) * level * _db(rng, -60, -40)


def render_clip(task):
    """Render one clip from (seed, split, index, sources, n, path); write it (temporary name, then renamed)."""
    seed, split, index, sources, n, path = task
    if os.path.exists(path):
        return split, n
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
    x = _mix(rng, split, sources, n)
    if split == "train_noisy":
        x = _domain_shift(rng, x)
        if rng.random() < 0.5:
            x = _codec(rng, x)
    peak = np.abs(x).max() + 1e-12
    x *= _db(rng, -24 if split == "train_noisy" else -12, -1) / peak
    if split == "train_noisy" and rng.random() < 0.1:  # overdriven: clipped
        p = np.abs(x).max()
        x = np.clip(x * _db(rng, 3, 12), -p, p)
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    tmp = f"{path}.tmp-{os.getpid()}.wav"
    sf.write(tmp, pcm, SR, subtype="PCM_16")
    os.replace(tmp, path)
    return split, n


# ---- the build ----


def _params(preset, seed, sizes, lengths, classes, dropped, bank):
    return {
        "version": VERSION,
        "preset": preset,
        "seed": int(seed),
        "sizes": dict(sizes),
        "lengths": dict(lengths),
        "classes": list(classes),
        "classes_left_out": list(dropped),
        "source_bank": bank.folder.name,
        "sample_rate": SR,
        "pool_share": POOL_SHARE,
        "min_sources": MIN_SOURCES,
        "noisy_label_error_rate": NOISE_RATE,
    }


def _write_tables(tmp, plan, index, classes):
    """The CSVs: labels and sources of each split, the submission template, SOURCES.csv."""

    def table(rows, key, with_sources=True):
        df = pd.DataFrame({"fname": [r["fname"] for r in rows], "labels": [",".join(r[key]) for r in rows]})
        if with_sources:
            df["sources"] = [";".join(sorted(set(r["sources"]))) for r in rows]
        return df.sort_values("fname")

    kw = dict(index=False, lineterminator="\n")
    table(plan["train_curated"], "labels").to_csv(tmp / "train_curated.csv", **kw)
    table(plan["train_noisy"], "given").to_csv(tmp / "train_noisy.csv", **kw)
    table(plan["train_noisy"], "labels", False).to_csv(tmp / "train_noisy_truth.csv", **kw)
    test = table(plan["test"], "labels")
    test[["fname", "labels"]].to_csv(tmp / "test_labels.csv", **kw)
    test[["fname", "sources"]].to_csv(tmp / "test_sources.csv", **kw)
    sub = pd.DataFrame(0, index=range(len(test)), columns=classes)
    sub.insert(0, "fname", list(test["fname"]))
    sub.to_csv(tmp / "sample_submission.csv", **kw)
    known = index["package"].isin(list(PACKAGE))  # the pinned licence text (the bank keeps the one it was built with)
    index.loc[known, "licence"] = index.loc[known, "package"].map(lambda p: PACKAGE[p].licence)
    cols = ["source", "pool", "class", "package", "version", "member", "take", "licence", "credit", "seconds"]
    index[cols].sort_values(["class", "source", "member"]).to_csv(tmp / "SOURCES.csv", **kw)


def _stats(plan):
    return {
        "hours": {s: round(sum(r["n"] for r in plan[s]) / SR / 3600, 3) for s in SPLITS},
        "noisy_corrupted": sum(r["corrupted"] for r in plan["train_noisy"]),
        "mean_labels": {s: round(float(np.mean([len(r["labels"]) for r in plan[s]] or [0])), 3) for s in SPLITS},
    }


def _render_all(tmp, tasks, bank, files, ambience, workers, progress):
    todo = [t for t in tasks if not os.path.exists(t[-1])]
    if len(todo) < len(tasks):
        get_logger().info(f"real data: resuming: {len(tasks) - len(todo)} of {len(tasks)} clips already written")
    bar = progress_bar(total=len(todo), enabled=progress, desc="real data", unit="clip")
    init = (str(bank.folder), files, ambience)
    if workers <= 1:
        _init_worker(*init)
        for t in todo:
            render_clip(t)
            bar.update()
    else:
        with mp.get_context().Pool(workers, initializer=_init_worker, initargs=init) as pool:
            for _ in pool.imap_unordered(render_clip, todo, chunksize=4):
                bar.update()
    bar.close()


def _building_folder(out: Path, params) -> Path:
    """The hidden folder this build writes to, named by its parameters; other builds' leftovers are removed."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    tmp = out.parent / f".{out.name}.building-{key}"
    for old in out.parent.glob(f".{out.name}.building-*"):
        if old != tmp:
            shutil.rmtree(old, ignore_errors=True)
    for split in SPLITS:
        (tmp / split).mkdir(parents=True, exist_ok=True)
        for t in (tmp / split).glob("*.tmp-*"):
            t.unlink()
    return tmp


def build(
    out_dir,
    preset="default",
    seed=0,
    n_curated=None,
    n_noisy=None,
    n_test=None,
    workers=2,
    progress=True,
    cache=DEFAULT_CACHE,
    bank: SourceBank | None = None,
) -> Path:
    """Build the real-sound dataset into out_dir (a no-op when it already holds this build); return out_dir. `bank`
    replaces the pinned packages' source bank (tests use stand-in sources)."""
    log, out = get_logger(), Path(out_dir)
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    sizes = {s: PRESETS[preset][s] if n is None else int(n) for s, n in zip(SPLITS, (n_curated, n_noisy, n_test))}
    if seed < 0 or any(v < 1 for v in sizes.values()):
        raise UserError(f"seed must be >= 0 and every split needs a clip, got seed {seed}, {sizes}")
    bank = bank or SourceBank.build(cache, progress=progress, log=log)
    index, dropped = make_pools(bank.index.assign(row=np.arange(len(bank.index))), seed)
    classes = sorted(index["class"].unique())
    if len(classes) < 2:
        raise UserError(f"real data: only {len(classes)} class(es) have {MIN_SOURCES} source recordings")
    pools = {(s, c): sorted(g["source"].unique()) for (s, c), g in index.groupby(["pool", "class"])}
    params = _params(preset, seed, sizes, PRESETS[preset]["lengths"], classes, dropped, bank)
    old = read_meta(out, "real_meta.json") if out.is_dir() else None
    if old == params:
        log.info(f"real data: {out} already holds this build (preset {preset}, seed {seed}); nothing to do")
        return out
    if out.exists() and old is None and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"real data: {out} exists and is not a real-data build (no real_meta.json); refusing to replace it"
        )
    t0 = time.time()
    plan = make_plan(seed, sizes, PRESETS[preset]["lengths"], pools)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out.parent, sum(r["n"] for s in SPLITS for r in plan[s]) * 2 + 50_000_000, "the real-sound set")
    tmp = _building_folder(out, params)
    tasks = sorted(
        ((int(seed), s, r["index"], r["sources"], r["n"], str(tmp / s / r["fname"])) for s in SPLITS for r in plan[s]),
        key=lambda t: -t[4],
    )  # longest first: better load balance
    files = {src: list(g["row"]) for src, g in index.groupby("source")}
    ambience = list(np.flatnonzero(bank.index["class"] == "_ambience"))
    log.info(
        f"real data: {len(classes)} classes, {index['source'].nunique()} source recordings; rendering "
        f"{len(tasks)} clips ({sizes}) with {workers} worker(s) into {out}"
        + (f"; left out (< {MIN_SOURCES} sources): {', '.join(dropped)}" if dropped else "")
    )
    _render_all(tmp, tasks, bank, files, ambience, workers, progress)
    _write_tables(tmp, plan, index, classes)
    stats = _stats(plan)
    atomic_write_json(tmp / "real_meta.json", {**params, "stats": stats})  # last: marks the build complete
    swap_in(tmp, out)
    log.info(
        f"real data: built {out} in {time.time() - t0:.1f} s ({stats['hours']} h of audio, "
        f"{stats['noisy_corrupted']}/{sizes['train_noisy']} noisy label sets corrupted)"
    )
    return out


# ---- verify ----


def _logmel_stats(path) -> np.ndarray:
    """Mean and standard deviation over time of a clip's 64-band log-mel spectrogram (128 numbers)."""
    import librosa

    x, sr = sf.read(path, dtype="float32")
    m = np.log(librosa.feature.melspectrogram(y=x, sr=sr, n_fft=2048, hop_length=1024, n_mels=64) + 1e-6)
    return np.concatenate([m.mean(axis=1), m.std(axis=1)])


def baselines(out: Path, seed: int = 0) -> dict:
    """Test lwlrap of chance (random scores, mean of 20 draws) and of a logistic regression (one per class) on the
    curated clips' log-mel means and standard deviations."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.metrics import lwlrap_overall

    classes = list(pd.read_csv(out / "sample_submission.csv", nrows=0).columns[1:])

    def xy(csv, folder):
        df = pd.read_csv(out / csv)
        y = np.array([[c in str(labs).split(",") for c in classes] for labs in df["labels"]], np.float32)
        return np.stack([_logmel_stats(out / folder / f) for f in df["fname"]]), y

    x_tr, y_tr = xy("train_curated.csv", "train_curated")
    x_te, y_te = xy("test_labels.csv", "test")
    rng = np.random.default_rng(seed)
    chance = float(np.mean([lwlrap_overall(y_te, rng.random(y_te.shape)) for _ in range(20)]))
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=2000)))
    model.fit(x_tr, y_tr)
    return {"chance": chance, "logistic": lwlrap_overall(y_te, model.predict_proba(x_te))}


def verify(out_dir, with_baselines=True) -> dict:
    """Print a built set's statistics and checks (per-class sources per pool, label cardinality, noise rates,
    durations, no source in two pools) and its baselines; raise UserError when a check fails."""
    out = Path(out_dir)
    if not (out / "real_meta.json").exists():
        raise UserError(f"{out}: no real_meta.json: not a finished real-data build (make real-data)")
    src = pd.read_csv(out / "SOURCES.csv", keep_default_na=False)
    per_pool = src.groupby(["class", "pool"])["source"].nunique().unstack(fill_value=0)[list(SPLITS)]
    per_pool["all"] = per_pool.sum(axis=1)
    print(f"source recordings per class and pool ({len(per_pool)} classes):\n{per_pool.to_string()}\n")
    twice = src.groupby("source")["pool"].nunique()
    problems = [f"source {s} is in {n} pools" for s, n in twice[twice > 1].items()]
    pool_of = dict(zip(src["source"], src["pool"]))
    for split, csv in (
        ("train_curated", "train_curated.csv"),
        ("train_noisy", "train_noisy.csv"),
        ("test", "test_sources.csv"),
    ):
        used = {s for cell in pd.read_csv(out / csv)["sources"] for s in str(cell).split(";")}
        wrong = sorted(s for s in used if pool_of.get(s) != split)
        if wrong:
            problems.append(f"{csv}: {len(wrong)} source(s) of another pool, e.g. {wrong[:3]}")
    print(
        "no source recording in two pools, and every split's clips use its own pool only: "
        + ("yes" if not problems else "NO")
    )
    rows = []
    for split, csv in (
        ("train_curated", "train_curated.csv"),
        ("train_noisy", "train_noisy_truth.csv"),
        ("test", "test_labels.csv"),
    ):
        df = pd.read_csv(out / csv)
        secs = np.array([sf.info(str(out / split / f)).duration for f in df["fname"]])
        card = df["labels"].str.count(",") + 1
        rows.append(
            dict(
                split=split,
                clips=len(df),
                mean_labels=round(card.mean(), 3),
                **{f"labels={k}": int((card == k).sum()) for k in (1, 2, 3)},
                min_s=round(secs.min(), 2),
                median_s=round(float(np.median(secs)), 2),
                max_s=round(secs.max(), 2),
                hours=round(secs.sum() / 3600, 2),
            )
        )
    print(pd.DataFrame(rows).to_string(index=False) + "\n")
    given = pd.read_csv(out / "train_noisy.csv").set_index("fname")["labels"].str.split(",")
    truth = pd.read_csv(out / "train_noisy_truth.csv").set_index("fname")["labels"].str.split(",")[given.index]
    wrong = [set(g) != set(t) for g, t in zip(given, truth)]
    extra = sum(len(set(g) - set(t)) for g, t in zip(given, truth))
    missing = sum(len(set(t) - set(g)) for g, t in zip(given, truth))
    n_true = sum(len(t) for t in truth)
    noise = dict(
        clips_with_a_wrong_label_set=round(float(np.mean(wrong)), 3),
        given_labels_not_true=round(extra / sum(len(g) for g in given), 3),
        true_labels_missing=round(missing / n_true, 3),
    )
    print(f"noisy labels: {noise}\n")
    result = {"per_pool": per_pool.to_dict(), "problems": problems, "noise": noise, "splits": rows}
    if with_baselines:
        result["baselines"] = baselines(out)
        print(
            f"baselines on the test split: chance lwlrap {result['baselines']['chance']:.4f}, logistic "
            f"regression on log-mel means and stds (curated clips) {result['baselines']['logistic']:.4f}"
        )
    if problems:
        raise UserError("real data: " + "; ".join(problems))
    return result


def main(argv=None):
    ap = dataset_parser("python -m pipeline.datasets.real", __doc__, "data/real", PRESETS)
    ap.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help=f"where the packages and the decoded source bank are kept (default {DEFAULT_CACHE})",
    )
    ap.add_argument("--verify", action="store_true", help="print the statistics, checks and baselines of --out")
    a = ap.parse_args(argv)
    with user_errors("datasets.real"):
        if a.verify:
            verify(a.out)
        else:
            build(a.out, a.preset, a.seed, a.n_curated, a.n_noisy, a.n_test, a.workers, not a.no_progress, a.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
