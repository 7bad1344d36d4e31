"""The offline bundle (pipeline/bundle.py) and prediction from it (pipeline/predict_dir.py), on the tiny demo preset:
predict_dir reproduces `make infer`'s submission, runs from a copy of the bundle in a fresh virtualenv with the
checkout out of reach, and names the file or key of every user mistake."""

import json
import logging
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import create_model
from pipeline import bundle, features, folds, infer, predict_dir, train
from pipeline import cache as feature_cache
from pipeline.config import CONFIG_DIR, load_config
from pipeline.datasets import demo as demo_data
from pipeline.model_files import read_safetensors
from pipeline.predict import plan_windows, predict_settings
from pipeline.utils import ROOT, UserError

RUN = "bun"
# a cheap chain: 2 folds of a 1/8-width vgg8 trained 2 steps from scratch; TTA and reversal on (demo.yaml's infer)
OVERRIDES = [
    f"run.name={RUN}",
    "run.progress=false",
    "run.workers=1",
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.init_from=null",
    "model.params={width: 0.125}",
    "train.batch_size=8",
    "train.frames=64",
    "folds.n_splits=2",
    "infer.batch_size=32",
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The tiny demo set, trained, inferred (submissions/bun.csv) and bundled (bundles/bun) in a module folder."""
    work = tmp_path_factory.mktemp("bundle")
    root = demo_data.build(work / "tiny", preset="tiny", workers=2, progress=False)
    ov = [f"data.root={root}", f"features.cache_dir={work / 'cache'}", *OVERRIDES]

    def cfg(stage=None):
        return load_config(CONFIG_DIR / "demo.yaml", ov, stage=stage)

    cwd = os.getcwd()
    os.chdir(work)  # stages write runs/, submissions/, bundles/ relative to the working directory
    try:
        features.main(cfg("features"))
        folds.main(cfg("folds"))
        train.main(cfg("train"))
        infer.main(cfg("infer"))
        out = bundle.main(cfg("bundle"))
    finally:
        os.chdir(cwd)
    return {
        "work": work,
        "root": root,
        "cfg": cfg,
        "overrides": ov,
        "bundle": work / out["dir"],
        "submission": work / "submissions" / f"{RUN}.csv",
    }


def predict(chain, out, *more):
    return predict_dir.main(
        ["--bundle", str(chain["bundle"]), "--audio", str(chain["root"] / "test"), "--out", str(out), "--quiet", *more]
    )


def max_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    assert list(a.columns) == list(b.columns) and list(a["fname"]) == list(b["fname"])
    return float(np.abs(a.iloc[:, 1:].to_numpy() - b.iloc[:, 1:].to_numpy()).max())


def test_bundle_holds_models_manifest_and_code_only(chain):
    b, cfg = chain["bundle"], chain["cfg"]()
    m = json.loads((b / "manifest.json").read_text())
    assert (
        m["run"] == RUN
        and m["classes"] == pd.read_csv(chain["root"] / "sample_submission.csv", nrows=0).columns[1:].tolist()
    )
    assert m["predict"] == predict_settings(cfg) and m["predict"]["channels_last"] is True
    assert m["features"] == feature_cache.feature_params(cfg)
    assert (m["normalisation"]["mean"], m["normalisation"]["std"]) == feature_cache.norm_stats(cfg)
    assert [e["fold"] for e in m["models"]] == ["fold_0", "fold_1"]
    assert sum(e["weight"] for e in m["models"]) == pytest.approx(1.0) and m["ensemble"]["mean"] == "arithmetic"
    assert m["git_commit"] and set(m["config_hash"]) == {"config", "features", "infer"}
    for e in m["models"]:  # backbone + h only: no g, no ArcFace weights; safetensors, rebuilt from the manifest
        assert e["file"].endswith(".safetensors") and e["model_config"]["heads"] == ["h"]
        tensors, header = read_safetensors(b / e["file"])
        assert any(k.startswith("heads.h.") for k in tensors)
        assert not any(k.startswith(("heads.g.", "arc.")) for k in tensors)
        assert json.loads(header["model_config"]) == e["model_config"]
        create_model(**e["model_config"]).load_state_dict(tensors)  # exactly its tensors, strictly
    files = [p.relative_to(b) for p in b.rglob("*") if p.is_file()]
    assert not [p for p in files if p.parts[0] == "weights" and p.suffix != ".safetensors"]  # nothing to unpickle
    assert {p.parts[0] for p in files} == {
        "manifest.json",
        "README.md",
        "requirements.txt",
        "config.yaml",
        "weights",
        "pipeline",
        "models",
    }
    assert not any(p.suffix in (".wav", ".f16", ".pyc") or p.name.endswith(".index.csv") for p in files)
    assert "pipeline.predict_dir" in (b / "README.md").read_text()
    assert "torch==" in (b / "requirements.txt").read_text()
    assert not list(b.parent.glob(".*"))  # no temporary folder left beside it


def test_predict_dir_reproduces_infer_submission(chain, tmp_path):
    cfg = chain["cfg"]()
    cache = feature_cache.FeatureCache.open(cfg, "test")
    s = predict_settings(cfg)
    _, _, aug = plan_windows(cache.frames, s["frames"], s["hop"], s["tta_counts"], s["tta_count_windows"])
    assert aug.any() and s["reversal"]  # TTA passes and reversal are exercised
    want = pd.read_csv(chain["submission"])
    out = tmp_path / "sub.csv"
    got = predict(chain, out, "--sample-submission", str(chain["root"] / "sample_submission.csv"), "--workers", "2")
    assert max_diff(pd.read_csv(out), want) <= 1e-6 + 1e-12 and len(got) == len(want)  # the CSVs' 6th decimal
    # without a sample submission: every wav of the folder, sorted, in the bundle's class order
    predict(chain, tmp_path / "all.csv", "--workers", "1")
    every = pd.read_csv(tmp_path / "all.csv")
    assert list(every["fname"]) == sorted(want["fname"])
    assert max_diff(every, want.set_index("fname").loc[every["fname"]].reset_index()) < 1e-5


def test_bundle_predicts_alone_in_a_fresh_venv(chain, tmp_path):
    """A copy of the bundle, a new virtualenv (its own prefix; the project's installed dependencies reached through
    a .pth file, the checkout not), cwd the bundle and PYTHONPATH the bundle only: no module comes from the
    checkout, and the submission is infer's."""
    copy = shutil.copytree(chain["bundle"], tmp_path / "bundle")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next(env_dir.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    assert deps and not any(Path(p).resolve() == ROOT for p in deps)
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    driver = tmp_path / "driver.py"  # python -m pipeline.predict_dir, then list where modules came from
    driver.write_text(
        "import json, runpy, sys\n"
        "sys.argv = ['predict_dir', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('pipeline.predict_dir', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]\n"
        "    json.dump([f for f in files if f], open('modules.json', 'w'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1")
    out = tmp_path / "sub.csv"
    run = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            str(driver),
            "--bundle",
            ".",
            "--audio",
            str(chain["root"] / "test"),
            "--sample-submission",
            str(chain["root"] / "sample_submission.csv"),
            "--out",
            str(out),
            "--workers",
            "2",
            "--quiet",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    modules = json.loads((copy / "modules.json").read_text())
    ours = [f for f in modules if "/pipeline/" in f or "/models/" in f]
    assert any(f.endswith("pipeline/predict_dir.py") for f in ours)
    assert all(Path(f).resolve().is_relative_to(copy.resolve()) for f in ours), ours
    deps = [Path(d).resolve() for d in deps]  # the .venv lives in the checkout: its packages are allowed
    assert not [
        f
        for f in modules
        if Path(f).resolve().is_relative_to(ROOT) and not any(Path(f).resolve().is_relative_to(d) for d in deps)
    ]
    assert max_diff(pd.read_csv(out), pd.read_csv(chain["submission"])) < 1e-5


def expect_user_error(capsys, args, named):
    with pytest.raises(SystemExit) as e:
        predict_dir.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "fattag predict_dir: error: " in err and named in err, err


def test_user_mistakes_name_the_file(chain, tmp_path, capsys):
    root, b = chain["root"], str(chain["bundle"])
    base = ["--audio", str(root / "test"), "--out", str(tmp_path / "x.csv"), "--quiet"]
    expect_user_error(capsys, ["--bundle", str(tmp_path / "nope"), *base], str(tmp_path / "nope" / "manifest.json"))
    sample = pd.read_csv(root / "sample_submission.csv")
    extra = pd.concat([sample, sample.iloc[:1].assign(fname="not_there.wav")])
    extra.to_csv(tmp_path / "missing.csv", index=False)
    expect_user_error(
        capsys, ["--bundle", b, *base, "--sample-submission", str(tmp_path / "missing.csv")], "not_there.wav"
    )
    sample.rename(columns={sample.columns[3]: "Kazoo"}).to_csv(tmp_path / "classes.csv", index=False)
    expect_user_error(capsys, ["--bundle", b, *base, "--sample-submission", str(tmp_path / "classes.csv")], "Kazoo")
    expect_user_error(capsys, ["--bundle", b, *base, "--device", "gpu"], "--device 'gpu'")
    copy = shutil.copytree(chain["bundle"], tmp_path / "b2")
    weights = next(copy.glob("weights/*/fold_0.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    expect_user_error(capsys, ["--bundle", str(copy), *base], str(weights))
    assert not (tmp_path / "x.csv").exists()


def test_audio_csv_lists_the_clips(chain, tmp_path):
    """--audio CSV: fname + path (relative to the CSV's folder); the rows in the CSV's order."""
    sample = pd.read_csv(chain["root"] / "sample_submission.csv")
    picked = sample["fname"].iloc[[3, 0, 5]].tolist()
    pd.DataFrame({"fname": picked, "path": [f"test/{f}" for f in picked]}).to_csv(
        chain["root"] / "some.csv", index=False
    )
    got = predict_dir.main(
        [
            "--bundle",
            str(chain["bundle"]),
            "--audio",
            str(chain["root"] / "some.csv"),
            "--out",
            str(tmp_path / "some.csv"),
            "--quiet",
            "--workers",
            "1",
        ]
    )
    assert list(got["fname"]) == picked and got.shape[1] == 1 + len(sample.columns) - 1


def test_wheels_failure_is_one_clear_error_and_keeps_the_old_bundle(chain, tmp_path, monkeypatch):
    monkeypatch.chdir(chain["work"])
    before = (chain["bundle"] / "manifest.json").read_text()
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    with pytest.raises(UserError, match=r"--wheels: pip download of requirements.txt failed"):
        bundle.main(chain["cfg"]("bundle"), wheels=True, pip_args=["--no-index", "--find-links", str(empty)])
    assert (chain["bundle"] / "manifest.json").read_text() == before
    assert not list(chain["bundle"].parent.glob(".*"))


def test_a_model_newer_than_its_predictions_is_named(chain, tmp_path, monkeypatch, caplog):
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(chain["work"], work, symlinks=True)
    monkeypatch.chdir(work)
    best = work / "runs" / RUN / "train" / "fold_1" / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))  # retrained after make infer
    with caplog.at_level(logging.WARNING):
        bundle.main(chain["cfg"]("bundle"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "fold_1/best.pt is newer than its `make infer` predictions" in warned[0]


def test_runs_that_differ_only_in_their_seed_make_one_bundle(chain, tmp_path, monkeypatch):
    """A seed ensemble (infer.runs): each model keeps its own run's TTA seed, so predict_dir reproduces the
    ensembled submission."""
    work = tmp_path / "copy"
    shutil.copytree(chain["work"], work, symlinks=True)
    monkeypatch.chdir(work)

    def cfg(stage):
        return load_config(
            CONFIG_DIR / "demo.yaml",
            [*chain["overrides"], "run.name=bun43", "run.seed=43", f"infer.runs=[{RUN}]"],
            stage=stage,
        )

    train.main(cfg("train"))
    infer.main(cfg("infer"))  # ends with the ensemble of bun43 and bun
    out = bundle.main(cfg("bundle"))
    m = json.loads((work / out["dir"] / "manifest.json").read_text())
    assert sorted((e["run"], e["seed"]) for e in m["models"]) == [(RUN, 42), (RUN, 42), ("bun43", 43), ("bun43", 43)]
    got = predict_dir.main(
        [
            "--bundle",
            str(work / out["dir"]),
            "--audio",
            str(chain["root"] / "test"),
            "--out",
            str(tmp_path / "sub.csv"),
            "--quiet",
            "--sample-submission",
            str(chain["root"] / "sample_submission.csv"),
        ]
    )
    want = pd.read_csv(work / "submissions" / "bun43.csv")
    assert len(got) == len(want) and max_diff(pd.read_csv(tmp_path / "sub.csv"), want) < 1e-5


def test_an_export_joins_another_runs_ensemble_as_its_run_would(chain, tmp_path, monkeypatch):
    """`make export` (bundle --export): the run's models as .safetensors and a manifest, no code. Named as a folder
    in a teammate's infer.runs, it gives the ensemble that naming the run itself gives, and their bundle carries it
    (predict_dir reproduces that submission)."""
    work = tmp_path / "copy"
    shutil.copytree(chain["work"], work, symlinks=True)
    monkeypatch.chdir(work)
    exp = work / bundle.main(chain["cfg"]("bundle"), export=True)["dir"]
    m = json.loads((exp / "manifest.json").read_text())
    assert exp.parent.name == "exports" and m["kind"] == "export" and not (exp / "pipeline").exists()
    assert [e["fold"] for e in m["models"]] == ["fold_0", "fold_1"] and all(
        e["file"].endswith(".safetensors") for e in m["models"]
    )
    shared = shutil.copytree(exp, tmp_path / "from_a_teammate" / RUN)  # handed over, out of the run's reach

    def cfg(stage, runs):
        ov = [*chain["overrides"], "run.name=bun43", "run.seed=43", f"infer.runs=[{runs}]"]
        return load_config(CONFIG_DIR / "demo.yaml", ov, stage=stage)

    train.main(cfg("train", RUN))
    infer.main(cfg("infer", RUN))  # the teammate's run by its name, in this checkout
    by_name = pd.read_csv(work / "submissions" / "bun43.csv")
    infer.main(cfg("infer", shared))  # the same models from the export folder
    by_export = pd.read_csv(work / "submissions" / "bun43.csv")
    assert list(Path(f"runs/bun43/infer/exports/{RUN}").glob("fold_*/test.csv"))
    assert max_diff(by_export, by_name) == 0.0
    out = work / bundle.main(cfg("bundle", shared))["dir"]
    kinds = json.loads((out / "manifest.json").read_text())["models"]
    assert sorted(e["run"] for e in kinds) == [RUN, RUN, "bun43", "bun43"]
    assert all((out / e["file"]).suffix == ".safetensors" for e in kinds)
    args = ["--audio", str(chain["root"] / "test"), "--out", str(tmp_path / "s.csv"), "--quiet"]
    predict_dir.main(["--bundle", str(out), *args, "--sample-submission", str(chain["root"] / "sample_submission.csv")])
    assert max_diff(pd.read_csv(tmp_path / "s.csv"), by_export) <= 1e-6 + 1e-12
    other = json.loads((shared / "manifest.json").read_text())
    other["features"]["n_mels"] += 1
    (shared / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match=rf"infer.runs: {shared}: .*other log-mels.*features.n_mels"):
        infer.main(cfg("infer", shared))
