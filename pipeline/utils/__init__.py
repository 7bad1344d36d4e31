"""Shared plumbing, one module per trade. It stands on nothing of the project (no pipeline or models import outside
pipeline/utils/; tests/test_imports.py): what needs the process world (device choice, the rank-aware logger) lives in
pipeline/distributed.py, above it.

    errors.py       errors and signals: UserError, a full disk, user_errors (one line, exit 2; Ctrl-C, SIGTERM)
    files.py        files written atomically, the temporaries a killed writer left, completion markers
    checksums.py    sha256 sidecars: written, checked, moved with their file
    torch_files.py  torch files saved with their checksum and read weights-only
    locks.py        file locks that processes share
    runlog.py       run logging: a run's folder, its log, its progress bars, the commit it ran
    precision.py    the autocast dtype and the fp16 gradient scaler
    memory.py       glibc's allocator kept from unmapping freed memory
    seeding.py      the global random generators seeded

Every name is importable from here: `from pipeline.utils import UserError, atomic_path`.
"""

from pipeline.utils.checksums import (
    CHECKSUM_SUFFIX,
    DamagedFile,
    checksum_path,
    move_with_checksum,
    sha256_file,
    verify_checksum,
)
from pipeline.utils.errors import (
    DISK_FULL,
    Terminated,
    UserError,
    check_free_space,
    disk_full,
    free_bytes,
    is_disk_full,
    is_user_error,
    position,
    set_position,
    size_text,
    user_errors,
)
from pipeline.utils.files import (
    atomic_path,
    atomic_to_csv,
    atomic_write_json,
    atomic_write_text,
    is_done,
    mark_done,
    read_json,
    remove_stale_outputs,
    remove_stale_temps,
)
from pipeline.utils.locks import file_lock
from pipeline.utils.memory import keep_freed_memory
from pipeline.utils.precision import AMP_CHOICES, amp_dtype, make_scaler
from pipeline.utils.runlog import ROOT, get_logger, git_commit, progress, run_dir
from pipeline.utils.seeding import seed_everything
from pipeline.utils.torch_files import CONVERT_COMMAND, NotPlainWeights, load_torch, load_weights_only, save_torch

__all__ = [
    "AMP_CHOICES",
    "CHECKSUM_SUFFIX",
    "CONVERT_COMMAND",
    "DISK_FULL",
    "DamagedFile",
    "NotPlainWeights",
    "ROOT",
    "Terminated",
    "UserError",
    "amp_dtype",
    "atomic_path",
    "atomic_to_csv",
    "atomic_write_json",
    "atomic_write_text",
    "check_free_space",
    "checksum_path",
    "disk_full",
    "file_lock",
    "free_bytes",
    "get_logger",
    "git_commit",
    "is_disk_full",
    "is_done",
    "is_user_error",
    "keep_freed_memory",
    "load_torch",
    "load_weights_only",
    "make_scaler",
    "mark_done",
    "move_with_checksum",
    "position",
    "progress",
    "read_json",
    "remove_stale_outputs",
    "remove_stale_temps",
    "run_dir",
    "save_torch",
    "seed_everything",
    "set_position",
    "sha256_file",
    "size_text",
    "user_errors",
    "verify_checksum",
]
