"""The accepted values of every config key, checked when a config loads (pipeline.config.load_config).

configs/base.yaml fixes each key's type; RULES here fix its values: choices, ranges, list contents. A key of the
`warmup` section takes the rule of its `train` counterpart. CROSS holds the rules that compare keys. Choices that
live beside the code that uses them (train.mode, model.name, teacher_student.rule, ...) are read from there.

    problems(cfg)          # ["config: train.epochs = -1: must be an integer >= 1", ...]; [] when all is well
    rule_for("warmup.lr")  # the Rule of train.lr; rule.bad is a value it refuses (tests try one per key)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.utils import AMP_CHOICES

OVERLAYS = {"warmup": "train"}  # as in pipeline.config


@dataclass(frozen=True)
class Rule:
    """check(value) -> None when accepted, else what is accepted ("an integer >= 1"); bad: a refused value."""

    check: Callable[[Any], str | None]
    bad: Any


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> Rule:
    """A number (integer=True: an int) in the interval given; an open end excludes its bound."""
    what = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        what += f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        what += f" {'>' if lo_open else '>='} {lo}"

    def check(v):
        ok = _num(v) and (not integer or isinstance(v, int)) and math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        return None if ok else what

    return Rule(check, lo if lo_open else lo - 1)


def integer(lo, hi=None) -> Rule:
    return number(lo, hi, integer=True)


PROB = number(0, 1)


def choice(options, pattern: str | None = None, shown: str | None = None) -> Rule:
    """One of `options` (a tuple, or a callable returning one: read when checked), or a full match of `pattern`."""

    def check(v):
        opts = options() if callable(options) else options
        if v in opts or (pattern and isinstance(v, str) and re.fullmatch(pattern, v)):
            return None
        return "one of " + " | ".join([*opts] + ([shown] if shown else []))

    return Rule(check, "nope")


def flag() -> Rule:
    return Rule(lambda v: None if isinstance(v, bool) else "true or false", 3)


def text(what="a non-empty string", ok=lambda v: True, bad="") -> Rule:
    return Rule(lambda v: None if isinstance(v, str) and v.strip() and ok(v) else what, bad)


def nullable(rule: Rule) -> Rule:
    return Rule(lambda v: None if v is None else (r := rule.check(v)) and "null or " + r, rule.bad)


def list_of(item: Rule, what: str) -> Rule:
    return Rule(lambda v: None if isinstance(v, list) and not any(item.check(x) for x in v) else what, [item.bad])


def mapping() -> Rule:
    return Rule(lambda v: None if isinstance(v, dict) else "a mapping, e.g. {key: value}", 3)


# ----------------------------------------------------------------------------- choices read from the code
def _modes():
    from pipeline.modes import list_modes

    return tuple(list_modes())


def _models():
    from models import list_models

    return tuple(list_models())


def _model_params(name):
    from models import model_params

    return model_params(name)


def _ts(name):
    def get():
        from pipeline.modes import teacher_student

        return getattr(teacher_student, name)

    return get


def _norm_splits():
    from pipeline.data import SPLITS

    return ("none", *SPLITS)


def _tta_count_windows():
    from pipeline.predict import TTA_COUNT_WINDOWS

    return TTA_COUNT_WINDOWS


def _check_ssl(v):
    """ssl: {mode: {hyperparameter: value}}, modes and their hyperparameters as each mode declares them."""
    from pipeline.modes import MODES, list_modes

    modes = list_modes()
    if not isinstance(v, dict) or any(m not in modes or not isinstance(hp, (dict, type(None))) for m, hp in v.items()):
        return f"a mapping {{mode: {{hyperparameter: value}}}} over the modes {' | '.join(modes)}"
    for m, hp in v.items():
        unknown = sorted(set(hp or {}) - set(MODES[m].defaults))
        if unknown:
            return f"a mapping of {m}'s own hyperparameters ({', '.join(MODES[m].defaults) or 'none'}), not {unknown}"
    return None


def _check_albumentations(v):
    ok = isinstance(v, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in v)
    return None if ok else "a list of transforms, each a mapping with a 'name', e.g. [{name: GaussNoise, p: 0.3}]"


_run_name = text("a folder name (no '/', not '.' or '..')", lambda v: "/" not in v and v not in (".", ".."), "a/b")
_path = text("a non-empty path")
_weight = number(0)

RULES: dict[str, Rule] = {
    "run.name": _run_name,
    "run.seed": integer(0, 2**32 - 1),
    "run.device": choice(("auto", "cpu", "cuda"), r"cuda:\d+", "cuda:N"),
    "run.workers": integer(0),
    "run.progress": flag(),
    "data.root": _path,
    "data.labelled_fraction": number(0, 1, lo_open=True),
    "data.unlabelled_noisy": flag(),
    "data.single_label_csv": nullable(_path),
    "features.sample_rate": integer(1),
    "features.n_fft": integer(1),
    "features.hop_length": integer(1),
    "features.n_mels": integer(1),
    "features.fmin": number(0),
    "features.fmax": nullable(number(0, lo_open=True)),
    "features.trim_db": nullable(number(0, lo_open=True)),
    "features.log_floor": number(0, lo_open=True),
    "features.norm_split": choice(_norm_splits),
    "features.cache_dir": _path,
    "folds.n_splits": integer(2),
    "folds.group_by": text("auto, audio, none or a column of train_curated.csv"),
    "folds.audio.min_match": integer(2),
    "folds.audio.purity": PROB,
    "folds.audio.max_class_share": number(0, 1, lo_open=True),
    "folds.audio.foreground_db": number(0, lo_open=True),
    "model.name": choice(_models, r"timm:\S+", "timm:<name>"),
    "model.params": mapping(),
    "model.pretrained_path": nullable(_path),
    "model.time_reversal": flag(),
    "model.dropout": number(0, 1, hi_open=True),
    "model.block_dropout": number(0, 1, hi_open=True),
    "loss.bce": _weight,
    "loss.focal": _weight,
    "loss.focal_gamma": number(0),
    "loss.arcface": _weight,
    "loss.arc_s": number(0, lo_open=True),
    "loss.arc_m": number(0, round(math.pi, 4), hi_open=True),
    "loss.hinge": _weight,
    "augment.spec_augment": flag(),
    "augment.freq_masks": integer(0),
    "augment.time_masks": integer(0),
    "augment.freq_width": PROB,
    "augment.time_width": PROB,
    "augment.reversal_p": PROB,
    "augment.mixup_alpha": number(0),
    "augment.mixup_per_pair": flag(),
    "augment.albumentations": Rule(_check_albumentations, [3]),
    "train.mode": choice(_modes),
    "train.epochs": integer(1),
    "train.lr_warmup_epochs": integer(0),
    "train.batch_size": integer(1),
    "train.frames": integer(1),  # every backbone pools a side shorter than its window over its own length
    "train.lr": number(0, lo_open=True),
    "train.optimizer": choice(("nadam", "adam", "sgd")),
    "train.schedule": choice(("warmup_cosine", "cosine", "constant")),
    "train.weight_decay": number(0),
    "train.init_from": nullable(text("warmup or a checkpoint path")),
    "train.folds": list_of(integer(0), "a list of fold indices (integers >= 0); []: all folds"),
    "train.full": flag(),
    "train.noisy_labelled": flag(),
    "train.calib_fraction": number(0, 1, lo_open=True, hi_open=True),
    "train.eval_every": integer(1),
    "train.eval_hop": integer(1),
    "train.steps_per_epoch": integer(0),
    "train.amp": choice(AMP_CHOICES),
    "train.channels_last": flag(),
    "train.compile": flag(),
    "train.tensorboard": flag(),
    "train.threads": integer(0),
    "train.sync_bn": flag(),
    "teacher_student.n_curated": integer(1),
    "teacher_student.n_noisy": integer(1),
    "teacher_student.eta": PROB,
    "teacher_student.g_pass": choice(_ts("G_PASSES")),
    "teacher_student.rule": choice(_ts("RULES")),
    "teacher_student.target_precision": PROB,
    "teacher_student.topk": integer(0),
    "teacher_student.keep_low": PROB,
    "ssl": Rule(_check_ssl, {"nope": {}}),
    "infer.hop": integer(1),
    "infer.tta": flag(),
    "infer.tta_counts": list_of(integer(0), "a list of pass counts (integers >= 0)"),
    "infer.tta_count_windows": choice(_tta_count_windows),
    "infer.reversal": flag(),
    "infer.mean": choice(("arithmetic", "geometric")),
    "infer.batch_size": integer(1),
    "infer.runs": list_of(  # run names of this checkout, or export folders (a path with '/': pipeline/exports.py)
        text("a run name or an export folder", lambda v: v.strip("/") not in (".", "..")),
        "a list of run names or export folders (a path with '/', written by `make export`)",
    ),
    "ensemble.mean": choice(("arithmetic", "geometric")),
}


def _cross(cfg) -> list[tuple[str, Any, str]]:
    """Rules that compare keys: (key, value, what is accepted) for each one broken."""
    f, loss, out = cfg["features"], cfg["loss"], []
    nyquist = f["sample_rate"] / 2
    if f["fmax"] is not None and not f["fmin"] < f["fmax"] <= nyquist:
        out.append(
            (
                "features.fmax",
                f["fmax"],
                f"null or in (features.fmin, features.sample_rate / 2] = ({f['fmin']}, {nyquist}]",
            )
        )
    if f["fmax"] is None and not f["fmin"] < nyquist:
        out.append(("features.fmin", f["fmin"], f"below features.sample_rate / 2 = {nyquist}"))
    if f["n_fft"] < f["hop_length"]:
        out.append(("features.n_fft", f["n_fft"], f">= features.hop_length = {f['hop_length']}"))
    m = cfg["model"]
    accepted = _model_params(m["name"])
    unknown = sorted(set(m["params"] or {}) - set(accepted)) if accepted is not None else []
    if unknown:
        colon = any(":" in str(k) for k in unknown)  # {width:0.125} is YAML for {"width:0.125": null}
        out.append(
            (
                "model.params",
                m["params"],
                f"a mapping of {m['name']}'s parameters {accepted} (unknown: "
                f"{unknown}; model.block_dropout is a key of its own"
                f"{'; YAML needs a space after the colon' if colon else ''})",
            )
        )
    terms = ("bce", "focal", "arcface", "hinge")
    if not any(loss[t] > 0 for t in terms):
        out.append(
            (
                "(" + ", ".join(f"loss.{t}" for t in terms) + ")",
                tuple(loss[t] for t in terms),
                "weights of which at least one is > 0",
            )
        )
    return out


def rule_for(key: str) -> Rule | None:
    section, _, rest = key.partition(".")
    if section in OVERLAYS and rest:
        key = f"{OVERLAYS[section]}.{rest}"
    return RULES.get(key)


def _leaves(node: dict, prefix=""):
    for k, v in node.items():
        key = prefix + k
        if isinstance(v, dict) and rule_for(key) is None:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def problems(cfg) -> list[str]:
    """Every broken rule of a (type-checked) config, one message each: `config: <key> = <value>: must be <...>`."""
    out = []
    for key, value in _leaves({k: v for k, v in cfg.items() if k != "_meta"}):
        rule = rule_for(key)
        what = rule.check(value) if rule else None
        if what:
            out.append((key, value, what))
    if not out:
        out = _cross(cfg)
    return [f"config: {key} = {value!r}: must be {what}" for key, value, what in out]
