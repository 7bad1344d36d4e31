import pandas as pd
import pytest

from pipeline.data import DataError, load_dataset


def test_reads_layout(dataset):
    ds = load_dataset(dataset)
    assert ds.classes[0] == "Bass_drum" and len(ds.curated) == 20 and len(ds.noisy) == 10
    assert ds.has_test_labels and "labels" in ds.test
    y = ds.targets(ds.curated)
    assert y.shape == (20, 5) and (y.sum(1) >= 1).all()


def test_quoted_multi_label_field_and_parentheses(dataset):
    df = pd.read_csv(dataset / "train_curated.csv")
    df.loc[0, "labels"] = "Bass_drum,Zipper_(clothing)"
    df.to_csv(dataset / "train_curated.csv", index=False)
    assert '"Bass_drum,Zipper_(clothing)"' in (dataset / "train_curated.csv").read_text()
    ds = load_dataset(dataset)
    assert ds.curated.loc[0, "labels"] == ["Bass_drum", "Zipper_(clothing)"]


def corrupt(dataset, csv, row, col, value):
    df = pd.read_csv(dataset / csv, dtype=str, keep_default_na=False)
    df.loc[row, col] = value
    df.to_csv(dataset / csv, index=False)


@pytest.mark.parametrize(
    "csv, col, value, msg",
    [
        ("train_curated.csv", "labels", "Bass_drum,Kazoo", r"train_curated\.csv[\s\S]*row 5 .*unknown label.*Kazoo"),
        ("train_noisy.csv", "labels", "", r"train_noisy\.csv[\s\S]*row 5 .*empty labels"),
        ("train_curated.csv", "fname", "00000000.wav", r"row 5 \(00000000\.wav\): duplicate fname \(first at row 2\)"),
        ("train_curated.csv", "fname", "nothere.wav", r"row 5 \(nothere\.wav\): missing audio file"),
        ("train_curated.csv", "fname", "../../x.wav", r"row 5 \(\.\./\.\./x\.wav\): not a plain file name"),
        (
            "train_noisy.csv",
            "fname",
            "sub/x.wav",
            r"train_noisy\.csv[\s\S]*row 5 \(sub/x\.wav\): not a plain file name",
        ),
        ("train_curated.csv", "fname", "/etc/passwd", r"row 5 \(/etc/passwd\): not a plain file name"),
    ],
)
def test_bad_rows_named(dataset, csv, col, value, msg):
    corrupt(dataset, csv, 3, col, value)
    with pytest.raises(DataError, match=msg):
        load_dataset(dataset)


def test_unreadable_and_empty_wav_named(dataset):
    fname = pd.read_csv(dataset / "train_noisy.csv")["fname"][2]
    (dataset / "train_noisy" / fname).write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match=rf"row 4 \({fname}\): unreadable audio file"):
        load_dataset(dataset)


def test_many_problems_listed_then_counted(dataset):
    df = pd.read_csv(dataset / "train_curated.csv")
    df["labels"] = "Nope"
    df.to_csv(dataset / "train_curated.csv", index=False)
    with pytest.raises(DataError, match=r"20 problem\(s\)[\s\S]*and 15 more"):
        load_dataset(dataset)


def test_missing_root_and_sample_submission(tmp_path, dataset):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(tmp_path / "nowhere")
    (dataset / "sample_submission.csv").unlink()
    with pytest.raises(DataError, match=r"sample_submission\.csv: not found"):
        load_dataset(dataset)


def test_noisy_optional(dataset):
    (dataset / "train_noisy.csv").unlink()
    assert len(load_dataset(dataset).noisy) == 0


@pytest.mark.parametrize("csv", ["train_curated.csv", "train_noisy.csv", "sample_submission.csv"])
def test_header_only_split_is_an_error_naming_the_file(dataset, csv):
    df = pd.read_csv(dataset / csv, dtype=str, keep_default_na=False)
    df.iloc[:0].to_csv(dataset / csv, index=False)
    with pytest.raises(DataError, match=csv.replace(".", r"\.") + ": no (clips|test clips)"):
        load_dataset(dataset, check_audio=False)
