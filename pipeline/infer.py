"""Inference: each trained fold model predicts the test set (and its held-out curated clips) with sliding windows,
length-adaptive TTA and time-reversal averaging; then the folds are ensembled into the submission.

    make infer CONFIG=configs/demo.yaml          # infer + ensemble
    python -m pipeline.infer --config FILE [key=value ...]

For each model runs/<run>/train/fold_<k>/best.pt (and fold_full when train.full), writes:
    runs/<run>/infer/fold_<k>/model.pt       the inference checkpoint: backbone + head h only (no g, no ArcFace)
    runs/<run>/infer/fold_<k>/test.csv       fname + one column per class
    runs/<run>/infer/fold_<k>/oof.csv        the fold's held-out curated clips (not for fold_full)
Each fold folder is marked done for its checkpoint and the infer settings; a rerun skips finished folds.
The export folders in infer.runs (a teammate's `make export`, pipeline/exports.py) are predicted too, with their own
settings: runs/<run>/infer/exports/<name>/fold_<k>/test.csv, which the ensemble averages with the rest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from pipeline.cache import FeatureCache
from pipeline.config import cli, config_hash, save_config
from pipeline.data import dataset
from pipeline.distributed import get_device
from pipeline.engine import load_model, save_checkpoint
from pipeline.folds import read_folds
from pipeline.predict import predict_settings, predict_with
from pipeline.utils import (
    UserError,
    atomic_to_csv,
    get_logger,
    is_done,
    keep_freed_memory,
    mark_done,
    progress,
    remove_stale_outputs,
    run_dir,
    set_position,
)


def fold_dirs(cfg) -> list[Path]:
    train_dir = run_dir(cfg, "train")
    dirs = sorted(p for p in train_dir.glob("fold_*") if (p / "done.json").exists())
    if not dirs:
        raise FileNotFoundError(f"{train_dir}: no finished fold models; run `make train` first")
    return dirs


def predicted_from(odir: Path, best: Path) -> bool:
    """Whether the fold's finished predictions in odir were made from this best.pt (its modification time ends
    their key), whatever the infer settings were."""
    from pipeline.utils import read_json

    done = odir / "done.json"
    return done.exists() and read_json(done).get("key", "").endswith(f"-{best.stat().st_mtime_ns}")


def inference_model(best_path: Path):
    """(the fold's inference model: the model without g and the ArcFace weights, its best.pt's contents)."""
    model, ck = load_model(best_path)
    return model.export_inference(), ck


def export(best_path: Path, out_path: Path):
    """The inference checkpoint of a fold (inference_model), written to out_path."""
    small, ck = inference_model(best_path)
    save_checkpoint(out_path, small, ck["cfg"], ck["classes"], epoch=ck.get("epoch"), source=str(best_path))
    return small


def predict_frame(model, cfg, cache, fnames, classes, device) -> pd.DataFrame:
    p = predict_with(
        model,
        cache,
        fnames,
        len(classes),
        predict_settings(cfg),
        device,
        progress=(lambda it: progress(it, cfg.run.progress, leave=False, desc="windows")),
    )
    df = pd.DataFrame(p, columns=classes)
    df.insert(0, "fname", list(fnames))
    return df


def predict_exports(cfg, ds, test_cache, device, log) -> list[Path]:
    """The test predictions of every model of the export folders in infer.runs (pipeline/exports.py), each with
    its export's inference settings and normalisation (as its own `make infer` would), in
    exports.infer_folder(cfg, entry)/<fold>/test.csv; finished ones are kept. Nothing is unpickled."""
    import copy

    from pipeline.cache import feature_params
    from pipeline.exports import infer_folder, is_export
    from pipeline.predict_dir import load_bundle, load_models

    written = []
    for entry in [e for e in cfg.infer.runs if is_export(e)]:
        bundle = load_bundle(entry)
        check_export(bundle, entry, ds.classes, feature_params(cfg))
        cache = copy.copy(test_cache)  # the same log-mels, normalised as the export's models were trained
        cache.mean, cache.std = float(bundle["normalisation"]["mean"]), float(bundle["normalisation"]["std"])
        models = load_models(bundle, device)
        names = [m["fold"] for m, _ in models]
        for i, (m, model) in enumerate(models):
            odir = infer_folder(cfg, entry) / (m["fold"] if len(set(names)) == len(names) else f"fold_{i}")
            key = f"{m['sha256'][:16]}-{config_hash(bundle['predict'])}-{config_hash(feature_params(cfg))}"
            if not is_done(odir, key):
                log.info(f"{entry} {m['fold']}: predicting {len(cache)} test clips")
                settings = {**bundle["predict"], "seed": m.get("seed", bundle["predict"]["seed"])}
                with torch.no_grad():
                    p = predict_with(model, cache, cache.fnames, len(ds.classes), settings, device)
                df = pd.DataFrame(p, columns=ds.classes)
                df.insert(0, "fname", list(cache.fnames))
                atomic_to_csv(df, odir / "test.csv", index=False)
                mark_done(odir, key, source=str(Path(entry) / m["file"]))
            written.append(odir)
    return written


def check_export(bundle: dict, entry: str, classes, features: dict):
    """An export's models predict this run's test clips only with its classes and log-mel parameters."""
    if list(bundle["classes"]) != list(classes):
        raise UserError(f"infer.runs: {entry}: its classes are not this dataset's (sample_submission.csv)")
    differ = sorted(k for k in features if bundle["features"].get(k) != features[k])
    if differ:
        raise UserError(
            f"infer.runs: {entry}: its models take other log-mels than this run's cache (features.{differ[0]}"
            f"{' ...' if len(differ) > 1 else ''}); predict them with a config of those features"
        )


def main(cfg, ensemble=True) -> dict:
    out = run_dir(cfg, "infer")
    log = get_logger(folder=out)
    save_config(cfg, out)
    ds = dataset(cfg)
    if ds.single_label:
        raise ValueError(
            f"data.single_label_csv is set: single-label datasets have no test split to predict; they are "
            f"scored by cross-validation (runs/{cfg.run.name}/train/summary.json, `make train`)"
        )
    device = get_device(cfg)
    log.info(
        f"inference on {device} (train.amp={cfg.train.amp}; float32 on the CPU; "
        f"{'channels_last' if cfg.train.channels_last else 'NCHW'})"
    )
    test_cache, cur_cache = FeatureCache.open(cfg, "test"), FeatureCache.open(cfg, "curated")
    keep_freed_memory()  # batches of activations reuse freed memory (as in training and predict_dir)
    folds = read_folds(cfg).set_index("fname")["fold"]
    key_base = config_hash(cfg, ("infer", "features", "augment")) + f"-f{cfg.train.frames}-s{cfg.run.seed}"
    written = []
    for fdir in fold_dirs(cfg):
        name = fdir.name
        odir = out / name
        best = fdir / "best.pt"
        key = f"{key_base}-{best.stat().st_mtime_ns}"
        set_position(fold=name.split("_")[1])  # what an interruption's one line names
        if not is_done(odir, key):
            remove_stale_outputs(odir, ("model.pt", "test.csv", "oof.csv", "done.json"), log)
            model = export(best, odir / "model.pt").to(device)
            log.info(f"{name}: predicting {len(test_cache)} test clips")
            with torch.no_grad():
                atomic_to_csv(
                    predict_frame(model, cfg, test_cache, test_cache.fnames, ds.classes, device),
                    odir / "test.csv",
                    index=False,
                )
                if name != "fold_full":
                    k = int(name.split("_")[1])
                    held = [f for f in ds.curated["fname"] if folds[f] == k]
                    atomic_to_csv(
                        predict_frame(model, cfg, cur_cache, held, ds.classes, device), odir / "oof.csv", index=False
                    )
            mark_done(odir, key, source=str(best))
        written.append(odir)
    written += predict_exports(cfg, ds, test_cache, device, log)
    log.info(f"inference done for {len(written)} model(s) in {out}")
    result = {"dir": out, "folds": [p.name for p in written]}
    if ensemble:
        from pipeline import ensemble as ens

        result.update(ens.main(cfg))
    return result


if __name__ == "__main__":
    cli("infer", "Predict the test set with every fold model (TTA), then ensemble.", main=main)
