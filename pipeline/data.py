"""The data layer: read and validate a dataset in the FSDKaggle2019 layout.

    root/
      sample_submission.csv      fname + one column per class; its header fixes the class list and order
      train_curated.csv          fname,labels   (labels: one comma-joined field, quoted when it holds commas)
      train_noisy.csv            fname,labels   (optional for other datasets)
      train_noisy_truth.csv      fname,labels   (optional: the noisy clips' true labels, e.g. the demo set)
      test_labels.csv            fname,labels   (optional: lets the pipeline score its own test predictions)
      train_curated/ train_noisy/ test/   the wavs

    ds = load_dataset("data/demo")           # validates everything before any long work
    ds.classes, ds.curated (DataFrame fname, labels: list[str]), ds.targets(ds.curated) -> (N, C) float32

Single-label datasets (ESC-10, UrbanSound8K, Speech Commands, ...) are read instead from one CSV under the root,
named by data.single_label_csv:

    fname,label[,fold]           fname: the audio file's path relative to root (e.g. audio/fold1/7061-6-0-0.wav)
                                 label: one class name, or empty for an unlabelled clip (semi-supervised modes)
                                 fold:  optional predefined fold (an integer) of each labelled clip, honoured by
                                        `make folds` (e.g. UrbanSound8K's 10 folds)

    ds = dataset(cfg)            # either layout, as the config says; ds.single_label tells which
    ds = load_single_label("data/esc10", "meta.csv")

The classes are the sorted label names; the labelled clips play the curated split, the unlabelled ones the noisy
split (with no labels), and there is no test split: single-label datasets are scored by cross-validation.

Every problem found is reported at once in one DataError (a UserError: a stage prints it as one line and exits
with status 2) that names the CSV, the row (its line in the file) and the problem: the first few listed, the rest
counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from pipeline.utils import UserError

SPLITS = {
    "curated": ("train_curated.csv", "train_curated"),
    "noisy": ("train_noisy.csv", "train_noisy"),
    "test": ("sample_submission.csv", "test"),
}
MAX_LISTED = 5


class DataError(UserError):
    """The dataset is malformed; the message names the file, rows and problems."""


def _raise(source: str, problems: list[str]):
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{source}: {len(problems)} problem(s):\n  {shown}{more}")


def read_classes(root) -> list[str]:
    path = Path(root) / "sample_submission.csv"
    if not path.exists():
        raise DataError(f"{path}: not found (its header fixes the class list; is data.root right?)")
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if not header or header[0] != "fname" or len(header) < 2:
        raise DataError(f"{path}: header must be 'fname' followed by the class names, got {header[:5]}")
    classes = header[1:]
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise DataError(f"{path}: duplicate class columns {dup}")
    return classes


def split_labels(field: str) -> list[str]:
    return [s.strip() for s in str(field).split(",") if s.strip()]


def join_labels(labels) -> str:
    return ",".join(labels)


def _read_csv(path: Path, missing_hint="") -> pd.DataFrame:
    """A CSV as strings (empty fields stay empty strings); a missing or unparsable file is a DataError."""
    if not path.exists():
        raise DataError(f"{path}: not found{missing_hint}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be parsed as CSV: {e}") from None


def _check_fname(problems: list, seen: dict, i: int, fname: str, subfolders: bool = False):
    """Record an empty, duplicate or unsafe fname at data row i (line i + 2 of the file): a plain file name, or with
    subfolders a relative path that stays inside its folder (no absolute path, no '..')."""
    parts = fname.replace("\\", "/").split("/")
    if not fname:
        problems.append(f"row {i + 2}: empty fname")
    elif fname.startswith(("/", "\\")) or ".." in parts or (not subfolders and len(parts) > 1):
        problems.append(
            f"row {i + 2} ({fname}): not a plain file name"
            + (" inside data.root" if subfolders else " (no folders, no '..')")
        )
    elif fname in seen:
        problems.append(f"row {i + 2} ({fname}): duplicate fname (first at row {seen[fname]})")
    else:
        seen[fname] = i + 2


def read_labels_csv(path, classes, wav_dir=None, check_audio=True) -> pd.DataFrame:
    """Read a `fname,labels` CSV into a DataFrame with `labels` as lists; validate it (and its wavs)."""
    path = Path(path)
    df = _read_csv(path)
    if list(df.columns[:2]) != ["fname", "labels"]:
        raise DataError(f"{path}: header must be 'fname,labels', got {','.join(df.columns)}")
    known = set(classes)
    problems = []
    seen = {}
    labels = []
    if df.empty:
        raise DataError(f"{path}: no clips (the header alone)")
    for i, (fname, text) in enumerate(zip(df["fname"], df["labels"])):
        row = f"row {i + 2} ({fname})"  # line in the file, header is line 1
        _check_fname(problems, seen, i, fname)
        labs = split_labels(text)
        if not labs:
            problems.append(f"{row}: empty labels field")
        unknown = [lab for lab in labs if lab not in known]
        if unknown:
            problems.append(f"{row}: unknown label(s) {unknown} (not in sample_submission.csv's header)")
        labels.append(labs)
    _raise(str(path), problems)
    df = df.drop(columns=["labels"])  # fname and any extra column (the real-sound set's sources)
    df["labels"] = labels
    if wav_dir is not None:
        check_wavs(df["fname"], wav_dir, path, check_audio)
    return df.reset_index(drop=True)


def check_wavs(fnames, wav_dir, source, check_audio=True):
    """Every fname must be a readable, non-empty audio file in wav_dir."""
    wav_dir = Path(wav_dir)
    problems = []
    for i, fname in enumerate(fnames):
        p = wav_dir / fname
        if not p.exists():
            problems.append(f"row {i + 2} ({fname}): missing audio file {p}")
        elif check_audio:
            try:
                info = sf.info(str(p))
                if info.frames == 0:
                    problems.append(f"row {i + 2} ({fname}): empty audio file {p}")
            except (RuntimeError, sf.LibsndfileError) as e:
                problems.append(f"row {i + 2} ({fname}): unreadable audio file {p}: {e}")
    _raise(str(source), problems)


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    curated: pd.DataFrame
    noisy: pd.DataFrame
    test: pd.DataFrame  # fname (+ labels when test_labels.csv exists)
    noisy_truth: pd.DataFrame | None = None
    has_test_labels: bool = False
    wav_dirs: dict = field(default_factory=dict)
    single_label: bool = False
    folds: np.ndarray | None = None  # predefined fold per curated clip (single-label CSV's fold column)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> pd.DataFrame:
        return {"curated": self.curated, "noisy": self.noisy, "test": self.test}[name]

    def targets(self, df: pd.DataFrame) -> np.ndarray:
        """(N, C) float32 multi-hot matrix of df.labels in class order."""
        return labels_to_matrix(df["labels"], self.classes)


def labels_to_matrix(label_lists, classes) -> np.ndarray:
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(label_lists), len(classes)), np.float32)
    for i, labs in enumerate(label_lists):
        for lab in labs:
            y[i, index[lab]] = 1.0
    return y


def load_dataset(root, check_audio=True) -> Dataset:
    """Read and validate every CSV (and, with check_audio, every wav header) of a dataset folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.root {root}: no such folder (build the demo with `make demo-data`, or point "
            f"data.root at an FSDKaggle2019-layout folder)"
        )
    classes = read_classes(root)
    curated = read_labels_csv(root / "train_curated.csv", classes, root / "train_curated", check_audio)
    noisy_csv = root / "train_noisy.csv"
    noisy = (
        read_labels_csv(noisy_csv, classes, root / "train_noisy", check_audio)
        if noisy_csv.exists()
        else pd.DataFrame({"fname": [], "labels": []})
    )
    sub = pd.read_csv(root / "sample_submission.csv", dtype={"fname": str}, keep_default_na=False)
    if sub.empty:
        raise DataError(f"{root / 'sample_submission.csv'}: no test clips (the header alone)")
    dup = sub["fname"][sub["fname"].duplicated()].tolist()
    _raise(str(root / "sample_submission.csv"), [f"duplicate fname {f}" for f in dup])
    test = sub[["fname"]].copy()
    check_wavs(test["fname"], root / "test", root / "sample_submission.csv", check_audio)
    has_test_labels = (root / "test_labels.csv").exists()
    if has_test_labels:
        tl = read_labels_csv(root / "test_labels.csv", classes)
        missing = sorted(set(test["fname"]) - set(tl["fname"]))
        _raise(str(root / "test_labels.csv"), [f"no labels for test clip {f}" for f in missing])
        test = test.merge(tl, on="fname", how="left")
    truth = None
    if (root / "train_noisy_truth.csv").exists():
        truth = read_labels_csv(root / "train_noisy_truth.csv", classes)
    return Dataset(
        root, classes, curated, noisy, test, truth, has_test_labels, {k: root / v[1] for k, v in SPLITS.items()}
    )


