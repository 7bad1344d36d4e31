"""Bundle: everything a submission needs, in one folder that predicts offline (a Kaggle notebook, another machine).

    make bundle CONFIG=configs/demo.yaml [BUNDLE_FLAGS="--wheels"]
    python -m pipeline.bundle --config FILE [--wheels [--pip-args "..."]] [key=value ...]

Writes bundles/<run.name>/ (built in a temporary folder, then renamed into place):
    manifest.json          what prediction needs: classes in order, feature parameters (features.*) and the
                           normalisation statistics of the feature cache, the inference settings
                           (pipeline.predict.predict_settings: window length train.frames, infer.hop, batch size, TTA
                           table and window count, reversal, window mean, TTA's SpecAugment keys and seed, train.amp,
                           train.channels_last), the ensemble's mean and one weight per model, config hashes, the
                           git commit, and each model file's sha256 and TTA seed (its run's run.seed: runs that
                           differ only in their seed make one bundle)
    weights/<run>/fold_<k>.safetensors   every inference model (backbone + head h; no g, no ArcFace weights:
                           infer.inference_model) of this run and of infer.runs, from runs/<run>/train/fold_*/best.pt,
                           as `make infer` uses them; the manifest gives each one's model_config (what rebuilds it),
                           so prediction from a bundle unpickles nothing
    pipeline/ models/      a copy of the project's code (no data, no caches, no runs)
    requirements.txt       the pinned requirements prediction imports
    config.yaml            the resolved config it was built from
    README.md              how to predict, with the notebook cell
    wheels/                (--wheels) those requirements' wheels, for `pip install --no-index --find-links wheels`

Then `python -m pipeline.predict_dir --bundle bundles/<run> --audio DIR --out submission.csv` (run from the bundle
folder, or anywhere with the bundle on PYTHONPATH) predicts a folder of clips from the bundle alone.

The export folders in infer.runs (pipeline/exports.py) are bundled too: their .safetensors files copied in as they
are, under weights/exports/<name>/, their settings checked against this run's.

    make export CONFIG=configs/demo.yaml          # python -m pipeline.bundle --export --config FILE

writes exports/<run.name>/: this run's fold models and manifest.json (its `kind`: export), config.yaml and a
README, no code: the form in which a teammate's run names them in infer.runs (`infer.runs=[exports/<run>]`).
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.cache import feature_params, norm_stats
from pipeline.config import cli, config_hash, load_config, save_config
from pipeline.data import dataset
from pipeline.exports import EXPORTS, is_export
from pipeline.infer import fold_dirs, inference_model, predicted_from
from pipeline.model_files import SAFETENSORS, write_safetensors
from pipeline.predict import predict_settings
from pipeline.predict_dir import FORMAT, MANIFEST, load_bundle, sha256
from pipeline.utils import (
    ROOT,
    UserError,
    atomic_write_json,
    atomic_write_text,
    disk_full,
    get_logger,
    git_commit,
    is_disk_full,
    run_dir,
    user_errors,
)

BUNDLES = Path("bundles")
CODE = ("pipeline", "models")
# The pinned requirements that prediction imports (torchvision and timm only for timm:<name> models).
PREDICT_REQUIREMENTS = (
    "torch",
    "numpy",
    "scipy",
    "librosa",
    "soxr",
    "soundfile",
    "scikit-learn",
    "pandas",
    "tqdm",
    "pyyaml",
    "safetensors",
)
TIMM_REQUIREMENTS = ("torchvision", "timm")


def requirements(timm: bool) -> list[str]:
    """The pinned lines of requirements.txt that prediction needs."""
    wanted = PREDICT_REQUIREMENTS + (TIMM_REQUIREMENTS if timm else ())
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    return [ln for ln in lines if ln and ln.split("==")[0].strip().lower() in wanted]


def run_config(cfg, run: str):
    """The config `make infer` ran with for `run` (this config for this run)."""
    if run == cfg.run.name:
        return cfg
    path = Path("runs") / run / "infer" / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no inference config for run {run} (infer.runs); run `make infer` for it")
    return load_config(path)


def shared_settings(cfg) -> dict:
    """What every model of a bundle must share, flat: feature parameters, normalisation, inference settings."""
    flat = {f"features.{k}": v for k, v in feature_params(cfg).items()}
    flat.update({f"predict.{k}": v for k, v in predict_settings(cfg).items() if k != "seed"})  # seed: per model
    flat["normalisation"] = norm_stats(cfg)
    return flat


def check_compatible(cfg, theirs: dict, run: str):
    """Name the settings where run `run` (of infer.runs; its shared_settings, or an export's exported_settings)
    differs from this one; a bundle has one of each."""
    mine = shared_settings(cfg)
    differ = [k for k in mine if mine[k] != theirs[k]]
    if differ:
        raise UserError(
            f"infer.runs: run {run} differs from run {cfg.run.name} in {differ}; a bundle holds models "
            f"that share one feature and inference setting"
        )


def export_models(cfg, runs, out: Path, classes, log) -> list[dict]:
    """Export every fold model of `runs` into out/weights/<run>/<fold>.safetensors; the manifest's model entries."""
    entries = []
    for run in runs:
        rcfg = run_config(cfg, run)
        for fdir in fold_dirs(rcfg):
            odir = Path("runs") / run / "infer" / fdir.name
            if (odir / "done.json").exists() and not predicted_from(odir, fdir / "best.pt"):
                log.warning(
                    f"{fdir / 'best.pt'} is newer than its `make infer` predictions: the bundle holds the "
                    f"new model, submissions/{run}.csv the old one (run `make infer` to refresh it)"
                )
            rel = Path("weights") / run / f"{fdir.name}{SAFETENSORS}"
            entries.append({**write_model(fdir / "best.pt", out / rel, classes, cfg), "file": str(rel), "run": run})
            entries[-1].update(fold=fdir.name, seed=int(rcfg.run.seed))
            log.info(f"bundled {fdir / 'best.pt'} as {rel}")
    return entries


def write_model(best: Path, path: Path, classes, cfg) -> dict:
    """A fold's inference model (backbone + head h: infer.inference_model) as a .safetensors file whose header
    also holds its model_config and classes (JSON); its manifest entry: source, model name, model_config (what
    create_model rebuilds it from), sha256, the config hash of its training."""
    small, ck = inference_model(best)
    if list(ck["classes"]) != list(classes):
        raise UserError(f"{best}: its classes differ from {cfg.data.root}'s sample_submission.csv")
    config = json.loads(json.dumps(small.config))  # JSON's forms (lists), as the manifest gives it back
    header = {"fattag": "inference model", "model_config": json.dumps(config), "classes": json.dumps(list(classes))}
    write_safetensors(small.state_dict(), path, header)
    return {
        "source": str(best),
        "model": config["name"],
        "model_config": config,
        "sha256": sha256(path),
        "train_config_hash": config_hash(ck["cfg"]),
    }


def download_wheels(reqs: Path, dest: Path, pip_args=(), log=None):
    """pip download the requirements' wheels (and their dependencies) into dest; a failure is a UserError."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-r",
        str(reqs),
        "-d",
        str(dest),
        *pip_args,
    ]
    if log:
        log.info("downloading wheels: " + shlex.join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise UserError(f"--wheels: cannot run pip ({e})") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        tail = " | ".join([ln for ln in lines if ln.startswith("ERROR")][-2:] or lines[-3:])
        raise UserError(
            f"--wheels: pip download of {reqs.name} failed (exit {done.returncode}; the bundle was neither "
            f"written nor changed): {tail}"
        )


def readme(manifest: dict, name: str) -> str:
    models = "\n".join(
        f"- `{m['file']}`: {m['model']}, weight {m['weight']:.4g}, from `{m['source']}`" for m in manifest["models"]
    )
    return f"""# fattag bundle `{name}`

{len(manifest["models"])} model(s) of run `{manifest["run"]}` ({len(manifest["classes"])} classes), code at git commit
`{manifest["git_commit"]}`, built {manifest["created"]}. `manifest.json` holds the feature parameters, the
normalisation statistics, the inference and ensemble settings and each model file's sha256.

{models}

## Predict a folder of clips (offline)

From this folder (its `pipeline/` and `models/` are the code; nothing else of the project is needed):

    python -m pipeline.predict_dir --bundle . --audio /path/to/test --out submission.csv \\
        --sample-submission /path/to/sample_submission.csv

Without `--sample-submission`, every .wav of the folder is predicted, sorted by name, with the bundle's classes.
`--workers N` feature processes (default: all cores), `--device auto|cpu|cuda|cuda:N`, `--threads N`.
Requirements: `requirements.txt` (pinned); with a `wheels/` folder, install them offline first:

    pip install --no-index --find-links wheels -r requirements.txt

## Notebook cell (Kaggle, internet off; this folder attached as a dataset)

```python
import subprocess, sys
B = "/kaggle/input/{name}"                                  # this bundle
# only when the notebook lacks a requirement and the bundle has wheels/:
# subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", f"{{B}}/wheels",
#                 "-r", f"{{B}}/requirements.txt"], check=True)
subprocess.run([sys.executable, "-m", "pipeline.predict_dir", "--bundle", B,
                "--audio", "/kaggle/input/freesound-audio-tagging-2019/test",
                "--sample-submission", "/kaggle/input/freesound-audio-tagging-2019/sample_submission.csv",
                "--out", "/kaggle/working/submission.csv"], cwd=B, check=True)
```
"""


def place(tmp: Path, final: Path):
    """Rename the finished tmp folder to final, replacing an older bundle there (removed after the swap)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(cfg, wheels: bool = False, pip_args=(), export: bool = False) -> dict:
    """Write bundles/<run.name>/ (see the module docstring), or with `export` exports/<run.name>/: this run's fold
    models and the manifest, no code (pipeline/exports.py); returns {"dir": Path, "manifest": dict}."""
    log = get_logger(folder=run_dir(cfg, "bundle"))
    save_config(cfg, run_dir(cfg, "bundle"))
    ds = dataset(cfg)
    if ds.single_label:
        raise ValueError(
            "data.single_label_csv is set: single-label datasets have no test split and no `make infer`; "
            "there is nothing to bundle for a submission"
        )
    others = [] if export else [r for r in cfg.infer.runs if r != cfg.run.name]
    runs, exported = [cfg.run.name] + [r for r in others if not is_export(r)], [r for r in others if is_export(r)]
    for run in runs[1:]:
        check_compatible(cfg, shared_settings(run_config(cfg, run)), run)
    for entry in exported:
        check_compatible(cfg, exported_settings(entry), entry)
    home = EXPORTS if export else BUNDLES
    home.mkdir(parents=True, exist_ok=True)
    final = home / cfg.run.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.run.name}.tmp-", dir=home))
    try:
        models = export_models(cfg, runs, tmp, ds.classes, log) + copy_exported(exported, tmp, log)
        for m in models:
            m["weight"] = 1.0 / len(models)  # every fold of every run alike, as pipeline.ensemble averages them
        manifest = write_manifest(cfg, tmp, ds.classes, models, runs + exported, code=not export)
        if wheels:
            download_wheels(tmp / "requirements.txt", tmp / "wheels", pip_args, log)
        place(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):  # the bundle's copies (copytree) outside atomic_path: one line naming the bundle
            raise disk_full(final, cause=e) from e
        raise
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    log.info(f"wrote {final}: {len(models)} model(s), {size / 1e6:.1f} MB")
    return {"dir": final, "manifest": manifest}


