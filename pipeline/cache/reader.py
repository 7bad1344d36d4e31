"""Reading the cache: FeatureCache, one split memory-mapped and normalised on the fly ((n_mels, frames) float32
clips by fname), checked against its record before it is mapped; norm_stats, the normalisation's mean and std.

    cache = FeatureCache.open(cfg, "curated")
    cache.get("0a1b2c3d.wav"), cache.frames, cache.fnames
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cache.layout import REPAIR, _read_index, cache_dir, damage, read_meta
from pipeline.utils import UserError


class FeatureCache:
    """Read one split of the cache: memory-mapped, normalised on the fly. Arrays are (n_mels, frames) float32.
    Opening checks the files' lengths against the split's record: a damaged cache is a UserError naming the file."""

    def __init__(self, folder, split: str, mean=0.0, std=1.0):
        folder = Path(folder)
        self.meta = read_meta(folder / f"{split}.json")
        why = damage(folder, split, self.meta)
        if why:
            raise UserError(f"{why}: the '{split}' feature cache is damaged; {REPAIR}")
        self.folder, self.split = folder, split
        self.index = _read_index(folder / f"{split}.index.csv")
        self.fnames = self.index["fname"].tolist()
        self.offsets = self.index["offset"].to_numpy()
        self.frames = self.index["frames"].to_numpy()
        if len(self.index) != self.meta["clips"] or int(self.frames.sum()) != self.meta["shape"][0]:
            raise UserError(
                f"{folder / f'{split}.index.csv'}: its rows disagree with {split}.json (a damaged index); {REPAIR}"
            )
        self._pos = {f: i for i, f in enumerate(self.fnames)}
        self.mean, self.std = float(mean), float(std)
        self._arr = None

    @property
    def arr(self):
        if self._arr is None:  # opened lazily so that forked loader workers each map it themselves
            self._arr = np.memmap(
                self.folder / f"{self.split}.f16", dtype=np.float16, mode="r", shape=tuple(self.meta["shape"])
            )
        return self._arr

    def __len__(self):
        return len(self.fnames)

    def position(self, fname) -> int:
        try:
            return self._pos[fname]
        except KeyError:
            raise KeyError(f"{fname}: not in the '{self.split}' feature cache {self.folder}") from None

    def get(self, key, start=0, length=None) -> np.ndarray:
        """Clip `key` (fname or position) as (n_mels, frames) float32, optionally frames [start, start+length)."""
        i = key if isinstance(key, (int, np.integer)) else self.position(key)
        off, n = int(self.offsets[i]), int(self.frames[i])
        stop = n if length is None else min(n, start + length)
        x = np.asarray(self.arr[off + start : off + stop], dtype=np.float32).T
        return (x - self.mean) / self.std

    @classmethod
    def open(cls, cfg, split: str) -> FeatureCache:
        folder = cache_dir(cfg)
        mean, std = norm_stats(cfg, folder)
        return cls(folder, split, mean, std)


def norm_stats(cfg, folder=None):
    """(mean, std) of the log-mels of features.norm_split (falls back to curated when that split is empty)."""
    split = cfg.features.norm_split
    if split in (None, "none"):
        return 0.0, 1.0
    folder = Path(folder or cache_dir(cfg))
    path = folder / f"{split}.json"
    if not path.exists() and split == "noisy":
        path = folder / "curated.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no statistics for features.norm_split={split}; run `make features`")
    m = read_meta(path)
    mean = m["sum"] / m["count"]
    std = max(np.sqrt(max(m["sumsq"] / m["count"] - mean**2, 0.0)), 1e-6)
    return mean, std
