"""pipeline.augment: shapes, bounds, purity, reproducibility."""

import math
import pickle

import numpy as np
import pytest
import torch

from pipeline.augment import build_albu, build_batch_augment, center, crop_or_pad, mixup, spec_augment, time_reverse
from pipeline.config import load_config

F_, T_ = 32, 48


def spec(t, f=4):
    """(f, t) with column j holding j in every row + row offsets: content identifies the source column."""
    return (np.arange(t)[None] + 1000 * np.arange(f)[:, None]).astype(np.float32)


def batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, F_, T_, generator=g) + 10  # no zeros of its own
    y = (torch.rand(b, 5, generator=g) < 0.4).float()
    return x, y


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- crop / pad


def test_crop_long_clip():
    s, rng = spec(50), np.random.default_rng(0)
    starts = set()
    for _ in range(30):
        out = crop_or_pad(s, 20, rng)
        k = int(out[0, 0])
        assert out.shape == (4, 20) and np.array_equal(out, s[:, k : k + 20])
        starts.add(k)
    assert len(starts) > 5 and max(starts) <= 30
    assert np.array_equal(crop_or_pad(s, 50, rng), s)


@pytest.mark.parametrize("t", [1, 5, 19])
def test_pad_short_clip_tiles(t):
    s, rng = spec(t), np.random.default_rng(1)
    for _ in range(10):
        out = crop_or_pad(s, 20, rng)
        k = int(out[0, 0])
        assert out.shape == (4, 20) and out.dtype == np.float32
        assert np.array_equal(out, s[:, (k + np.arange(20)) % t])


