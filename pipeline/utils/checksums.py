"""Checksums: a file's sha256 kept in a sidecar beside it (<name>.sha256, sha256sum's format), checked when it is
read (verify_checksum: a DamagedFile naming the file and how to write it again), moved with it
(move_with_checksum)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.utils.errors import UserError


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path) -> Path:
    """The checksum sidecar of a file save_torch writes: <name>.sha256, in sha256sum's format."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _sums(side: Path) -> list[str]:
    try:
        return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]
    except (OSError, IndexError):
        return []


class DamagedFile(UserError):
    """A file whose contents are not the ones recorded when it was written (a copy cut short, flipped bytes)."""


def verify_checksum(path, repair: str = "write it again"):
    """Raise DamagedFile naming `path` when its sidecar (checksum_path) records other contents; a file without a
    sidecar (written before checksums were kept, or brought from elsewhere) is taken as it is."""
    side = checksum_path(path)
    sums = _sums(side) if side.exists() else None
    if sums is not None and sha256_file(path) not in sums:
        raise DamagedFile(
            f"{path}: damaged: its sha256 is not the one {side.name} recorded when it was written "
            f"(a copy cut short or changed bytes); {repair}"
        )


def move_with_checksum(src, dst):
    """os.replace a file and its checksum sidecar (when it has one)."""
    os.replace(src, dst)
    if checksum_path(src).exists():
        os.replace(checksum_path(src), checksum_path(dst))
