"""Report: one self-contained HTML page (images inline) with what people look at after a run.

    make report CONFIG=configs/demo.yaml           # after make train (and make infer for the test sections)
    python -m pipeline.report --config FILE [key=value ...]

Writes runs/<run.name>/report.html, readable offline and attachable as it is (no external file, script or font):
  summary       mode, model, OOF and test scores, config hash and git commit
  per-class     per-class lwlrap bars, out-of-fold (train/oof.csv) and test (submissions/<run>.csv against
                <data.root>/test_labels.csv, when both exist); accuracy per class for single-label datasets
  curves        training loss and validation metric per epoch, every fold (and the warm-up)
  pseudo-labels pseudo-label precision, recall and positives per clip per epoch, where the mode logs them
  cardinality   labels per clip: curated, noisy and test truth, and the OOF predictions above 0.5
  hardest       the out-of-fold clips the models rank worst (lowest label-ranking precision), with their log-mel
                spectrograms, true labels and the top predictions
A section whose inputs do not exist says what would produce them instead of failing. A missing train stage is an
error (exit 2) that says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import cli, config_hash
from pipeline.data import dataset, labels_to_matrix
from pipeline.folds import units_for
from pipeline.intervals import ci_text, interval
from pipeline.metrics import lwlrap, per_class_precision, single_label_scores
from pipeline.utils import UserError, atomic_write_text, get_logger, git_commit, run_dir

HARDEST = 8
SECTIONS = ("summary", "per-class", "curves", "pseudo-labels", "cardinality", "hardest")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_html(fig, alt: str) -> str:
    """The figure as an inline PNG <img> (base64 data URI), closed afterwards."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def table_html(rows) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


# --------------------------------------------------------------------------- inputs
def read_oof(train_dir: Path, ds) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    path = train_dir / "oof.csv"
    if not path.exists():
        raise UserError(f"{path}: no out-of-fold predictions; run `make train` for this run first")
    oof = pd.read_csv(path, dtype={"fname": str})
    missing = sorted(set(oof["fname"]) - set(ds.curated["fname"]))
    if missing:
        raise UserError(
            f"{path}: {len(missing)} fname(s) not in the curated set, e.g. {missing[:3]} (a run of another dataset?)"
        )
    truth = ds.curated.set_index("fname").loc[oof["fname"], "labels"]
    return oof, labels_to_matrix(truth, ds.classes), oof[ds.classes].to_numpy(np.float64)


def read_test(cfg, ds):
    """(y, p) of the run's submission against test_labels.csv, or None (with the reason) when either is absent."""
    sub_path = Path("submissions") / f"{cfg.run.name}.csv"
    labels = Path(cfg.data.root) / "test_labels.csv"
    if ds.single_label:
        return None, "single-label datasets have no test split"
    if not sub_path.exists():
        return None, f"{sub_path} does not exist: run `make infer` for the test sections"
    if not labels.exists():
        return None, f"{labels} does not exist (a competition's hidden labels): no test scores"
    from pipeline.data import read_labels_csv

    truth = read_labels_csv(labels, ds.classes, check_audio=False).set_index("fname")
    sub = pd.read_csv(sub_path, dtype={"fname": str})
    sub = sub[sub["fname"].isin(truth.index)]
    return (labels_to_matrix(truth.loc[sub["fname"], "labels"], ds.classes), sub[ds.classes].to_numpy(np.float64)), ""


def histories(cfg, trained) -> dict:
    """metrics.csv of the warm-up and of every fold finished for the run's training config, by name."""
    from pipeline.summary import finished_folds

    out = {}
    warm = run_dir(cfg, "warmup") / "metrics.csv"
    if warm.exists():
        out["warm-up"] = pd.read_csv(warm)
    for k in finished_folds(trained, run_dir(cfg, "train")):
        out[f"fold_{k}"] = pd.read_csv(run_dir(cfg, "train") / f"fold_{k}" / "metrics.csv")
    return out


