"""pipeline.datasets.unpack_games: round trips through tiny c4group and Qt .rcc writers, and clear errors on bad
archives."""

from __future__ import annotations

import gzip
import struct
import sys
import zlib

import pytest

from pipeline.datasets.unpack_games import main, mem_scramble, read_c4group, read_qt_rcc

# ---------------------------------------------------------------- a tiny c4group writer (C4Group.h's layouts)


def c4_raw(entries: list[tuple[str, bytes | list]]) -> bytes:
    """An uncompressed group: scrambled header, entry cores, contents. A list value is a child group."""
    bodies = [c4_raw(v) if isinstance(v, list) else v for _, v in entries]
    header = struct.pack("<28s3i32s32s2i92s", b"RedWolf Design GrpFolder", 1, 2, len(entries), b"test", b"", 0, 0, b"")
    cores, offset = b"", 0
    for (name, value), body in zip(entries, bodies):
        cores += struct.pack(
            "<260s5iIbIb26s", name.encode(), 0, isinstance(value, list), len(body), 0, offset, 0, 0, 0, 0, b""
        )
        offset += len(body)
    assert len(header) == 204 and len(cores) == 316 * len(entries)
    return mem_scramble(header) + cores + b"".join(bodies)


def c4_file(entries: list[tuple[str, bytes | list]]) -> bytes:
    """A group file as OpenClonk writes it: gzip with the magic 1f 8b written as 1e 8c."""
    return b"\x1e\x8c" + gzip.compress(c4_raw(entries), mtime=0)[2:]


C4_TREE = [
    (
        "Animals.ocg",
        [
            ("Bird.ocd", [("Chirp1.ogg", b"OggS chirp"), ("Chirp2.wav", b"RIFF" + bytes(range(256)))]),
            ("Growl.ogg", b"OggS growl"),
        ],
    ),
    ("Empty.ocg", []),
    ("Klänge.txt", "Grüße".encode()),
    ("authors.txt", b"Someone - Animals/Bird/Chirp1 (https://freesound.org/s/1/)\n"),
]
C4_FILES = [
    ("Animals.ocg/Bird.ocd/Chirp1.ogg", b"OggS chirp"),
    ("Animals.ocg/Bird.ocd/Chirp2.wav", b"RIFF" + bytes(range(256))),
    ("Animals.ocg/Growl.ogg", b"OggS growl"),
    ("Klänge.txt", "Grüße".encode()),
    ("authors.txt", b"Someone - Animals/Bird/Chirp1 (https://freesound.org/s/1/)\n"),
]

# ---------------------------------------------------------------- a tiny Qt rcc writer (qresource.cpp's layouts)


def rcc(tree: dict, version: int = 3, compress: tuple[str, ...] = (), zstd: tuple[str, ...] = ()) -> bytes:
    """A .rcc of a nested {name: bytes | dict} tree; paths in compress are stored zlib-compressed (qCompress), paths
    in zstd get the zstd flag (their bytes stored as they are). Children of a directory are consecutive nodes."""
    nodes: list[tuple[str, object, str]] = [("", tree, "")]  # (name, value, path), breadth first like rcc
    layout: list[tuple[int, int]] = []  # per node: (first child index, child count) for directories
    i = 0
    while i < len(nodes):
        name, value, path = nodes[i]
        if isinstance(value, dict):
            layout.append((len(nodes), len(value)))
            nodes += [
                (k, v, f"{path}{k}") if not isinstance(v, dict) else (k, v, f"{path}{k}/") for k, v in value.items()
            ]
        else:
            layout.append((0, 0))
        i += 1
    names, data, tree_bytes = b"", b"", b""
    for (name, value, path), (first, count) in zip(nodes, layout):
        name_off = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        if isinstance(value, dict):
            node = struct.pack(">IHII", name_off, 0x02, count, first)
        else:
            flags = 0x01 if path in compress else 0x04 if path in zstd else 0
            blob = struct.pack(">I", len(value)) + zlib.compress(value) if flags == 0x01 else value
            node = struct.pack(">IHHHI", name_off, flags, 0, 0, len(data))
            data += struct.pack(">I", len(blob)) + blob
        tree_bytes += node + (struct.pack(">Q", 0) if version >= 2 else b"")
    head = 24 if version >= 3 else 20
    offsets = struct.pack(">4sIIII", b"qres", version, head + len(data) + len(names), head, head + len(data))
    return offsets + (struct.pack(">I", 1 if compress else 0) if version >= 3 else b"") + data + names + tree_bytes


RCC_TREE = {
    "gcompris": {
        "src": {
            "memory-sound": {
                "resource": {"bark.ogg": b"OggS bark" * 50, "Licence.txt": b"Free"},
                "MemorySound.qml": b"/* qml */",
            }
        }
    },
    "top.txt": b"",
}
RCC_FILES = [
    ("gcompris/src/memory-sound/MemorySound.qml", b"/* qml */"),
    ("gcompris/src/memory-sound/resource/Licence.txt", b"Free"),
    ("gcompris/src/memory-sound/resource/bark.ogg", b"OggS bark" * 50),
    ("top.txt", b""),
]

# ---------------------------------------------------------------- c4group


def test_mem_scramble_is_its_own_inverse_and_matches_c4group_cpp():
    data = bytes(range(10))
    assert mem_scramble(mem_scramble(data)) == data
    # XOR 0xED, then bytes 0 and 2 of each whole group of three swapped; a trailing partial group only XORed
    assert mem_scramble(b"\x00\x01\x02\x03") == bytes([0x02 ^ 0xED, 0x01 ^ 0xED, 0x00 ^ 0xED, 0x03 ^ 0xED])


