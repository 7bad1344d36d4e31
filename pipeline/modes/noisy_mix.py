"""Curated and noisy clips in every batch, the noisy ones with their given labels: the noisy clips as extra labelled
data, with the FAT2019 solutions' devices against their label noise.

Each step takes n_curated curated clips V and n_noisy noisy clips W (ssl.noisy_mix.n_curated / n_noisy), applies the
configured SpecAugment and time reversal to each, mixes each set with itself (mixup never blends a noisy clip's
labels into a curated one's), and runs both through one forward (the BN statistics of the whole batch):

    loss = (N_V * L(h(V'), y_V') + weight * N_W * L(k(W'), t_W')) / (N_V + N_W)

with L the configured loss (focal + ArcFace), k the head the noisy clips train: h itself, or with noisy_head the
second head g (the 4th place's multitask head: the backbone learns from the noisy labels, h from the curated ones
only, g is never used for predictions), and t_W' the noisy targets: the given labels y_W', or with beta < 1 the soft
bootstrapping target beta * y_W' + (1 - beta) * sigmoid(k(W')) (Reed et al. 2015; argus-freesound's Lsoft is this
with beta 0.7), the model's own belief detached, so that a given label the model firmly rejects costs less.

Staged selection (the 8th place's): select_from names a finished run with the same folds (same seed and dataset)
whose fold model, trained on the curated clips only, predicts every noisy clip once (no TTA); a noisy clip is kept
when one of its given labels is among that model's select_topk most probable classes, the others are left out of
the noisy stream. The predictions are kept beside that model (runs/<select_from>/train/fold_<k>/noisy_pred-*.npy).

    make train OVERRIDES="train.mode=noisy_mix ssl.noisy_mix.beta=0.7"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.modes import Mode, register_mode


@register_mode("noisy_mix")
class NoisyMix(Mode):
    defaults = {
        "n_curated": 16,  # curated clips per batch
        "n_noisy": 16,  # noisy clips per batch
        "weight": 1.0,  # weight of a noisy clip's loss against a curated one's
        "beta": 1.0,  # soft bootstrapping: the given labels' share of the noisy target (1: the labels as they are)
        "noisy_head": False,  # noisy clips train head g, curated ones head h
        "select_from": None,  # a run name: keep the noisy clips its fold model agrees with (staged selection)
        "select_topk": 1,  # ... agreement: a given label among the model's select_topk most probable classes
    }
    heads = ("h", "g")
    uses_unlabelled = True
    uses_noisy_labels = True
    single_label_ok = False  # the noisy clips' given labels are multi-label

    def __init__(self, ctx):
        super().__init__(ctx)
        if ctx.cfg.data.labelled_fraction < 1:
            raise ValueError(
                "train.mode=noisy_mix trains on the noisy clips' given labels, and data.labelled_fraction < 1 "
                "makes the unlabelled clips curated ones without labels: set data.labelled_fraction=1"
            )
        if not 0 <= self.hp["beta"] <= 1:
            raise ValueError(f"ssl.noisy_mix.beta must be in [0, 1], got {self.hp['beta']}")

    def batch_sizes(self):
        return int(self.hp["n_curated"]), int(self.hp["n_noisy"])

    def unused_parameters(self, net) -> list[str]:
        if self.hp["noisy_head"]:
            return []
        return [n for n, _ in net.named_parameters() if n.startswith(("heads.g", "arc.g"))]

    def step(self, batch, progress):
        aug, gen = self.ctx.aug, self.ctx.generator
        v, y_v = aug.reverse(aug.spec(batch["x"], gen), batch["y"], gen)
        w, y_w = aug.reverse(aug.spec(batch["ux"], gen), batch["uy"][:, : self.ctx.n_classes], gen)
        v, y_v = aug.mix(v, y_v, gen)[:2]
        w, y_w = aug.mix(w, y_w, gen)[:2]
        n_v, n_w = len(v), len(w)
        k = "g" if self.hp["noisy_head"] else "h"
        out = self.net()(torch.cat([v, w]), heads=sorted({"h", k}))
        out_v = {key: t[:n_v] for key, t in out.items() if key.split("_")[0] == "h"}
        out_w = {key: t[n_v:] for key, t in out.items() if key.split("_")[0] == k}
        beta = float(self.hp["beta"])
        if beta < 1:
            y_w = beta * y_w + (1 - beta) * torch.sigmoid(out_w[k].detach().float())
        loss_v = self.ctx.loss_fn(out_v, y_v, head="h")
        loss_w = self.ctx.loss_fn(out_w, y_w, head=k)
        loss = (n_v * loss_v + self.hp["weight"] * n_w * loss_w) / (n_v + n_w)
        return loss, {"loss_curated": loss_v.detach(), "loss_noisy": loss_w.detach()}

    @classmethod
    def select_unlabelled(cls, cfg, fold, clips, log=None, load_model=None):
        """The noisy clips staged selection keeps (all of them without select_from); load_model reads
        select_from's fold model (selection_predictions)."""
        hp = cls.hyperparameters(cfg)
        if not hp["select_from"] or fold == "full":
            return clips
        p = selection_predictions(cfg, hp["select_from"], fold, clips, load_model)
        top = np.argsort(-p, axis=1)[:, : int(hp["select_topk"])]
        keep = np.take_along_axis(clips.y[:, : p.shape[1]], top, axis=1).max(1) >= 0.5
        if log is not None:
            log.info(
                f"staged selection ({hp['select_from']} fold {fold}, top {hp['select_topk']}): {keep.sum()} of "
                f"{len(keep)} noisy clips kept"
            )
        return clips.subset(np.flatnonzero(keep))


def selection_predictions(cfg, run: str, fold, clips, load_model) -> np.ndarray:
    """(N, C) predictions of runs/<run>/train/fold_<fold>/best.pt on the clips, computed once and kept beside it.
    load_model (path -> (model, checkpoint)) is the engine's (pipeline.engine.load_model), handed over by the train
    stage: a mode stands below the engine and never imports it."""
    import pandas as pd

    from pipeline.distributed import get_device
    from pipeline.predict import predict_clips
    from pipeline.utils import atomic_path, run_dir

    src = Path(run_dir(cfg, "train")).parent.parent / run
    fdir = src / "train" / f"fold_{fold}"
    if not (fdir / "done.json").exists():
        raise FileNotFoundError(f"ssl.noisy_mix.select_from={run}: {fdir} holds no finished fold model")
    mine, theirs = (pd.read_csv(d / "folds" / "folds.csv") for d in (Path(run_dir(cfg, "train")).parent, src))
    if not mine.equals(theirs):
        raise ValueError(
            f"ssl.noisy_mix.select_from={run}: its folds ({src}/folds/folds.csv) are not this run's; its fold "
            f"model may have trained on this fold's validation clips (use a run with the same seed and dataset)"
        )
    path = fdir / f"noisy_pred-{(fdir / 'best.pt').stat().st_mtime_ns}.npy"  # a retrained fold model: predicted anew
    if path.exists():
        p = np.load(path)
        if len(p) == len(clips):
            return p
    model, _ = load_model(fdir / "best.pt")
    device = get_device(cfg)
    p = predict_clips(
        model.to(device), clips.cache, clips.fnames, cfg.train.frames, cfg.infer.hop, clips.y.shape[1], device=device
    )
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, p)
    return p
