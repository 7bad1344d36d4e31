"""How well audio grouping (pipeline/audio_groups.py) finds the clips that share a recording, and what it costs:
pair precision and recall of "these two clips share a recording" against a dataset's `sources` column (hidden from
the grouping), the largest group's share of the clips, the share of clips grouped, and the seconds per hour of
audio of the curated pass and of the noisy and test queries.

    python bench/audio_groups.py [key=value ...] [--config real.yaml] [--cross] [--set NAME=VALUE ...]
    python bench/audio_groups.py --scaling curated|noisy     # seconds per hour of audio at 1/4, 1/2, all clips

--set changes a module constant of pipeline/audio_groups.py for this run (PEAKS_PER_S=30, ...), to measure a
choice; the feature cache must be built (`make features`). Needs the curated CSV's `sources` column.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cfg_for
from scipy import sparse

from pipeline import audio_groups as ag  # noqa: E402
from pipeline.cache import cache_dir  # noqa: E402
from pipeline.data import dataset  # noqa: E402
from pipeline.folds import split_groups  # noqa: E402


def pair_matrix(groups: list[list[str]]) -> sparse.csr_matrix:
    """(N, N) boolean: clips i != j that share a group."""
    names = {g: k for k, g in enumerate(sorted({g for gs in groups for g in gs}))}
    rows = [i for i, gs in enumerate(groups) for _ in gs]
    cols = [names[g] for gs in groups for g in gs]
    G = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(groups), len(names)))
    P = (G @ G.T).tocsr()
    P.setdiag(0)
    P.eliminate_zeros()
    return P > 0


def scores(found_groups, true_groups) -> dict:
    P, T = pair_matrix(found_groups), pair_matrix(true_groups)
    hit = P.multiply(T).nnz
    return dict(pairs=P.nnz // 2, true_pairs=T.nnz // 2, precision=hit / max(P.nnz, 1), recall=hit / max(T.nnz, 1))


def scaling(cfg, fps, split="curated"):
    """Seconds and peak traced memory of the self-join pass (what the curated split gets) on the first quarter, half
    and all of a split's clips (--split noisy: an 11-hour index, FSDKaggle2019's curated size): time per hour of
    audio should stay about flat (no all-pairs comparison; a bucket holds at most BUCKET_CAP landmarks)."""
    import tracemalloc

    from pipeline.cache import FeatureCache

    cur = FeatureCache(cache_dir(cfg), split)
    width = 2 * int(cur.frames.max()) + 3
    for share in (0.25, 0.5, 1.0):
        n = int(len(cur) * share)
        hours = float(cur.frames[:n].sum()) / fps / 3600
        tracemalloc.start()
        t0 = time.perf_counter()
        clips = (cur.arr[int(cur.offsets[i]) : int(cur.offsets[i]) + int(cur.frames[i])] for i in range(n))
        index = ag.Index.build(clips, cur.meta["shape"][1], fps, show=False).without_stop_words()
        ag.curated_segments(index, cfg.folds.audio.min_match, width, show=False)
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{n} clips, {hours:.2f} h: {sec:.1f} s ({sec / hours:.1f} s per hour), peak {peak / 2**20:.0f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="real.yaml")
    ap.add_argument("--cross", action="store_true", help="also query the noisy and test clips (timing)")
    ap.add_argument("--scaling", metavar="SPLIT", help="time the self-join on 1/4, 1/2 and all of SPLIT's clips")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE: a constant of pipeline/audio_groups.py")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    for item in a.set:
        k, v = item.split("=")
        setattr(ag, k, type(getattr(ag, k))(float(v)) if "." in v else int(v))
    cfg = cfg_for(a.config, a.overrides, "folds")
    ds = dataset(cfg)
    if a.scaling:
        return scaling(cfg, cfg.features.sample_rate / cfg.features.hop_length, a.scaling)
    if "sources" not in ds.curated.columns:
        raise SystemExit(f"{cfg.data.root}: train_curated.csv has no sources column to score against")
    t0 = time.perf_counter()
    fps = cfg.features.sample_rate / cfg.features.hop_length
    others = ag.OTHER_SPLITS if a.cross else ()
    found = ag.find(cache_dir(cfg), cfg.folds.audio.min_match, fps, show=False, others=others)
    wall = time.perf_counter() - t0
    y = ds.targets(ds.curated)
    au = cfg.folds.audio
    groups, info = ag.clip_groups(found, y, au.purity, au.max_class_share, ds.classes)
    found_recs, _ = ag.recordings(found, np.ones((len(y), 1)))  # every segment, whatever the labels
    truth = split_groups(ds.curated["sources"], ds.curated["fname"])
    raw = [[] for _ in range(len(y))]  # every recording found, before the label rules
    for k, m in enumerate(found_recs):
        for i in m:
            raw[i].append(f"r{k}")
    raw = [g or [f"clip:{i}"] for i, g in enumerate(raw)]
    s, r = scores(groups, truth), scores(raw, truth)
    sizes = sorted((len(m) for m in found_recs), reverse=True)
    print(f"constants: {' '.join(a.set) or 'defaults'}; {cfg.folds.audio}")
    print(f"stats: {found.stats}  wall {wall:.1f} s (0 when cached)")
    print(f"recordings found {len(found_recs)} (labels unread), largest {sizes[:5]}")
    print(f"before labels: pairs {r['pairs']} precision {r['precision']:.3f} recall {r['recall']:.3f}")
    print(
        f"grouping: pairs {s['pairs']} of {s['true_pairs']} true; precision {s['precision']:.3f} recall "
        f"{s['recall']:.3f}; kept {info['kept']} background {info['background']} whole-class {info['whole_class']}; "
        f"largest group {100 * info['largest_share']:.1f}% of clips; grouped {100 * info['grouped_share']:.1f}%"
    )
    for split, rows in found.shared.items():
        counted = set(rows[found.shared_level[split] <= au.foreground_db, 0].tolist())
        print(
            f"{split}: {len({r[0] for r in rows.tolist()})} clips share a stretch with curated clips, {len(counted)} "
            f"in the foreground (folds.audio.foreground_db; the pools share no recording: each is a false alarm)"
        )


if __name__ == "__main__":
    main()
