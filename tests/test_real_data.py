"""The real-sound set's builder and sources, without downloads: stand-in source recordings made here, small
archives made here, and the fetch step's errors with apt-get and pip replaced."""

from __future__ import annotations

import filecmp
import io
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import real as real_data
from pipeline.datasets import real_sources
from pipeline.datasets.real_sources import SR, SourceBank, package_members, read_opensfx_cat, take_of
from pipeline.utils import UserError

CLASSES = ("Alpha", "Beta", "Gamma")


def _sound(rng, cls, take, seconds):
    """A stand-in recording: class-specific harmonics, take-specific pitch and rhythm, noise."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = (300, 900, 2500)[cls] * (1 + 0.07 * take)
    env = (np.sin(2 * np.pi * (1.5 + take) * t) > 0).astype(float) if cls == 1 else np.ones_like(t)
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * env + 0.05 * rng.standard_normal(len(t))
    return (0.1 * x / np.sqrt(np.mean(x**2))).astype(np.float32)


def stand_in_entries(seed=0):
    rng = np.random.default_rng(seed)
    entries = []
    for c, cls in enumerate(CLASSES):
        for take in range(9):
            for cut in range(1 + take % 2):  # some takes have two cuts
                x = _sound(rng, c, take, rng.uniform(0.4, 1.6))
                entries.append(
                    dict(
                        package="pkg-a",
                        version="1",
                        member=f"{cls.lower()}/take{take}_{cut}.ogg",
                        take=f"pkg-a:{cls.lower()}/take{take}",
                        licence="CC0",
                        credit="",
                        audio=x,
                        **{"class": cls},
                    )
                )
    dup = entries[0]["audio"] * 0.5  # the first Alpha recording again, shipped by another package at half level
    entries.append(
        dict(
            package="pkg-b",
            version="2",
            member="copy.wav",
            take="pkg-b:copy",
            licence="CC0",
            credit="",
            audio=dup,
            **{"class": "Alpha"},
        )
    )
    entries.append(
        dict(
            package="pkg-b",
            version="2",
            member="amb.wav",
            take="pkg-b:amb",
            licence="CC0",
            credit="",
            audio=0.1 * rng.standard_normal(3 * SR).astype(np.float32),
            **{"class": "_ambience"},
        )
    )
    return entries


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return SourceBank.write(tmp_path_factory.mktemp("bank") / "bank-test", stand_in_entries())


def test_takes_and_near_duplicates_make_one_source_group(bank):
    ix = bank.index
    assert take_of("a/grass3.ogg") == "a/grass" and take_of("x.pk3!w/bullet-rifle-8x.ogg") == "w/bullet-rifle"
    assert take_of("s/civfemdeath01a.ogg") == "s/civfemdeath"
    copy = ix.loc[ix["member"] == "copy.wav", "group"].item()
    assert copy == ix.loc[ix["member"] == "alpha/take0_0.ogg", "group"].item()  # found by content
    cuts = ix.loc[ix["take"] == "pkg-a:alpha/take1", "group"]
    assert len(cuts) == 2 and cuts.nunique() == 1
    alpha = ix[(ix["class"] == "Alpha") & (ix["package"] == "pkg-a")]
    assert alpha["group"].nunique() == 9  # distinct takes stay apart


def test_pools_are_disjoint_and_stratified(bank):
    index, dropped = real_data.make_pools(bank.index, seed=3)
    assert dropped == [] and set(index["class"]) == set(CLASSES)
    assert (index.groupby("source")["pool"].nunique() == 1).all()
    per = index.groupby(["class", "pool"])["source"].nunique().unstack()
    assert (per >= 2).all().all() and (per.sum(axis=1) == 9).all()
    few = bank.index[~bank.index["member"].str.match("gamma/take[78]")]
    assert real_data.make_pools(few, seed=3)[1] == ["Gamma"]  # 8 sources needed


def build(out, bank, **kw):
    kw = dict(preset="tiny", seed=1, progress=False, bank=bank, workers=1) | kw
    return real_data.build(out, **kw)


@pytest.fixture(scope="module")
def built(bank, tmp_path_factory):
    return build(tmp_path_factory.mktemp("real") / "real", bank, n_noisy=120)


def test_build_writes_the_fsdkaggle2019_layout_with_sources(built, bank):
    for name in (
        "train_curated.csv",
        "train_noisy.csv",
        "train_noisy_truth.csv",
        "test_labels.csv",
        "sample_submission.csv",
        "SOURCES.csv",
        "real_meta.json",
        "test_sources.csv",
    ):
        assert (built / name).exists(), name
    cur = pd.read_csv(built / "train_curated.csv")
    assert list(cur.columns) == ["fname", "labels", "sources"]
    assert all((built / "train_curated" / f).exists() for f in cur["fname"])
    assert list(pd.read_csv(built / "sample_submission.csv", nrows=0).columns) == ["fname", *CLASSES]
    res = real_data.verify(built, with_baselines=False)
    assert res["problems"] == []
    for r in res["splits"]:
        assert 1.0 <= r["mean_labels"] <= 1.6 and r["min_s"] >= 0.29


def test_noisy_labels_are_corrupted_at_about_the_set_rate(built):
    given = pd.read_csv(built / "train_noisy.csv")["labels"]
    truth = pd.read_csv(built / "train_noisy_truth.csv")["labels"]
    wrong = np.mean([set(g.split(",")) != set(t.split(",")) for g, t in zip(given, truth)])
    assert 0.35 <= wrong <= 0.65
    assert len(given) == 120


def test_each_split_uses_its_own_pool(built):
    src = pd.read_csv(built / "SOURCES.csv")
    pool = dict(zip(src["source"], src["pool"]))
    for split, csv in (
        ("train_curated", "train_curated.csv"),
        ("train_noisy", "train_noisy.csv"),
        ("test", "test_sources.csv"),
    ):
        used = {s for cell in pd.read_csv(built / csv)["sources"] for s in cell.split(";")}
        assert used and {pool[s] for s in used} == {split}


def _same_tree(a: Path, b: Path):
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


def test_build_is_deterministic_whatever_the_workers(bank, tmp_path, built):
    other = build(tmp_path / "again", bank, n_noisy=120, workers=2)
    _same_tree(built, other)
    seeded = build(tmp_path / "seed2", bank, n_noisy=120, seed=2)
    assert not filecmp.cmp(built / "train_curated.csv", seeded / "train_curated.csv", shallow=False)


def test_an_interrupted_build_resumes_and_equals_an_uninterrupted_one(bank, tmp_path, built, monkeypatch):
    calls = {"n": 0}
    render = real_data.render_clip

    def dying(task):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        return render(task)

    monkeypatch.setattr(real_data, "render_clip", dying)
    out = tmp_path / "real"
    with pytest.raises(KeyboardInterrupt):
        build(out, bank, n_noisy=120)
    assert not out.exists()
    partial = next(tmp_path.glob(".real.building-*"))
    assert len(list(partial.rglob("*.wav"))) == 25
    monkeypatch.setattr(real_data, "render_clip", render)
    build(out, bank, n_noisy=120)
    _same_tree(built, out)
    assert not list(tmp_path.glob(".real.building-*"))


def test_a_folder_that_is_not_a_build_is_not_replaced(bank, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a real-data build"):
        build(tmp_path / "mine", bank)
    assert (tmp_path / "mine" / "notes.txt").exists()


# ---- archives ----


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _cat(entries: list[tuple[str, bytes]]) -> bytes:
    head, body = len(entries) * 8, b""
    table = b""
    for i, (name, wav) in enumerate(entries):
        blob = bytes([len(name) + 1]) + name.encode() + b"\0" + wav
        table += struct.pack("<II", (head + len(body)) | (0x80000000 if i == 0 else 0), len(wav))
        body += blob
    return table + body


def _deb(tmp_path, files: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "pkg_1_all.deb"
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()}))
    return path


def test_package_members_reads_debs_and_nested_containers(tmp_path):
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("sound/step1.ogg", b"STEP")
        z.writestr("sound/beep.ogg", b"BEEP")
    cat = _cat([("Sheep. By someone. CC0", b"RIFFsheep"), ("Cow. CC-BY", b"RIFFcow")])
    deb = _deb(
        tmp_path,
        {
            "usr/share/a/dog.ogg": b"DOG",
            "usr/share/a/readme.txt": b"x",
            "usr/share/g/0snd.pk3": zbuf.getvalue(),
            "usr/share/o/opensfx.cat": cat,
        },
    )
    wanted = real_sources._wanted(["*/a/*.ogg", "*0snd.pk3!sound/step*", "*opensfx.cat!1.wav"])
    got = {m: (b, c) for m, b, c in package_members(deb, wanted)}
    assert got == {
        "usr/share/a/dog.ogg": (b"DOG", ""),
        "usr/share/g/0snd.pk3!sound/step1.ogg": (b"STEP", ""),
        "usr/share/o/opensfx.cat!1.wav": (b"RIFFcow", "Cow. CC-BY"),
    }
    assert read_opensfx_cat(cat)[0] == ("0.wav", b"RIFFsheep", "Sheep. By someone. CC0")
    with pytest.raises(ValueError, match="opensfx.cat: entry 1 runs past the end"):
        read_opensfx_cat(cat[:-3])
    with pytest.raises(ValueError, match="offset table runs past the end"):
        read_opensfx_cat(cat[:12])
    with pytest.raises(ValueError, match="truncated"):
        real_sources.read_ar(deb.read_bytes()[:-10], "pkg.deb")


def test_the_class_map_reads_and_names_known_packages():
    m = real_sources.read_class_map()
    assert set(m["package"]) <= set(real_sources.PACKAGE)
    assert m["class"].nunique() >= 15


# ---- fetching: the errors a user meets ----

PKG = real_sources.Package("fake-sounds", "1.0-1", "fake-sounds_1.0-1_all.deb", "0" * 64, 10, "CC0")


def _fake_apt(monkeypatch, returncode=0, stderr="", payload=b"deb"):
    def run(cmd, cwd, **kw):
        if returncode == 0:
            (Path(cwd) / PKG.file).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(real_sources.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(real_sources.subprocess, "run", run)


def test_fetch_errors_name_the_cause(tmp_path, monkeypatch):
    monkeypatch.setattr(real_sources.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get not found"):
        real_sources.fetch(tmp_path, packages=[PKG])
    _fake_apt(monkeypatch)
    with pytest.raises(UserError, match="checksum mismatch for fake-sounds_1.0-1_all.deb"):
        real_sources.fetch(tmp_path, packages=[PKG])
    assert not list(tmp_path.iterdir())  # nothing half-downloaded stays
    _fake_apt(monkeypatch, 100, "E: Version '1.0-1' for 'fake-sounds' was not found")
    with pytest.raises(UserError, match="version 1.0-1 of fake-sounds not found"):
        real_sources.fetch(tmp_path, packages=[PKG])
    _fake_apt(monkeypatch, 100, "E: Unable to locate package fake-sounds")
    monkeypatch.setattr(real_sources, "APT_LISTS", tmp_path / "no-lists")
    with pytest.raises(UserError, match="run `apt-get update` as root"):
        real_sources.fetch(tmp_path, packages=[PKG])


def test_fetch_reuses_a_checked_file_and_refuses_a_full_disk(tmp_path, monkeypatch):
    good = real_sources.Package(
        PKG.name, PKG.version, PKG.file, real_sources.hashlib.sha256(b"deb").hexdigest(), 10, "CC0"
    )
    _fake_apt(monkeypatch)
    assert real_sources.fetch(tmp_path, packages=[good]) == {good.name: tmp_path / good.file}
    monkeypatch.setattr(real_sources.subprocess, "run", None)  # a second fetch downloads nothing
    assert real_sources.fetch(tmp_path, packages=[good])[good.name].read_bytes() == b"deb"
    big = real_sources.Package(PKG.name, "2", "other.deb", PKG.sha256, 10**15, "CC0")
    with pytest.raises(UserError, match="not enough disk space"):
        real_sources.fetch(tmp_path, packages=[big])


def test_the_command_line_reports_a_user_error_in_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        real_data.main(["--out", str(tmp_path / "notes"), "--verify"])
    assert e.value.code == 2
    assert "fattag datasets.real: error:" in capsys.readouterr().err
