"""The features stage: validate the dataset, then bring the log-mel feature cache of every split up to date.

    make features CONFIG=configs/demo.yaml          # or: python -m pipeline.features --config FILE [key=value ...]
    python -m pipeline.features --verify ...        # also compare every cache file's sha256 with its record
    python -m pipeline.features --shard i/n ...     # shard i of n (or auto: torchrun's / a SLURM array's)

A rerun with the same parameters and clips does nothing but check each cache file's length (a damaged file's split
is rebuilt); a changed or added clip is extracted alone. The log-mel computation is pipeline/extractor.py, the cache
pipeline/cache/ (layout, incremental and sharded builds, merge, damage checks, FeatureCache for the readers).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cache import build_cache, parse_shard
from pipeline.config import cli
from pipeline.data import SPLITS
from pipeline.utils import user_errors


def main(cfg, shard=None, verify: bool = False) -> Path:
    """Build the cache; shard (i, n) (parse_shard) extracts only shard i's share of each split; verify also
    compares every file's sha256 with the one recorded when it was written (rebuilding a split that differs)."""
    if cfg.features.norm_split not in ("none", *SPLITS):
        raise ValueError(f"features.norm_split must be none or one of {list(SPLITS)}, got {cfg.features.norm_split}")
    return build_cache(cfg, shard=shard, verify=verify)


def _add_args(ap):
    ap.add_argument(
        "--shard",
        default=None,
        metavar="i/n|auto",
        help="extract only shard i of n (from 0) of each split; the last shard to finish merges. auto: "
        "torchrun's RANK / WORLD_SIZE or a SLURM array's SLURM_ARRAY_TASK_ID / _COUNT (a torchrun "
        "launch shards by its ranks without this flag)",
    )
    ap.add_argument(
        "--verify",
        action="store_true",
        help="read every cache file and compare its sha256 with the one recorded when it was written; "
        "rebuild the splits that differ (without it only the lengths are checked)",
    )


if __name__ == "__main__":
    _cfg, _args = cli("features", "Build the log-mel feature cache.", extra=_add_args)
    with user_errors("features"):
        main(_cfg, parse_shard(_args.shard), _args.verify)
