"""bench/common.truth_root: the dataset whose noisy labels are the true ones (the oracle rows of bench/quality.py);
bench/real_recipes.py: the command its table prints runs."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import truth_root  # noqa: E402


def test_truth_root_swaps_in_the_true_noisy_labels_and_shares_everything_else(dataset):
    noisy = pd.read_csv(dataset / "train_noisy.csv")
    truth = noisy.assign(labels=list(reversed(noisy["labels"].tolist())))  # true labels that differ from the given
    truth.to_csv(dataset / "train_noisy_truth.csv", index=False)
    out = truth_root(dataset)
    assert out == dataset.resolve().with_name(f"{dataset.name}_truth")
    ds, orig = load_dataset(out), load_dataset(dataset)
    assert ds.noisy["labels"].tolist() == [lab.split(",") for lab in truth["labels"]]
    assert ds.noisy["labels"].tolist() != orig.noisy["labels"].tolist()
    assert ds.curated.equals(orig.curated) and ds.test.equals(orig.test)
    assert (out / "train_curated").is_symlink() and not (out / "train_noisy.csv").is_symlink()
    assert truth_root(dataset) == out  # built once, then reused
    assert not list(dataset.parent.glob(".*truth.tmp"))


def test_truth_root_refuses_a_dataset_without_true_noisy_labels(dataset):
    with pytest.raises(SystemExit, match="train_noisy_truth.csv"):
        truth_root(dataset)
    assert not dataset.with_name(f"{dataset.name}_truth").exists()


def test_real_recipes_prints_a_command_that_parses_back_to_its_arguments():
    from real_recipes import command_line, parser

    a = parser().parse_args(["--seeds", "42", "43", "--recipes", "cur,cur5", "train.threads=1", "train.frames=128"])
    assert a.seeds == [42, 43] and a.overrides == ["train.threads=1", "train.frames=128"]  # options first, then keys
    again = parser().parse_args(command_line(a))
    assert vars(again) == vars(a)
    # printed in the old order (keys after --seeds) they are read as seeds
    with pytest.raises(SystemExit):
        parser().parse_args(["--recipes", "cur", "--seeds", "42", "train.threads=1"])
