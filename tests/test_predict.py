import numpy as np
import pytest
import torch

from pipeline.config import Cfg, load_config
from pipeline.predict import (
    plan_windows,
    predict_clips,
    repeat_pad,
    tta_passes,
    tta_windows,
    window_probs,
    window_starts,
)


def test_window_starts_cover_clip():
    assert window_starts(100, 192, 16) == [0]
    assert window_starts(192, 192, 16) == [0]
    s = window_starts(250, 192, 16)
    assert s[0] == 0 and s[-1] == 250 - 192 and all(b - a <= 16 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("n_windows, extra", [(1, 9), (2, 5), (3, 3), (4, 2), (5, 2), (6, 1), (7, 1), (8, 0)])
def test_tta_counts(n_windows, extra):
    counts = [9, 5, 3, 2, 2, 1, 1]
    assert tta_passes(n_windows, counts) == extra
    n = 192 + 16 * (n_windows - 1)  # a clip of exactly n_windows windows
    clip, start, aug = plan_windows([n], 192, 16, counts)
    assert len(clip) == n_windows * (1 + extra) and aug.sum() == n_windows * extra
    assert n_windows * (1 + extra) >= 8 or n_windows >= 8  # short clips get about 10 predictions


@pytest.mark.parametrize(
    "n, paper, all_",
    [
        (100, 1, 1),
        (192, 1, 1),
        (200, 1, 2),
        (207, 1, 2),
        (208, 2, 2),
        (250, 4, 5),
        (192 + 16 * 6, 7, 7),
        (192 + 16 * 6 + 1, 7, 8),
    ],
)
def test_tta_windows_paper_leaves_out_the_end_aligned_window(n, paper, all_):
    assert tta_windows(n, 192, 16) == tta_windows(n, 192, 16, "paper") == paper
    assert tta_windows(n, 192, 16, "all") == all_ == len(window_starts(n, 192, 16))


def test_tta_200_frame_clip_gets_9_passes_by_default_5_with_all():
    counts = [9, 5, 3, 2, 2, 1, 1]
    assert window_starts(200, 192, 16) == [0, 8]  # the end-aligned window is still predicted
    for mode, extra in [(None, 9), ("paper", 9), ("all", 5)]:
        kw = {} if mode is None else {"tta_count_windows": mode}
        clip, start, aug = plan_windows([200], 192, 16, counts, **kw)
        assert aug.sum() == 2 * extra and len(clip) == 2 * (1 + extra)
        assert sorted(set(start[aug].tolist())) == [0, 8]  # TTA passes cover both windows
    with pytest.raises(ValueError, match=r"infer\.tta_count_windows"):
        plan_windows([200], 192, 16, counts, tta_count_windows="ends")


def test_repeat_pad():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert repeat_pad(x, 7).tolist() == [[0, 1, 2, 0, 1, 2, 0], [3, 4, 5, 3, 4, 5, 3]]


def test_reversal_averaging():
    c = 3
    logits = torch.tensor([[0.0, 1.0, 2.0, 9.0, 9.0, 9.0]])
    logits_rev = torch.tensor([[-9.0, -9.0, -9.0, 2.0, 1.0, 0.0]])
    p = window_probs(logits, logits_rev, c)
    want = 0.5 * (torch.sigmoid(logits[:, :3]) + torch.sigmoid(logits_rev[:, 3:]))
    assert torch.allclose(p, want)
    assert torch.allclose(window_probs(logits, None, c), torch.sigmoid(logits[:, :3]))


class FakeCache:
    def __init__(self, lengths, f=4):
        rng = np.random.default_rng(0)
        self.data = [rng.standard_normal((f, n)).astype(np.float32) for n in lengths]
        self.frames = np.array(lengths)
        self.fnames = [f"c{i}" for i in range(len(lengths))]

    def position(self, f):
        return self.fnames.index(f)

    def get(self, i, start=0, length=None):
        x = self.data[i]
        return x[:, start : x.shape[1] if length is None else start + length]


class MeanModel(torch.nn.Module):
    """logits = per-band means over time, duplicated for reversed classes: sees only what it is fed."""

    n_out = 8

    def forward(self, x, heads=None):
        m = x.mean(dim=(1, 3))  # (B, F=4)
        return {"h": torch.cat([m, m + x[:, 0, :, 0]], dim=1)}  # reversed half depends on the first frame


def test_predict_clips_arithmetic_geometric_and_tta():
    cache = FakeCache([10, 40])
    model = MeanModel()
    p = predict_clips(model, cache, cache.fnames, frames=16, hop=8, n_classes=4)
    assert p.shape == (2, 4) and ((p > 0) & (p < 1)).all()
    pg = predict_clips(model, cache, cache.fnames, frames=16, hop=8, n_classes=4, mean="geometric")
    assert (pg <= p + 1e-6).all()  # geometric mean <= arithmetic mean
    pt = predict_clips(
        model,
        cache,
        cache.fnames,
        frames=16,
        hop=8,
        n_classes=4,
        tta_counts=[9, 5, 3],
        aug_cfg=Cfg(freq_masks=2, time_masks=2, freq_width=0.5, time_width=0.5),
        seed=1,
    )
    assert not np.allclose(pt, p)  # masked passes change the mean
    pr = predict_clips(model, cache, cache.fnames, frames=16, hop=8, n_classes=4, reversal=True)
    assert not np.allclose(pr, p)


class CountingModel(MeanModel):
    """MeanModel that counts the window rows it is fed."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def forward(self, x, heads=None):
        self.rows += x.shape[0]
        return super().forward(x, heads)


def test_predict_clips_tta_pass_count_follows_tta_count_windows():
    cache = FakeCache([200, 40])  # 200 frames: windows at 0 and 8; 40: one padded window
    aug_cfg = Cfg(freq_masks=1, time_masks=1, freq_width=0.5, time_width=0.5)
    counts = [9, 5, 3, 2, 2, 1, 1]
    rows = {}
    for mode in (None, "paper", "all"):
        model = CountingModel()
        kw = {} if mode is None else {"tta_count_windows": mode}
        predict_clips(
            model,
            cache,
            cache.fnames,
            frames=192,
            hop=16,
            n_classes=4,
            tta_counts=counts,
            aug_cfg=aug_cfg,
            seed=0,
            batch_size=7,
            **kw,
        )
        rows[mode] = model.rows
    assert rows[None] == rows["paper"] == 2 * (1 + 9) + 1 * (1 + 9)
    assert rows["all"] == 2 * (1 + 5) + 1 * (1 + 9)
    with pytest.raises(ValueError, match=r"infer\.tta_count_windows"):
        predict_clips(MeanModel(), cache, cache.fnames, frames=192, hop=16, n_classes=4, tta_count_windows="x")


def test_infer_threads_tta_count_windows():
    from pipeline.infer import predict_frame

    cache = FakeCache([200])
    cfg = load_config(None, ["train.frames=192", "infer.hop=16", "infer.reversal=false", "run.progress=false"])
    assert cfg.infer.tta_count_windows == "paper" and cfg.infer.tta
    model = CountingModel()
    predict_frame(model, cfg, cache, cache.fnames, ["a", "b", "c", "d"], "cpu")
    assert model.rows == 2 * (1 + 9)
    cfg = load_config(
        None,
        [
            "train.frames=192",
            "infer.hop=16",
            "infer.reversal=false",
            "run.progress=false",
            "infer.tta_count_windows=all",
        ],
    )
    model = CountingModel()
    predict_frame(model, cfg, cache, cache.fnames, ["a", "b", "c", "d"], "cpu")
    assert model.rows == 2 * (1 + 5)


def test_channels_last_inference_matches_nchw_and_feeds_nhwc():
    from models import create_model

    seen = []
    torch.manual_seed(0)
    model = create_model("vgg8", 4, width=0.125)
    cache = FakeCache([40, 90])
    kw = dict(frames=32, hop=16, n_classes=4, reversal=True)
    p = predict_clips(model, cache, cache.fnames, **kw)
    model.backbone.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    pc = predict_clips(model, cache, cache.fnames, channels_last=True, **kw)
    assert seen and all(seen)  # every batch reached the network as NHWC (with 1 channel, also NCHW)
    conv = [p for p in model.parameters() if p.dim() == 4][-1]  # the first conv has 1 input channel
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    np.testing.assert_allclose(pc, p, atol=1e-5)
