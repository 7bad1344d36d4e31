"""Configs: YAML files that inherit one another, `key=value` overrides, validation against the base schema.

configs/base.yaml is the schema: every key a config or an override names must exist there, and its value must have
the type of the base value (an int is accepted for a float); pipeline/schema.py then checks every value (choices,
ranges), so a bad one fails here, naming the key, the value and what is accepted. A config starts with
`inherit: <file>` (relative to its own folder) and holds only its deltas. A few keys are open dicts/lists
(`model.params`, `ssl`, `augment.albumentations`: dotted overrides reach inside them, `model.params.width=0.5`) or
nullable (see NULLABLE); the `warmup` section overlays `train` for stage 1 and so takes any `train` key.

    cfg = load_config("configs/demo.yaml", ["train.epochs=1", "run.name=x"])
    cfg.train.epochs, cfg["train"]["epochs"]      # both work
    save_config(cfg, run_dir)                       # config.yaml + its hash, beside the stage's outputs

A stage's command line is `python -m pipeline.<stage> [--config FILE] [key=value ...]` (FILE defaults to
configs/demo.yaml, as in the Makefile): `cli(stage, description, main=main)` parses it and runs main(cfg); an error
the user caused prints one line and exits with status 2 (pipeline.utils.user_errors; FATTAG_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
from pathlib import Path

import yaml

from pipeline.schema import problems
from pipeline.utils import UserError, atomic_write_text, user_errors

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE = CONFIG_DIR / "base.yaml"
DEFAULT = CONFIG_DIR / "demo.yaml"  # the command line's default config, the Makefile's too: runs offline

# Keys whose value is free-form (validated by the code that uses them).
OPEN = {"model.params", "ssl", "augment.albumentations"}
# Keys that default to null, and the type they take when set.
NULLABLE = {
    "data.single_label_csv": str,
    "features.fmax": float,
    "features.trim_db": float,
    "model.pretrained_path": str,
    "train.init_from": str,
}
# Sections whose keys overlay another section's (stage-specific deltas).
OVERLAYS = {"warmup": "train"}


class ConfigError(UserError):
    """A config file or override is wrong; the message names the key."""


class Cfg(dict):
    """A dict with attribute access, recursively: cfg.train.epochs."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __deepcopy__(self, memo):
        return Cfg({k: copy.deepcopy(v, memo) for k, v in self.items()})


