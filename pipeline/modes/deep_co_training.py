"""Deep Co-Training mode (Qiao et al., ECCV 2018), two views, multi-label: see DeepCoTraining."""

from __future__ import annotations

import torch

from pipeline.modes import register_mode
from pipeline.modes.common import SSLMode, fgsm, frozen_bn, sigmoid_ramp

SEED_OFFSET = 7919


def second_network(model, seed: int):
    """A network of model's architecture: model's tensors named in model.init_keys (those it took from a warm-up,
    checkpoint or pretrained file), every other tensor freshly drawn from `seed`."""
    from models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_model(**model.config)
    keys = getattr(model, "init_keys", ())
    own = model.state_dict()
    net.load_state_dict({k: own[k].detach().clone() for k in keys if k in own}, strict=False)
    return net


@register_mode("deep_co_training")
class DeepCoTraining(SSLMode):
    """Deep Co-Training (Qiao et al., ECCV 2018), two views, multi-label.

    Two networks of the same architecture that start from the same source: the tensors the first network took from
    the warm-up, a checkpoint or pretrained weights (model.init_keys, set by engine.init_from_checkpoint and
    build_model) are copied into the second; every other tensor (new heads, or all of them when training from
    scratch) is drawn with another seed (run.seed + SEED_OFFSET). The paper's diversity comes from the adversarial
    term and those different draws. Loss = the configured supervised loss of each + ramp * (w_cot L_cot + w_dif
    L_dif) with the sigmoid ramp. L_cot = binary Jensen-Shannon between their sigmoids on unlabelled clips, summed
    over classes and averaged over clips. L_dif: each network makes FGSM examples against its own hard labels
    1[p >= 0.5] (step eps times each clip's std, see fgsm) on labelled and unlabelled clips, and the other network
    must agree with it there: BCE(z2(adv1), p1) + BCE(z1(adv2), p2), summed over classes and averaged over clips,
    targets detached. Both networks see one shared SpecAugment view of the clips. The first network is validated
    and saved.
    """

    defaults = {"mu": 1, "w_cot": 1.0, "w_dif": 0.5, "eps": 0.02, "rampup": 0.3}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.net2 = second_network(self.model, ctx.cfg.run.seed + SEED_OFFSET).to(ctx.device)
        if ctx.cfg.train.channels_last:
            self.net2.to(memory_format=torch.channels_last)

    def networks(self):
        return [self.model, self.net2]

    def step(self, batch, progress):
        net1, net2, b, C = self.model, self.net2.train(self.model.training), len(batch["x"]), self.C
        sup = self.supervised_loss(batch["x"], batch["y"]) + self.supervised_loss(batch["x"], batch["y"], model=net2)
        v = self.ctx.aug.spec(torch.cat([batch["x"], batch["ux"]]), self.g)
        task = self.task
        p1, p2 = task.probs(self.logits(v, net1)), task.probs(self.logits(v, net2))
        cot = task.divergence(p1[b:], p2[b:])
        adv1, adv2 = fgsm(net1, v, self.hp["eps"], C, task), fgsm(net2, v, self.hp["eps"], C, task)
        with frozen_bn(net1, net2):
            dif = task.masked(self.logits(adv1, net2), p1.detach()) + task.masked(self.logits(adv2, net1), p2.detach())
        w = sigmoid_ramp(progress, self.hp["rampup"])
        loss = sup + w * (self.hp["w_cot"] * cot + self.hp["w_dif"] * dif)
        return loss, {"sup": sup.detach(), "cot": cot.detach(), "dif": dif.detach(), "ramp": w}

    def state_dict(self):
        return {"net2": self.net2.state_dict()}

    def load_state_dict(self, state):
        self.net2.load_state_dict(state["net2"])
