"""bench/harness.py, the one harness of the tables that compare variants over seeds, with fake measurements: every
variant at every seed, seed by seed; the paired column is pipeline.intervals.across_seeds of the per-seed values;
the written section holds the declared header, rows and the command that reproduces it. And the five scripts on it
(quality, real_recipes, ssl_modes, plateau, infer_levers), run with their stages faked (tests/bench_capture.py):
the same stages, run names and overrides as before they moved onto the harness (tests/bench_plans.json), the same
tables, and a printed command that parses back to the arguments it was run with."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import bench_capture  # noqa: E402
import harness  # noqa: E402
from harness import Column, Table, Variant, mean, paired, stat  # noqa: E402

from pipeline.intervals import across_seeds  # noqa: E402

PLANS = json.loads(bench_capture.PLANS.read_text())
SCRIPTS = ("quality", "real_recipes", "ssl_modes", "plateau", "infer_levers")
TRAINING = ("train", "infer", "make")  # the calls that train or predict; warm-ups and feature caches are shared


def toy_table(**kw) -> Table:
    variants = [Variant("ref", "the reference"), Variant("a", "variant a", ["x.y=1"]), Variant("b", "variant b")]
    return Table(
        section="toy",
        title="A toy table",
        command=["bench/toy.py", "k=v", "--seeds", "1", "2", "3"],
        variants=variants,
        seeds=[1, 2, 3],
        columns=[stat("val", "val"), paired("paired val - ref", "val", "ref"), mean("seconds", "seconds")],
        reference="ref",
        **kw,
    )


def fake_measure(v, seed) -> dict:
    return {"val": bench_capture.fake(v.name, seed), "seconds": 10.0 * seed}


def test_run_measures_every_variant_at_every_seed_seed_by_seed():
    calls, t = [], toy_table()
    res = harness.run(t.variants, t.seeds, lambda v, s: calls.append((v.name, s)) or fake_measure(v, s), log=str)
    assert calls == [(v, s) for s in (1, 2, 3) for v in ("ref", "a", "b")]
    assert list(res) == ["ref", "a", "b"]
    assert res["a"] == [{"seed": s, **fake_measure(t.variant("a"), s)} for s in (1, 2, 3)]


def test_run_records_a_failing_variant_and_goes_on_only_when_asked():
    t = toy_table()

    def measure(v, s):
        if v.name == "b" and s == 2:
            raise RuntimeError("no")
        return fake_measure(v, s)

    res = harness.run(t.variants, t.seeds, measure, keep_going=True, log=str)
    assert res["b"][1] == {"seed": 2, "failed": "RuntimeError"} and len(res["b"]) == 3
    assert "variant b (1 failed)" in harness.render(t, res)
    with pytest.raises(RuntimeError):
        harness.run(t.variants, t.seeds, measure, log=str)


def test_the_paired_column_is_across_seeds_of_the_per_seed_values():
    t = toy_table()
    res = harness.run(t.variants, t.seeds, fake_measure, log=str)
    d = across_seeds([r["val"] for r in res["a"]], [r["val"] for r in res["ref"]])
    want = f"{d['mean']:+.4f} +- {d['sd']:.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
    assert t.columns[1].cell(res, t.variant("a")) == want
    assert t.columns[1].cell(res, t.variant("ref")) == "-"
    # paired by seed: a seed one of the two lacks (failed) is left out of both
    res["ref"][0] = {"seed": 1, "failed": "RuntimeError"}
    d = across_seeds([r["val"] for r in res["a"][1:]], [r["val"] for r in res["ref"][1:]])
    assert t.columns[1].cell(res, t.variant("a")).startswith(f"{d['mean']:+.4f} +- {d['sd']:.4f} [")


def test_write_gives_the_declared_header_rows_and_reproducing_command(tmp_path):
    t = toy_table()
    res = harness.run(t.variants, t.seeds, fake_measure, log=str)
    out = tmp_path / "results.md"
    extra = [["an extra row", "0.5", "-", "-"]]
    body = harness.write(t, res, text=": what it measures.", notes="\n\nA note.", extra_rows=extra, path=out)
    text = out.read_text()
    assert (
        "<!-- toy -->\n## A toy table\n\n`.venv/bin/python bench/toy.py k=v --seeds 1 2 3`: what it measures." in text
    )
    lines = [line for line in body.splitlines() if line.startswith("|")]
    assert lines[0] == "| variant | val | paired val - ref | seconds |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| the reference",
        "| variant a",
        "| variant b",
        "| an extra row",
    ]
    b, ref = ([r["val"] for r in res[n]] for n in ("b", "ref"))
    assert lines[4] == f"| variant b | {harness.mean_std(b)} | {harness.paired_diff(b, ref)} | 20 |"
    assert text.rstrip().endswith("A note.\n<!-- /toy -->")
    harness.write(t, res, path=out)  # rewritten in place, not appended
    assert text.count("<!-- toy -->") == out.read_text().count("<!-- toy -->") == 1


def test_a_column_of_a_script_computes_its_own_cell():
    t = toy_table()
    t.columns.append(Column("seeds", lambda res, v: len(res[v.name])))
    res = harness.run(t.variants, t.seeds, fake_measure, log=str)
    assert harness.render(t, res).splitlines()[2].endswith(" | 3 |")


def test_command_line_parses_back_positionals_first_defaults_left_out_unless_always():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--title", default="")
    ap.add_argument("--flag", action="store_true")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(["--seeds", "1", "2", "--title", "it's a title", "--flag", "model.params={width: 0.5}", "a=1"])
    args = harness.command_line(ap, a, always=("epochs",))
    assert args == [
        "model.params={width: 0.5}",
        "a=1",
        "--seeds",
        "1",
        "2",
        "--epochs",
        "8",
        "--title",
        "it's a title",
        "--flag",
    ]
    assert ap.parse_args(shlex.split(shlex.join(args))) == a


# the five scripts


def printed_command(body: str) -> list:
    """The arguments of the command a section quotes (after `.venv/bin/python bench/<script>.py`)."""
    return shlex.split(re.search(r"`\.venv/bin/python bench/\w+\.py (.*?)`", body).group(1))


def table_lines(body: str) -> list:
    return [line for line in body.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Every frozen invocation run again on the scripts as they are now, in a scratch directory."""
    import os

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("capture"))
    try:
        return [bench_capture.capture(p["script"], p["argv"]) for p in PLANS if "argv" in p]
    finally:
        os.chdir(here)