def to_cfg(obj):
    if isinstance(obj, dict):
        return Cfg({k: to_cfg(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [to_cfg(v) for v in obj]
    return obj


def to_plain(obj):
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return data


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and v:
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def _load_chain(path: Path, seen=()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: inherit cycle through {[str(p) for p in seen]}")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        if path != BASE.resolve():
            base = _read_yaml(BASE)
            return _merge(base, data)
        return data
    return _merge(_load_chain(path.parent / parent, seen + (path,)), data)


def _schema_type(schema: dict, dotted: str):
    """The expected type of a dotted key, or raise naming it. Returns (type, is_open)."""
    parts = dotted.split(".")
    section = parts[0]
    if section in OVERLAYS and len(parts) == 2:
        try:
            return _schema_type(schema, f"{OVERLAYS[section]}.{parts[1]}")
        except ConfigError:
            raise ConfigError(
                f"unknown config key '{dotted}' (a {section} key must be a {OVERLAYS[section]} key)"
            ) from None
    node = schema
    for i, p in enumerate(parts):
        prefix = ".".join(parts[: i + 1])
        if prefix in OPEN:
            return None, True
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"unknown config key '{dotted}'")
        node = node[p]
    if prefix in NULLABLE:
        return NULLABLE[prefix], False
    return (dict if isinstance(node, dict) else type(node)), False


def _check_value(key: str, value, expected):
    if value is None and key in NULLABLE:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is None or isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key '{key}' expects {expected.__name__}, got {type(value).__name__} ({value!r})")


def _validate(cfg: dict, schema: dict, prefix=""):
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        expected, is_open = _schema_type(schema, key)
        if is_open:
            continue
        if expected is dict:
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' expects a section (mapping), got {v!r}")
            _validate(v, schema, key + ".")
        else:
            cfg[k] = _check_value(key, v, expected)


def parse_override(item: str):
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string
    return key.strip(), value


def _set(cfg: dict, dotted: str, value):
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


# Choice keys whose YAML spelling can read as a boolean (YAML 1.1: off / on / true / false): the boolean's meaning.
BOOL_CHOICES = {"amp": {False: "off", True: "bf16"}}  # in train and its warmup overlay; `amp: true` of old configs


def _normalise(cfg: dict):
    for section in ("train", *OVERLAYS):
        for key, meaning in BOOL_CHOICES.items():
            node = cfg.get(section) or {}
            if isinstance(node.get(key), bool):
                node[key] = meaning[node[key]]


def _check_values(cfg: dict):
    found = problems(cfg)
    if found:
        raise ConfigError("\n".join(found))


def load_config(path=None, overrides=(), stage: str | None = None) -> Cfg:
    """Resolve a config file (or base.yaml) with `key=value` overrides; validate; apply the stage's overlay.

    For stage 'warmup', the `warmup` section overlays `train`, except for train.* keys given as overrides, which win
    (so `train.epochs=1` shortens any stage). Values are checked as given (a bad warmup.* value is named so) and
    again in the stage's final config.
    """
    schema = _read_yaml(BASE)
    cfg = _load_chain(Path(path)) if path else copy.deepcopy(schema)
    explicit = []
    for item in overrides:
        key, value = parse_override(item)
        _schema_type(schema, key)  # names an unknown key
        _set(cfg, key, value)
        explicit.append(key)
    _normalise(cfg)
    _validate(cfg, schema)
    _check_values(cfg)
    if stage in OVERLAYS:
        target = OVERLAYS[stage]
        for k, v in (cfg.get(stage) or {}).items():
            if f"{target}.{k}" not in explicit:
                cfg[target][k] = copy.deepcopy(v)
        _check_values(cfg)
    cfg = to_cfg(cfg)
    cfg["_meta"] = Cfg(config_file=str(path) if path else str(BASE), overrides=list(overrides), stage=stage)
    return cfg


def config_hash(cfg, sections=None) -> str:
    """A short stable hash of the config (or of some sections), ignoring the `_meta` record."""
    plain = {k: to_plain(v) for k, v in cfg.items() if k != "_meta" and (sections is None or k in sections)}
    return hashlib.sha1(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg, folder) -> str:
    """Write the resolved config (with its hash) as folder/config.yaml; return the hash."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h = config_hash(cfg)
    body = yaml.safe_dump({k: to_plain(v) for k, v in cfg.items() if k != "_meta"}, sort_keys=False)
    meta = cfg.get("_meta", {})
    head = (
        f"# config_hash: {h}\n# from: {meta.get('config_file')}  overrides: {meta.get('overrides')}\n"
        f"# stage: {meta.get('stage')}\n"
    )
    atomic_write_text(folder / "config.yaml", head + body)
    return h


def cli(stage: str, description: str, argv=None, extra=None, main=None):
    """Parse `[--config FILE] [key=value ...]` for a stage. Without main: return (cfg, args); with main: run
    main(cfg) and return its result. Either way a user's error (a bad config, bad data, a missing earlier stage)
    prints `fattag <stage>: error: ...` and exits with status 2 (pipeline.utils.user_errors)."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline.{stage}", description=description)
    ap.add_argument(
        "--config",
        default=None,
        help="YAML config (default: configs/demo.yaml, the offline demo; base.yaml: the reference)",
    )
    if extra:
        extra(ap)
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=1 run.name=x")
    args = ap.parse_args(argv)
    with user_errors(stage):
        cfg = load_config(args.config or DEFAULT, args.overrides, stage=stage)
        return main(cfg) if main else (cfg, args)
