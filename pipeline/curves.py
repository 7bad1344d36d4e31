"""Training curves as one PNG (curves.png): the training loss and the validation metric per epoch of each fold or
stage, and the pseudo-label figures where a mode logs them, read from metrics.csv tables. The warm-up and
train stages (pipeline/summary.py) write it beside their outputs; the report (pipeline/report.py) shows it inline.

    plot_curves({"fold 0": pd.read_csv("runs/demo/train/fold_0/metrics.csv")}, "curves.png", "demo train")
"""

from __future__ import annotations

from pipeline.utils import atomic_path


def plot_curves(histories: dict, path, title=""):
    """One PNG: training loss and the validation metric (val_lwlrap or val_accuracy) per epoch for each fold (or
    stage), and the pseudo-label figures where a mode logs them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = sorted({c for h in histories.values() for c in h.columns if c.startswith("pl_")})
    metric = next((c for h in histories.values() for c in h.columns if c.startswith("val_")), "val_lwlrap")
    fig, axes = plt.subplots(1, 2 + bool(extra), figsize=(5 * (2 + bool(extra)), 3.6))
    for name, h in histories.items():
        axes[0].plot(h["epoch"], h["loss"], label=name)
        if metric in h and h[metric].notna().any():
            axes[1].plot(h["epoch"], h[metric], marker=".", label=name)
        for c in extra:
            if c in h:
                axes[2].plot(h["epoch"], h[c], label=f"{name} {c[3:]}")
    axes[0].set(xlabel="epoch", ylabel="training loss", title=f"{title} loss")
    axes[1].set(xlabel="epoch", ylabel=metric[4:], title=f"{title} validation {metric[4:]}")
    if extra:
        axes[2].set(xlabel="epoch", title="pseudo-labels", ylim=(0, 1.02))
        axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