def test_c4group_round_trip_with_nested_child_groups(tmp_path):
    blob = c4_file(C4_TREE)
    assert read_c4group(blob, name="x.ocg") == C4_FILES
    path = tmp_path / "Sound.ocg"
    path.write_bytes(blob)
    assert read_c4group(path) == C4_FILES
    assert read_c4group(str(path)) == C4_FILES
    assert read_c4group(c4_raw(C4_TREE)) == C4_FILES  # an uncompressed group reads too


def test_c4group_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "bad.ocg"
    path.write_bytes(b"PK\x03\x04" + bytes(300))
    with pytest.raises(ValueError, match=r"bad\.ocg.*not a c4group"):
        read_c4group(path)
    with pytest.raises(ValueError, match=r"mem\.ocg.*not a c4group"):
        read_c4group(b"\x1e\x8c" + gzip.compress(bytes(300))[2:], name="mem.ocg")
    with pytest.raises(ValueError, match=r"empty\.ocg"):
        read_c4group(b"", name="empty.ocg")


def test_c4group_truncated_archive_raises_value_error(tmp_path):
    blob = c4_file(C4_TREE)
    path = tmp_path / "cut.ocg"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.ocg.*(truncated|ends early)"):
        read_c4group(path)
    # a complete gzip stream around a group cut short: the last entry points past the end
    raw = c4_raw(C4_TREE)
    short = b"\x1e\x8c" + gzip.compress(raw[:-5])[2:]
    with pytest.raises(ValueError, match=r"short\.ocg: entry authors\.txt .* past the end"):
        read_c4group(short, name="short.ocg")
    for n in range(0, len(blob), 7):  # every cut is a ValueError, never IndexError or struct.error
        with pytest.raises(ValueError, match="cut"):
            read_c4group(blob[:n], name="cut")


def test_c4group_rejects_names_that_escape_the_folder():
    with pytest.raises(ValueError, match=r"evil\.ocg.*unsafe"):
        read_c4group(c4_file([("../x.ogg", b"x")]), name="evil.ocg")


# ---------------------------------------------------------------- Qt rcc


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_round_trip_with_nested_dirs_and_zlib(tmp_path, version):
    blob = rcc(RCC_TREE, version, compress=("gcompris/src/memory-sound/resource/bark.ogg",))
    assert read_qt_rcc(blob, name="x.rcc") == RCC_FILES
    path = tmp_path / "memory-sound.rcc"
    path.write_bytes(blob)
    assert read_qt_rcc(path) == RCC_FILES


def test_rcc_zlib_entry_is_really_compressed():
    plain = rcc(RCC_TREE)
    packed = rcc(RCC_TREE, compress=("gcompris/src/memory-sound/resource/bark.ogg",))
    assert len(packed) < len(plain) - 300
    assert read_qt_rcc(packed) == read_qt_rcc(plain) == RCC_FILES


def test_rcc_wrong_magic_and_truncation_name_the_file(tmp_path):
    path = tmp_path / "bad.rcc"
    path.write_bytes(b"qrez" + bytes(40))
    with pytest.raises(ValueError, match=r"bad\.rcc.*not a Qt resource"):
        read_qt_rcc(path)
    blob = rcc(RCC_TREE, compress=("gcompris/src/memory-sound/resource/bark.ogg",))
    with pytest.raises(ValueError, match=r"cut\.rcc.*past the end.*truncated"):
        read_qt_rcc(blob[:-10], name="cut.rcc")
    for n in range(len(blob)):  # every cut is a ValueError, never IndexError or struct.error
        with pytest.raises(ValueError, match="cut"):
            read_qt_rcc(blob[:n], name="cut")


def test_rcc_corrupt_bytes_raise_only_value_error():
    blob = rcc(RCC_TREE, compress=("gcompris/src/memory-sound/resource/bark.ogg",))
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0xFF
        try:
            read_qt_rcc(bytes(bad), name="bad")
        except ValueError as e:
            assert "bad" in str(e)


def test_rcc_cyclic_tree_is_an_error():
    blob = bytearray(rcc({"d": {"a.txt": b"a"}}))
    tree = struct.unpack_from(">I", blob, 8)[0]
    struct.pack_into(">I", blob, tree + 22 + 10, 0)  # node 1 (dir "d") lists node 0, the root, as its first child
    with pytest.raises(ValueError, match="cyclic"):
        read_qt_rcc(bytes(blob), name="loop.rcc")


def test_rcc_zstd_without_a_decoder_is_a_clear_error(monkeypatch):
    for module in ("zstandard", "compression", "compression.zstd"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ValueError, match=r"z\.rcc: entry a\.ogg is zstd-compressed.*zstandard"):
        read_qt_rcc(rcc({"a.ogg": b"\x28\xb5\x2f\xfd"}, zstd=("a.ogg",)), name="z.rcc")


def test_cli_lists_and_extracts(tmp_path, capsys):
    path = tmp_path / "Sound.ocg"
    path.write_bytes(c4_file(C4_TREE))
    assert main([str(path)]) == C4_FILES
    assert "Animals.ocg/Bird.ocd/Chirp1.ogg" in capsys.readouterr().out
    (tmp_path / "a.rcc").write_bytes(rcc(RCC_TREE))
    main([str(tmp_path / "a.rcc"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out/gcompris/src/memory-sound/resource/Licence.txt").read_bytes() == b"Free"
    (tmp_path / "junk.rcc").write_bytes(b"junk")
    with pytest.raises(SystemExit, match=r"junk\.rcc.*not a Qt resource"):
        main([str(tmp_path / "junk.rcc")])
