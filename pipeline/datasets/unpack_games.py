"""Readers for two game archive formats, to pull real sound-effect recordings out of Debian game data packages.

Pure Python (the standard library only; zstd-compressed Qt resources also need the `zstandard` module).

    from pipeline.datasets.unpack_games import read_c4group, read_qt_rcc
    for path, data in read_c4group("/usr/share/games/openclonk/Sound.ocg"):
        ...   # ("Animals.ocg/Bat.ocg/Flutter1.ogg", b"OggS..."), ("authors.txt", b"...")
    for path, data in read_qt_rcc("/usr/share/gcompris-qt/rcc/memory-sound.rcc"):
        ...   # ("gcompris/src/activities/memory-sound/resource/...", b"...")

    python -m pipeline.datasets.unpack_games ARCHIVE [--out DIR]   # list the files (path, size), or extract under DIR

read_c4group  OpenClonk's group files (.ocg .ocd .ocf .ocs ...): a gzip stream whose magic 1f 8b is written as
              1e 8c. Inside: a 204-byte header scrambled with C4Group.cpp's MemScramble (every byte XOR 0xED, then
              the first and third byte of each whole group of three swapped), the header's count of 316-byte entry
              cores (name, size, offset from the end of the core array, child-group flag), then the entries' bytes.
              A child group is stored as a complete group (header, cores, contents) without the gzip layer; it is
              read recursively and its files are named "Parent.ocg/Child.ocg/File.ogg".
read_qt_rcc   Qt's binary resource files (.rcc, magic "qres", format versions 1 to 3): a header (version, offsets
              of the tree, the data and the names; version 3 adds overall flags), a tree of nodes (directories list a
              run of child nodes; files point into the data), names as UTF-16BE strings, and data blobs stored plain,
              zlib-compressed (qCompress: a 4-byte length, then a zlib stream; node flag 0x01) or zstd-compressed
              (node flag 0x04). Paths run from the resource root, without the leading "/" (":/a/b.ogg" is "a/b.ogg").

Both return [(path, bytes)] for every plain file (c4group: in archive order; rcc: sorted by path), and raise
ValueError naming the archive (its path, or the name= given with bytes input) when the magic or a structure is wrong,
when an entry points past the end (a truncated archive), or when an entry's name could escape the extraction folder
("..", "/", "\\").
"""

from __future__ import annotations

import argparse
import os
import struct
import zlib
from pathlib import Path

C4_MAGIC = b"\x1e\x8c"  # gzip's 1f 8b, each byte moved by one
GZIP_MAGIC = b"\x1f\x8b"
C4_ID = b"RedWolf Design GrpFolder"
C4_HEADER = 204  # C4GroupHeader: id[28], Ver1, Ver2, Entries (int32), Maker[32], Password[32], Creation, Original, 92
C4_CORE = 316  # C4GroupEntryCore: FileName[260], Packed, ChildGroup, Size, unused, Offset, Time, HasCRC, CRC, ...
C4_MAX_DEPTH = 64
RCC_MAGIC = b"qres"
RCC_COMPRESSED, RCC_DIRECTORY, RCC_ZSTD = 0x01, 0x02, 0x04


def _load(source: str | os.PathLike | bytes | bytearray | memoryview, name: str | None) -> tuple[bytes, str]:
    """The archive's bytes and the name its errors use (the path, or name= / "<bytes>" for bytes input)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    try:
        return Path(source).read_bytes(), name or str(source)
    except OSError as e:
        raise ValueError(f"{name or source}: cannot read the archive ({e.strerror or e})") from e


def _safe_name(raw: str, archive: str, where: str) -> str:
    """An entry name that stays inside its folder when joined to a path, or ValueError."""
    if not raw or raw in (".", "..") or any(c in raw for c in "/\\\0"):
        raise ValueError(f"{archive}: {where}: unsafe or empty entry name {raw!r}")
    return raw


def _decode_name(raw: bytes) -> str:
    """A c4group file name: UTF-8 in groups written by OpenClonk, Windows-1252 in older ones."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def mem_scramble(data: bytes) -> bytes:
    """C4Group.cpp's MemScramble: XOR every byte with 0xED, then swap bytes 0 and 2 of each whole group of three.

    Its own inverse (both steps commute and are involutions), so it scrambles and unscrambles alike."""
    out = bytearray(b ^ 0xED for b in data)
    whole = len(out) - len(out) % 3
    out[0:whole:3], out[2:whole:3] = out[2:whole:3], out[0:whole:3]
    return bytes(out)


