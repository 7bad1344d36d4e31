"""Cost of the backbones at the CPU recipe's size: parameters and seconds per training step (forward, backward and a
NAdam step of a linear head on random log-mels), each against vgg8 at configs/real.yaml's size in the same process.

    .venv/bin/python bench/backbones.py [--threads 2] [--batch 32] [--steps 4]

It says which backbone rows of bench/quality.py fit a CPU session (docs/results.md, the real-sound backbone levers):
a row costs 640 such steps per seed plus validation. The model alone, without the data pipeline or the losses, so the
ratios, not the seconds, carry over to a training run.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table

from models import build_backbone  # noqa: E402  (common puts the repository on sys.path)

VARIANTS = [  # (label, backbone, params, n_mels, frames)
    ("vgg8 width 0.25, 64 mels, 2 s (the recipe's network)", "vgg8", {"width": 0.25}, 64, 128),
    ("vgg8 width 0.25, 64 mels, 4 s", "vgg8", {"width": 0.25}, 64, 256),
    ("vgg8 width 0.25, 128 mels, 2 s", "vgg8", {"width": 0.25}, 128, 128),
    ("vgg8 width 0.5", "vgg8", {"width": 0.5}, 64, 128),
    ("cnn_skip width 0.25", "cnn_skip", {"width": 0.25}, 64, 128),
    ("cnn14 width 0.25", "cnn14", {"width": 0.25, "n_mels": 64}, 64, 128),
    ("wrn28_2", "wrn28_2", {}, 64, 128),
]


def step_seconds(net, head, x, steps: int) -> float:
    """Fastest of `steps` timed training steps, after one untimed."""
    opt = torch.optim.NAdam([*net.parameters(), *head.parameters()])
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = head(net(x)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows, base = [], None
    for label, name, params, n_mels, frames in VARIANTS:
        net = build_backbone(name, **params)
        s = step_seconds(net, torch.nn.Linear(net.out_dim, 38), torch.randn(a.batch, 1, n_mels, frames), a.steps)
        base = base or s
        n = sum(p.numel() for p in net.parameters())
        rows.append([label, f"{n / 1e6:.2f} M", f"{s:.3f}", f"{s / base:.1f}x", f"{640 * s / 60:.1f}"])
        print(rows[-1], flush=True)
    print(f"\n{a.threads} thread(s), batch {a.batch}, fastest of {a.steps} steps\n")
    header = ["backbone", "parameters", "seconds per step", "against the recipe's", "minutes for 640 steps"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