# --------------------------------------------------------------------------- sections
def per_class_section(ds, y, p, test) -> str:
    plt = _plt()
    if ds.single_label:
        values = {"out-of-fold": single_label_scores(y, p)["per_class_accuracy"]}
        what = "accuracy"
    else:
        values = {"out-of-fold": lwlrap(y, p)[1]}
        if test[0] is not None:
            values["test"] = lwlrap(*test[0])[1]
        what = "lwlrap"
    n = len(ds.classes)
    fig, ax = plt.subplots(figsize=(7, 0.22 * n + 1.2))
    width = 0.8 / len(values)
    for i, (name, v) in enumerate(values.items()):
        ax.barh(np.arange(n) + i * width, np.nan_to_num(v), height=width, label=name)
    ax.set_yticks(np.arange(n) + 0.4 - width / 2, ds.classes, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel=f"per-class {what}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    text = "" if len(values) > 1 or ds.single_label else note(test[1])
    return figure_html(fig, f"per-class {what}") + text


def curves_section(hist: dict) -> str:
    if not hist:
        return note("no metrics.csv found")
    import tempfile

    from pipeline.curves import plot_curves  # the figure make train writes as curves.png

    with tempfile.TemporaryDirectory() as tmp:
        plot_curves(hist, Path(tmp) / "curves.png")
        data = base64.b64encode((Path(tmp) / "curves.png").read_bytes()).decode()
    return f'<img alt="training curves" src="data:image/png;base64,{data}">'


def pseudo_section(hist: dict) -> str:
    cols = ("pl_precision", "pl_recall", "pl_pos", "pl_used", "pl_kept")
    with_pl = {k: h for k, h in hist.items() if any(c in h for c in cols)}
    if not with_pl:
        return note(
            "this run's mode logs no pseudo-labels (teacher_student, fixmatch, fmuc, pseudo_label, "
            "mixmatch and remixmatch do)"
        )
    plt = _plt()
    present = [c for c in cols if any(c in h for h in with_pl.values())]
    fig, axes = plt.subplots(1, len(present), figsize=(3.4 * len(present), 2.8), squeeze=False)
    for ax, c in zip(axes[0], present):
        for name, h in with_pl.items():
            if c in h:
                ax.plot(h["epoch"], h[c], marker=".", label=name)
        ax.set(xlabel="epoch", title=c[3:].replace("pos", "positives per clip"))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return figure_html(fig, "pseudo-labels per epoch") + note(
        "precision and recall against the true labels where the dataset has them "
        "(train_noisy_truth.csv, or the hidden labels of clips made unlabelled)"
    )


def cardinality_section(ds, p_oof) -> str:
    plt = _plt()
    counts = {"curated": ds.curated["labels"].map(len)}
    if len(ds.split("noisy")):
        counts["noisy (given)"] = ds.split("noisy")["labels"].map(len)
    counts["OOF predictions > 0.5"] = pd.Series((p_oof > 0.5).sum(1))
    top = int(max(c.max() for c in counts.values())) if counts else 1
    fig, ax = plt.subplots(figsize=(6, 2.8))
    bins = np.arange(top + 2) - 0.5
    for name, c in counts.items():
        ax.hist(c, bins=bins, histtype="step", density=True, linewidth=1.5, label=f"{name} (mean {c.mean():.2f})")
    ax.set(xlabel="labels per clip", ylabel="share of clips")
    ax.legend(fontsize=7)
    return figure_html(fig, "label cardinality")


def hardest_section(cfg, ds, oof, y, p) -> str:
    if ds.single_label:
        score = p[np.arange(len(p)), y.argmax(1)]  # probability given to the true class
    else:
        prec = per_class_precision(y, p)
        n_true = y.sum(1)
        score = np.where(n_true > 0, prec.sum(1) / np.maximum(n_true, 1), np.inf)
    worst = np.argsort(score, kind="stable")[:HARDEST]
    try:
        from pipeline.cache import FeatureCache

        cache = FeatureCache.open(cfg, "curated")
    except FileNotFoundError as e:
        cache, why = None, str(e)
    plt = _plt()
    items = []
    for i in worst:
        fname = oof["fname"].iloc[i]
        true = [c for c, t in zip(ds.classes, y[i]) if t > 0]
        top = [f"{ds.classes[j]} {p[i, j]:.2f}" for j in np.argsort(-p[i])[:3]]
        caption = (
            f"<b>{html.escape(fname)}</b> score {score[i]:.2f}<br>true: {html.escape(', '.join(true))}"
            f"<br>predicted: {html.escape(', '.join(top))}"
        )
        if cache is not None:
            fig, ax = plt.subplots(figsize=(4, 1.8))
            ax.imshow(cache.get(fname), origin="lower", aspect="auto", cmap="magma")
            ax.set(xlabel="frame", ylabel="mel band")
            img = figure_html(fig, f"log-mel of {fname}")
        else:
            img = ""
        items.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    text = "" if cache is not None else note(f"no spectrograms: {why}")
    what = "probability of the true class" if ds.single_label else "label-ranking precision"
    return (
        note(f"the {len(worst)} out-of-fold clips with the lowest {what}")
        + text
        + '<div class="grid">'
        + "".join(items)
        + "</div>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fattag report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
section {{ margin-bottom: 2.5em; }} h2 {{ border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; }} th, td {{ padding: .2em .8em; text-align: left; border-bottom: 1px solid #eee; }}
.note {{ color: #666; font-size: .9em; }} img {{ max-width: 100%; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(22em, 1fr)); gap: 1em; }}
figure {{ margin: 0; }} figcaption {{ font-size: .85em; }}
</style></head>
<body data-sections="{n_sections}">
<h1>fattag report: {title}</h1>
{body}
<script>
// marks the page once every inline image has decoded (the headless-browser test reads these attributes)
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-images-ok", imgs.filter(function (i) {{ return i.naturalWidth > 0; }}).length);
}});
</script>
</body></html>
"""


def comparisons_html(folder: Path) -> str:
    """The run's comparisons (`make compare` with this run first: runs/<run>/compare/*.json) as tables."""
    out = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        result = json.loads(path.read_text())
        ref = result["runs"][0]
        rows = [("run", "OOF lwlrap [95%]", f"minus {ref} [95% paired]", "test lwlrap", f"minus {ref}")]
        for r in result["rows"]:
            rows.append(
                (
                    r["run"],
                    ci_text(r["oof"]),
                    ci_text(r["oof_diff"], "diff") if "oof_diff" in r else "",
                    ci_text(r["test"]) if "test" in r else "-",
                    ci_text(r["test_diff"], "diff") if "test_diff" in r else "",
                )
            )
        cells = "".join(
            "<tr>" + "".join(f"<{t}>{html.escape(str(v))}</{t}>" for v in row) + "</tr>"
            for row, t in zip(rows, ["th"] + ["td"] * (len(rows) - 1))
        )
        out.append(f"<h3>Comparison {html.escape(path.stem)}</h3><table>{cells}</table>")
    return "".join(out)


def main(cfg) -> Path:
    log = get_logger()
    ds = dataset(cfg)
    train_dir = run_dir(cfg, "train")
    oof, y, p = read_oof(train_dir, ds)
    test = read_test(cfg, ds)
    trained = cfg
    if (train_dir / "config.yaml").exists():  # describe the run as it was trained
        from pipeline.config import load_config

        trained = load_config(train_dir / "config.yaml")
    hist = histories(cfg, trained)
    rows = [
        ("run", cfg.run.name),
        ("mode", trained.train.mode),
        ("model", f"{trained.model.name} {dict(trained.model.params)}"),
        ("out-of-fold clips", len(oof)),
    ]
    if ds.single_label:
        s = single_label_scores(y, p)
        rows += [("OOF accuracy", f"{s['accuracy']:.4f}"), ("OOF weighted AUC", f"{s['weighted_auc']:.4f}")]
    else:
        rows.append(("OOF lwlrap [95% interval]", ci_text(interval(y, p, units_for(cfg, oof["fname"])))))
        rows.append(("test lwlrap [95% interval]", ci_text(interval(*test[0])) if test[0] is not None else test[1]))
    rows += [
        ("folds", ", ".join(k for k in hist if k != "warm-up") or "-"),
        ("config hash", config_hash(trained)),
        ("report written at commit", git_commit()),
    ]
    parts = {
        "summary": table_html(rows) + comparisons_html(train_dir.parent / "compare"),
        "per-class": per_class_section(ds, y, p, test),
        "curves": curves_section(hist),
        "pseudo-labels": pseudo_section(hist),
        "cardinality": cardinality_section(ds, p),
        "hardest": hardest_section(cfg, ds, oof, y, p),
    }
    titles = {
        "summary": "Summary",
        "per-class": "Per-class scores",
        "curves": "Training curves",
        "pseudo-labels": "Pseudo-labels per epoch",
        "cardinality": "Label cardinality",
        "hardest": "Clips the models get most wrong",
    }
    body = "\n".join(f'<section id="{k}"><h2>{titles[k]}</h2>{parts[k]}</section>' for k in SECTIONS)
    out = run_dir(cfg, "report").parent / "report.html"
    atomic_write_text(out, PAGE.format(title=html.escape(cfg.run.name), body=body, n_sections=len(SECTIONS)))
    log.info(f"wrote {out}")
    print(f"report: {out}")
    return out


if __name__ == "__main__":
    cli(
        "report",
        "Write runs/<run>/report.html: per-class scores, curves, pseudo-labels, cardinality, hardest clips.",
        main=main,
    )
