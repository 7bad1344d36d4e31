"""One harness for the tables that compare variants over seeds (bench/quality.py, real_recipes.py, ssl_modes.py,
plateau.py, infer_levers.py): each script declares its table, the harness measures and writes it.

A Table names its docs/results.md section, its heading, the command that reproduces it, its variants (a name, a row
label, config overrides, the make stages or whatever else the script's measure reads), its seeds, the reference
variant the paired columns compare with, and its columns. Then

    results = harness.run(table.variants, table.seeds, measure)  # {variant name: [{"seed": s, figure: ...}]}
    harness.write(table, results, text=...)  # the markdown table, printed and written into its section

`run` calls the script's measure(variant, seed) -> {figure: value} for every variant at every seed, seed by seed:
a run cut short leaves whole seeds, and each seed's variants share that seed's folds, warm-up and labelled share,
so the paired differences leave out what the seed adds to both. A measure runs the stages of its variant's run
(in-process main(cfg) or `make` targets); stages skip finished work, so a rerun reuses every finished run and costs
only what is missing. A "seed" is any replicate: infer_levers' are the runs it reads.

Columns: `stat` (mean +- sd over the seeds, common.mean_std), `paired` (the per-seed differences to the reference
variant: mean, sd and 95% t-interval, common.paired_diff, pipeline.intervals.across_seeds), `mean` (a plain mean,
for costs), or any Column(header, cell) whose cell(results, variant) computes its own (a script's extra column).
`command_line` gives the arguments that parse back to a script's namespace, for the table's reproducing command.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, markdown_table, mean_std, paired_diff, write_section


@dataclass
class Variant:
    """One row: `name` keys its results and names its runs, `label` is its row's text, `overrides` its config
    keys (key=value; placeholders the script's measure fills in), `stages` the make targets that produce its run
    (scripts that run the Makefile), `params` whatever else its measure reads (epochs, a run-name base)."""

    name: str
    label: str
    overrides: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    params: dict = field(default_factory=dict)


@dataclass
class Column:
    """A table column: cell(results, variant) -> the cell (a string, or a float markdown_table formats)."""

    header: str
    cell: Callable


@dataclass
class Table:
    """A results table, declared: where it goes, what reproduces it, what it measures and how it shows it."""

    section: str  # docs/results.md marker
    title: str  # the heading, after "## "
    command: list  # the script and its arguments (command_line), quoted under the heading
    variants: list  # of Variant, in row order
    seeds: list  # replicates, measured in this order
    columns: list  # of Column, after the label column
    reference: str | None = None  # the variant the paired columns compare with
    first: str = "variant"  # the label column's header

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def ok(records) -> list:
    """The records of runs that did not fail."""
    return [r for r in records if "failed" not in r]


def values(records, key) -> list:
    """Each finished record's figure: r[key] (NaN where missing) or key(r) for a callable key."""
    return [key(r) if callable(key) else r.get(key, float("nan")) for r in ok(records)]


def stat(header: str, key, digits: int = 4) -> Column:
    """'mean +- sd' over the seeds of a figure (a key, or a function of a record: a difference of two figures)."""
    return Column(header, lambda res, v: mean_std(values(res[v.name], key), digits))


def mean(header: str, key, fmt: str = "{:.0f}") -> Column:
    """A figure's plain mean over the seeds (costs: training seconds, minutes), '-' without a finished run."""
    import numpy as np

    return Column(header, lambda res, v: fmt.format(np.mean(values(res[v.name], key))) if ok(res[v.name]) else "-")


def paired_cell(results, name: str, reference: str, key) -> str:
    """Per-seed differences name - reference of a figure over the seeds both finished (common.paired_diff)."""
    ref = {r["seed"]: r for r in ok(results[reference])}
    both = [(r, ref[r["seed"]]) for r in ok(results[name]) if r["seed"] in ref]
    a, b = (values([p[i] for p in both], key) for i in (0, 1))
    return paired_diff(a, b)


def paired(header: str, key, reference: str) -> Column:
    """The paired difference to the reference variant ('-' on the reference's own row, or without it)."""

    def cell(res, v):
        return "-" if v.name == reference or reference not in res else paired_cell(res, v.name, reference, key)

    return Column(header, cell)


def run(variants, seeds, measure: Callable, keep_going: bool = False, log: Callable = print) -> dict:
    """{variant name: [{"seed": s, **measure(variant, s)} for each seed]}, measured seed by seed (a table's
    variants and seeds, or a phase's). keep_going: a variant that raises is recorded as {"seed": s, "failed": its
    exception's type} and the table goes on."""
    results = {v.name: [] for v in variants}
    for seed in seeds:
        for v in variants:
            try:
                r = measure(v, seed)
            except Exception as e:
                if not keep_going:
                    raise
                log(f"{v.label} seed {seed} failed: {type(e).__name__}: {e}")
                r = {"failed": type(e).__name__}
            results[v.name].append({"seed": seed, **r})
            figures = " ".join(f"{k} {x:.4f}" for k, x in r.items() if isinstance(x, float))
            log(f"{v.name} seed {seed}: {figures or r}")
    return results


def render(table: Table, results: dict, extra_rows=()) -> str:
    """The markdown table: a row per variant measured (its label, with the number of failed seeds if any), then
    extra_rows (lists of cells, the script's own rows)."""
    rows = []
    for v in table.variants:
        if v.name not in results:
            continue
        fails = len(results[v.name]) - len(ok(results[v.name]))
        rows.append([v.label + (f" ({fails} failed)" if fails else ""), *(c.cell(results, v) for c in table.columns)])
    return markdown_table([table.first, *(c.header for c in table.columns)], [*rows, *extra_rows])


def write(table: Table, results: dict, text: str = "", notes: str = "", extra_rows=(), path: Path = RESULTS) -> str:
    """Print the table and write its section: the heading, the reproducing command followed by `text` (what the
    table measures: ': every row ...'), the table, then `notes` (result-dependent prose, a second table)."""
    body_table = render(table, results, extra_rows)
    print(body_table + notes)
    body = f"## {table.title}\n\n`.venv/bin/python {shlex.join(table.command)}`{text}\n\n{body_table}{notes}\n"
    write_section(table.section, body, path)
    return body


def command_line(ap: argparse.ArgumentParser, a: argparse.Namespace, always=()) -> list:
    """The arguments that parse back to `a`: the positionals (config overrides) first, since after an option of
    nargs="+" (--seeds 42 43) they would be read as its values; then every option whose value differs from its
    default, or that `always` names (dests: what the table measured, stated even at its default)."""
    out = []
    for act in ap._actions:
        if not act.option_strings and act.dest != "help":
            out += list(getattr(a, act.dest))
    for act in ap._actions:
        value = getattr(a, act.dest, None)
        if not act.option_strings or act.dest == "help" or (value == act.default and act.dest not in always):
            continue
        if isinstance(act, argparse._StoreTrueAction):
            out += [act.option_strings[0]] if value else []
        elif isinstance(value, list):
            out += [act.option_strings[0], *map(str, value)]
        else:
            out += [act.option_strings[0], str(value)]
    return out