def _c4_unzip(data: bytes, archive: str) -> bytes:
    """The c4group's content: gunzipped when it starts with the c4group (or plain gzip) magic, else as it is."""
    if data[:2] not in (C4_MAGIC, GZIP_MAGIC):
        return data  # an uncompressed group (as child groups are); the header check decides
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(GZIP_MAGIC + data[2:])
    except zlib.error as e:
        raise ValueError(f"{archive}: corrupt compressed c4group stream ({e})") from e
    if not d.eof:
        raise ValueError(f"{archive}: the compressed c4group stream ends early (truncated archive)")
    return out


def _c4_group(buf: memoryview, archive: str, prefix: str, depth: int, out: list[tuple[str, bytes]]) -> None:
    """Append the files of one uncompressed group (header, cores, contents) in buf to out, recursing into children."""
    where = prefix.rstrip("/") or "top level"
    if depth > C4_MAX_DEPTH:
        raise ValueError(f"{archive}: {where}: child groups nested deeper than {C4_MAX_DEPTH}")
    if len(buf) < C4_HEADER:
        raise ValueError(f"{archive}: {where}: {len(buf)} bytes, too short for a c4group header (truncated archive?)")
    head = mem_scramble(bytes(buf[:C4_HEADER]))
    ver1, ver2, entries = struct.unpack_from("<3i", head, 28)
    if head[:28].split(b"\0")[0] != C4_ID:
        raise ValueError(f"{archive}: {where}: not a c4group (wrong magic/header id)")
    if ver1 != 1 or ver2 > 2 or entries < 0:
        raise ValueError(f"{archive}: {where}: unsupported c4group header (version {ver1}.{ver2}, {entries} entries)")
    base = C4_HEADER + C4_CORE * entries
    if base > len(buf):
        raise ValueError(f"{archive}: {where}: {entries} entry cores run past the end (truncated archive)")
    for k in range(entries):
        core = buf[C4_HEADER + C4_CORE * k : C4_HEADER + C4_CORE * (k + 1)]
        name = _safe_name(_decode_name(bytes(core[:260]).split(b"\0")[0]), archive, where)
        _packed, child, size, _unused, offset = struct.unpack_from("<5i", core, 260)
        path = prefix + name
        if size < 0 or offset < 0 or base + offset + size > len(buf):
            raise ValueError(
                f"{archive}: entry {path} (offset {offset}, {size} bytes) points past the end of its "
                f"group's {len(buf) - base} content bytes (truncated archive)"
            )
        body = buf[base + offset : base + offset + size]
        if child:
            if bytes(body[:2]) in (C4_MAGIC, GZIP_MAGIC):  # a child stored compressed: not written by OpenClonk
                body = memoryview(_c4_unzip(bytes(body), f"{archive}: {path}"))
            _c4_group(body, archive, path + "/", depth + 1, out)
        else:
            out.append((path, bytes(body)))


def read_c4group(source: str | os.PathLike | bytes, name: str | None = None) -> list[tuple[str, bytes]]:
    """Every plain file of an OpenClonk group file (.ocg .ocd .ocf .ocs ...), child groups included.

    source: a path, or the file's bytes (then name= names it in errors). Returns [(path, bytes)] in archive order,
    with paths like "Animals.ocg/Bat.ocg/Flutter1.ogg". Raises ValueError naming the archive when it is not a
    c4group, is truncated or corrupt, or holds an entry name that could escape a folder."""
    data, archive = _load(source, name)
    out: list[tuple[str, bytes]] = []
    _c4_group(memoryview(_c4_unzip(data, archive)), archive, "", 0, out)
    return out


