"""FixMatch mode (Sohn et al., NeurIPS 2020), multi-label: see FixMatch. fixmatch_mixup and fmuc build on it."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import SSLMode, frozen_bn


@register_mode("fixmatch")
class FixMatch(SSLMode):
    """FixMatch (Sohn et al., NeurIPS 2020), multi-label.

    Pseudo-labels from the weak (unaugmented) view, with BN statistics frozen: positives by the rule (`rule`,
    pipeline/modes/pseudo.py: threshold p >= tau_pos, per-class thresholds for `target_precision` on held-out
    labelled clips, or the top-k of each clip), negatives where p <= tau_neg; the other entries are masked. Unlabelled
    loss = lambda_u * masked BCE of the strong view (strong SpecAugment), summed over classes and averaged over the
    B_u clips: the supervised loss's unit, so lambda_u = 1 weighs an unlabelled clip as a labelled one, as the paper
    does; no ramp.
    """

    defaults = {
        "mu": 2,
        "tau_pos": 0.95,
        "tau_neg": 0.05,
        "lambda_u": 1.0,
        "strong_masks": 3,
        "strong_width": 0.2,
        "rule": "threshold",
        "target_precision": 0.8,
        "topk": 0,
    }

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.hp["rule"] == "threshold" and not self.hp["tau_neg"] < 0.5 <= self.hp["tau_pos"]:
            raise ValueError(
                f"ssl.{self.name}: need tau_neg < 0.5 <= tau_pos, got tau_neg={self.hp['tau_neg']}, "
                f"tau_pos={self.hp['tau_pos']}"
            )

    def select(self, batch):
        """(pseudo-labels, mask) (B_u, C) from the weak view."""
        with torch.no_grad(), frozen_bn(self.model):
            p = self.task.probs(self.logits(batch["ux"]))
        return self.pick(p)

    def step(self, batch, progress):
        yhat, mask = self.select(batch)
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        sup = self.supervised_loss(batch["x"], batch["y"])
        unl = self.task.masked(self.logits(self.strong(batch["ux"])), yhat, mask)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(), "kept": mask.float().mean()}
