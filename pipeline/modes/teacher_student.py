"""The teacher-student stage of the reference system (Zhang and Wu, DCASE 2019 Task 2, Algorithm 1, equation 5).

Each batch holds N_V curated clips V and N_W noisy clips W (teacher_student.n_curated / n_noisy). With f the backbone,
g the label-cleaning head and h the classification head:

    V^ = SpecAugment(V), W^ = SpecAugment(W)
    y^_W = 1[sigmoid(g(f(W^))) > eta]                       pseudo-labels (no gradient)
    U^ = V^ + W^ with labels y_V + y^_W                     (time reversal as new classes on both)
    V' = mixup(V^, shuffle(V^)), U' = mixup(U^, shuffle(U^))   mixed separately: noisy clips never reach g
    loss = sum over V' of (focal + ArcFace)(g(f(x))) + sum over U' of (focal + ArcFace)(h(f(x)))

so g learns from curated clips only, h from both, f from both. The sums are taken as per-set means weighted by the
set sizes (equal to the sum over samples up to the constant 1 / (|V'| + |U'|), which keeps the step size in the
usual range). Where the noisy truth is known, the pseudo-labels' precision and recall against it and the share of
the noisy labels kept are logged each epoch (pl_* columns of metrics.csv, plotted in curves.png).
"""
from __future__ import annotations

import torch

from pipeline.modes import Mode, PseudoLabelStats, register_mode


@register_mode("teacher_student")
class TeacherStudent(Mode):
    heads = ("h", "g")
    uses_unlabelled = True
    single_label_ok = False          # it cleans noisy labels; single-label datasets have none

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ts = ctx.cfg.teacher_student
        self.stats = PseudoLabelStats()

    @classmethod
    def hyperparameters(cls, cfg) -> dict:
        return dict(cfg.teacher_student)

    def batch_sizes(self):
        return self.ts.n_curated, self.ts.n_noisy

    @torch.no_grad()
    def pseudo_labels(self, w_hat):
        """y^_W = 1[sigmoid(g(f(W^))) > eta] over the original classes: (B_W, C)."""
        logits = self.model(w_hat, heads=["g"])["g"][:, :self.ctx.n_classes]
        return (torch.sigmoid(logits.float()) > self.ts.eta).float()

    def step(self, batch, progress):
        aug, g = self.ctx.aug, self.ctx.generator
        v_hat, w_hat = aug.spec(batch["x"], g), aug.spec(batch["ux"], g)
        y_w = self.pseudo_labels(w_hat)
        self.stats.update(y_w, None, batch.get("utruth"), batch.get("uy"))
        v_hat, y_v = aug.reverse(v_hat, batch["y"], g)
        w_hat, y_w = aug.reverse(w_hat, y_w, g)
        v_mix, yv_mix = aug.mix(v_hat, y_v, g)[:2]
        u_mix, yu_mix = aug.mix(torch.cat([v_hat, w_hat]), torch.cat([y_v, y_w]), g)[:2]
        loss_g = self.ctx.loss_fn(self.model(v_mix, heads=["g"]), yv_mix, head="g")
        loss_h = self.ctx.loss_fn(self.model(u_mix, heads=["h"]), yu_mix, head="h")
        n_v, n_u = len(v_mix), len(u_mix)
        loss = (n_v * loss_g + n_u * loss_h) / (n_v + n_u)
        return loss, {"loss_g": loss_g.detach(), "loss_h": loss_h.detach()}

    def epoch_logs(self):
        return self.stats.logs()
