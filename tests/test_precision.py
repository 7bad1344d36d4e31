"""train.amp (bf16 | fp16 | off): the autocast choice per device, fp16's gradient scaler, and its state in
checkpoints (checked on the CPU with a CPU scaler standing in for the CUDA one)."""

import pytest
import torch

import pipeline.engine.fit_run as fit_run  # set_up_fit makes the scaler
from pipeline.config import load_config
from pipeline.engine import build_model, fit, load_checkpoint
from pipeline.utils import UserError, amp_dtype, make_scaler, save_torch


def test_amp_dtype_per_choice_and_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype("bf16", cuda) == torch.bfloat16 and amp_dtype("fp16", cuda) == torch.float16
    assert amp_dtype("off", cuda) is None
    assert all(amp_dtype(c, cpu) is None for c in ("bf16", "fp16", "off"))  # float32 on the CPU
    with pytest.raises(UserError, match="train.amp"):
        amp_dtype("half", cuda)


def test_scaler_only_for_fp16_on_cuda():
    assert not make_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not make_scaler("bf16", torch.device("cuda")).is_enabled()


def test_config_choice():
    assert load_config(None).train.amp == "bf16"
    assert load_config(None, ["train.amp=off"]).train.amp == "off"  # YAML reads off as false
    assert load_config(None, ["train.amp=true"]).train.amp == "bf16"  # the boolean of older configs
    with pytest.raises(ValueError, match="train.amp"):
        load_config(None, ["train.amp=half"])


def test_scaler_state_saved_and_restored_on_resume(tmp_path, monkeypatch, fake_clips):
    made = []

    def cpu_scaler(choice, device):  # stands in for the CUDA fp16 scaler
        made.append(torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=10_000))
        return made[-1]

    monkeypatch.setattr(fit_run, "make_scaler", cpu_scaler)
    cfg = load_config(
        None,
        [
            "train.amp=fp16",
            "model.params={width: 0.125}",
            "train.epochs=2",
            "train.batch_size=4",
            "train.steps_per_epoch=1",
            "train.frames=32",
            "train.eval_hop=16",
            "run.progress=false",
            "train.lr_warmup_epochs=0",
            "train.mode=supervised",
        ],
    )
    clips = fake_clips([["a"], ["b"]] * 4, ["a", "b"])
    fit(cfg, tmp_path, build_model(cfg, 2, seed=0), "supervised", ["a", "b"], clips)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["scaler"]["scale"] == 1024.0 and made[0].is_enabled()
    # an interrupted run: back to epoch 1 with another scale in last.pt; the resume must continue from it
    ck["epoch"], ck["history"], ck["scaler"]["scale"] = 1, ck["history"][:1], 512.0
    save_torch(ck, tmp_path / "last.pt")  # as the run writes it (with its checksum)
    (tmp_path / "done.json").unlink()
    fit(cfg, tmp_path, build_model(cfg, 2, seed=0), "supervised", ["a", "b"], clips)
    assert made[-1].get_scale() == 512.0 and load_checkpoint(tmp_path / "last.pt")["scaler"]["scale"] == 512.0
