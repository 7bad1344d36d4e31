"""Faults that long runs meet (issue 19): a damaged feature cache or checkpoint, a full disk, Ctrl-C and SIGTERM.

A damaged cache file is rebuilt by `features` (a wrong length on every run, changed bytes with --verify) and
refused by its readers with exit 2; a damaged checkpoint is refused on load, naming it (resume falls back to
previous.pt); a full disk is one line with exit 2 and leaves no partial file; an interrupted stage prints one line,
exits with 130 / 143 and resumes when run again.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, make_dataset

from pipeline.cache import FeatureCache, build_cache, cache_dir
from pipeline.cache import extract as cache_extract  # extract_split calls its logmels
from pipeline.utils import ROOT, DamagedFile, UserError, checksum_path, load_torch, save_torch

SPLIT_FILES = (".f16", ".index.csv", ".json")


def cache_files(out: Path) -> dict:
    return {f"{s}{e}": (out / f"{s}{e}").read_bytes() for s in ("noisy", "curated", "test") for e in SPLIT_FILES}


def damage(path: Path, how: str):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "extend":
        data += b"\0" * 64
    else:  # flip one byte in the middle: same length
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def leftovers(folder: Path) -> list:
    """Temporary files (atomic_path's .<stem>.tmp-XXXXXXXX<suffix>) anywhere under folder."""
    return [p for p in Path(folder).rglob(".*") if p.is_file() and ".tmp-" in p.name]


def cli_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


# --------------------------------------------------------------------------- 1. damaged caches and checkpoints
@pytest.mark.parametrize("how", ["truncate", "extend", "flip"])
@pytest.mark.parametrize("name", ["curated.f16", "curated.index.csv"])
def test_damaged_cache_file_is_rebuilt(dataset, cfg_for, how, name):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    want = cache_files(out)
    damage(out / name, how)
    if how == "flip":  # the length is right: a plain run trusts it, --verify finds it
        build_cache(cfg)
        assert (out / name).read_bytes() != want[name]
        build_cache(cfg, verify=True)
    else:
        with pytest.raises(UserError, match=rf"{re.escape(name)}: .*make features"):
            FeatureCache(out, "curated")
        build_cache(cfg)
    assert cache_files(out) == want  # rebuilt: the bytes of the first build
    log = (out / "log.txt").read_text()
    assert f"{name}: " in log and "rebuilding the 'curated' split" in log
    assert "feature cache" in log.splitlines()[-1] and "built curated" in log.splitlines()[-1]
    assert len(FeatureCache(out, "curated")) == 20


def test_verify_of_a_whole_cache_changes_nothing(dataset, cfg_for):
    cfg = cfg_for(dataset)
    out = build_cache(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".f16", ".csv")}
    build_cache(cfg, verify=True)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".f16", ".csv")}
    assert "every file's sha256 is the one recorded" in (out / "log.txt").read_text()


def test_reader_refuses_a_truncated_cache_in_one_line(dataset, cfg_for, tmp_path):
    """A stage that maps the cache (warmup reads the noisy split) exits with 2 naming the file and the repair."""
    build_cache(cfg_for(dataset))
    out = cache_dir(cfg_for(dataset))
    damage(out / "noisy.f16", "truncate")
    cmd = [sys.executable, "-m", "pipeline.warmup", "--config", str(ROOT / "configs" / "base.yaml"),
           f"data.root={dataset}", f"features.cache_dir={tmp_path / 'cache'}", "run.workers=1",
           "run.progress=false", "features.n_mels=32", *TINY_TRAIN]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fattag warmup: error: "), run.stderr
    assert str(out / "noisy.f16") in lines[0] and "make features" in lines[0]


@pytest.mark.parametrize("how", ["truncate", "extend", "flip"])
def test_damaged_checkpoint_is_refused_naming_it(tmp_path, how):
    path = tmp_path / "runs" / "r" / "train" / "fold_0" / "best.pt"
    save_torch({"w": torch.arange(5000.0), "epoch": 3}, path)
    assert load_torch(path)["epoch"] == 3
    damage(path, how)
    with pytest.raises(DamagedFile, match=re.escape(str(path))):
        load_torch(path)
    from pipeline.engine import load_checkpoint

    with pytest.raises(UserError, match=re.escape(str(path)) + r": damaged.*fold_0"):
        load_checkpoint(path)