def load_single_label(root, csv_name, check_audio=True) -> Dataset:
    """Read and validate a single-label CSV (fname,label[,fold]) under root; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: no such folder")
    path = root / csv_name
    df = _read_csv(path, " (data.single_label_csv is read relative to data.root)")
    if list(df.columns[:2]) != ["fname", "label"] or not set(df.columns) <= {"fname", "label", "fold"}:
        raise DataError(f"{path}: header must be 'fname,label' or 'fname,label,fold', got {','.join(df.columns)}")
    has_fold = "fold" in df.columns
    problems, seen = [], {}
    for i, (fname, label) in enumerate(zip(df["fname"], df["label"])):
        row = f"row {i + 2} ({fname})"
        _check_fname(problems, seen, i, fname, subfolders=True)
        if "," in label:
            problems.append(f"{row}: label {label!r} holds a comma; a single-label CSV has one label per clip")
        if has_fold and label.strip():
            try:
                int(df["fold"].iloc[i])
            except ValueError:
                problems.append(f"{row}: fold {df['fold'].iloc[i]!r} is not an integer")
    _raise(str(path), problems)
    df["label"] = df["label"].str.strip()
    lab = df[df["label"] != ""].reset_index(drop=True)
    unl = df[df["label"] == ""].reset_index(drop=True)
    if lab.empty:
        raise DataError(f"{path}: no labelled clip (every label field is empty)")
    classes = sorted(set(lab["label"]))
    if len(classes) < 2:
        raise DataError(f"{path}: one class only ({classes[0]}); a classifier needs at least two")
    check_wavs(df["fname"], root, path, check_audio)
    curated = pd.DataFrame({"fname": lab["fname"], "labels": [[c] for c in lab["label"]]})
    noisy = pd.DataFrame({"fname": unl["fname"], "labels": [[] for _ in range(len(unl))]})
    test = pd.DataFrame({"fname": pd.Series([], dtype=str)})
    folds = lab["fold"].astype(int).to_numpy() if has_fold else None
    return Dataset(
        root, classes, curated, noisy, test, wav_dirs={k: root for k in SPLITS}, single_label=True, folds=folds
    )


def is_single_label(cfg) -> bool:
    return cfg.data.single_label_csv is not None


def dataset(cfg, check_audio=False) -> Dataset:
    """The dataset the config names: the FSDKaggle2019 layout under data.root, or its data.single_label_csv."""
    if is_single_label(cfg):
        return load_single_label(cfg.data.root, cfg.data.single_label_csv, check_audio)
    return load_dataset(cfg.data.root, check_audio)
