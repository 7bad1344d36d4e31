"""Clip sets and the batch stream: where a training batch is made.

A ClipSet names clips of FeatureCache splits with their targets; batch_stream turns one into a fit's batches
(random crops, shuffled passes, the Albumentations-style per-clip augmentation), prepared one batch ahead in a
thread and sharded over the ranks of a data-parallel run. The fit loop (pipeline/engine/loop.py, next_batch) moves
them to the device.

    clips = make_clipset(FeatureCache.open(cfg, "curated"), ds.curated, ds.classes)
    for x, y, rows in batch_stream(clips, batch_size=32, steps=40, frames=128, rng=np.random.default_rng(0)): ...
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from pipeline import distributed
from pipeline.augment import crop_or_pad


@dataclass
class ClipSet:
    """Clips of FeatureCache splits: clip i is row pos[i] of caches[src[i]]; targets (N, C), true labels or None."""

    caches: list
    src: np.ndarray
    pos: np.ndarray
    y: np.ndarray
    truth: np.ndarray | None = None
    fnames: list | None = None

    def __len__(self):
        return len(self.pos)

    def get(self, i) -> np.ndarray:
        """Clip i as (n_mels, frames) float32."""
        return self.caches[self.src[i]].get(int(self.pos[i]))

    def subset(self, rows) -> ClipSet:
        """The clips at `rows` (an index array), in that order."""
        rows = np.asarray(rows, int)
        return ClipSet(
            self.caches,
            self.src[rows],
            self.pos[rows],
            self.y[rows],
            None if self.truth is None else self.truth[rows],
            None if self.fnames is None else [self.fnames[i] for i in rows],
        )

    @property
    def cache(self):
        """The single cache of a one-split ClipSet (validation and prediction read it by fname)."""
        if len(self.caches) != 1:
            raise ValueError("this ClipSet spans several caches")
        return self.caches[0]


def concat_clipsets(a: ClipSet, b: ClipSet) -> ClipSet:
    """The clips of a then b (truth kept only when both have it)."""
    truth = None if a.truth is None or b.truth is None else np.concatenate([a.truth, b.truth])
    return ClipSet(
        a.caches + b.caches,
        np.concatenate([a.src, b.src + len(a.caches)]),
        np.concatenate([a.pos, b.pos]),
        np.concatenate([a.y, b.y]),
        truth,
        (a.fnames or []) + (b.fnames or []),
    )


def make_clipset(cache, df, classes, truth_df=None) -> ClipSet:
    """ClipSet of a dataset split's DataFrame (fname, labels) over its FeatureCache."""
    from pipeline.data import labels_to_matrix

    fnames = list(df["fname"])
    truth = None
    if truth_df is not None:
        t = truth_df.set_index("fname").loc[fnames, "labels"]
        truth = labels_to_matrix(list(t), classes)
    return ClipSet(
        [cache],
        np.zeros(len(fnames), int),
        np.array([cache.position(f) for f in fnames], int),
        labels_to_matrix(df["labels"], classes),
        truth,
        fnames,
    )


def batch_stream(
    clips: ClipSet, batch_size: int, steps: int, frames: int, rng: np.random.Generator, albu=None, shard: tuple = (0, 1)
):
    """Yield `steps` batches (x (B, 1, F, frames) float32, y (B, C), rows (B,)) from shuffled passes over the clips,
    a random crop (or repeat-pad) per clip. Prepared one batch ahead in a thread.
    shard (rank, size) of a data-parallel run: rng, the same on every rank, draws one shared order; this rank yields
    its share (distributed.share) of each global batch of batch_size clips, B = batch_size / size, and crops them
    with a generator of its own drawn from rng."""
    n = len(clips)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch_size // n))])
    rank, size = shard
    part = distributed.share(batch_size, rank, size)
    if size > 1:
        rng = np.random.default_rng(rng.integers(0, 2**63, size=size)[rank])

    def make(s):
        rows = order[s * batch_size : (s + 1) * batch_size][part]
        xs = []
        for r in rows:
            spec = crop_or_pad(clips.get(r), frames, rng)
            xs.append(albu(spec, rng) if albu else spec)
        return np.stack(xs)[:, None], clips.y[rows], rows

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def worker():
        try:
            for s in range(steps):
                if stop.is_set():
                    return
                q.put(make(s))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        for _ in range(steps):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
