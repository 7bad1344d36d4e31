"""The teacher-student stage of the reference system (Zhang and Wu, DCASE 2019 Task 2, Algorithm 1, equation 5).

Each batch holds N_V curated clips V and N_W noisy clips W (teacher_student.n_curated / n_noisy). With f the backbone,
g the label-cleaning head and h the classification head:

    V^ = SpecAugment(V), W^ = SpecAugment(W)
    y^_W = select(sigmoid(g(f(W^))))                        pseudo-labels (no gradient, BN statistics untouched)
    U^ = V^ + W^ with labels y_V + y^_W                     (time reversal as new classes on both)
    V' = mixup(V^, shuffle(V^)), U' = mixup(U^, shuffle(U^))   mixed separately: noisy clips never reach g's loss
    loss = sum over V' of (focal + ArcFace)(g(f(x))) + sum over U' of (focal + ArcFace)(h(f(x)))

so g learns from curated clips only, h from both, f from both. The sums are taken as per-set means weighted by the
set sizes (equal to the sum over samples up to the constant 1 / (|V'| + |U'|), which keeps the step size in the
usual range).

Batch-norm statistics (teacher_student.g_pass): the pseudo-label pass never updates the running statistics. g's
loss pass over V' (N_V clips, 6 in the reference) is
    separate      its own forward in train mode: normalised by, and updating the running statistics with, the N_V
                  curated clips' statistics (the code before this key existed); the pseudo-label pass normalises
                  with the noisy batch's statistics
    frozen_stats  its own forward with BN in eval mode: normalised by the running statistics, which it leaves alone;
                  the pseudo-label pass uses them too, so g is trained and used under the same normalisation
    joint         one forward of V' and U' concatenated, g applied to the V' rows and h to the U' rows: g's loss
                  still comes from curated clips only, but its normalisation shares the statistics of the whole
                  batch, noisy clips included; the pseudo-label pass normalises with the noisy batch's statistics
Selection of the pseudo-labels (teacher_student.rule; pipeline/modes/pseudo.py): threshold (sigmoid(g) > eta, the
paper), class_threshold (per-class thresholds for target_precision on held-out curated clips), topk, or
noisy_aware (beyond the paper: a given noisy label is kept where g >= keep_low, a label is added where g >= eta,
the rest dropped). Where the noisy truth is known, the pseudo-labels' precision and recall against it and the share
of the noisy labels kept are logged each epoch (pl_* columns of metrics.csv, plotted in curves.png).
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.modes import Mode, PseudoLabelStats, register_mode
from pipeline.modes.common import bn_eval, frozen_bn
from pipeline.modes.pseudo import PseudoLabeller

G_PASSES = ("separate", "frozen_stats", "joint")
RULES = ("threshold", "class_threshold", "topk", "noisy_aware")


@register_mode("teacher_student")
class TeacherStudent(Mode):
    heads = ("h", "g")
    uses_unlabelled = True
    single_label_ok = False  # it cleans noisy labels; single-label datasets have none

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ts = ctx.cfg.teacher_student
        if self.hp["g_pass"] not in G_PASSES:
            raise ValueError(f"teacher_student.g_pass: unknown {self.hp['g_pass']!r}; one of {list(G_PASSES)}")
        if self.hp["rule"] not in RULES:
            raise ValueError(f"teacher_student.rule: unknown {self.hp['rule']!r}; one of {list(RULES)}")
        rule = "threshold" if self.hp["rule"] == "noisy_aware" else self.hp["rule"]
        self.labeller = PseudoLabeller(
            {**self.hp, "rule": rule}, ctx.n_classes, ctx.extra.get("cardinality", 1.0), tau_key="eta"
        )
        self.stats = PseudoLabelStats()

    @classmethod
    def hyperparameters(cls, cfg) -> dict:
        return dict(cfg.teacher_student)

    def batch_sizes(self):
        return self.ts.n_curated, self.ts.n_noisy

    def calibration_model(self):
        return self.model, "g"

    def calibrate(self, p, y):
        self.labeller.calibrate(p, y)

    def g_context(self):
        """How BN normalises g's passes (its loss pass and the pseudo-label pass) under g_pass frozen_stats."""
        return bn_eval(self.model) if self.hp["g_pass"] == "frozen_stats" else contextlib.nullcontext()

    @torch.no_grad()
    def pseudo_labels(self, w_hat, given=None):
        """Hard pseudo-labels (B_W, C) of the noisy clips over the original classes, from sigmoid(g(f(W^))); the
        pass leaves the BN running statistics alone (and dropout off). `given`: the clips' noisy labels (B_W, C),
        used by rule noisy_aware (without them it is the threshold rule)."""
        with frozen_bn(self.model, no_dropout=True), self.g_context():
            logits = self.model(w_hat, heads=["g"])["g"][:, : self.ctx.n_classes]
        p = torch.sigmoid(logits.float())
        pos = self.labeller.positives(p)
        if self.hp["rule"] == "noisy_aware" and given is not None:
            pos = pos | ((given[:, : self.ctx.n_classes] >= 0.5) & (p >= self.hp["keep_low"]))
        return pos.float()

    def step(self, batch, progress):
        aug, g = self.ctx.aug, self.ctx.generator
        v_hat, w_hat = aug.spec(batch["x"], g), aug.spec(batch["ux"], g)
        y_w = self.pseudo_labels(w_hat, batch.get("uy"))
        self.stats.update(y_w, None, batch.get("utruth"), batch.get("uy"))
        v_hat, y_v = aug.reverse(v_hat, batch["y"], g)
        w_hat, y_w = aug.reverse(w_hat, y_w, g)
        v_mix, yv_mix = aug.mix(v_hat, y_v, g)[:2]
        u_mix, yu_mix = aug.mix(torch.cat([v_hat, w_hat]), torch.cat([y_v, y_w]), g)[:2]
        n_v, n_u = len(v_mix), len(u_mix)
        if self.hp["g_pass"] == "joint":
            out = self.net()(torch.cat([v_mix, u_mix]), heads=["g", "h"])
            out_g = {k: v[:n_v] for k, v in out.items() if k.startswith("g")}
            out_h = {k: v[n_v:] for k, v in out.items() if k.startswith("h")}
        else:
            with self.g_context():
                out_g = self.net()(v_mix, heads=["g"])
            out_h = self.net()(u_mix, heads=["h"])
        loss_g = self.ctx.loss_fn(out_g, yv_mix, head="g")
        loss_h = self.ctx.loss_fn(out_h, yu_mix, head="h")
        loss = (n_v * loss_g + n_u * loss_h) / (n_v + n_u)
        return loss, {"loss_g": loss_g.detach(), "loss_h": loss_h.detach()}

    def epoch_logs(self):
        return {**self.stats.logs(), **self.labeller.logs()}
