"""Which config decides a training: train_key, the key last.pt, best.pt and done.json are written for (the train
sections, less the choice of folds and the performance knobs), and changed_keys, the dotted keys two configs differ
in (what a fit started again for another config logs).

    key = train_key(cfg)                 # "<hash>-s<seed>"
    changed_keys(old_cfg, cfg)           # ["train.lr", "loss.arcface"]
"""

from __future__ import annotations

from pipeline.config import config_hash, to_plain

# Sections that decide what a training stage computes (progress bars, workers, inference do not).
TRAIN_SECTIONS = ("data", "features", "folds", "model", "loss", "augment", "train", "teacher_student", "ssl")


# train.* keys that change how fast a fold trains or how it is looked at, not what it learns: a run resumes
# across a change of them.
PERFORMANCE_KEYS = ("threads", "amp", "channels_last", "compile", "eval_every", "tensorboard")


# train.* keys of how a run is spread over processes (pipeline/distributed.py; the number of processes is no config
# key either): a run resumes across a change of them.
PARALLEL_KEYS = ("sync_bn",)


# What the warm-up (stage 1: supervised on the noisy set, every curated clip for validation) never reads: a change
# of them leaves a finished warm-up valid.
WARMUP_UNUSED = {
    "sections": ("folds", "teacher_student", "ssl"),
    "train": ("mode", "init_from", "calib_fraction", "noisy_labelled"),
    "data": ("labelled_fraction", "unlabelled_noisy"),
}


def _key_sections(cfg) -> dict:
    """The train sections as plain dicts, less the choice of folds and the performance knobs; for the warm-up's
    config (its `_meta.stage`), less what the warm-up does not read (WARMUP_UNUSED)."""
    warmup = ((cfg.get("_meta") or {}).get("stage") == "warmup") if hasattr(cfg, "get") else False
    plain = {
        k: to_plain(cfg[k]) for k in TRAIN_SECTIONS if k in cfg and not (warmup and k in WARMUP_UNUSED["sections"])
    }
    for k in ("folds", "full", *PERFORMANCE_KEYS, *PARALLEL_KEYS):
        plain.get("train", {}).pop(k, None)
    if warmup:
        for section in ("train", "data"):
            for k in WARMUP_UNUSED[section]:
                plain.get(section, {}).pop(k, None)
    elif plain.get("train", {}).get("init_from") == "warmup" and "warmup" in cfg:
        plain["warmup"] = to_plain(cfg["warmup"])  # folds that start from the warm-up change with it
    return plain


def train_key(cfg) -> str:
    """What decides a fold's training: the train sections, less the choice of which folds to run and the
    performance knobs (PERFORMANCE_KEYS)."""
    return config_hash(_key_sections(cfg)) + f"-s{cfg.run.seed}"


def changed_keys(old_cfg, cfg, limit: int = 12) -> list[str]:
    """Dotted keys of the train sections whose values differ between two configs (plain dicts or Cfg)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict) and v and k not in ("params", "ssl"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(_key_sections(old_cfg or {})), flat(_key_sections(cfg))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return diff[:limit] + ([f"... {len(diff) - limit} more"] if len(diff) > limit else [])
