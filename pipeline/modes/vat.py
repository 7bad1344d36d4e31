"""Virtual Adversarial Training mode (Miyato et al., TPAMI 2018), multi-label: see VAT."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import SSLMode, _per_sample, frozen_bn


@register_mode("vat")
class VAT(SSLMode):
    """Virtual Adversarial Training (Miyato et al., TPAMI 2018), multi-label.

    D(r) = BCE(z(x + r), p(x)) on the C original classes with p detached; one power iteration from a random unit
    direction d scaled by xi gives g = grad_r D(xi d); the loss is the binary KL (BCE minus the entropy of p, same
    gradient) at r = eps g / |g|, summed over classes and averaged over clips, on labelled and unlabelled clips,
    weighted alpha, plus the supervised loss. xi and eps are relative to each clip's L2 norm: xi = xi_rel ||x||,
    eps = eps_rel ||x|| (with normalised log-mels eps_rel = 0.05 is an RMS perturbation of about 0.05 feature std).
    The clean and perturbed passes leave BN running statistics alone and run without dropout (else dropout noise,
    not r, would set the direction).
    """

    defaults = {"mu": 1, "alpha": 1.0, "eps_rel": 0.05, "xi_rel": 1e-3}

    def perturbation(self, x, p):
        """r_adv (B, ...) with ||r_b|| = eps_rel ||x_b||."""
        norm = _per_sample(x.flatten(1).norm(dim=1), x)
        d = torch.randn(x.shape, generator=self.g, device=self.g.device).to(x.device)
        r = self.hp["xi_rel"] * norm * d / _per_sample(d.flatten(1).norm(dim=1), x).clamp_min(1e-12)
        r.requires_grad_(True)
        with frozen_bn(self.model, no_dropout=True):
            dist = self.task.entry_loss(self.logits(x + r), p).sum()
        (g,) = torch.autograd.grad(dist, r)
        return (self.hp["eps_rel"] * norm * g / _per_sample(g.flatten(1).norm(dim=1), x).clamp_min(1e-12)).detach()

    def step(self, batch, progress):
        sup = self.supervised_loss(batch["x"], batch["y"])
        v = torch.cat([batch["x"], batch["ux"]])
        with torch.no_grad(), frozen_bn(self.model, no_dropout=True):
            z = self.logits(v)
        p = self.task.probs(z)
        r = self.perturbation(v, p)
        with frozen_bn(self.model, no_dropout=True):
            za = self.logits(v + r)
        lds = self.task.masked(za, p) - self.task.masked(z, p)
        return sup + self.hp["alpha"] * lds, {"sup": sup.detach(), "vat": lds.detach()}
