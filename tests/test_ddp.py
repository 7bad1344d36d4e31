"""Data-parallel training (pipeline/distributed.py) with 2 gloo processes on the CPU: one step's averaged gradient in
every mode, a kill -9 during a torchrun run resumed by torchrun --max-restarts, and rank 0 as the only writer."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import distributed
from pipeline.config import load_config
from pipeline.engine import build_mode, build_model, load_checkpoint, update
from pipeline.modes import mode_class
from pipeline.utils import ROOT, make_scaler

TINY = [
    "model.params={width: 0.125}",
    "train.frames=32",
    "train.threads=1",
    "run.progress=false",
    "run.device=cpu",
    "teacher_student.n_curated=4",
    "teacher_student.n_noisy=4",
    "train.batch_size=4",
]
# every mode, and teacher-student's other BN passes for g (its default, separate, is the plain name)
MODES = [
    "supervised",
    "teacher_student",
    "teacher_student:frozen_stats",
    "teacher_student:joint",
    "mean_teacher",
    "deep_co_training",
    "mixmatch",
    "remixmatch",
    "fixmatch",
    "fixmatch_mixup",
    "fmuc",
    "vat",
    "pseudo_label",
]
N_CLASSES, SEED = 5, 3


def _one_thread(rank, fn, *args):
    torch.set_num_threads(1)
    fn(rank, *args)


def spawn(fn, *args):
    """fn(rank, *args) in 2 fresh processes joined as one torchrun-like group, one thread each."""
    distributed.spawn(_one_thread, fn, *args, size=2)


def test_ranks_share_one_epoch_order(fake_clips):
    """batch_stream: with the same generator every rank cuts its contiguous share of the same global batches, so
    together the ranks see exactly the batches one process would (crops aside: each rank draws its own)."""
    import numpy as np

    from pipeline.engine import batch_stream

    clips = fake_clips([["a"], ["b"], ["a", "b"]] * 5, ["a", "b"])

    def rows(shard):
        return [r for _, _, r in batch_stream(clips, 6, 7, 32, np.random.default_rng(5), shard=shard)]

    whole, r0, r1 = rows((0, 1)), rows((0, 2)), rows((1, 2))
    assert all(len(a) == 3 and len(b) == 3 for a, b in zip(r0, r1))
    assert [list(a) + list(b) for a, b in zip(r0, r1)] == [list(w) for w in whole]
    assert distributed.rank_seed(42, 0) == 42 and distributed.rank_seed(42, 1) != distributed.rank_seed(42, 2)


def test_batch_that_does_not_split_names_its_key(monkeypatch):
    from pipeline.distributed import get_device
    from pipeline.engine import batch_keys
    from pipeline.utils import UserError

    with pytest.raises(UserError, match=r"teacher_student.n_curated: 3 clips .* over 2 processes"):
        distributed.check_batch_sizes(batch_keys("teacher_student", 3, 8), 2)
    with pytest.raises(UserError, match=r"ssl.fixmatch.mu: 9 clips"):
        distributed.check_batch_sizes(batch_keys("fixmatch", 4, 9), 2)
    distributed.check_batch_sizes(batch_keys("supervised", 8, 0), 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match=r"run.device=cuda:1: under torchrun each process takes cuda:LOCAL_RANK"):
        get_device(load_config(None, ["run.device=cuda:1"]))


def mode_setup(spec: str):
    """(config, mode name) of a MODES entry."""
    name, _, g_pass = spec.partition(":")
    cfg = load_config(
        None,
        [*TINY, f"train.mode={name}", "model.dropout=0.2", *([f"teacher_student.g_pass={g_pass}"] if g_pass else [])],
    )
    return cfg, name


def global_batch(b_lab: int, b_unl: int) -> dict:
    """One fixed global batch: x (b_lab, 1, 32, 32), y (b_lab, C) and the unlabelled ux, uy, utruth (b_unl, ...)."""
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(b_lab, N_CLASSES, generator=g) < 0.3).float()
    y[torch.arange(b_lab), torch.arange(b_lab) % N_CLASSES] = 1
    uy = (torch.rand(b_unl, N_CLASSES, generator=g) < 0.3).float()
    return {
        "x": torch.randn(b_lab, 1, 32, 32, generator=g),
        "y": y,
        "idx": torch.arange(b_lab),
        "ux": torch.randn(b_unl, 1, 32, 32, generator=g),
        "uy": uy,
        "uidx": torch.arange(b_unl),
        "utruth": uy,
    }


def share_of(batch: dict, rank: int, size: int) -> dict:
    """Rank `rank`'s rows of every field, as batch_stream cuts them (distributed.share)."""
    out = {}
    for k, v in batch.items():
        out[k] = v[distributed.share(len(v), rank, size)]
    return out