def write_manifest(cfg, folder: Path, classes, models: list, runs: list, code: bool = True) -> dict:
    """manifest.json, config.yaml and README.md in `folder`; with `code`, also the copy of pipeline/ and models/
    and requirements.txt a bundle predicts with. Returns the manifest."""
    import torch

    reqs = requirements(any(m["model"].startswith("timm:") for m in models))
    if code:
        for pkg in CODE:
            shutil.copytree(ROOT / pkg, folder / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        atomic_write_text(folder / "requirements.txt", "\n".join(reqs) + "\n")
    save_config(cfg, folder)
    mean, std = norm_stats(cfg)
    manifest = {
        "format": FORMAT,
        "kind": "bundle" if code else "export",
        "run": cfg.run.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git_commit": git_commit(),
        "config_hash": {
            "config": config_hash(cfg),
            "features": config_hash(cfg, ("features",)),
            "infer": config_hash(cfg, ("infer", "augment")),
        },
        "classes": list(classes),
        "features": feature_params(cfg),
        "normalisation": {"split": cfg.features.norm_split, "mean": mean, "std": std},
        "predict": predict_settings(cfg),
        "ensemble": {"mean": cfg.ensemble.mean, "runs": runs},
        "models": models,
        "requirements": reqs,
        "built_with": {"python": platform.python_version(), "torch": torch.__version__},
    }
    atomic_write_json(folder / MANIFEST, manifest)
    atomic_write_text(folder / "README.md", readme(manifest, cfg.run.name) if code else export_readme(manifest))
    return manifest


def exported_settings(entry: str) -> dict:
    """An export folder's (infer.runs) feature parameters, normalisation and inference settings, as shared_settings
    gives a config's."""
    m = load_bundle(entry)
    flat = {f"features.{k}": v for k, v in m["features"].items()}
    flat.update({f"predict.{k}": v for k, v in m["predict"].items() if k != "seed"})
    flat["normalisation"] = (m["normalisation"]["mean"], m["normalisation"]["std"])
    return flat


def copy_exported(entries: list, out: Path, log) -> list[dict]:
    """The models of export folders (infer.runs) copied into out/weights/exports/<name>/, as they are (each checked
    against its manifest's sha256); their manifest entries, pointing at the copies."""
    found = []
    for entry in entries:
        m = load_bundle(entry)
        for e in m["models"]:
            src = Path(entry) / e["file"]
            if not src.is_file() or sha256(src) != e["sha256"]:
                raise UserError(f"{src}: missing, or not the file {Path(entry) / MANIFEST} records (its sha256)")
            rel = Path("weights") / "exports" / Path(entry).name / e["run"] / Path(e["file"]).name
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / rel)
            found.append({**e, "file": str(rel), "source": str(src)})
            log.info(f"bundled {src} as {rel}")
    return found


