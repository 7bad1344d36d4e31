"""What a fit trains with: the configured network (build_model: backbone, heads, time-reversal outputs, cosine
heads) and the training mode over it (build_mode: its TrainContext with the configured loss and batch
augmentation).

    model = build_model(cfg, n_classes, heads=("h",), seed=0)
    mode = build_mode(cfg, model, "supervised", n_classes, device, generator)
"""

from __future__ import annotations

import torch

from pipeline.augment import build_batch_augment
from pipeline.data import is_single_label
from pipeline.losses import build_loss
from pipeline.modes import TrainContext, create_mode


def build_model(
    cfg,
    n_classes: int,
    heads=("h",),
    seed: int | None = None,
    dropout: float | None = None,
    block_dropout: float | None = None,
):
    """The configured Tagger: model.name backbone, time-reversal outputs, heads, cosine heads if ArcFace is used.
    With `seed`, the initial weights are drawn from it (the same seed gives the same model); `dropout` replaces
    model.dropout (before the heads) and `block_dropout` model.block_dropout (in every backbone block)."""
    from models import create_model

    if seed is not None:
        torch.manual_seed(seed)
    params = dict(cfg.model.params)
    if cfg.model.name == "cnn14":
        params.setdefault("n_mels", cfg.features.n_mels)  # its bn0 normalises each mel band
    model = create_model(
        cfg.model.name,
        n_classes,
        time_reversal=cfg.model.time_reversal,
        heads=tuple(heads),
        arcface=cfg.loss.arcface > 0,
        dropout=cfg.model.dropout if dropout is None else dropout,
        block_dropout=cfg.model.block_dropout if block_dropout is None else block_dropout,
        pretrained_path=cfg.model.pretrained_path,
        params=params,
    )
    if cfg.model.pretrained_path:  # the backbone came from a file: a second network copies it (co-training)
        model.init_keys = {k for k in model.state_dict() if k.startswith("backbone.")}
    return model


def build_mode(cfg, model, mode_name: str, n_classes: int, device, gen, log=None, cardinality: float = 1.0):
    """The training mode `mode_name` over `model` (on `device`): its TrainContext with the configured loss and batch
    augmentation, random draws from `gen`; cardinality: the labelled clips' mean label count (rule topk)."""
    single = is_single_label(cfg)
    if single and model.n_out != n_classes:
        raise ValueError(
            "data.single_label_csv is set: single-label (softmax) training needs model.time_reversal "
            "false (reversed clips as new classes are a multi-label device)"
        )
    ctx = TrainContext(
        cfg,
        model,
        build_loss(cfg.loss, single),
        build_batch_augment(cfg.augment, n_classes, model.n_out != n_classes),
        n_classes,
        device,
        gen,
        log=log,
        single_label=single,
        extra={"cardinality": cardinality},
    )
    return create_mode(mode_name, ctx)
