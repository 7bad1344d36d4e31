"""FixMatch with uncertainty (MC dropout + temperature, as UPS), multi-label: see FixMatchUncertainty."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import dropout_modules, mc_dropout
from pipeline.modes.fixmatch import FixMatch


@register_mode("fmuc")
class FixMatchUncertainty(FixMatch):
    """FixMatch with uncertainty-aware selection (MC dropout as in UPS, Rizve et al., ICLR 2021).

    N passes of the weak view with dropout active in every block and before the heads, BN frozen (eval mode but
    dropout), p_n = sigmoid(z_n / T); positives by the rule (pipeline/modes/pseudo.py) applied to mean - std (the
    paper's rule with rule = threshold: mean - std >= tau_pos), negatives where mean + std <= tau_neg (std over the
    passes, unbiased); the rest as fixmatch. Needs a model with dropout: where model.dropout / model.block_dropout
    are 0 the train stage builds the model with this mode's `dropout` (0.3) in both places (recorded in the
    checkpoint's model config); a model without dropout handed to the mode directly is an error.
    """

    defaults = {
        "mu": 2,
        "passes": 5,
        "T": 2.0,
        "tau_pos": 0.9,
        "tau_neg": 0.1,
        "lambda_u": 1.0,
        "strong_masks": 3,
        "strong_width": 0.2,
        "dropout": 0.3,
        "rule": "threshold",
        "target_precision": 0.8,
        "topk": 0,
    }

    @classmethod
    def model_dropout(cls, cfg) -> float:
        return cfg.model.dropout or cls.hyperparameters(cfg)["dropout"]

    @classmethod
    def model_block_dropout(cls, cfg) -> float:
        return cfg.model.block_dropout or cls.hyperparameters(cfg)["dropout"]

    def __init__(self, ctx):
        super().__init__(ctx)
        if not dropout_modules(self.model):
            raise ValueError(
                "train.mode=fmuc needs MC dropout, but the model has no dropout: set model.dropout > 0 "
                "(e.g. model.dropout=0.3)"
            )

    def mc_probs(self, ux):
        """(N, B_u, C) sigmoids of the N MC-dropout passes (temperature T)."""
        with torch.no_grad(), mc_dropout(self.model):
            return torch.stack([self.task.probs(self.logits(ux) / self.hp["T"]) for _ in range(int(self.hp["passes"]))])

    def select(self, batch):
        ps = self.mc_probs(batch["ux"])
        mean, std = ps.mean(0), ps.std(0)
        if self.task.single_label:
            return self.task.select_mc(mean, std, self.hp["tau_pos"], self.hp["tau_neg"])
        return self.pick(mean - std, mean + std)
