"""Every config key's accepted values (pipeline/schema.py): one bad value per key of base.yaml, the rules' coverage,
cross-key rules, and the repository's configs loading as they are."""

import pytest
import yaml

from pipeline.config import BASE, CONFIG_DIR, OPEN, ConfigError, load_config
from pipeline.schema import RULES, rule_for
from pipeline.utils import UserError


def leaf_keys(node=None, prefix=""):
    node = yaml.safe_load(BASE.read_text()) if node is None else node
    for k, v in node.items():
        key = prefix + k
        if isinstance(v, dict) and v and key not in OPEN:
            yield from leaf_keys(v, key + ".")
        else:
            yield key


LEAVES = list(leaf_keys())


def test_every_key_has_a_rule_and_every_rule_a_key():
    assert [k for k in LEAVES if rule_for(k) is None] == []
    assert sorted(set(RULES) - set(LEAVES)) == []


@pytest.mark.parametrize("key", LEAVES)
def test_one_bad_value_per_key(key):
    bad = rule_for(key).bad
    with pytest.raises(UserError) as e:
        load_config(None, [f"{key}={yaml.safe_dump(bad, default_flow_style=True).strip().removesuffix('...').strip()}"])
    msg = str(e.value)
    assert key in msg and repr(bad) in msg, msg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=-1", "config: train.epochs = -1: must be an integer >= 1"),
        ("run.device=gpu", "config: run.device = 'gpu': must be one of auto | cpu | cuda | cuda:N"),
        ("data.labelled_fraction=0", "must be a number in (0, 1]"),
        ("train.calib_fraction=1", "must be a number in (0, 1)"),
        ("model.dropout=1", "must be a number in [0, 1)"),
        ("features.norm_split=train", "none | curated | noisy | test"),
        ("teacher_student.rule=top", "threshold | class_threshold | topk | noisy_aware"),
        ("teacher_student.g_pass=both", "separate | frozen_stats | joint"),
        ("infer.tta_count_windows=some", "paper | all"),
        ("train.mode=fixmatc", "fixmatch"),
        ("features.fmax=20000", "features.fmax = 20000.0"),
        ("features.hop_length=2048", "features.n_fft = 1024: must be >= features.hop_length = 2048"),
        ("features.fmin=16000", "features.fmin = 16000.0: must be below"),
        ("ssl.fixmatch.tau=0.9", "fixmatch's own hyperparameters"),
        ("model.name=resnet", "timm:<name>"),
        ("run.name=../x", "run.name"),
        (
            "model.params.depth=3",
            "model.params = {'depth': 3}: must be a mapping of vgg8's parameters ['pool', 'width'] (unknown: ['depth']",
        ),
        ("model.params={width:0.5}", "YAML needs a space after the colon"),
    ],
)
def test_message_names_key_value_and_what_is_accepted(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_all_loss_weights_zero_is_refused():
    with pytest.raises(ConfigError, match=r"loss\.bce.*at least one is > 0"):
        load_config(None, ["loss.focal=0", "loss.arcface=0"])


def test_a_bad_warmup_value_is_named_as_given():
    with pytest.raises(ConfigError, match=r"warmup\.lr_warmup_epochs = -1"):
        load_config(None, ["warmup.lr_warmup_epochs=-1"], stage="warmup")


@pytest.mark.parametrize(
    "override",
    [
        "run.device=cuda:1",
        "run.device=cpu",
        "model.name=timm:resnet18",
        "model.params.width=0.5",
        "ssl.fixmatch.tau_pos=0.9",
        "features.fmax=8000",
        ("model.name=timm:resnet18", "model.params.drop_rate=0.1"),
        "train.init_from=null",
        "features.trim_db=null",
        "train.folds=[0, 2]",
    ],
)
def test_good_values_pass(override):
    load_config(None, [override] if isinstance(override, str) else list(override))


def test_dotted_override_inside_an_open_key():
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["model.params.width=0.5", "ssl.fixmatch.mu=3"])
    assert cfg.model.params == {"width": 0.5} and cfg.ssl == {"fixmatch": {"mu": 3}}


CONFIGS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("experiment/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
@pytest.mark.parametrize("stage", [None, "warmup", "train", "infer"])
def test_repository_configs_load(path, stage):
    load_config(path, stage=stage)


def test_get_device(monkeypatch):
    import torch

    from pipeline.distributed import get_device

    cfg = load_config(None, ["run.device=cpu"])
    assert get_device(cfg).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for want in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"run.device={want}: no CUDA device"):
            get_device(load_config(None, [f"run.device={want}"]))
    assert get_device(load_config(None, ["run.device=auto"])).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    assert get_device(load_config(None, ["run.device=cuda:1"])) == torch.device("cuda", 1)
    assert get_device(load_config(None, ["run.device=auto"])) == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"run.device=cuda:2: this machine has 2 \(cuda:0..cuda:1\)"):
        get_device(load_config(None, ["run.device=cuda:2"]))
