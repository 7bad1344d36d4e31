"""Run a bench script's main() with every stage and measurement faked, recording what it would run: each stage call
(stage, config file, overrides), each `make` command, each section it writes. Nothing trains and nothing is read
from data/ or runs/ but the files the fakes write under the current directory.

tests/bench_plans.json holds these records for the five harness scripts as they were before they moved onto
bench/harness.py (commit 2aef46a), made by `python tests/bench_capture.py --freeze` in a temporary directory;
tests/test_bench_harness.py checks that the scripts still run the same stages with the same overrides and run
names, and write the same tables.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
PLANS = Path(__file__).resolve().parent / "bench_plans.json"

from common import cfg_for as REAL_CFG_FOR  # noqa: E402  (the fakes replace common.cfg_for)

# the invocations recorded: (script, argv)
INVOCATIONS = [
    ("quality", ["--seeds", "2", "--epochs", "4", "--steps", "5", "--evals", "2", "train.threads=1"]),
    (
        "quality",
        [
            "--config",
            "real.yaml",
            "--section",
            "quality_real_x",
            "--prefix",
            "qr_",
            "--seeds",
            "2",
            "--title",
            "All the rows, 4 x 5 steps",
            "--epochs",
            "4",
            "--steps",
            "5",
            "--rows",
            "ALL",  # every row the script knows (filled in below)
            "train.threads=1",
            "train.frames=128",
        ],
    ),
    ("real_recipes", ["train.threads=1", "--recipes", "ALL", "--seeds", "42", "43", "--section", "real_x"]),
    ("real_recipes", ["--recipes", "cur,warm_sup", "--seeds", "42"]),
    ("ssl_modes", ["--seeds", "2", "--epochs", "4", "--steps", "5", "--evals", "2", "train.threads=1"]),
    (
        "ssl_modes",
        ["--config", "demo_single.yaml", "--fraction", "0.25", "--seeds", "2", "--seed0", "43", "--epochs", "3"]
        + ["--tag", "x", "--section", "ssl_x", "--modes", "fixmatch,vat,teacher_student"],
    ),
    ("ssl_modes", ["--seeds", "2", "--epochs", "3", "--no-topk", "--modes", "fixmatch,teacher_student"]),
    ("plateau", ["--seeds", "2", "--epochs", "2", "--doublings", "2", "--evals", "2", "train.threads=1"]),
    (
        "plateau",
        ["--seeds", "2", "--epochs", "3", "--doublings", "1", "--from-warmup", "--tag", "t", "--title", "x y"]
        + ["--section", "plateau_x", "--batch", "32"],
    ),
]
# pipeline.modes as it was when the plans were frozen (name -> uses_unlabelled, uses_noisy_labels, single_label_ok)
MODES = {
    "deep_co_training": (True, False, True),
    "fixmatch": (True, False, True),
    "fixmatch_mixup": (True, False, True),
    "fmuc": (True, False, True),
    "mean_teacher": (True, False, True),
    "mixmatch": (True, False, True),
    "noisy_mix": (True, True, False),
    "pseudo_label": (True, False, True),
    "remixmatch": (True, False, True),
    "supervised": (False, False, True),
    "teacher_student": (True, False, False),
    "vat": (True, False, True),
}
ALL_ROWS = {
    "quality": "cur,noisy,warm_sup,mix,mix_w,mix_boot,mix_head,mix_sel,warm_mix,noisy_oracle,mix_oracle,warm18_sup,"
    "mix_sel_24,cur_mixup1,cur_spec2,cur_bce,cur_arc0,cur_arc1,cur_norev,cur_crop4,cur_crop3,cur_crop2,cur_crop1,"
    "cur_mels128,cur_w05,cur_skip,cur_cnn14,cur_wrn,cur_wrn16,cur_wrn16_bn1,ts_separate,ts_frozen_stats,ts_joint,"
    "ts_joint_class_threshold,ts_joint_topk,ts_joint_noisy_aware",
    "real_recipes": "cur,warm_sup,cur5,mix,mix_boot,mix_head,mix_sel,ts_joint_noisy_aware",
}


def fake(*key) -> float:
    """A fake lwlrap in [0.3, 0.7), fixed by its key (the run or folder, and what is measured)."""
    return 0.3 + zlib.crc32(repr(key).encode()) % 4000 / 10000


def run_of(overrides) -> str:
    return [o for o in overrides if o.startswith("run.name=")][-1].split("=", 1)[1]


class FakeCfg:
    """What cfg_for returns under capture: its arguments, and the real config behind them for attribute reads."""

    def __init__(self, config, overrides, stage):
        self.args = (str(config), list(overrides), stage)

    def __getattr__(self, name):
        if name.startswith("__") or name == "args":
            raise AttributeError(name)
        if "_real" not in self.__dict__:
            self.__dict__["_real"] = REAL_CFG_FOR(*self.args)
        return getattr(self.__dict__["_real"], name)


class Recorder:
    def __init__(self):
        self.calls, self.sections = [], []

    def stage(self, name):
        def main(cfg):
            config, overrides, stage = cfg.args
            self.calls.append([name, Path(config).name, overrides, stage])
            if name == "train":
                return self.trained(run_of(overrides))
            if name == "infer":
                run = run_of(overrides)
                return {"oof_lwlrap": fake(run, "ens_val"), "test_lwlrap": fake(run, "ens_test")}
            return {}

        return SimpleNamespace(main=main)

    def trained(self, run) -> dict:
        fdir = Path(f"runs/{run}/train/fold_0")
        fdir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {"epoch": [0], "seconds": [10 + 100 * fake(run, "s")]}
            | {k: [fake(run, k)] for k in ("pl_precision", "pl_recall", "pl_pos", "pl_used")}
        ).to_csv(fdir / "metrics.csv", index=False)
        return {k: fake(run, k) for k in ("oof_lwlrap", "oof_accuracy", "oof_weighted_auc")}

    def make(self, args, check=True):
        """real_recipes' `make` stages: the submission's JSON and CSV, a fold's metrics."""
        overrides = [a for a in args if a.startswith("OVERRIDES=")][0].split("=", 1)[1]
        import shlex

        run = run_of(shlex.split(overrides))
        self.calls.append(["make", args])
        Path("submissions").mkdir(exist_ok=True)
        sub = {"oof_lwlrap": fake(run, "val"), "test_lwlrap": fake(run, "test"), "n_models": 3}
        Path(f"submissions/{run}.json").write_text(json.dumps(sub))
        pd.DataFrame({"fname": ["a"], "c": [fake(run, "p")]}).to_csv(f"submissions/{run}.csv", index=False)
        self.trained(run)

    def write_section(self, name, body, path=None):
        self.sections.append([name, body])


