import pytest
import yaml

from pipeline.config import BASE, CONFIG_DIR, ConfigError, config_hash, load_config, save_config


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_and_demo_load():
    base = load_config()
    demo = load_config(CONFIG_DIR / "demo.yaml")
    assert base.features.sample_rate == 32000 and base.features.hop_length == 500
    assert demo.data.root == "data/demo" and demo.model.params == {"width": 0.25}
    assert demo.features.sample_rate == 32000  # inherited


def test_inherit_chain_holds_only_deltas(tmp_path):
    a = write(tmp_path / "a.yaml", {"inherit": "b.yaml", "train": {"epochs": 3}})
    write(tmp_path / "b.yaml", {"train": {"epochs": 7, "lr": 0.1}})
    cfg = load_config(a)
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.1 and cfg.train.batch_size == 64


def test_overrides_parse_types():
    cfg = load_config(
        None,
        [
            "train.epochs=2",
            "train.lr=1e-3",
            "model.params={width: 0.5}",
            "train.folds=[0,1]",
            "model.pretrained_path=/x/y.pt",
            "run.name=x",
        ],
    )
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.001 and cfg.model.params == {"width": 0.5}
    assert cfg.train.folds == [0, 1] and cfg.model.pretrained_path == "/x/y.pt" and cfg.run.name == "x"


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=2", "train.epoch"),
        ("nope.x=1", "nope.x"),
        ("train.epochs=abc", "train.epochs"),
        ("train.lr=fast", "train.lr"),
        ("run.progress=3", "run.progress"),
        ("train.epochs=true", "train.epochs"),
        ("warmup.epochz=1", "warmup.epochz"),
    ],
)
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_named(tmp_path):
    p = write(tmp_path / "c.yaml", {"inherit": str(BASE), "features": {"n_melz": 64}})
    with pytest.raises(ConfigError, match=r"features\.n_melz"):
        load_config(p)


def test_warmup_overlay_and_explicit_override_wins():
    cfg = load_config(None, [], stage="warmup")
    assert cfg.train.epochs == 100 and cfg.train.lr_warmup_epochs == 10
    cfg = load_config(None, ["train.epochs=1"], stage="warmup")
    assert cfg.train.epochs == 1
    assert load_config(None, []).train.epochs == 300


def test_hash_and_save(tmp_path):
    a, b = load_config(), load_config(None, ["train.epochs=1"])
    assert config_hash(a) != config_hash(b) and config_hash(a) == config_hash(load_config())
    h = save_config(b, tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert h in text and "epochs: 1" in text
    assert yaml.safe_load(text)["train"]["epochs"] == 1
