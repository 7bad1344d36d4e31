"""Supervised training on labelled clips (the curated folds, or the noisy set with its labels in the warm-up)."""

from __future__ import annotations

from pipeline.modes import Mode, register_mode


@register_mode("supervised")
class Supervised(Mode):
    """Loss of the configured augmentations (SpecAugment, time reversal, mixup) on labelled batches only."""

    def step(self, batch, progress):
        loss = self.supervised_loss(batch["x"], batch["y"])
        return loss, {}
