"""The training engine shared by the warm-up and train stages, one module per trade:

    batches.py      clip sets and the batch stream: where a batch is made
    optim.py        the optimiser, the learning-rate schedule, the update after each backward
    build.py        the configured model and the training mode over it
    validation.py   sliding-window predictions of a clip set, the metric that picks best.pt
    checkpoints.py  checkpoint files: written atomically with their sha256, read weights-only, models rebuilt
    keys.py         which config decides a training (train_key) and what changed between two (changed_keys)
    fit_run.py      a fit's set-up: FitRun, what the loop's steps share
    resume.py       what an epoch's end writes (best.pt, metrics.csv, last.pt) and how a fit resumes from it
    loop.py         fit: the epochs, their steps, validation and logging

    result = fit(cfg, out_dir, model, mode_name, classes, labelled, unlabelled=None, val=None, log=log)

A fit writes into out_dir: last.pt (everything needed to resume: model, optimiser, schedule, mode state, RNG states,
history without its timings), previous.pt (the epoch before), best.pt (the best validated model), metrics.csv,
and done.json last; each .pt with its sha256 in <name>.pt.sha256, checked when it is loaded. Started again after a
kill at any moment, it resumes from last.pt at the epoch boundary (from previous.pt when last.pt is damaged) and,
given the same seed and thread count, ends with the same bytes as an uninterrupted run on the CPU. Started with
another config, it keeps the old run's last.pt, best.pt and metrics.csv as last.<key>.pt, best.<key>.pt and
metrics.<key>.csv (the old key's first 12 characters) and trains from the start.

The names the stages, benchmarks and tests use are importable from here (`from pipeline.engine import fit`). The
training modes (pipeline/modes/) stand below the engine and never import it: what they need of it is handed to
them (their TrainContext; a stage's load_model for noisy_mix's staged selection).
"""

from pipeline.engine.batches import ClipSet, batch_stream, concat_clipsets, make_clipset
from pipeline.engine.build import build_mode, build_model
from pipeline.engine.checkpoints import (
    checkpoint_state,
    init_from_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from pipeline.engine.fit_run import FitRun, batch_keys, set_up_fit
from pipeline.engine.keys import PERFORMANCE_KEYS, TRAIN_SECTIONS, changed_keys, train_key
from pipeline.engine.loop import fit
from pipeline.engine.optim import build_optimizer, lr_factor, update
from pipeline.engine.validation import predict_set, val_metric, validate

__all__ = [
    "PERFORMANCE_KEYS",
    "TRAIN_SECTIONS",
    "ClipSet",
    "FitRun",
    "batch_keys",
    "batch_stream",
    "build_mode",
    "build_model",
    "build_optimizer",
    "changed_keys",
    "checkpoint_state",
    "concat_clipsets",
    "fit",
    "init_from_checkpoint",
    "load_checkpoint",
    "load_model",
    "lr_factor",
    "make_clipset",
    "predict_set",
    "save_checkpoint",
    "set_up_fit",
    "train_key",
    "update",
    "val_metric",
    "validate",
]
