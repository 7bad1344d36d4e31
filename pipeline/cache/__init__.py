"""The log-mel feature cache: building it (incremental, sharded, merged, checked) and reading it. One float16 array
per split on disk, memory-mapped when read; the log-mels themselves come from pipeline.extractor.

    out = build_cache(cfg)                          # what `make features` runs (pipeline/features.py)
    out = build_cache(cfg, shard=(i, n))            # shard i of n's share of each split; the last shard merges
    out = build_cache(cfg, verify=True)             # also recompute every file's checksum, rebuild what differs
    cache = FeatureCache.open(cfg, "curated")       # normalised (F, T) float32 arrays by fname
    cache.get("0a1b2c3d.wav"), cache.frames, cache.fnames

Layout: <features.cache_dir>/<dataset>-<hash of the feature parameters and dataset path>/
    params.json, config.yaml, log.txt
    <split>.f16          float16 (total_frames, n_mels), clips one after another in the CSV's order
    <split>.index.csv    fname, offset, frames, note (why a clip was kept untrimmed or padded), the wav's size and
                         mtime_ns, and the clip's log-mel sum and sum of squares
    <split>.json         shape, sums for the normalisation statistics, the parameters, each file's byte length and
                         sha256 as written ("files"), and the completion key (written last; "stale": true while the
                         split is rebuilt, and then it is refused)
    <split>.lock         the file lock of the split's merges

A split is valid only when its <split>.json holds the key for these parameters and these clips (fnames, sizes,
mtimes) and its files have the lengths it records; everything is written under temporary names first, so an
interrupted run leaves nothing read as valid, and a rerun with the same parameters does nothing. Damage after the
fact (a copy cut short, a full disk, flipped bits): every build compares each file's length with the record and
rebuilds a split whose files differ, `--verify` also compares the checksums, and every reader (FeatureCache) checks
the lengths before it maps a file and refuses a damaged one, naming it and `make features`.

Incremental and sharded builds: a rebuild reuses the previous build's rows of every clip whose fname, size and
mtime are unchanged and extracts only the others (new or changed clips). Those are extracted into parts,
<split>.<plan>.part<i>of<n>.{f16,index.csv,json,lock} (plan: a hash of what is reused and what is extracted, so
shards that saw different data never mix): one part in a plain build, shard i's share with `--shard i/n`
(parse_shard). The process that completes the last part merges the reused rows and the parts into the split's
files in the CSV's order, the same bytes as a one-process build of every clip, then removes the parts and what
killed shards left; a plain build after a sharded one extracts only the parts still missing. Before extracting,
the build estimates the bytes it will write (untrimmed clip lengths from the wav headers) and refuses when the
cache's file system has less free space.

One module per trade:

    layout.py   the cache's folder, the key that makes a split valid, what a split's json record vouches for
    reader.py   FeatureCache (one split, memory-mapped, normalised) and norm_stats: what the stages read
    build.py    build_cache and build_split: bring every split up to date (reuse, extract, merge)
    extract.py  extract_split: the log-mels of a list of wavs into one .f16 and its index
    shards.py   a split's extraction cut into parts, one per shard (--shard i/n)
    merge.py    the reused rows and the parts merged into the split's files, the parts swept after

The names the stages, benchmarks and tests use are importable from here (`from pipeline.cache import FeatureCache`).
"""

from pipeline.cache.build import build_cache, build_split, clip_table, estimate_bytes, space_needed
from pipeline.cache.extract import extract_split
from pipeline.cache.layout import (
    INDEX_COLUMNS,
    PARAM_KEYS,
    REPAIR,
    SPLIT_ORDER,
    cache_dir,
    damage,
    feature_params,
    file_record,
    read_meta,
    recorded_files,
    split_key,
)
from pipeline.cache.merge import COPY_FRAMES, NOTE_KINDS, note_counts
from pipeline.cache.reader import FeatureCache, norm_stats
from pipeline.cache.shards import PART_RE, SHARD_ENV, Part, parse_shard

__all__ = [
    "COPY_FRAMES",
    "FeatureCache",
    "INDEX_COLUMNS",
    "NOTE_KINDS",
    "PARAM_KEYS",
    "PART_RE",
    "Part",
    "REPAIR",
    "SHARD_ENV",
    "SPLIT_ORDER",
    "build_cache",
    "build_split",
    "cache_dir",
    "clip_table",
    "damage",
    "estimate_bytes",
    "extract_split",
    "feature_params",
    "file_record",
    "norm_stats",
    "note_counts",
    "parse_shard",
    "read_meta",
    "recorded_files",
    "space_needed",
    "split_key",
]
