"""bench/gpu_check.py (`make gpu-check`) on a machine without a GPU: it refuses in one line with exit 2 before any
work; with a fake runner in place of the device, its orchestration, verdicts against the stated tolerances, table,
JSON, --docs section, --only and --scale; and (e2e) its real checks end to end with the device forced to the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.utils import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check as gc  # noqa: E402

GPU = {"gpu": "Fake H100", "count": 1, "memory_gib": 79.2, "torch": "2.x", "cuda": "12.x", "cpus": 16}


def figures(spec: dict) -> dict:
    """What a healthy card would report for each check (the same scores as the CPU chain, an active scaler)."""
    kind, amp = spec["kind"], spec.get("amp")
    if kind == "device":
        return dict(GPU)
    if kind == "chain":
        dev = "cpu float32" if spec["device"] == "cpu" else f"cuda {gc.PRECISION[amp]}"
        scale = 65536.0 if amp == "fp16" else None
        base = {"test_lwlrap": 0.44, "oof_lwlrap": 0.42, "losses_finite": True, "devices": [dev], "loss": 3.0}
        return {**base, "amp": amp, "compare": spec.get("compare"), "scaler_scale": scale}
    if kind == "ssl":
        return {
            "amp": amp,
            "mode": spec["mode"],
            "steps": 10,
            "losses_finite": True,
            "devices": ["cuda x"],
            "loss": 1.0,
        }
    if kind == "predict_dir":
        return {"amp": amp, "clips": 30, "max_abs_diff": 1e-4, "mean_abs_diff": 1e-5, "cpu_s": 1.0, "device_s": 0.5}
    if kind == "torchrun":
        two = spec["procs"] == 2
        run = {"procs": spec["procs"], "epochs": 3, "killed_at_epoch": 1, "resumed": True, "final_epoch": 3}
        return run | {"backend": "nccl" if two else None, "sync_bn": two, "losses_finite": True, "devices": ["x"]}
    if kind == "peak":
        return {"n": spec["n"], "bf16_tflops": 600.0, "fp16_tflops": 620.0}
    if kind == "train_step":
        sps = 3000.0 if spec["mode"] == "supervised" else 2000.0
        tflops = 90.0 if spec["mode"] == "supervised" else None
        row = {"amp": amp, "mode": spec["mode"], "batch": spec["batch"], "samples_per_s": sps, "tflops": tflops}
        return row | {"data_wait": 0.01, "batch_ms": 7.8, "step_ms": 21.3, "peak_mem_gib": 6.5, "loss": 2.0}
    if kind == "infer":
        return {"amp": amp, "batch": 128, "hop": 16, "window_passes": 300, "windows_per_s": 500.0}
    return {}


class Fake:
    """A runner that records the specs it is given and answers figures(spec), changed per check name by `changes`
    (a dict merged in, or an exception raised)."""

    def __init__(self, gpus: int = 1, **changes):
        self.specs, self.changes, self.gpus = [], changes, gpus

    def __call__(self, spec):
        self.specs.append(spec)
        change = self.changes.get(spec["name"], {})
        if isinstance(change, Exception):
            raise change
        out = figures(spec) | change
        return out | ({"count": self.gpus} if spec["kind"] == "device" else {})


def run(tmp_path, *args, runner=None):
    runner = runner or Fake()
    rc = gc.main(["--work", str(tmp_path / "w"), *args], runner=runner, has_cuda=lambda: True)
    rep = json.loads((tmp_path / "w" / "gpu_check.json").read_text())
    return rc, rep, {c["name"]: c for c in rep["checks"]}, runner


def test_without_cuda_it_refuses_in_one_line_before_any_work(tmp_path, capsys):
    runner = Fake()
    assert gc.main(["--work", str(tmp_path / "w")], runner=runner, has_cuda=lambda: False) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == gc.NO_CUDA and runner.specs == [] and not (tmp_path / "w").exists()


def test_the_command_exits_2_on_this_machine(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--work", str(tmp_path / "w")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.splitlines() == [gc.NO_CUDA]
    assert not (tmp_path / "w").exists()


def test_a_healthy_card_passes_with_table_json_and_projection(tmp_path, capsys):
    rc, rep, checks, runner = run(tmp_path)
    assert rc == 0 and rep["passed"] and rep["device"]["gpu"] == "Fake H100" and rep["tolerances"] == gc.TOL
    assert [s["name"] for s in runner.specs][:3] == ["device", "data", "peak"]
    assert runner.specs[-1]["name"] == "chain bf16 compile" and all(c["verdict"] == "pass" for c in checks.values())
    assert len(checks) == 17 and checks["torchrun"]["procs"] == 1  # one GPU: one process
    m = rep["measurements"]
    assert m["train bf16"]["of_peak"] == pytest.approx(90 / 600) and m["train fp16"]["of_peak"] == pytest.approx(
        90 / 620
    )
    fwd = 2 * 500.0  # forward passes/s: every window pass is the window and its reversal
    warm = (100 * 310 * 64 / 3000 + 100 * 22_000 / fwd) / 3600
    stage2 = (5 * 300 * 663 * 64 / 2000 + 5 * 300 * 4_500 / fwd) / 3600  # at the teacher-student step's samples/s
    p = rep["projection"]
    assert p["warmup_h"] == pytest.approx(warm) and p["stage2_h"] == pytest.approx(stage2)
    assert p["total_h"] == pytest.approx(warm + stage2 + 5 * 107_334 / 500 / 3600)
    out = capsys.readouterr().out
    for name in checks:
        assert f"\n{name} " in out
    assert "fed; batch_stream alone 7.8 ms" in out and f"= {p['total_h']:.2f} h on one card" in out


@pytest.mark.parametrize(
    "change, ok",
    [
        ({"test_lwlrap": 0.44 + gc.TOL["test_lwlrap"] - 0.01, "oof_lwlrap": 0.42 - gc.TOL["oof_lwlrap"] + 0.01}, True),
        ({"test_lwlrap": 0.44 - gc.TOL["test_lwlrap"] - 0.01}, False),
        ({"oof_lwlrap": 0.42 + gc.TOL["oof_lwlrap"] + 0.01}, False),
        ({"losses_finite": False}, False),
        ({"devices": ["cpu float32"]}, False),  # asked for CUDA, ran on the CPU
        ({"devices": ["cuda torch.bfloat16"]}, False),  # asked for fp16
        ({"scaler_scale": None}, False),  # fp16 with its scaler off
    ],
)
def test_chain_verdicts_against_the_cpu_chain(tmp_path, change, ok):
    rc, rep, checks, _ = run(tmp_path, runner=Fake(**{"chain fp16 (scaler)": change}))
    row = checks["chain fp16 (scaler)"]
    assert (row["verdict"] == "pass") == ok and (rc == 0) == ok and rep["passed"] == ok
    if "test_lwlrap" in change and not ok:
        assert f"from the CPU's 0.440 (tolerance {gc.TOL['test_lwlrap']})" in row["problems"][0]


@pytest.mark.parametrize("amp, diff, ok", [("off", 1e-3, True), ("off", 1e-2, False), ("bf16", 1e-2, True)])
def test_predict_dir_tolerance_by_precision(tmp_path, amp, diff, ok):
    name = "predict_dir float32" if amp == "off" else "predict_dir bf16"
    _, _, checks, _ = run(tmp_path, runner=Fake(**{name: {"max_abs_diff": diff}}))
    assert (checks[name]["verdict"] == "pass") == ok


def test_two_gpus_run_torchrun_on_two_processes_and_want_nccl_with_syncbn(tmp_path):
    _, _, checks, runner = run(tmp_path, runner=Fake(gpus=2))
    assert next(s for s in runner.specs if s["name"] == "torchrun")["procs"] == 2
    assert checks["torchrun"]["verdict"] == "pass"
    _, _, checks, _ = run(tmp_path, runner=Fake(gpus=2, torchrun={"backend": "gloo", "sync_bn": False}))
    assert checks["torchrun"]["verdict"] == "FAIL" and "want nccl" in checks["torchrun"]["problems"][0]
    _, _, checks, _ = run(tmp_path, runner=Fake(torchrun={"resumed": False}))
    assert checks["torchrun"]["problems"] == ["did not resume from last.pt after the kill"]


def test_a_failed_check_is_its_row_and_skips_what_needs_it(tmp_path, capsys):
    rc, rep, checks, runner = run(tmp_path, runner=Fake(**{"chain cpu float32": RuntimeError("exit 1: boom\nlast")}))
    assert rc == 1 and not rep["passed"]
    assert (
        checks["chain cpu float32"]["verdict"] == "FAIL" and checks["chain cpu float32"]["why"] == "RuntimeError: last"
    )
    for name in ("predict_dir float32", "predict_dir bf16"):  # they predict with its bundle
        assert checks[name]["verdict"] == "skipped" and checks[name]["why"] == "needs chain cpu float32"
        assert name not in [s["name"] for s in runner.specs]
    for name in ("chain bf16", "chain bf16 compile"):  # they run (a CUDA failure of their own is worth seeing)
        assert checks[name]["verdict"] == "FAIL" and checks[name]["problems"] == [
            "no chain cpu float32 to compare with (it did not run)"
        ]
    assert checks["torchrun"]["verdict"] == "pass"  # independent checks still run
    assert "NOT every check passed" in capsys.readouterr().out


def test_checks_after_the_budget_are_skipped_and_timeouts_cut_to_it():
    now = [0.0]

    def runner(spec):
        now[0] += 100.0
        return {"timeout": spec["timeout"]}

    checks = [gc.check(f"c{i}", "x", 300) for i in range(5)]
    res = gc.run_checks(checks, runner, budget_s=250, clock=lambda: now[0], say=lambda s: None)
    assert [r["status"] for r in res] == ["ran", "ran", "ran", "skipped", "skipped"]
    assert [r["timeout"] for r in res[:3]] == [300, 210, 110]  # what is left of the budget + 60 s
    assert "time budget (250 s)" in res[3]["why"]


def test_data_wait_over_target_is_said_with_where_the_time_goes(tmp_path, capsys):
    slow = {"data_wait": 0.4, "batch_ms": 35.0, "step_ms": 21.3}
    run(tmp_path, runner=Fake(**{"train bf16": slow}))
    out = capsys.readouterr().out
    assert "data wait 40.0% (target < 5%: NOT fed; batch_stream alone 35.0 ms a batch against a 21.3 ms step)" in out


def test_scale_sets_the_measurement_sizes_not_the_chain(tmp_path):
    assert gc.sizes(1.0)["batch"] == 64 and gc.sizes(0.5)["batch"] == 32 and gc.sizes(0.1)["batch"] == 8
    assert gc.sizes(1.0)["matmul_n"] == 8192 and gc.sizes(0.5)["matmul_n"] == 4096
    with pytest.raises(ValueError):
        gc.sizes(0)
    _, rep, _, runner = run(tmp_path, "--scale", "0.5")
    by = {s["name"]: s for s in runner.specs}
    assert by["train bf16"]["batch"] == 32 and by["train bf16"]["steps"] == 25 and by["peak"]["n"] == 4096
    assert by["train bf16"]["setting"] == "full" and rep["scale"] == 0.5 and rep["sizes"]["batch"] == 32
    _, _, _, full = run(tmp_path)
    assert {s["name"]: s for s in full.specs}["train bf16"]["batch"] == 64
    assert by["chain bf16"]["chain"] == {s["name"]: s for s in full.specs}["chain bf16"]["chain"] == gc.CHAIN


def test_bad_arguments_exit_2(capsys):
    for argv in (["--scale", "0"], ["--budget", "-1"], ["--scale", "x"]):
        with pytest.raises(SystemExit) as e:
            gc.parse_args(argv)
        assert e.value.code == 2


def test_only_runs_the_named_checks_and_what_they_need(tmp_path):
    _, _, checks, runner = run(tmp_path, "--only", "predict_dir bf16")
    assert [s["name"] for s in runner.specs] == ["device", "data", "chain cpu float32", "predict_dir bf16"]
    _, _, checks, runner = run(tmp_path, "--only", "chain bf16 NCHW,peak")
    assert [s["name"] for s in runner.specs] == ["device", "data", "peak", "chain cpu float32", "chain bf16 NCHW"]
    with pytest.raises(SystemExit, match="no check named"):
        run(tmp_path, "--only", "chain nope")


def test_docs_writes_the_table_into_its_section(tmp_path, monkeypatch):
    import common

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- gpu_check -->\nnot yet run\n<!-- /gpu_check -->\n\n## After\n")
    monkeypatch.setattr(common, "BENCHMARKS", doc)
    run(tmp_path, "--docs")
    text = doc.read_text()
    assert "not yet run" not in text and "on **Fake H100** (1 GPU(s)" in text and text.endswith("## After\n")
    assert "chain fp16 (scaler)" in text and "h on one card" in text


def test_every_planned_check_has_its_run_and_reads_log_lines_the_pipeline_writes(tmp_path):
    """The plan's kinds are the device side's (bench/gpu_runs.KINDS), and the lines the torchrun check reads from
    train/log.txt (process group, SyncBatchNorm, resume) are the ones pipeline/ writes: without a GPU nothing else
    would notice them drift apart."""
    import gpu_runs

    checks = gc.plan(tmp_path, "cuda", 2, gc.sizes(1.0))
    assert {c["kind"] for c in checks} | {"device"} == set(gpu_runs.KINDS)
    distributed = (ROOT / "pipeline" / "distributed.py").read_text()
    assert "data-parallel: {dist.get_world_size()} processes ({dist.get_backend()})" in distributed
    assert "'synchronised (SyncBatchNorm)' if use_sync" in distributed
    engine = "".join(p.read_text() for p in sorted((ROOT / "pipeline" / "engine").glob("*.py")))
    assert 'f"resuming {run.out_dir} from epoch {run.start}/{run.cfg.train.epochs}"' in engine
    assert "device {device}, precision {dtype or 'float32'} (train.amp=" in engine


@pytest.mark.e2e
def test_the_real_checks_wired_end_to_end_on_the_cpu(tmp_path):
    """The checks themselves (bench/gpu_runs.py) in processes of their own, the device forced to the CPU at the
    smallest sizes: the chain and its bundle, a chain with fp16 asked for, predict_dir on both devices, torchrun
    with a killed rank. What a GPU changes is then the device alone."""
    only = "chain fp16 (scaler),predict_dir float32,torchrun"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--force-device", "cpu", "--only", only]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, "--work", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "w" / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in rep["checks"]}
    assert list(checks) == [
        "device",
        "data",
        "chain cpu float32",
        "chain fp16 (scaler)",
        "predict_dir float32",
        "torchrun",
    ]
    ref, fp16 = checks["chain cpu float32"], checks["chain fp16 (scaler)"]
    assert ref["devices"] == fp16["devices"] == ["cpu float32"] and fp16["scaler_scale"] is None
    assert 0 < ref["test_lwlrap"] <= 1 and ref["losses_finite"] and Path(ref["bundle"], "manifest.json").exists()
    assert checks["predict_dir float32"]["max_abs_diff"] == 0 and checks["predict_dir float32"]["clips"] == 30
    assert checks["torchrun"]["resumed"] and checks["torchrun"]["final_epoch"] == 3
