"""Seeding: seed_everything seeds Python's, numpy's and torch's global random generators from one seed."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
