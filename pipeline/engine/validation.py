"""Validation: sliding-window predictions of a ClipSet's whole clips (predict_set, over the ranks of a
data-parallel run) and the metric that picks best.pt (val_metric: lwlrap, or accuracy for single-label data).

    score, p = validate(model, cfg, val_clips, device, n_classes)
"""

from __future__ import annotations

import numpy as np

from pipeline import distributed
from pipeline.data import is_single_label
from pipeline.engine.batches import ClipSet
from pipeline.metrics import accuracy, lwlrap
from pipeline.predict import predict_clips


def val_metric(cfg) -> str:
    """The validation metric that picks best.pt: lwlrap, or accuracy for single-label datasets."""
    return "accuracy" if is_single_label(cfg) else "lwlrap"


def predict_set(model, cfg, clips: ClipSet, device, n_classes, **kw) -> np.ndarray:
    """(N, C) sliding-window predictions (train.frames, train.eval_hop) of a one-split ClipSet's whole clips; in a
    data-parallel run each rank predicts its share of the clips and every rank gets all of them."""
    return distributed.sharded(
        lambda names: predict_clips(
            model,
            clips.cache,
            names,
            cfg.train.frames,
            cfg.train.eval_hop,
            n_classes,
            batch_size=cfg.infer.batch_size,
            device=device,
            **kw,
        ),
        clips.fnames,
    )


def validate(model, cfg, val: ClipSet, device, n_classes):
    """(validation metric, (N, C) clip probabilities) of sliding-window predictions over the whole clips (every
    rank of a data-parallel run predicts its share; all get the gathered result)."""
    single = is_single_label(cfg)
    p = predict_set(model, cfg, val, device, n_classes, softmax=single, amp=cfg.train.amp)
    return (accuracy(val.y, p) if single else lwlrap(val.y, p)[0]), p
