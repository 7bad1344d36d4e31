"""Mean Teacher mode (Tarvainen & Valpola, NeurIPS 2017), multi-label: see MeanTeacher."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import EMA, SSLMode, frozen_bn, per_entry, sigmoid_ramp


@register_mode("mean_teacher")
class MeanTeacher(SSLMode):
    """Mean Teacher (Tarvainen & Valpola, NeurIPS 2017).

    Teacher = EMA of the student (parameters and BN running statistics). Consistency = MSE between the student's
    and the teacher's sigmoids (per class, per-entry mean) on labelled and unlabelled clips under two independently
    drawn SpecAugment views, one per network; weight w_max exp(-5 (1 - t)^2), t = progress / rampup. The teacher
    runs in train mode (batch statistics, as the reference code) with its buffers untouched; it is the model that is
    validated and saved.
    """

    defaults = {"mu": 1, "ema_decay": 0.999, "w_max": 10.0, "rampup": 0.3}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ema = EMA(self.model, self.hp["ema_decay"])

    def consistency(self, x):
        xs, xt = self.ctx.aug.spec(x, self.g), self.ctx.aug.spec(x, self.g)  # two independent views
        teacher = self.ema.model.train(self.model.training)
        with torch.no_grad(), frozen_bn(teacher):
            pt = self.task.probs(self.logits(xt, teacher))
        return per_entry((self.task.probs(self.logits(xs)) - pt) ** 2, self.C)

    def step(self, batch, progress):
        sup = self.supervised_loss(batch["x"], batch["y"])
        cons = self.consistency(torch.cat([batch["x"], batch["ux"]]))
        w = self.hp["w_max"] * sigmoid_ramp(progress, self.hp["rampup"])
        return sup + w * cons, {"sup": sup.detach(), "cons": cons.detach(), "w_cons": w}

    def after_step(self):
        self.ema.update(self.model)

    def eval_model(self):
        return self.ema.model

    def state_dict(self):
        return {"teacher": self.ema.state_dict()}

    def load_state_dict(self, state):
        self.ema.load_state_dict(state["teacher"])