@pytest.mark.parametrize("i", range(sum("argv" in p for p in PLANS)))
def test_scripts_run_the_same_stages_with_the_same_run_names_and_overrides(captured, i):
    before, now = PLANS[i], captured[i]
    trained = [[c for c in x["calls"] if c[0] in TRAINING] for x in (before, now)]
    if before["script"] == "real_recipes":  # measured recipe by recipe before, seed by seed now
        assert sorted(map(json.dumps, trained[0])) == sorted(map(json.dumps, trained[1]))
        seeds = [re.search(r"run\.seed=(\d+)", " ".join(c[1])).group(1) for c in trained[1]]
        assert seeds == sorted(seeds)
    else:
        assert trained[0] == trained[1]
    shared = [{json.dumps(c) for c in x["calls"] if c[0] not in TRAINING} for x in (before, now)]
    assert shared[0] == shared[1]


@pytest.mark.parametrize("i", range(sum("argv" in p for p in PLANS)))
def test_scripts_write_the_same_tables(captured, i):
    before, now = PLANS[i], captured[i]
    assert [s[0] for s in before["sections"]] == [s[0] for s in now["sections"]]
    for (_, old), (_, new) in zip(before["sections"], now["sections"]):
        assert old.splitlines()[0] == new.splitlines()[0]  # the heading
        old_t, new_t = table_lines(old), table_lines(new)
        assert old_t[:2] == new_t[:2] and len(old_t) == len(new_t)  # the header, a row per variant
        skip = {"paired per-seed val difference"} if before["script"] == "ssl_modes" else set()
        cols = [j for j, h in enumerate(old_t[0].split(" | ")) if h.strip("| ") not in skip]
        for o, n in zip(old_t[2:], new_t[2:]):
            assert [o.split(" | ")[j] for j in cols] == [n.split(" | ")[j] for j in cols]


