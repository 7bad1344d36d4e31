"""ReMixMatch mode (Berthelot et al., ICLR 2020), multi-label: see ReMixMatch."""

from __future__ import annotations

import torch

from pipeline import distributed
from pipeline.modes import register_mode
from pipeline.modes.common import RunningMean, SSLMode, frozen_bn, linear_ramp


@register_mode("remixmatch")
class ReMixMatch(SSLMode):
    """ReMixMatch (Berthelot et al., ICLR 2020), multi-label, without the rotation loss (no meaning for spectrograms).

    Distribution alignment per class: p_weak * pi_l / pi_u clipped to [0, 1], pi_u the mean weak prediction over the
    last da_batches batches, pi_l the mean labelled target over as many labelled batches; then per-class sharpening
    (T). Augmentation anchoring: the weak (unaugmented) view's target q is the target of K strong views (strong
    SpecAugment). Mixing as in MixMatch; labelled rows the configured loss, unlabelled rows BCE on the mixed targets
    (lambda_u), plus BCE of the first strong view before mixing against q (lambda_u1); both summed over
    outputs and averaged over clips (the supervised loss's unit), ramped linearly.
    """

    defaults = {
        "mu": 1,
        "K": 2,
        "T": 0.5,
        "alpha": 0.75,
        "lambda_u": 1.5,
        "lambda_u1": 0.5,
        "rampup": 0.2,
        "da_batches": 128,
        "strong_masks": 3,
        "strong_width": 0.2,
    }

    def __init__(self, ctx):
        super().__init__(ctx)
        n = int(self.hp["da_batches"])
        self.pi_l, self.pi_u = RunningMean(n, self.C, ctx.device), RunningMean(n, self.C, ctx.device)

    def guess(self, y, ux):
        with torch.no_grad(), frozen_bn(self.model):
            p = self.task.probs(self.logits(ux))
        self.pi_l.update(distributed.mean_tensor(y.float().mean(0)))  # data-parallel: the global batch's
        self.pi_u.update(distributed.mean_tensor(p.mean(0)))  # means, the same on every rank
        return self.task.sharpen(self.task.align(p, self.pi_l.value(), self.pi_u.value()), self.hp["T"])

    def step(self, batch, progress):
        x, y, ux, b = batch["x"], batch["y"], batch["ux"], len(batch["x"])
        q = self.guess(y, ux)
        self.stats.update((q >= 0.5).float(), torch.ones_like(q), batch.get("utruth"), batch.get("uy"))
        us = [self.strong(ux) for _ in range(int(self.hp["K"]))]
        xm, tm, _ = self.mix([self.ctx.aug.spec(x, self.g), *us], [y] + [q] * len(us), alpha=self.hp["alpha"])
        n = len(xm)
        out = self.net()(torch.cat([xm, us[0]]), heads=["h"])
        sup = self.ctx.loss_fn({k: v[:b] for k, v in out.items()}, tm[:b])
        unl = self.task.masked(out["h"][b:n], tm[b:])
        pre = self.task.masked(out["h"][n:, : self.C], q)
        w = linear_ramp(progress, self.hp["rampup"])
        loss = sup + w * (self.hp["lambda_u"] * unl + self.hp["lambda_u1"] * pre)
        return loss, {"sup": sup.detach(), "unl": unl.detach(), "unl_pre": pre.detach(), "ramp": w}

    def state_dict(self):
        return {"pi_l": self.pi_l.state_dict(), "pi_u": self.pi_u.state_dict()}

    def load_state_dict(self, state):
        self.pi_l.load_state_dict(state["pi_l"])
        self.pi_u.load_state_dict(state["pi_u"])
