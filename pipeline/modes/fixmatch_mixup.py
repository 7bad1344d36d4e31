"""FixMatch with MixMatch-style mixing, multi-label: see FixMatchMixup."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.fixmatch import FixMatch


@register_mode("fixmatch_mixup")
class FixMatchMixup(FixMatch):
    """FixMatch with MixMatch-style mixing: labelled clips (configured SpecAugment, targets y, mask 1) and the strong
    unlabelled views (pseudo-labels, confidence mask) are concatenated, time-reversed as configured and mixed up
    (alpha, lambda' >= 0.5); targets mix linearly, masks multiply (m * m[perm]: a mixed entry counts only when both
    sources are trusted; the other-orientation half of a clip's 2C outputs is known to be 0 and always counts).
    Loss = masked BCE of the labelled rows + lambda_u * masked BCE of the unlabelled rows, each summed over outputs
    and averaged over its rows (losses.bce's unit; the configured loss cannot take per-entry masks, so this mode uses
    BCE and leaves cosine heads untrained).
    """

    defaults = {**FixMatch.defaults, "alpha": 0.75}

    def unused_parameters(self, net):
        return [n for n, _ in net.named_parameters() if n.startswith("arc.")]  # the cosine heads: no loss here

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        yhat, mask = self.select(batch)
        self.stats.update(yhat, mask, batch.get("utruth"), batch.get("uy"))
        xm, tm, mm = self.mix(
            [self.ctx.aug.spec(x, self.g), self.strong(ux)],
            [y, yhat],
            [torch.ones_like(y), mask.float()],
            self.hp["alpha"],
        )
        loss = self.task.entry_loss(self.net()(xm, heads=["h"])["h"], tm) * mm
        sup, unl = loss[:b].sum() / b, loss[b:].sum() / (len(loss) - b)
        return sup + self.hp["lambda_u"] * unl, {"sup": sup.detach(), "unl": unl.detach(), "kept": mask.float().mean()}
