"""Shards: a split's extraction cut into parts, <split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock}, one per
shard (`--shard i/n` or auto from torchrun's or a SLURM array's variables: parse_shard), each written under its
own lock and marked complete by its json (_extract_part). The plan, a hash of what is reused and what is
extracted, keeps shards that saw different data apart."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pandas as pd

from pipeline.cache.extract import extract_split
from pipeline.cache.layout import _read_index
from pipeline.utils import UserError, atomic_write_json, file_lock

SHARD_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))


def parse_shard(text: str | None, env=None) -> tuple[int, int] | None:
    """(i, n) for `--shard i/n`; `--shard auto` takes torchrun's RANK / WORLD_SIZE, else a SLURM array's
    SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT. Without --shard, a torchrun launch
    (WORLD_SIZE > 1) shards by its ranks, anything else builds whole splits (None)."""
    env = os.environ if env is None else env
    if text is None:
        world = env.get("WORLD_SIZE", "") or "1"
        if not world.isdigit():
            raise UserError(f"WORLD_SIZE={world!r} in the environment is not an integer (torchrun sets it)")
        if int(world) <= 1:
            return None
        text = "auto"
    if text == "auto":
        i, n, source = _shard_from_env(env)
    else:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(
                f"--shard {text}: expected i/n (shard i of n, counted from 0), e.g. --shard 0/4, or auto"
            ) from None
        source = f"--shard {text}"
    if not 0 <= i < n:
        raise UserError(
            f"{source}: shard {i} of {n} is outside 0..{n - 1} (shards are counted from 0; a SLURM "
            f"array with gaps needs --shard i/n)"
        )
    return i, n


def _shard_from_env(env) -> tuple[int, int, str]:
    """(i, n, where they came from) of `--shard auto`: torchrun's variables, else a SLURM array's."""
    for rank, size in SHARD_ENV:
        if env.get(size):
            try:
                first = int(env.get("SLURM_ARRAY_TASK_MIN") or 0) if rank.startswith("SLURM") else 0
                i, n = int(env[rank]) - first, int(env[size])
            except (KeyError, ValueError):
                raise UserError(
                    f"--shard auto: {rank}={env.get(rank)!r} / {size}={env[size]!r} are not integers; give --shard i/n"
                ) from None
            return i, n, f"{rank}={env.get(rank)} {size}={n}"
    raise UserError(
        "--shard auto: neither torchrun's RANK / WORLD_SIZE nor a SLURM array's "
        "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT is set; give --shard i/n"
    )


class Part:
    """Shard i of n of one split's extraction plan: <split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock}; the json,
    written last, marks it complete. The lock makes one process at a time write it."""

    def __init__(self, out: Path, split: str, plan: str, i: int, n: int):
        self.out, self.i, self.n = out, i, n
        self.stem = f"{split}.{plan}.part{i}of{n}"

    def path(self, ext: str) -> Path:
        return self.out / f"{self.stem}.{ext}"

    def done(self) -> bool:
        """Complete: its json (written last) and its rows (a one-part merge moves the .f16 into place: killed
        before the split's json, the part is extracted again)."""
        return self.path("json").exists() and self.path("f16").exists()

    def rows(self) -> pd.DataFrame:
        return _read_index(self.path("index.csv"))


PART_RE = re.compile(r"^\.?(?P<split>\w+)\.(?P<plan>[0-9a-f]{12})\.part(?P<i>\d+)of(?P<n>\d+)\.")


def _plan(key: str, prev, todo: pd.DataFrame) -> str:
    """Names an extraction: the target key, the build whose rows are reused, the clips to extract. Shards that
    saw the same dataset and cache agree on it; parts of another plan are never merged."""
    h = hashlib.sha1(f"{key}\0{prev[0]['key'] if prev else ''}\0".encode())
    for f in todo["fname"]:
        h.update(f.encode() + b"\0")
    return h.hexdigest()[:12]


def _complete_count(out: Path, split: str, plan: str) -> int:
    """The n of this plan's complete parts already on disk (the most common one), or 1 when there are none."""
    counts = {}
    for p in out.glob(f"{split}.{plan}.part*of*.json"):
        m = PART_RE.match(p.name)
        if m:
            counts[int(m["n"])] = counts.get(int(m["n"]), 0) + 1
    return max(counts, key=counts.get) if counts else 1


def _extract_part(part: Part, todo: pd.DataFrame, params: dict, cfg, log, wait: bool):
    """Extract the part's share of `todo` unless it is done. Another process writing it: wait=True waits for it,
    wait=False (an explicit --shard: the same shard started twice) is a UserError naming the lock file."""
    if part.done():
        return
    with file_lock(part.path("lock"), log, f"shard {part.i}/{part.n} of {part.stem.split('.')[0]}", wait=wait):
        if part.done():  # finished by the process we waited for
            return
        m = len(todo)
        share = todo.iloc[part.i * m // part.n : (part.i + 1) * m // part.n]
        log.info(f"extracting {part.stem}: {len(share)} of the {m} clips to extract with {cfg.run.workers} process(es)")
        record = extract_split(
            list(share["path"]),
            list(share["fname"]),
            part.out,
            part.stem,
            params,
            cfg.run.workers,
            show=cfg.run.progress,
            log=log,
        )
        atomic_write_json(
            part.path("json"),
            {"clips": record["clips"], "frames": record["shape"][0], "shard": [part.i, part.n], "f16": record["f16"]},
        )