def fake_dataset(root, check_audio=False):
    return SimpleNamespace(
        root=root, test=pd.DataFrame({"fname": ["a"]}), classes=["c"], targets=lambda df: np.ones((len(df), 1))
    )


def patches(rec: Recorder) -> dict:
    """name -> fake, put in place of that name in the script's module and in harness and common, where they have it."""
    return {
        "features": rec.stage("features"),
        "warmup": rec.stage("warmup"),
        "train": rec.stage("train"),
        "infer": rec.stage("infer"),
        "subprocess": SimpleNamespace(run=rec.make),
        "cfg_for": FakeCfg,
        "write_section": rec.write_section,
        "test_lwlrap": lambda cfg, fdir, tta, reversal=True, count_windows=None: fake(str(fdir), tta, count_windows),
        "fold_lwlrap": lambda cfg, fdir: fake(str(fdir), "val"),
        "unheard_lwlrap": lambda cfg, run, fdirs: fake(run, "unheard"),
        "truth_root": lambda root: Path("/truth"),
        "load_dataset": fake_dataset,
        "recording_sd": lambda root, fnames, truth, a, b: float(np.sum(a) - np.sum(b)),
        "list_modes": lambda: list(MODES),
        "mode_class": lambda m: SimpleNamespace(
            **dict(zip(("uses_unlabelled", "uses_noisy_labels", "single_label_ok"), MODES[m]))
        ),
    }


def capture(script: str, argv: list) -> dict:
    """{"calls", "sections"} of `bench/<script>.py argv` with everything faked; run in a scratch directory."""
    module = importlib.import_module(script)
    argv = [ALL_ROWS[script] if a == "ALL" else a for a in argv]
    rec = Recorder()
    targets = [module] + [sys.modules[m] for m in ("harness", "common") if m in sys.modules]
    with contextlib.ExitStack() as stack:
        for name, value in patches(rec).items():
            for t in targets:
                if hasattr(t, name):
                    stack.enter_context(mock.patch.object(t, name, value))
        stack.enter_context(mock.patch.object(sys, "argv", [f"bench/{script}.py", *argv]))
        module.main()
    return {"calls": rec.calls, "sections": rec.sections}


def freeze():
    plans = [{"script": s, "argv": argv, **capture(s, argv)} for s, argv in INVOCATIONS]
    import infer_levers

    plans.append({"script": "infer_levers", "variants": {k: list(v) for k, v in infer_levers.VARIANTS.items()}})
    PLANS.write_text(json.dumps(plans, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--freeze"]:
    freeze()
