"""The summary plot of docs/findings.md: each real-sound recipe's test lwlrap, mean +- sd over seeds, with its paired
difference to curated only, parsed from docs/results.md's recipe tables (the fold ensembles of the sections
real_recipes_crop4 and real_recipes, fold 0's model of quality_real), written to docs/findings_recipes.png. No
number is typed in here: rerun it after a bench script rewrites one of those tables.

    .venv/bin/python bench/findings_plot.py [--results docs/results.md] [--out docs/findings_recipes.png]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (section marker in results.md, the group's title in the plot), top to bottom
GROUPS = (
    ("real_recipes_crop4", "3-fold ensembles with TTA, 4-s crops (configs/real.yaml)"),
    ("real_recipes", "3-fold ensembles with TTA, 2-s crops"),
    ("quality_real", "fold 0's model alone, no TTA, 2-s crops"),
)
NUMBER = r"[+-]?\d+(?:\.\d+)?"


def section(text: str, name: str) -> str:
    """The text between `<!-- name -->` and `<!-- /name -->`."""
    m = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)<!-- /{re.escape(name)} -->", text, re.S)
    if m is None:
        raise SystemExit(f"results: no section <!-- {name} -->")
    return m.group(1)


def table_rows(block: str) -> list[dict[str, str]]:
    """The first markdown table of `block` as {column: cell} rows."""
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, rows = cells[0], [r for r in cells[2:] if len(r) == len(cells[0])]
    return [dict(zip(header, r)) for r in rows]


def mean_sd(cell: str) -> tuple[float, float]:
    """'0.5961 +- 0.0094' or '+0.0021 +- 0.0100 (+0.2 sd)' -> (mean, sd); '0.5469' -> (mean, nan); '-' -> (nan, nan)."""
    m = re.match(rf"({NUMBER})(?:\s*\+-\s*({NUMBER}))?", cell)
    if m is None:
        return math.nan, math.nan
    return float(m.group(1)), float(m.group(2)) if m.group(2) else math.nan


def seeds(block: str) -> int:
    """The number of seeds a table's command paragraph states ('over 3 seeds', 'for 3 seeds')."""
    m = re.search(r"(?:over|for) (\d+) seeds", block)
    return int(m.group(1)) if m else 0


def baselines(text: str) -> dict[str, float]:
    """The test split's chance and logistic-regression lwlrap of the first real-sound section."""
    chance = re.search(r"chance lwlrap \*\*(\d\.\d+)\*\*", text)
    logistic = re.search(r"logistic regression[^*]*\*\*(\d\.\d+)\*\*", text)
    return {k: float(m.group(1)) for k, m in (("chance", chance), ("logistic", logistic)) if m}


def recipe_groups(text: str) -> list[dict]:
    """[{title, seeds, rows: [{name, test: (mean, sd), paired: (mean, sd)}]}] of GROUPS, parsed from results.md."""
    groups = []
    for name, title in GROUPS:
        block = section(text, name)
        rows = []
        for r in table_rows(block):
            paired = next((v for k, v in r.items() if k.startswith("paired test")), "-")
            label = r.get("recipe") or r.get("variant")
            rows.append({"name": label, "test": mean_sd(r["test lwlrap"]), "paired": mean_sd(paired)})
        groups.append({"title": title, "seeds": seeds(block), "rows": rows})
    return groups


def row_note(row: dict) -> str:
    mean, sd = row["test"]
    note = f"{mean:.3f} ± {sd:.3f}"
    d, dsd = row["paired"]
    if not math.isnan(d):
        note += f"   paired {d:+.3f} ± {dsd:.3f}"
    return note


def draw(groups: list[dict], base: dict[str, float], out: Path) -> None:
    """One horizontal error bar (mean +- sd) a recipe, grouped by table, curated only (each table's reference) in
    blue; each row's figures in a column right of the axes, the baselines (far left of the recipes) in the label."""
    n = sum(len(g["rows"]) + 1 for g in groups)
    fig, ax = plt.subplots(figsize=(11, 0.4 * n + 1.5))
    y, ticks, labels, ends = n, [], [], []
    for g in groups:
        ax.text(0.01, y, g["title"], transform=ax.get_yaxis_transform(), fontweight="bold", va="center", fontsize=9)
        y -= 1
        for r in g["rows"]:
            mean, sd = r["test"]
            sd = 0.0 if math.isnan(sd) else sd
            ref = r["name"].startswith("curated only")
            ax.errorbar(mean, y, xerr=sd, fmt="o", capsize=4, color="tab:blue" if ref else "tab:orange")
            ax.text(1.02, y, row_note(r), transform=ax.get_yaxis_transform(), va="center", fontsize=8)
            ticks.append(y)
            labels.append(textwrap.shorten(r["name"], 66, placeholder="..."))
            ends += [mean - sd, mean + sd]
            y -= 1
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(0.3, n + 0.7)
    ax.set_xlim(min(ends) - 0.01, max(ends) + 0.01)
    off_axis = ", ".join(f"{k} {v:.3f}" for k, v in sorted(base.items(), key=lambda kv: -kv[1]))
    ax.set_xlabel(f"test lwlrap on the real-sound set (baselines, left of this axis: {off_axis})", fontsize=9)
    n_seeds = "/".join(str(s) for s in sorted({g["seeds"] for g in groups}))
    ax.set_title(
        f"Real-sound recipes: test lwlrap, mean ± sd over {n_seeds} seeds (error bars; blue: curated only)\n"
        "right: mean ± sd, and the paired per-seed difference to curated only of the same table (docs/results.md)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "findings_recipes.png")
    args = ap.parse_args(argv)
    text = args.results.read_text()
    groups = recipe_groups(text)
    draw(groups, baselines(text), args.out)
    print(f"wrote {args.out} ({sum(len(g['rows']) for g in groups)} recipes from {args.results})")


if __name__ == "__main__":
    main()
