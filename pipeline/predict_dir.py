"""Predict a folder of clips from a bundle alone (`make bundle`, pipeline/bundle.py): no network, no training CSVs,
no folds, no run directory, no feature cache.

    python -m pipeline.predict_dir --bundle bundles/demo --audio data/demo/test --out submission.csv \\
        [--sample-submission data/demo/sample_submission.csv] [--workers 2] [--device auto|cpu|cuda|cuda:N]
        [--threads N] [--batch-size N] [--amp bf16|fp16|off]

--audio is a folder of wavs, or a CSV with a `fname` column (and optionally `path`: the audio file, absolute or
relative to the CSV's folder; without it the file is `fname` in the CSV's folder).
Rows: with --sample-submission, its fnames in its order (each must be found under --audio) and its columns (the
bundle's classes, in the sample's order); without one, every .wav of the folder sorted by name (or the CSV's rows
in order) and the bundle's classes in its order.

What it does, from manifest.json: log-mels of every clip with pipeline.extractor's Extractor in --workers processes,
held in memory as the float16 values the feature cache would store (nothing is written), normalised with the
bundle's statistics; each model predicts with pipeline.predict.predict_with and the bundle's settings (sliding
windows, length-adaptive TTA, time reversal, channels_last); the models are averaged with the manifest's weights
and mean (pipeline.ensemble.average). So the CSV equals `make infer`'s submission for the same models and clips
(tests/test_bundle.py). The models are .safetensors files, rebuilt from the manifest's model_config: nothing of a
bundle is unpickled, so one from elsewhere cannot run code by being loaded. A user's mistake (no bundle, a missing
wav, a class mismatch) prints one line naming the file and exits with status 2.

    from pipeline.predict_dir import load_bundle, extract, predict_bundle
    bundle = load_bundle("bundles/demo"); cache = extract(paths, fnames, bundle, workers=2)
    sub = predict_bundle(bundle, cache, fnames, device="cpu")          # DataFrame fname + classes
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipeline.cache import FeatureCache
from pipeline.distributed import get_device
from pipeline.extractor import FeatureError, logmels
from pipeline.utils import UserError, atomic_to_csv, keep_freed_memory, progress, read_json, user_errors

MANIFEST = "manifest.json"
FORMAT = 2  # manifest.json's layout version; bumped when a reader of the old one would misread it (2: safetensors)
MAX_LISTED = 5


# ------------------------------------------------------------------------------------------------ the bundle
def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_bundle(folder) -> dict:
    """The bundle's manifest.json, with `dir` (the bundle folder); a missing or foreign manifest is a UserError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no bundle manifest here (--bundle must be a folder written by `make bundle`)")
    try:
        manifest = read_json(path)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        old = "; format 1 bundles hold pickled .pt models: build it again with `make bundle`"
        raise UserError(
            f"{path}: manifest format {manifest.get('format')!r}, this code reads format {FORMAT}"
            + (old if manifest.get("format") == 1 else "")
        )
    for key in ("classes", "features", "normalisation", "predict", "ensemble", "models"):
        if key not in manifest:
            raise UserError(f"{path}: manifest has no '{key}'")
    return {**manifest, "dir": folder}


def load_models(bundle: dict, device="cpu") -> list:
    """[(entry, model)] for the manifest's models: each a .safetensors file (nothing unpickled) checked against its
    sha256, the model rebuilt from the manifest's model_config and given exactly the file's tensors."""
    from models import create_model
    from pipeline.model_files import SAFETENSORS, read_safetensors

    out = []
    for entry in bundle["models"]:
        path = bundle["dir"] / entry["file"]
        if not path.is_file():
            raise UserError(f"{path}: model file named in {MANIFEST} is missing")
        if path.suffix != SAFETENSORS:
            raise UserError(f"{path}: not a {SAFETENSORS} file; a bundle's models are (format {FORMAT})")
        if sha256(path) != entry["sha256"]:
            raise UserError(f"{path}: contents differ from {MANIFEST}'s sha256 (a changed or truncated file)")
        tensors, _ = read_safetensors(path)
        model = create_model(**entry["model_config"])
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            why = str(e).splitlines()[0]
            raise UserError(f"{path}: its tensors do not fit the model_config {MANIFEST} gives it ({why})") from None
        out.append((entry, model.to(device).eval()))
    return out