def test_ssl_modes_pairs_with_across_seeds_now(captured):
    """ssl_modes' paired column was its own mean +- sd (mean / sd); it is the harness's paired difference now."""
    i = next(j for j, p in enumerate(PLANS) if p["script"] == "ssl_modes")
    lines = table_lines(captured[i]["sections"][0][1])
    col = lines[0].split(" | ").index("paired per-seed val difference")
    cells = [line.split(" | ")[col] for line in lines[2:]]
    assert cells[0] == "-"
    assert all(re.fullmatch(r"[+-]\d\.\d{4} \+- \d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]", c) for c in cells[1:])


@pytest.mark.parametrize("i", range(sum("argv" in p for p in PLANS)))
def test_the_printed_command_parses_back_to_the_arguments_run(captured, i):
    plan = PLANS[i]
    parser = importlib.import_module(plan["script"]).parser()
    argv = [bench_capture.ALL_ROWS[plan["script"]] if x == "ALL" else x for x in plan["argv"]]
    for _, body in captured[i]["sections"]:
        assert parser.parse_args(printed_command(body)) == parser.parse_args(argv)


def test_infer_levers_declares_the_same_variants():
    import infer_levers

    frozen = next(p for p in PLANS if p["script"] == "infer_levers")["variants"]
    declared = {v.name: [v.label, v.overrides] for v in infer_levers.VARIANTS}
    assert declared == frozen


def test_infer_levers_table_from_fake_measurements(tmp_path, monkeypatch):
    """Seed by seed over the runs, paired with the run's own inference, and the ensemble-size table."""
    import infer_levers

    calls = []

    def measure(run, variant):
        calls.append((run, variant))
        out = {k: bench_capture.fake(run, variant, k) for k in ("val", "unheard", "test")} | {"seconds": 60.0}
        return out | ({"by_size": [0.5, 0.55, 0.56]} if variant == infer_levers.AS_RUN else {})

    written = {}
    monkeypatch.setattr(infer_levers, "measure", measure)
    for module in (infer_levers, harness, sys.modules["common"]):  # docs/results.md is never written
        monkeypatch.setattr(module, "write_section", lambda name, body, path=None: written.update({name: body}), False)
    monkeypatch.setattr(infer_levers, "titled", lambda config, overrides, title: title)
    argv = ["--runs", "r1", "r2", "--variants", "as_run,hop64", "--section", "il"]
    monkeypatch.setattr(sys, "argv", ["bench/infer_levers.py", *argv])
    infer_levers.main()
    assert calls == [("r1", "as_run"), ("r1", "hop64"), ("r2", "as_run"), ("r2", "hop64")]
    body = written["il"]
    assert infer_levers.parser().parse_args(printed_command(body)) == infer_levers.parser().parse_args(argv)
    lines = table_lines(body)
    assert lines[0] == (
        "| inference | OOF val lwlrap | unheard OOF | test lwlrap (ensemble) | paired val - as run "
        "| paired unheard - as run | paired test - as run | prediction minutes per run |"
    )
    test = [[bench_capture.fake(r, v, "test") for r in ("r1", "r2")] for v in ("hop64", "as_run")]
    assert lines[3].split(" | ")[6] == harness.paired_diff(*test)
    assert "| 1 | 0.5000 +- 0.0000 | - |" in body and "| 3 | 0.5600 +- 0.0000 | +0.0600 +- 0.0000 [" in body


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_commands_docs_quote_still_parse(script):
    """Every command docs/results.md quotes for a script parses with its parser now (the rows and recipes named
    exist, but for a table older than the rows it names)."""
    parser = importlib.import_module(script).parser()
    text = (ROOT / "docs" / "results.md").read_text()
    commands = re.findall(rf"`\.venv/bin/python bench/{script}\.py(.*?)`", text)
    assert commands, script
    for cmd in commands:
        a = parser.parse_args(shlex.split(cmd))
        if script == "quality" and a.rows and a.rows != "ts,ts_bce":  # quality_probes: rows since renamed
            import quality

            assert set(a.rows.split(",")) <= set(quality.ROWS)
        if script == "real_recipes":
            import real_recipes

            assert set(a.recipes.split(",")) <= {v.name for v in real_recipes.RECIPES}