def one_step(spec: str, rank: int, size: int, parallel: bool):
    """The mode's model and loss gradient after one step on rank `rank`'s share, seeded as fit seeds that rank;
    parallel: inside a process group (DistributedDataParallel averages the gradient)."""
    cfg, name = mode_setup(spec)
    cls = mode_class(name)
    model = build_model(
        cfg,
        N_CLASSES,
        heads=cls.heads,
        seed=SEED,
        dropout=cls.model_dropout(cfg),
        block_dropout=cls.model_block_dropout(cfg),
    )
    torch.manual_seed(distributed.rank_seed(SEED, rank))
    gen = torch.Generator().manual_seed(distributed.rank_seed(SEED, rank))
    mode = build_mode(cfg, model, name, N_CLASSES, torch.device("cpu"), gen)
    average_bn = distributed.prepare(mode, torch.device("cpu"), cfg.train.sync_bn) if parallel else False
    mode.ctx.total_steps = 4
    model.train()
    batch = share_of(global_batch(*mode.batch_sizes()), rank, size)
    loss, _ = mode.step(batch, 0.5)
    loss.backward()
    return mode, [None if p.grad is None else p.grad.clone() for p in mode.parameters()], average_bn, batch


def _ddp_steps(rank, out, specs):
    distributed.setup(load_config(None, TINY))
    for spec in specs:
        mode, grads, average_bn, batch = one_step(spec, rank, 2, parallel=True)
        opt = torch.optim.SGD(mode.parameters(), lr=0.1)
        update(
            opt,
            torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
            make_scaler("off", torch.device("cpu")),
            mode,
            average_bn,
        )  # the optimiser step, BN statistics' average and EMA, as fit does
        state = {
            f"net{i}": {k: v.clone() for k, v in net.state_dict().items()} for i, net in enumerate(mode.networks())
        }
        state["mode"] = copy.deepcopy(mode.state_dict())
        opt.zero_grad()
        loss, _ = mode.step(batch, 0.6)  # a second step: no parameter was left out of the first's reduction
        loss.backward()
        torch.save({"grads": grads, "state": state}, Path(out) / f"{spec}.{rank}.pt")


def flat(state) -> dict:
    """{dotted path: leaf} of nested dicts and lists (a checkpoint, a state dict)."""
    if isinstance(state, (list, tuple)):
        state = dict(enumerate(state))
    if isinstance(state, dict):
        return {f"{k}.{kk}": vv for k, v in state.items() for kk, vv in flat(v).items()}
    return {"": state}


def reference_grads(spec, monkeypatch) -> list:
    """The gradient one process computes on each rank's share. A mode that averages a statistic over the ranks
    inside its step (ReMixMatch's distribution alignment: distributed.mean_tensor) gets what the ranks would: a
    first pass records each share's value, the second pass uses their mean."""
    seen: dict = {0: [], 1: []}
    grads = []
    with monkeypatch.context() as m:
        for r in (0, 1):
            m.setattr(distributed, "mean_tensor", lambda t, r=r: seen[r].append(t.detach().clone()) or t)
            one_step(spec, r, 2, parallel=False)
        for r in (0, 1):
            calls = iter(range(len(seen[r])))
            m.setattr(
                distributed,
                "mean_tensor",
                lambda t, calls=calls: (lambda i: (seen[0][i] + seen[1][i]) / 2)(next(calls)),
            )
            grads.append(one_step(spec, r, 2, parallel=False)[1])
    return grads