# ------------------------------------------------------------------------------------------------ the clips
def list_clips(audio, sample=None) -> tuple[list[str], list[Path]]:
    """(fnames, paths) to predict: the sample submission's fnames found under `audio` (a folder or a CSV), or
    every clip `audio` names (a folder's .wav files sorted by name, a CSV's rows in order)."""
    audio = Path(audio)
    if audio.is_dir():
        listed = sorted(p.name for p in audio.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
        locate, where = (lambda f: audio / f), f"folder {audio}"
    elif audio.is_file():
        df = _read_csv(audio)
        if "fname" not in df.columns:
            raise UserError(f"{audio}: --audio CSV needs a 'fname' column (optionally 'path'), got {list(df.columns)}")
        dup = df["fname"][df["fname"].duplicated()].tolist()
        if dup:
            raise UserError(f"{audio}: duplicate fname(s) {dup[:MAX_LISTED]}")
        table = dict(zip(df["fname"], df["path"] if "path" in df.columns else df["fname"]))
        listed = list(table)
        locate, where = (lambda f: audio.parent / table[f] if f in table else None), f"CSV {audio}"  # absolute stays
    else:
        raise UserError(f"--audio {audio}: no such folder or CSV file")
    fnames = listed if sample is None else _read_csv(sample)["fname"].tolist()
    if not fnames:
        raise UserError(f"{sample or audio}: no clips to predict")
    paths = [locate(f) for f in fnames]
    missing = [f for f, p in zip(fnames, paths) if p is None or not p.is_file()]
    if missing:
        raise UserError(
            f"{sample or audio}: {len(missing)} clip(s) with no audio file in {where}: "
            f"{missing[:MAX_LISTED]}" + (" ..." if len(missing) > MAX_LISTED else "")
        )
    return fnames, paths


def _read_csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"fname": str, "path": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be parsed as CSV: {e}") from None


def sample_classes(sample, classes) -> list[str]:
    """The sample submission's class columns (its order), which must be the bundle's classes."""
    cols = list(_read_csv(sample).columns)
    if not cols or cols[0] != "fname":
        raise UserError(f"{sample}: header must be 'fname' followed by the class names, got {cols[:MAX_LISTED]}")
    missing = [c for c in classes if c not in cols[1:]]
    extra = [c for c in cols[1:] if c not in classes]
    if missing or extra:
        raise UserError(
            f"{sample}: class columns differ from the bundle's classes: missing {missing[:MAX_LISTED]}, "
            f"unexpected {extra[:MAX_LISTED]}"
        )
    return cols[1:]


# ------------------------------------------------------------------------------------------------ features
class ClipFeatures(FeatureCache):
    """FeatureCache's reading interface (fnames, frames, position, get) over log-mels held in memory: the same
    float16 values and the same normalisation as the cache on disk (FeatureCache.get itself does the reading)."""

    def __init__(self, fnames, logmels, mean: float, std: float, n_mels: int):
        self.folder, self.split, self.meta = Path("(memory)"), "memory", {}
        self.fnames = list(fnames)
        self.frames = np.array([len(a) for a in logmels], dtype=np.int64)  # logmels: (frames, n_mels) f16
        self.offsets = np.concatenate([[0], np.cumsum(self.frames)[:-1]]).astype(np.int64)
        self._pos = {f: i for i, f in enumerate(self.fnames)}
        self.mean, self.std = float(mean), float(std)
        self._arr = np.concatenate(logmels) if logmels else np.zeros((0, n_mels), np.float16)


def extract(paths, fnames, bundle: dict, workers: int = 1, show: bool = True) -> ClipFeatures:
    """Log-mels of `paths` with the bundle's feature parameters in `workers` processes (pipeline.extractor, as
    the feature cache computes them), as a ClipFeatures. An unreadable clip is a UserError naming its file."""
    params = bundle["features"]
    arrays = []
    bar = progress(total=len(paths), enabled=show, desc="log-mels", unit="clip")
    try:
        for out in logmels(paths, params, workers):
            arrays += [arr for arr, *_ in out]
            bar.update(len(out))
    except FeatureError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    norm = bundle["normalisation"]
    return ClipFeatures(fnames, arrays, norm["mean"], norm["std"], params["n_mels"])


# ------------------------------------------------------------------------------------------------ prediction
def predict_bundle(
    bundle: dict, cache, fnames, device="cpu", models=None, settings=None, show: bool = True
) -> pd.DataFrame:
    """Every model of the bundle on `fnames` of `cache`, averaged as the manifest says: fname + the bundle's
    classes. models: load_models's list (loaded here when None); settings: the manifest's predict settings by
    default."""
    import torch

    from pipeline.ensemble import average
    from pipeline.predict import predict_with

    classes = list(bundle["classes"])
    settings = settings or bundle["predict"]
    models = models if models is not None else load_models(bundle, device)
    frames, weights = [], []
    for entry, model in models:
        with torch.no_grad():
            own = {**settings, "seed": entry.get("seed", settings["seed"])}  # TTA's seed: the model's run's
            p = predict_with(
                model,
                cache,
                fnames,
                len(classes),
                own,
                device,
                progress=lambda it, entry=entry: progress(it, show, leave=False, desc=f"windows {entry['fold']}"),
            )
        df = pd.DataFrame(p, columns=classes)
        df.insert(0, "fname", list(fnames))
        frames.append(df)
        weights.append(entry["weight"])
    return average(frames, classes, bundle["ensemble"]["mean"], weights)


def check_device(value: str) -> str:
    from pipeline.schema import rule_for

    what = rule_for("run.device").check(value)
    if what:
        raise UserError(f"--device {value!r}: {what}")
    return value


def run(args) -> pd.DataFrame:
    """What the command line does; returns the submission written to args.out."""
    import torch

    from pipeline.score import check_submission

    bundle = load_bundle(args.bundle)
    classes = list(bundle["classes"])
    out_classes = sample_classes(args.sample_submission, classes) if args.sample_submission else classes
    fnames, paths = list_clips(args.audio, args.sample_submission)
    settings = dict(bundle["predict"])
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    if args.amp:
        settings["amp"] = args.amp
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(SimpleNamespace(run=SimpleNamespace(device=check_device(args.device))))
    show = not args.quiet
    t0 = time.perf_counter()
    cache = extract(paths, fnames, bundle, args.workers, show)  # before any torch work: the workers fork
    t1 = time.perf_counter()
    keep_freed_memory()  # batches of activations reuse freed memory: 2-4x the network's speed (benchmarks.md)
    sub = predict_bundle(bundle, cache, fnames, device, settings=settings, show=show)
    t2 = time.perf_counter()
    sub = sub[["fname", *out_classes]]
    check_submission(sub, fnames, out_classes, source=f"predictions of {args.bundle}")
    atomic_to_csv(sub, args.out, index=False, float_format="%.6f")
    print(
        f"wrote {args.out}: {len(sub)} clips x {len(out_classes)} classes, {len(bundle['models'])} model(s) "
        f"on {device}; log-mels {t1 - t0:.2f} s, networks {t2 - t1:.2f} s"
    )
    return sub


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.predict_dir",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bundle", required=True, help="a folder written by `make bundle` (holds manifest.json)")
    ap.add_argument("--audio", required=True, help="folder of wavs, or a CSV with fname [and path] columns")
    ap.add_argument("--out", required=True, help="the submission CSV to write")
    ap.add_argument(
        "--sample-submission", default=None, help="fixes the rows (fnames, in order) and the class columns' order"
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="feature processes (default: all cores)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="windows per batch (default: the bundle's infer.batch_size; another value draws other TTA masks)",
    )
    ap.add_argument(
        "--amp",
        choices=("bf16", "fp16", "off"),
        default=None,
        help="autocast on CUDA (default: the bundle's train.amp)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    with user_errors("predict_dir"):
        return run(args)


if __name__ == "__main__":
    main()