def test_crop_reproducible_and_center():
    s = spec(50)
    a = [crop_or_pad(s, 7, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(*a)
    assert np.array_equal(center(s, 20), s[:, :20])
    assert np.array_equal(center(spec(3), 8), spec(3)[:, [0, 1, 2, 0, 1, 2, 0, 1]])


# ------------------------------------------------------------------------------------------------- spec_augment


def bands(flags):
    """Number of contiguous runs of True in a 1-d bool array."""
    flags = np.concatenate([[False], flags])
    return int((flags[1:] & ~flags[:-1]).sum())


def test_spec_augment_masks_are_bands_within_bounds():
    x, _ = batch(32)
    x0 = x.clone()
    fm, tm, fw, tw = 2, 3, 0.25, 0.2
    out = spec_augment(x, fm, tm, fw, tw, generator=gen())
    assert out.shape == x.shape and torch.equal(x, x0)
    zero = (out == 0)[:, 0].numpy()
    assert np.array_equal(out.numpy()[~(out == 0).numpy()], x.numpy()[~(out == 0).numpy()])
    masked_rows, masked_cols = [], []
    for z in zero:
        rows, cols = z.all(1), z.all(0)  # bands span the whole other axis
        assert np.array_equal(z, rows[:, None] | cols[None, :])
        assert rows.sum() <= fm * math.floor(fw * F_) and cols.sum() <= tm * math.floor(tw * T_)
        assert bands(rows) <= fm and bands(cols) <= tm
        masked_rows.append(tuple(rows)), masked_cols.append(tuple(cols))
    assert len(set(masked_rows)) > 10 and len(set(masked_cols)) > 10  # each sample its own masks


def test_spec_augment_zero_width_and_reproducible():
    x, _ = batch()
    assert torch.equal(spec_augment(x, 2, 2, 0.0, 0.0, generator=gen()), x)
    assert torch.equal(spec_augment(x, 0, 0, generator=gen()), x)
    a, b = (spec_augment(x, 2, 2, 0.3, 0.3, generator=gen(5)) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, spec_augment(x, 2, 2, 0.3, 0.3, generator=gen(6)))


# ------------------------------------------------------------------------------------------------- time reversal


def test_time_reverse():
    x, y = batch(64)
    x0, y0 = x.clone(), y.clone()
    x2, y2 = time_reverse(x, y, 0.5, generator=gen())
    assert torch.equal(x, x0) and torch.equal(y, y0) and y2.shape == (64, 10)
    rev = [bool(torch.equal(x2[i], x[i].flip(-1))) for i in range(64)]
    for i, r in enumerate(rev):
        assert torch.equal(x2[i], x[i].flip(-1) if r else x[i])
        assert torch.equal(y2[i], torch.cat([y[i] * 0, y[i]]) if r else torch.cat([y[i], y[i] * 0]))
    assert 10 < sum(rev) < 54
    x2, y2 = time_reverse(x, y, 0.0)
    assert torch.equal(x2, x) and torch.equal(y2, torch.cat([y, torch.zeros_like(y)], 1))
    x2, y2 = time_reverse(x, y, 1.0)
    assert torch.equal(x2, x.flip(-1)) and torch.equal(y2, torch.cat([torch.zeros_like(y), y], 1))
    assert all(torch.equal(a, b) for a, b in zip(time_reverse(x, y, 0.5, gen(2)), time_reverse(x, y, 0.5, gen(2))))


# --------------------------------------------------------------------------------------------------------- mixup


def test_mixup_batch_lambda():
    x, y = batch(16)
    x0 = x.clone()
    x2, y2, lam, perm = mixup(x, y, 0.4, generator=gen())
    assert torch.equal(x, x0) and lam.dim() == 0 and 0.5 <= lam <= 1
    assert sorted(perm.tolist()) == list(range(16))
    assert torch.allclose(x2, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(y2, lam * y + (1 - lam) * y[perm])
    assert (y2 >= 0).all() and (y2 <= 1).all()
    again = mixup(x, y, 0.4, generator=gen())
    assert all(torch.equal(a, b) for a, b in zip((x2, y2, lam, perm), again))
    # the same mix applied to other tensors
    z2, _, _, _ = mixup(x * 2, None, perm=perm, lam=lam)
    assert torch.allclose(z2, 2 * x2)


def test_mixup_per_sample_and_off():
    x, y = batch(16)
    perm = torch.arange(16).flip(0)
    x2, y2, lam, p = mixup(x, y, 0.4, generator=gen(), perm=perm, per_sample=True)
    assert lam.shape == (16,) and (lam >= 0.5).all() and torch.equal(p, perm) and len(set(lam.tolist())) > 1
    assert torch.allclose(y2, lam[:, None] * y + (1 - lam[:, None]) * y[perm])
    assert torch.allclose(x2, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm])
    x2, y2, lam, _ = mixup(x, y, 0.0)
    assert x2 is x and y2 is y and lam == 1


def one_hot_batch(b=16, c=5):
    """x rows one-hot (row i is e_i), y (B, C) random 0/1: x2 = lam x + (1 - lam) x[perm] shows each row's lam."""
    return torch.eye(b).view(b, 1, 1, b), (torch.rand(b, c, generator=gen(3)) < 0.4).float()


def row_lambdas(x2):
    """Each row's weight on its own one-hot row (its lam where it is not mixed with itself): (B,)."""
    return x2.flatten(1).diagonal()


def test_mixup_per_pair_draws_one_lambda_per_row():
    x, y = one_hot_batch()
    perm = torch.roll(torch.arange(16), 1)  # no row mixed with itself
    x2, y2, lam, p = mixup(x, y, 0.4, generator=gen(), perm=perm, per_pair=True)
    got = row_lambdas(x2)
    assert lam.shape == (16,) and torch.allclose(got, lam)
    assert (got >= 0.5).all() and (got <= 1).all() and len(set(got.round(decimals=5).tolist())) > 8
    assert torch.allclose(x2.view(16, 16)[torch.arange(16), perm], 1 - lam)  # the partner's weight
    assert torch.allclose(y2, lam[:, None] * y + (1 - lam[:, None]) * y[perm])  # targets mix with the row's lam
    again = mixup(x, y, 0.4, generator=gen(), perm=perm, per_pair=True)
    assert all(torch.equal(a, b) for a, b in zip((x2, y2, lam, p), again))  # same seed, same mix
    other = mixup(x, y, 0.4, generator=gen(1), perm=perm, per_pair=True)
    assert not torch.equal(other[2], lam)
    # the older name gives the same draws
    assert torch.equal(mixup(x, y, 0.4, generator=gen(), perm=perm, per_sample=True)[2], lam)
    x2, y2, lam, _ = mixup(x, y, 0.0, per_pair=True)
    assert x2 is x and y2 is y and lam.shape == (16,) and (lam == 1).all()


def test_mixup_default_one_lambda_per_batch():
    x, y = one_hot_batch()
    perm = torch.roll(torch.arange(16), 1)
    x2, y2, lam, p = mixup(x, y, 0.4, generator=gen(), perm=perm)
    got = row_lambdas(x2)
    assert lam.dim() == 0 and 0.5 <= lam <= 1 and torch.allclose(got, lam.expand(16))
    assert torch.allclose(y2, lam * y + (1 - lam) * y[perm])


def test_batch_augment_mixup_per_pair_key():
    cfg = load_config(None, ["augment.mixup_per_pair=false"])
    assert load_config().augment.mixup_per_pair is True  # the papers' form, the default
    x, y = one_hot_batch()
    _, _, lam, _ = build_batch_augment(cfg.augment, 5).mix(x, y, gen())
    assert lam.dim() == 0
    aug = build_batch_augment({**cfg.augment, "mixup_per_pair": True}, 5)
    x2, y2, lam, perm = aug.mix(x, y, gen())
    assert lam.shape == (16,) and (lam >= 0.5).all() and len(set(lam.tolist())) > 1
    assert torch.allclose(row_lambdas(x2)[perm != torch.arange(16)], lam[perm != torch.arange(16)])
    assert torch.allclose(y2, lam[:, None] * y + (1 - lam[:, None]) * y[perm])
    assert all(torch.equal(a, b) for a, b in zip((x2, y2, lam, perm), aug.mix(x, y, gen())))
    assert aug.mix(x, y, gen(), per_pair=False)[2].dim() == 0  # an explicit keyword wins
    xs, ys = aug(x, y, gen())  # the whole chain runs per pair
    assert xs.shape == x.shape and ys.shape == (16, 10)


# ------------------------------------------------------------------------------------------------ albumentations


def test_albu_gauss_noise_reproducible():
    assert build_albu([]) is None
    s = np.random.default_rng(0).standard_normal((F_, T_)).astype(np.float32) * 20 - 50
    albu = build_albu([{"name": "GaussNoise", "p": 1.0, "std_range": [0.05, 0.1]}])
    a = albu(s, np.random.default_rng(7))
    assert a.shape == s.shape and a.dtype == np.float32 and not np.allclose(a, s)
    assert a.min() >= s.min() - 1e-3 and a.max() <= s.max() + 1e-3 and a.min() < -100  # range kept, not [0, 1]
    assert np.array_equal(a, albu(s, np.random.default_rng(7)))
    assert not np.array_equal(a, albu(s, np.random.default_rng(8)))


def test_albu_random_resized_crop_keeps_shape():
    s = np.random.default_rng(0).standard_normal((F_, T_)).astype(np.float32)
    albu = build_albu([{"name": "RandomResizedCrop", "p": 1.0, "scale": [0.5, 0.8]}])
    for shape in [(F_, T_), (F_, 20)]:
        out = albu(s[:, : shape[1]], np.random.default_rng(0))
        assert out.shape == shape and not np.allclose(out, s[:, : shape[1]])


def test_albu_errors():
    with pytest.raises(ValueError, match=r"augment\.albumentations\[1\].*NoSuchTransform"):
        build_albu([{"name": "GaussNoise"}, {"name": "NoSuchTransform", "p": 0.5}])
    with pytest.raises(ValueError, match="stdd"):
        build_albu([{"name": "GaussNoise", "stdd": 1}])
    with pytest.raises(ValueError, match=r"augment\.albumentations\[0\].*GaussNoise"):
        build_albu([{"name": "GaussNoise", "std_range": "loud"}])
    albu = build_albu([{"name": "RandomResizedCrop", "size": [F_, T_], "scale": [0.5, 0.8]}])
    assert albu(np.zeros((F_, 20), np.float32), np.random.default_rng(0)).shape == (F_, T_)  # given size wins
    assert pickle.loads(pickle.dumps(albu)) is not None  # for loader workers


# -------------------------------------------------------------------------------------------------- batch augment


def test_batch_augment_from_config():
    cfg = load_config()
    x, y = batch(8)
    aug = build_batch_augment(cfg.augment, n_classes=5)
    x2, y2 = aug(x, y, gen())
    assert x2.shape == x.shape and y2.shape == (8, 10)
    assert all(torch.equal(a, b) for a, b in zip((x2, y2), aug(x, y, gen())))
    assert build_batch_augment(cfg.augment, 5, time_reversal=False)(x, y, gen())[1].shape == (8, 5)
    with pytest.raises(ValueError, match="n_classes"):
        aug(x, torch.zeros(8, 10), gen())


def test_batch_augment_all_off_and_steps():
    x, y = batch(8)
    off = build_batch_augment({"spec_augment": False, "reversal_p": 0.0, "mixup_alpha": 0.0}, 5)
    x2, y2 = off(x, y, gen())
    assert torch.equal(x2, x) and torch.equal(y2, torch.cat([y, 0 * y], 1))
    aug = build_batch_augment({"freq_width": 0.5, "time_width": 0.5}, 5)
    assert torch.equal(aug.spec(x, gen(1)), spec_augment(x, 2, 2, 0.5, 0.5, generator=gen(1)))
    xm, ym, lam, perm = aug.mix(x, y, gen(1))
    assert torch.allclose(ym, lam * y + (1 - lam) * y[perm])
