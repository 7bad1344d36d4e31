"""Exports: how a teammate's fold models join a run's ensemble. `make export` (python -m pipeline.bundle --export)
writes exports/<run.name>/: each fold model as weights/<run>/fold_<k>.safetensors and the manifest.json of a bundle
(model_config per model, classes, feature parameters, normalisation, inference settings), no code. A run names one
in infer.runs beside run names of its own checkout: an entry with a '/' is an export folder (exports/theirs,
/data/shared/theirs, or a bundle folder), one without a run name.

    is_export("exports/theirs")      # True; is_export("ref") is False: runs/ref/ of this checkout
    infer_folder(cfg, entry)         # where `make infer` keeps an entry's fold predictions (test.csv per fold):
                                     # runs/<entry>/infer, or for an export runs/<run.name>/infer/exports/<its name>

`make infer` predicts an export's models on this run's test clips (their own inference settings and
normalisation; pipeline/infer.py), `make ensemble` averages them with every other fold, `make bundle` copies their
.safetensors files in. Loading one unpickles nothing (pipeline/model_files.py).
"""

from __future__ import annotations

from pathlib import Path

EXPORTS = Path("exports")


def is_export(entry: str) -> bool:
    """Whether an infer.runs entry names an export folder (a path with '/') rather than a run of this checkout."""
    return "/" in str(entry)


def infer_folder(cfg, entry: str) -> Path:
    """The folder of an infer.runs entry's (or this run's) fold predictions, fold_<k>/test.csv each."""
    if is_export(entry):
        return Path("runs") / cfg.run.name / "infer" / "exports" / Path(entry).name
    return Path("runs") / entry / "infer"