def export_readme(manifest: dict) -> str:
    run = manifest["run"]
    return f"""# fattag export `{run}`

{len(manifest["models"])} fold model(s) of run `{run}` as `.safetensors` files (loading them runs no code), and
`manifest.json`: what builds each one (`model_config`), the classes, feature parameters, normalisation and
inference settings. To average them into your own run's ensemble, put this folder where your run can read it and
name it in `infer.runs` as a path (with a `/`):

    make infer bundle OVERRIDES="infer.runs=[exports/{run}]"

`make infer` predicts your test clips with these models and their settings, `make ensemble` averages them with
your folds, `make bundle` carries them. `train.init_from` and `model.pretrained_path` also take a `.safetensors`
file from here.
"""


def add_args(ap):
    ap.add_argument(
        "--export",
        action="store_true",
        help="write exports/<run.name>/ instead: the run's fold models (.safetensors) and manifest.json, no code; "
        "another run names the folder in infer.runs (`make export`)",
    )
    ap.add_argument(
        "--wheels",
        action="store_true",
        help="also pip download the requirements' wheels into <bundle>/wheels (needs PyPI)",
    )
    ap.add_argument(
        "--pip-args",
        default="",
        help='more `pip download` arguments for --wheels, e.g. "--platform manylinux2014_x86_64 '
        '--python-version 3.10" for a notebook with another Python',
    )


if __name__ == "__main__":
    cfg, args = cli(
        "bundle", "Write bundles/<run.name>/: the run's inference models, manifest and code.", extra=add_args
    )
    with user_errors("bundle"):
        main(cfg, wheels=args.wheels, pip_args=shlex.split(args.pip_args), export=args.export)
