"""MixMatch mode (Berthelot et al., NeurIPS 2019), multi-label: see MixMatch."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import SSLMode, frozen_bn, linear_ramp, per_entry


@register_mode("mixmatch")
class MixMatch(SSLMode):
    """MixMatch (Berthelot et al., NeurIPS 2019), multi-label.

    Guess q = sharpen(mean over K SpecAugment views of sigmoid(z)), per class, T (never normalised across classes).
    The labelled clips (one SpecAugment view, targets y) and the K unlabelled views (targets q) are concatenated,
    time-reversed as configured and mixed up (alpha, lambda' >= 0.5) over the whole batch. Labelled rows: the
    configured loss; unlabelled rows: MSE between sigmoids and mixed targets (per-entry mean, as the paper's MSE),
    weight lambda_u ramped linearly over `rampup`. pl_* stats use the hard guesses q >= 0.5 (all kept).
    """

    defaults = {"mu": 1, "K": 2, "T": 0.5, "alpha": 0.75, "lambda_u": 75.0, "rampup": 0.2}

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        us = [self.ctx.aug.spec(ux, self.g) for _ in range(int(self.hp["K"]))]
        with torch.no_grad(), frozen_bn(self.model):
            q = self.task.sharpen(torch.stack([self.task.probs(self.logits(u)) for u in us]).mean(0), self.hp["T"])
        self.stats.update((q >= 0.5).float(), torch.ones_like(q), batch.get("utruth"), batch.get("uy"))
        xm, tm, _ = self.mix([self.ctx.aug.spec(x, self.g), *us], [y] + [q] * len(us), alpha=self.hp["alpha"])
        out = self.net()(xm, heads=["h"])
        sup = self.ctx.loss_fn({k: v[:b] for k, v in out.items()}, tm[:b])
        unl = per_entry((self.task.probs(out["h"][b:]) - tm[b:]) ** 2, self.C)
        w = self.hp["lambda_u"] * linear_ramp(progress, self.hp["rampup"])
        return sup + w * unl, {"sup": sup.detach(), "unl": unl.detach(), "w_u": w}
