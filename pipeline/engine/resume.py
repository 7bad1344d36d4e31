"""A fit's state on disk, written at each epoch's end and read back when the fit starts again.

write_checkpoints ends an epoch (rank 0): best.pt when it improved, metrics.csv, then last.pt (model, optimiser,
schedule, scaler, mode state, random states, history without its timings), the one before kept as previous.pt.
resume_fit starts a fit again: from last.pt when it was written for this config (from previous.pt when last.pt
is damaged), restoring every state so that the run ends with the bytes of an uninterrupted one; when it was
written for another config, the old run's files are kept aside (<stem>.<old key>.<suffix>) and training starts
from epoch 0. The checkpoint files themselves: pipeline/engine/checkpoints.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from pipeline import distributed
from pipeline.engine.checkpoints import load_checkpoint, save_checkpoint
from pipeline.engine.fit_run import FitRun
from pipeline.engine.keys import changed_keys
from pipeline.engine.validation import val_metric
from pipeline.loggers import keep_old_curves
from pipeline.utils import DamagedFile, UserError, atomic_to_csv, move_with_checksum


def write_checkpoints(run: FitRun, epoch: int, row: dict, improved: bool):
    """The end of an epoch on disk (rank 0): best.pt when it improved, metrics.csv, then last.pt, the one before
    kept as previous.pt (a resume's fallback when last.pt is found damaged)."""
    cfg = run.cfg
    state = rng_state(run)  # a collective in a data-parallel run: every rank calls it
    if not run.world.main:
        return
    if improved:
        metric = "val_" + val_metric(cfg)
        save_checkpoint(
            run.out_dir / "best.pt",
            run.mode.eval_model(),
            cfg,
            run.classes,
            epoch=epoch + 1,
            key=run.key,
            **{metric: row.get(metric)},
        )
    atomic_to_csv(pd.DataFrame(run.history), run.out_dir / "metrics.csv", index=False)
    if run.last.exists():
        move_with_checksum(run.last, run.out_dir / "previous.pt")
    save_checkpoint(
        run.last,
        run.model,
        cfg,
        run.classes,
        epoch=epoch + 1,
        key=run.key,
        optimizer=run.opt.state_dict(),
        scheduler=run.sched.state_dict(),
        scaler=run.scaler.state_dict(),
        mode=run.mode.state_dict(),
        history=untimed(run.history),
        best=run.best,
        rng=state,
    )


def rng_state(run: FitRun) -> dict:
    """The random states last.pt keeps for an exact resume; in a data-parallel run also each rank's own streams
    (dropout, masks, mixup), gathered on every rank."""
    state = {"numpy": run.rng.bit_generator.state, "torch": torch.get_rng_state(), "gen": run.gen.get_state()}
    if run.world.parallel:
        state["ranks"] = distributed.all_gather({"torch": state["torch"], "gen": state["gen"]})
    return state


# Measured, not computed: kept out of last.pt (whose bytes then depend on the config and seed alone) and read back
# from metrics.csv on a resume.
TIMINGS = ("seconds", "data_wait_share")


def untimed(history: list) -> list:
    """The history last.pt keeps: timings None, every value a plain JSON one. The JSON round trip is a canonical
    form: rows computed in this process and rows read back from a checkpoint pickle to the same bytes (pickle
    writes a key shared by several rows once, so which string objects the rows share shows in the file)."""
    rows = [{k: (None if k in TIMINGS else v) for k, v in row.items()} for row in history]
    return json.loads(json.dumps(rows, default=float))


def timed(history: list, metrics: Path) -> list:
    """last.pt's history with its timings read back from metrics.csv (written before it), NaN where missing."""
    try:
        old = pd.read_csv(metrics) if metrics.exists() else pd.DataFrame()
    except (OSError, ValueError):
        old = pd.DataFrame()
    for i, row in enumerate(history):
        for k in TIMINGS:
            if k in row and row[k] is None:
                row[k] = float(old[k].iloc[i]) if k in old.columns and i < len(old) else float("nan")
    return history


def resume_fit(run: FitRun):
    """Resume from last.pt when it was written for this config (restore_fit); when it was written for another,
    rank 0 keeps the old run's files aside (keep_old_run) and training starts from epoch 0."""
    ck = read_last(run)
    if ck is None:
        return
    if ck.get("key") == run.key:
        restore_fit(run, ck)
    elif run.world.main:
        keep_old_run(run, ck)


def read_last(run: FitRun) -> dict | None:
    """last.pt's contents, or None. In a data-parallel run every rank reads it before rank 0 may move it, and they
    must have read the same one (a UserError otherwise)."""
    last = run.last
    ck = last_or_previous(run)
    if run.world.parallel:
        seen = distributed.all_gather(None if ck is None else (ck.get("key"), ck.get("epoch")))
        if len(set(seen)) > 1:
            raise UserError(
                f"{last}: the ranks read different checkpoints ({seen}); a run of several machines "
                f"needs its runs/ folder on a file system they all share"
            )
        distributed.barrier()
    return ck


def last_or_previous(run: FitRun) -> dict | None:
    """last.pt's contents; when it is damaged, or missing while previous.pt is there (killed between keeping the
    one and writing the other), previous.pt's: the run resumes one epoch earlier."""
    prev = run.out_dir / "previous.pt"
    if run.last.exists():
        try:
            return load_checkpoint(run.last)
        except UserError as e:  # damaged (DamagedFile) or unreadable
            if not prev.exists():
                raise
            why = "damaged" if isinstance(e, DamagedFile) else "unreadable"
            if run.log:
                run.log.warning(f"{run.last}: {why}; resuming from previous.pt, one epoch earlier")
    if prev.exists():
        if run.log:
            run.log.info(f"{run.out_dir}: resuming from previous.pt")
        return load_checkpoint(prev)
    return None


def restore_fit(run: FitRun, ck: dict):
    """Load model, optimiser, schedule, scaler, mode state, random states and history from a last.pt of this key."""
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.mode.load_state_dict(ck["mode"])
    run.rng.bit_generator.state = ck["rng"]["numpy"]
    torch.set_rng_state(ck["rng"]["torch"])
    run.gen.set_state(ck["rng"]["gen"])
    if run.world.parallel:
        resume_rank_rng(ck, run.world, run.seed, run.gen, run.log)
    run.history, run.best, run.start = timed(ck["history"], run.out_dir / "metrics.csv"), ck["best"], ck["epoch"]
    if run.log:
        run.log.info(f"resuming {run.out_dir} from epoch {run.start}/{run.cfg.train.epochs}")


def resume_rank_rng(ck: dict, world, seed: int, gen, log=None):
    """A data-parallel rank's own random streams from last.pt (rank 0's are the checkpoint's torch and gen). A
    checkpoint written by another number of processes has none for this rank: it draws fresh ones from (seed,
    rank, epoch), so the resumed run goes on but is not the run an uninterrupted one would have been."""
    ranks = ck["rng"].get("ranks") or []
    if len(ranks) == world.size:
        torch.set_rng_state(ranks[world.rank]["torch"])
        gen.set_state(ranks[world.rank]["gen"])
    elif world.rank > 0:
        s = distributed.rank_seed(seed + 7919 * int(ck["epoch"]), world.rank)
        torch.manual_seed(s)
        gen.manual_seed(s)
    elif log:
        log.warning(
            f"last.pt was written by {len(ranks) or 1} process(es), this run has {world.size}: the ranks' "
            f"random streams restart (the run goes on, not bit for bit as an uninterrupted one)"
        )


def keep_old_run(run: FitRun, ck: dict):
    """Keep the old run's last.pt, best.pt and metrics.csv beside the new ones as <stem>.<old key>.<suffix>, and
    log which config keys changed."""
    tag = str(ck.get("key", "old")).split("-")[0][:12]
    kept = []
    for p in (run.last, run.out_dir / "best.pt", run.out_dir / "metrics.csv"):
        if p.exists():
            move_with_checksum(p, p.with_name(f"{p.stem}.{tag}{p.suffix}"))
            kept.append(f"{p.stem}.{tag}{p.suffix}")
    for p in (run.out_dir / "previous.pt", run.out_dir / "previous.pt.sha256"):
        p.unlink(missing_ok=True)  # the old run's epoch before: no use to the new one
    curves = keep_old_curves(run.cfg, run.out_dir, tag)
    if curves is not None:
        kept.append(str(curves))
    if run.log:
        run.log.info(
            f"{run.last} was written for another config (changed: "
            f"{', '.join(changed_keys(ck.get('cfg'), run.cfg)) or 'the seed'}): kept as "
            f"{', '.join(kept)}, training from the start"
        )