def test_checkpoint_bytes_depend_on_the_state_alone(tmp_path):
    """torch.save through a file object: no temporary name inside the archive, so equal states, equal files."""
    state = {"w": torch.arange(10.0), "cfg": {"a": 1}}
    save_torch(state, tmp_path / "a" / "last.pt")
    save_torch(state, tmp_path / "b" / "last.pt")
    assert (tmp_path / "a" / "last.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
    assert checksum_path(tmp_path / "a" / "last.pt").read_text().endswith("  last.pt\n")
    assert not leftovers(tmp_path)


def test_a_kill_while_a_checkpoint_is_replaced_leaves_a_pair_that_checks(tmp_path, monkeypatch):
    """Killed after the new sidecar, before the rename: the old file still checks (the sidecar lists both)."""
    from pipeline.utils import files  # atomic_path's rename

    path = tmp_path / "last.pt"
    save_torch({"epoch": 1}, path)
    real = os.replace

    def killed_at_rename(src, dst):
        if Path(dst) == path:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_torch(path)["epoch"] == 1 and not leftovers(tmp_path)
    save_torch({"epoch": 2}, path)
    assert load_torch(path)["epoch"] == 2 and len(checksum_path(path).read_text().splitlines()) == 1


def test_resume_falls_back_to_the_previous_checkpoint(prepared, tmp_path, monkeypatch):
    """Stopped after epoch 2 of 3 and its last.pt damaged since: training resumes from previous.pt (epoch 1) and
    ends with the checkpoint an uninterrupted run writes, byte for byte."""
    from pipeline import train
    from pipeline.engine import loop  # fit calls its train_epoch

    cfg = prepared("train.mode=supervised", "train.init_from=null", "train.steps_per_epoch=2", "train.folds=[0]",
                   "train.epochs=3")  # fmt: skip
    (tmp_path / "ref").mkdir()
    monkeypatch.chdir(tmp_path / "ref")
    train.main(cfg)  # the uninterrupted run, in a folder of its own
    monkeypatch.chdir(tmp_path)
    want = Path("ref/runs/base/train/fold_0/last.pt").read_bytes()
    real = loop.train_epoch

    def stop_at_epoch_3(run, epoch, *a):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run, epoch, *a)

    monkeypatch.setattr(loop, "train_epoch", stop_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.main(cfg)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    fold = Path("runs/base/train/fold_0")
    assert load_torch(fold / "previous.pt")["epoch"] == 1 and load_torch(fold / "last.pt")["epoch"] == 2
    damage(fold / "last.pt", "flip")
    train.main(cfg)
    log = Path("runs/base/train/log.txt").read_text()
    assert f"{fold / 'last.pt'}: damaged" in log and "resuming from previous.pt" in log
    assert "from epoch 1/3" in log
    assert (fold / "last.pt").read_bytes() == want


# --------------------------------------------------------------------------- 2. a full disk
def test_full_disk_while_writing_is_one_line_and_leaves_nothing(dataset, cfg_for, monkeypatch, capsys):
    """The cache's .f16 write meets ENOSPC halfway: one UserError naming the file and the free space, no
    temporary left; the rerun completes with the bytes of an uninterrupted build."""
    from pipeline.utils import user_errors

    cfg = cfg_for(dataset)
    whole = cache_files(build_cache(cfg_for(dataset, "features.cache_dir=whole")))
    real = cache_extract.logmels

    def disk_fills(paths, params, workers):
        for i, chunk in enumerate(real(paths, params, workers)):
            if i == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield chunk

    monkeypatch.setattr(cache_extract, "logmels", disk_fills)
    with pytest.raises(SystemExit) as e, user_errors("features"):
        build_cache(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.fullmatch(  # the last line, after the builds' log lines
        r"fattag features: error: .*noisy\..*f16: no space left on the device "
        r"while writing it \(\d.* free\); .*run the same command again",
        err.strip().splitlines()[-1],
    )
    assert not leftovers(cache_dir(cfg))
    monkeypatch.undo()
    assert cache_files(build_cache(cfg)) == whole


def test_features_refuses_early_when_the_cache_cannot_fit(dataset, cfg_for, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"need about .* but its file system has 1.0 kB free.*features.cache_dir"):
        build_cache(cfg_for(dataset))
    assert not list(cache_dir(cfg_for(dataset)).glob("*.f16"))


def _small_fs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tmpfs needs root")
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path):
    mounted = []

    def make(size: str) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        _small_fs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def features_cmd(root, cache) -> list:
    return [sys.executable, "-m", "pipeline.features", "--config", str(ROOT / "configs" / "base.yaml"),
            f"data.root={root}", f"features.cache_dir={cache}", "run.workers=1", "run.progress=false"]  # fmt: skip


def test_features_on_a_full_tmpfs(dataset, tmp_path, small_fs):
    """The command line on a 300 kB file system: refused before extracting, in one line, nothing written; with
    the estimate bypassed (a disk that fills under the build) one line naming the file being written and no
    partial file; once the space is freed the same command builds what an uninterrupted run builds."""
    fs = small_fs("300k")
    cmd = features_cmd(dataset, fs)
    run = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "need about" in run.stderr and "kB free" in run.stderr and not list(fs.rglob("*.f16"))
    hook = (
        f"import pipeline.cache.build as c; c.estimate_bytes = lambda *a: 0; import runpy, sys; "
        f"sys.argv = {['features', *cmd[3:]]!r}; runpy.run_module('pipeline.features', run_name='__main__')"
    )
    run = subprocess.run([sys.executable, "-c", hook], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]  # after the build's log lines, one line says it
    assert "Traceback" not in run.stderr, run.stderr
    assert re.match(rf"fattag features: error: {re.escape(str(fs))}/.*: no space left", last), run.stderr
    assert re.search(r"\(\d[\d.]* k?B free\)", last) and not leftovers(fs)
    subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
    run = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ref = subprocess.run(features_cmd(dataset, tmp_path / "ref"), cwd=tmp_path, env=cli_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    (got,), (want,) = fs.glob("*-*"), (tmp_path / "ref").glob("*-*")
    assert cache_files(got) == cache_files(want) and not leftovers(fs)


def test_full_disk_under_a_checkpoint_and_a_csv(small_fs):
    import pandas as pd

    from pipeline.utils import atomic_to_csv

    fs = small_fs("64k")
    with pytest.raises(UserError, match=rf"{re.escape(str(fs / 'last.pt'))}: no space left .*\(\d.* free\)"):
        save_torch({"w": torch.zeros(100_000)}, fs / "last.pt")
    with pytest.raises(UserError, match=rf"{re.escape(str(fs / 'sub.csv'))}: no space left"):
        atomic_to_csv(pd.DataFrame({"a": range(100_000)}), fs / "sub.csv")
    assert list(fs.iterdir()) == []


# --------------------------------------------------------------------------- 3. Ctrl-C and SIGTERM
def _wait_for(proc, pattern: str, lines: list, timeout=240):
    """Read proc's stderr lines into `lines` until one matches `pattern`."""
    t = time.time()
    for line in proc.stderr:
        lines.append(line)
        if re.search(pattern, line):
            return
        assert time.time() - t < timeout, "".join(lines[-20:])
    pytest.fail(f"{pattern!r} never appeared:\n{''.join(lines[-30:])}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_says_where_in_one_line_and_resumes(prepared, tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM (a job scheduler) in fold 1's second epoch: gone within seconds, one line naming
    the fold and epoch, exit 130 / 143, no traceback, no temporary file; the same command resumes fold 1."""
    prepared()
    cmd = [*features_cmd(tmp_path / "ds", tmp_path / "cache"), "features.n_mels=32", *TINY_TRAIN,
           "train.mode=supervised", "train.init_from=null", "train.epochs=12", "train.steps_per_epoch=4",
           "train.threads=1"]  # fmt: skip
    cmd[2] = "pipeline.train"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(proc, r"fold_1 epoch 2/12", [])
    t = time.time()
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert time.time() - t < 20 and proc.returncode == 128 + sig, rest
    assert "Traceback" not in rest, rest
    last = rest.strip().splitlines()[-1]
    assert re.fullmatch(r"fattag train: interrupted at fold 1, epoch \d+; run the same command to resume", last), rest
    assert not leftovers(tmp_path / "runs")
    epoch = int(re.search(r"epoch (\d+)", last)[1])
    again = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True)
    lines = []
    _wait_for(again, r"resuming runs/base/train/fold_1 from epoch", lines)
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=60)
    assert re.search(rf"from epoch ({epoch - 1}|{epoch})/12", lines[-1]), lines[-1]


def test_ctrl_c_to_the_group_of_a_feature_build_with_workers(tmp_path):
    """Ctrl-C reaches the stage and its worker processes: one line, exit 130, no worker traceback, no partial
    file; the rerun completes."""
    root = make_dataset(tmp_path / "ds", n_curated=1200, n_noisy=10, n_test=4)  # ~2 s of curated extraction
    cmd = [*features_cmd(root, tmp_path / "cache"), "run.workers=2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    lines = []
    _wait_for(proc, r"extracting curated", lines)
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and rest.strip().splitlines() == [
        "fattag features: interrupted at split curated; run the same command to resume"
    ], rest
    assert not leftovers(tmp_path / "cache") and not list((tmp_path / "cache").rglob("curated.f16"))
    run = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (out,) = (tmp_path / "cache").glob("*-*")
    assert len(FeatureCache(out, "curated")) == 1200


def test_sigterm_to_torchrun_stops_every_rank_in_one_line(prepared, tmp_path):
    """`make train NPROC=2` (python -m pipeline.torchrun): SIGTERM to the launcher alone, as a scheduler's kill of the
    job's process: the ranks stop together, rank 0 prints the one line, the launcher exits with 143 and no
    traceback, and no process of the job is left."""
    prepared()
    cmd = [sys.executable, "-m", "pipeline.torchrun", "--standalone", "--nproc_per_node=2", "-m", "pipeline.train",
           *features_cmd(tmp_path / "ds", tmp_path / "cache")[3:], "features.n_mels=32", *TINY_TRAIN,
           "train.mode=supervised", "train.init_from=null", "train.epochs=12", "train.steps_per_epoch=4",
           "train.threads=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    _wait_for(proc, r"fold_0 epoch 2/12", [])
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 143, rest
    assert "Traceback" not in rest, rest
    *logged, last = rest.strip().splitlines()  # an epoch may have ended between the log line read and the signal
    assert re.fullmatch(r"fattag train: interrupted at fold 0, epoch \d+; run the same command to resume", last), rest
    assert all(re.match(r"\d\d:\d\d:\d\d runs/base/train/fold_0 epoch", line) for line in logged), rest
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # every rank is gone with the launcher
        os.killpg(proc.pid, 0)
    assert not leftovers(tmp_path / "runs")