def test_ddp_gradient_is_the_mean_of_the_shares_gradients(tmp_path, monkeypatch):
    """(a) For every mode: the gradient DistributedDataParallel leaves on each of 2 ranks equals, within 1e-5 (times
    the gradient's largest entry, when that is above 1), the mean of the gradients one process computes on each
    rank's share of the same global batch with that rank's seeds; after the optimiser step (and the BN statistics'
    average) both ranks hold the same networks and mode state, EMA teachers included."""
    spawn(_ddp_steps, str(tmp_path), MODES)
    for spec in MODES:
        got = [torch.load(tmp_path / f"{spec}.{r}.pt", weights_only=False) for r in range(2)]
        ref = reference_grads(spec, monkeypatch)
        for i, (g0, g1, a, b) in enumerate(zip(got[0]["grads"], got[1]["grads"], *ref)):
            if a is None:  # a parameter no loss of the mode reaches (fixmatch_mixup's arc)
                assert g0 is None and g1 is None and b is None, (spec, i)
                continue
            mean = (a + b) / 2
            # within 1e-5 of the gradient's scale: float32 sums in another order (the ranks' and this process's
            # thread counts differ) move gradients of size ~4 by up to ~2e-5
            tol = 1e-5 * max(1.0, float(mean.abs().max()))
            assert torch.allclose(g0, mean, atol=tol, rtol=0), (spec, i, (g0 - mean).abs().max())
            assert torch.equal(g0, g1), (spec, i)
        assert any(g is not None and g.abs().sum() > 0 for g in got[0]["grads"]), spec
        assert not all(a is None or torch.equal(a, b) for a, b in zip(*ref)), spec  # the shares' gradients differ
        s0, s1 = flat(got[0]["state"]), flat(got[1]["state"])
        assert s0.keys() == s1.keys()
        for k in s0:
            if torch.is_tensor(s0[k]):
                assert torch.equal(s0[k], s1[k]), (spec, k)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny demo preset with its feature cache; returns the overrides that point configs/demo.yaml at it and
    shrink a run to seconds (one thread, tiny width, 4 steps of 8 clips per epoch, fold 0 only)."""
    from pipeline import features
    from pipeline.datasets import demo as demo_data

    base = tmp_path_factory.mktemp("ddp_demo")
    root = demo_data.build(base / "tiny", preset="tiny", workers=1, progress=False)
    ov = [
        f"data.root={root}",
        f"features.cache_dir={base / 'cache'}",
        "run.workers=1",
        *TINY,
        "train.frames=64",
        "train.batch_size=8",
        "train.steps_per_epoch=4",
        "train.epochs=2",
        "warmup.epochs=1",
        "train.folds=[0]",
        "train.eval_hop=32",
        "teacher_student.n_curated=4",
        "teacher_student.n_noisy=4",
    ]
    features.main(load_config(DEMO, ov, stage="features"))
    return ov


DEMO = ROOT / "configs/demo.yaml"


def torchrun(ov, restarts=0) -> list:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        "--monitor-interval=0.1",
        "-m",
        "pipeline.train",
        "--config",
        str(DEMO),
        *ov,
    ]


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc")
def test_kill_9_a_rank_then_torchrun_restarts_and_resumes(demo, tmp_path):
    """(b) A 2-process torchrun run whose rank is killed with -9 after epoch 1 is restarted by torchrun
    (--max-restarts), resumes from last.pt on both ranks, and ends with the checkpoint of an uninterrupted run:
    weights, optimiser, EMA teacher, history and every rank's random state."""
    ov = [*demo, "train.mode=mean_teacher", "train.init_from=null", "model.dropout=0.2", "train.steps_per_epoch=8"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = subprocess.run(torchrun(ov), cwd=tmp_path / "a", env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    agent = subprocess.Popen(
        torchrun(ov, restarts=1),
        cwd=tmp_path / "b",
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "b/runs/demo/train/fold_0/last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and agent.poll() is None:
        time.sleep(0.005)
    workers = children(agent.pid)
    for pid in workers:  # freeze both ranks at once: epoch 2 is still to run
        os.kill(pid, signal.SIGSTOP)
    assert agent.poll() is None and len(workers) == 2, (workers, agent.poll())
    assert load_checkpoint(last)["epoch"] == 1
    os.kill(workers[0], signal.SIGKILL)
    os.kill(workers[1], signal.SIGCONT)
    _, err = agent.communicate(timeout=300)
    assert agent.returncode == 0, err[-3000:]
    log = (tmp_path / "b/runs/demo/train/log.txt").read_text()
    assert "resuming runs/demo/train/fold_0 from epoch 1/2" in log
    a = load_checkpoint(tmp_path / "a/runs/demo/train/fold_0/last.pt")
    b = load_checkpoint(last)
    assert b["epoch"] == 2 and len(b["rng"]["ranks"]) == 2
    for part in ("model", "optimizer", "scheduler", "mode", "rng"):
        fa, fb = flat(a[part]), flat(b[part])
        assert fa.keys() == fb.keys(), part
        for k in fa:
            same = torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k]
            assert same, (part, k)
    timing = ("seconds", "data_wait_share")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a["history"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in b["history"]
    ]
    assert a["best"] == b["best"]


def _audited_train(rank, ov, work, watched, reports):
    """A rank of `python -m pipeline.train` whose every file write (open for writing, rename, mkdir, remove) under
    the watched folders is recorded, then saved in reports/<rank>.pt (outside them)."""
    from pipeline import train

    writes = []
    modes = ("w", "a", "x", "+")
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path):
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return None
        return p if any(p.startswith(w) for w in watched) else None

    def hook(event, args):
        if event == "open":
            path, mode, flag = args
            writing = any(c in mode for c in modes) if isinstance(mode, str) else bool((flag or 0) & flags)
            if writing and inside(path):
                writes.append((event, inside(path)))
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.link", "os.symlink"):
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
                if isinstance(path, (str, bytes, os.PathLike)) and inside(path):
                    writes.append((event, inside(path)))

    os.chdir(work)
    sys.addaudithook(hook)
    train.main(load_config(DEMO, ov, stage="train"))
    torch.save(writes, Path(reports) / f"{rank}.pt")


def test_only_rank_0_writes(demo, tmp_path):
    """(c) A 2-process train stage (folds, a data-parallel warm-up, teacher-student with its separate g pass, OOF,
    summary): rank 1 opens no file for writing, renames, makes or removes nothing in the run or the feature cache;
    rank 0 writes them all."""
    work, reports = tmp_path / "work", tmp_path / "reports"
    work.mkdir()
    reports.mkdir()
    cache = next(o.split("=", 1)[1] for o in demo if o.startswith("features.cache_dir="))
    ov = [*demo, "train.mode=teacher_student", "train.init_from=warmup", "train.epochs=1"]
    spawn(_audited_train, ov, str(work), [str(work), str(Path(cache).resolve())], str(reports))
    w0, w1 = (torch.load(reports / f"{r}.pt") for r in range(2))
    assert w1 == []
    written = {Path(p).relative_to(work).as_posix() for event, p in w0 if event == "os.rename"}
    for f in (
        "runs/demo/warmup/last.pt",
        "runs/demo/train/fold_0/last.pt",
        "runs/demo/train/fold_0/oof.csv",
        "runs/demo/train/summary.json",
        "runs/demo/train/curves.png",
        "runs/demo/folds/folds.csv",
    ):
        assert f in written, (f, sorted(written))
    assert any(p.endswith("log.txt") for event, p in w0 if event == "open")


def test_sync_bn_stays_out_of_the_resume_key():
    """A run resumes across a change of train.sync_bn (as across the number of processes, which is no config key)."""
    from pipeline.engine import train_key

    assert train_key(load_config(None, ["train.sync_bn=false"])) == train_key(load_config(None, []))
    assert train_key(load_config(None, ["train.lr=0.01"])) != train_key(load_config(None, []))