def _zstd_decompress(blob: bytes, archive: str, path: str) -> bytes:
    """A zstd frame's content, via compression.zstd (Python 3.14+) or the zstandard module."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.decompress(blob)
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            f"{archive}: entry {path} is zstd-compressed; reading it needs the zstandard module (pip install zstandard)"
        ) from None
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


class _Rcc:
    """One parsed .rcc: bounds-checked access to its tree nodes, names and data blobs."""

    def __init__(self, data: bytes, archive: str):
        self.data, self.archive = data, archive
        if data[:4] != RCC_MAGIC:
            raise ValueError(f"{archive}: not a Qt resource file (magic {data[:4]!r}, expected {RCC_MAGIC!r})")
        if len(data) < 20:
            raise ValueError(f"{archive}: {len(data)} bytes, too short for a Qt resource header (truncated archive)")
        self.version, self.tree, self.blobs, self.names = struct.unpack_from(">4I", data, 4)
        if not 1 <= self.version <= 3:
            raise ValueError(f"{archive}: unsupported Qt resource format version {self.version} (1 to 3 known)")
        self.node_size = 14 if self.version == 1 else 22  # version 2 adds an 8-byte modification time

    def _at(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > len(self.data):
            raise ValueError(
                f"{self.archive}: {what} (bytes {offset}..{offset + size}) points past the end of the "
                f"{len(self.data)}-byte file (truncated archive)"
            )
        return self.data[offset : offset + size]

    def node(self, index: int) -> tuple[int, int, int, int]:
        """(name offset, flags, a, b): a directory's child count and first child, or a file's locale and data."""
        raw = self._at(self.tree + index * self.node_size, self.node_size, f"tree node {index}")
        name, flags, a, b = struct.unpack_from(">IHII", raw)
        return name, flags, a, b

    def name(self, offset: int) -> str:
        (length,) = struct.unpack(">H", self._at(self.names + offset, 2, f"name at {offset}"))
        raw = self._at(self.names + offset + 6, 2 * length, f"name at {offset}")  # after the length, a 4-byte hash
        return raw.decode("utf-16-be", errors="replace")

    def blob(self, offset: int, flags: int, path: str) -> bytes:
        (size,) = struct.unpack(">I", self._at(self.blobs + offset, 4, f"entry {path}"))
        blob = self._at(self.blobs + offset + 4, size, f"entry {path}")
        if flags & RCC_ZSTD:
            return _zstd_decompress(blob, self.archive, path)
        if flags & RCC_COMPRESSED:
            if len(blob) < 4:
                raise ValueError(f"{self.archive}: entry {path}: zlib entry of {len(blob)} bytes has no length prefix")
            try:
                return zlib.decompress(blob[4:])
            except zlib.error as e:
                raise ValueError(f"{self.archive}: entry {path}: corrupt zlib data ({e})") from e
        return blob


def read_qt_rcc(source: str | os.PathLike | bytes, name: str | None = None) -> list[tuple[str, bytes]]:
    """Every file of a Qt binary resource file (.rcc, format versions 1 to 3), decompressed.

    source: a path, or the file's bytes (then name= names it in errors). Returns [(path, bytes)] sorted by path,
    with paths from the resource root without the leading "/" (":/gcompris/x.ogg" is "gcompris/x.ogg"). zlib
    entries are inflated; zstd entries need compression.zstd (Python 3.14+) or the zstandard module, else ValueError.
    Raises ValueError naming the archive when the magic or a structure is wrong or an entry points past the end."""
    data, archive = _load(source, name)
    rcc = _Rcc(data, archive)
    out: list[tuple[str, bytes]] = []
    _, flags, count, first = rcc.node(0)
    if not flags & RCC_DIRECTORY:
        raise ValueError(f"{archive}: the resource tree's root node is not a directory")
    todo = [(first, count, "")]
    seen = {0}
    while todo:
        first, count, prefix = todo.pop()
        for index in range(first, first + count):
            if index in seen:
                raise ValueError(f"{archive}: tree node {index} is reached twice (a corrupt, cyclic tree)")
            seen.add(index)
            name_off, flags, a, b = rcc.node(index)
            path = prefix + _safe_name(rcc.name(name_off), archive, prefix.rstrip("/") or "root")
            if flags & RCC_DIRECTORY:
                todo.append((b, a, path + "/"))
            else:
                out.append((path, rcc.blob(b, flags, path)))
    return sorted(out, key=lambda item: item[0])


READERS = {
    ".ocg": read_c4group,
    ".ocd": read_c4group,
    ".ocf": read_c4group,
    ".ocs": read_c4group,
    ".ocp": read_c4group,
    ".ocu": read_c4group,
    ".c4g": read_c4group,
    ".rcc": read_qt_rcc,
}


def main(argv: list[str] | None = None) -> list[tuple[str, bytes]]:
    """CLI: list an archive's files (size and path), or extract them under --out; returns the files."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.datasets.unpack_games", description=__doc__.split("\n\n")[0])
    ap.add_argument("archive", help="a c4group (.ocg .ocd .ocf ...) or a Qt resource file (.rcc)")
    ap.add_argument("--out", type=Path, help="extract the files under this folder (default: list them)")
    args = ap.parse_args(argv)
    try:
        data, archive = _load(args.archive, None)
        reader = READERS.get(Path(archive).suffix.lower(), read_qt_rcc if data[:4] == RCC_MAGIC else read_c4group)
        files = reader(data, name=archive)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for path, data in files:
        if args.out is None:
            print(f"{len(data):>10}  {path}")
            continue
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if args.out is not None:
        print(f"{len(files)} files written under {args.out}")
    return files


if __name__ == "__main__":
    main()
