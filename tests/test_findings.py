"""docs/findings.md stays readable as results.md changes: every link it makes lands on a file and a heading that
exist (the bench scripts rewrite results.md's headings), and bench/findings_plot.py still parses the recipe tables
it draws and writes its PNG."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "bench"))
import findings_plot  # noqa: E402


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lowercased, punctuation but '-' and '_' dropped, each space a
    '-', a repeated heading suffixed -1, -2, ...; headings inside fenced code do not count."""
    seen, out, fenced = {}, set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#+ (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(text: str) -> list[str]:
    """The targets of inline links and images `](target)` and of reference definitions `[name]: target`."""
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]: (\S+)", text, re.M)


def test_anchor_rule_matches_github_on_a_repeated_heading(tmp_path):
    md = tmp_path / "a.md"
    heading = "## Recipes: over seeds (bench/real_recipes.py)\n"
    md.write_text(f"# Results\n{heading}```\n# not a heading\n```\n{heading}")
    assert anchors(md) == {
        "results",
        "recipes-over-seeds-benchreal_recipespy",
        "recipes-over-seeds-benchreal_recipespy-1",
    }


def test_every_link_of_findings_lands():
    text = (DOCS / "findings.md").read_text()
    targets = links(text)
    assert len(targets) > 20
    broken = []
    for target in targets:
        file, _, anchor = target.partition("#")
        path = DOCS / file
        if not path.exists() or (anchor and anchor not in anchors(path)):
            broken.append(target)
    assert broken == [], f"docs/findings.md links to missing files or headings: {broken}"


def test_findings_plot_parses_the_recipe_tables_and_writes_a_png(tmp_path):
    text = (DOCS / "results.md").read_text()
    groups = findings_plot.recipe_groups(text)
    assert [len(g["rows"]) for g in groups] and all(g["rows"] and g["seeds"] >= 1 for g in groups)
    for g in groups:
        for r in g["rows"]:
            assert 0 < r["test"][0] < 1, r
    assert set(findings_plot.baselines(text)) == {"chance", "logistic"}
    out = tmp_path / "plot.png"
    findings_plot.main(["--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
