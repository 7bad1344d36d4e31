"""Pseudo-labelling rounds inside one fit (Lee 2013), multi-label: see PseudoLabel."""

from __future__ import annotations

import copy

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import SSLMode


@register_mode("pseudo_label")
class PseudoLabel(SSLMode):
    """Pseudo-labelling rounds inside one fit (Lee 2013; the noisy-set relabelling of FSDKaggle2019 entries).

    On the first step the teacher becomes a frozen copy of the initial model (the warm-up / train.init_from model:
    start from one, a random teacher selects little). Each batch it labels the unlabelled clips in eval mode:
    positives by the rule (pipeline/modes/pseudo.py; threshold: p >= tau_pos), negatives p <= tau_neg, the rest
    masked; the student trains on the supervised loss plus lambda_u * masked BCE of a SpecAugment view of those clips
    (summed over classes, averaged over clips: the supervised loss's unit). With rule class_threshold the
    thresholds are the teacher's, chosen at each epoch start. The teacher is refreshed from the student
    at each new round: rounds equal shares of training (default 2: once, half-way; 1: never), or every refresh_epochs
    epochs when that is > 0. The student is validated and saved.
    """

    defaults = {
        "mu": 2,
        "tau_pos": 0.7,
        "tau_neg": 0.3,
        "lambda_u": 1.0,
        "rounds": 2,
        "refresh_epochs": 0,
        "rule": "threshold",
        "target_precision": 0.8,
        "topk": 0,
    }

    def __init__(self, ctx):
        super().__init__(ctx)
        self.teacher, self.round = None, 0

    def round_at(self, progress):
        if self.hp["refresh_epochs"] > 0:
            return int(progress * self.ctx.cfg.train.epochs // self.hp["refresh_epochs"])
        rounds = max(1, int(self.hp["rounds"]))
        return min(int(progress * rounds), rounds - 1)

    def step(self, batch, progress):
        r = self.round_at(progress)
        if self.teacher is None:
            self.teacher, self.round = copy.deepcopy(self.model).requires_grad_(False), r
        elif r != self.round:
            self.teacher.load_state_dict(self.model.state_dict())
            self.round = r
        with torch.no_grad():
            p = self.task.probs(self.logits(batch["ux"], self.teacher.eval()))
        yhat, mask = self.pick(p)
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        sup = self.supervised_loss(batch["x"], batch["y"])
        unl = self.task.masked(self.logits(self.ctx.aug.spec(batch["ux"], self.g)), yhat, mask)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(), "kept": mask.float().mean()}

    def calibration_model(self):
        return (self.teacher if self.teacher is not None else self.model), "h"

    def state_dict(self):
        return {"teacher": None if self.teacher is None else self.teacher.state_dict(), "round": self.round}

    def load_state_dict(self, state):
        if state.get("teacher") is not None:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])
        self.round = int(state.get("round", 0))
