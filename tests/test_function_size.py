"""No function of pipeline/ or models/ is longer than a screen: 80 lines from its def line to the last line of its
body (nested functions and methods count on their own too). A longer one is split into named steps, as engine.fit
is (set_up_fit, resume_fit, train_epoch, validate_epoch, write_checkpoints, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80


def long_functions(path: Path, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, def line, length in lines) of each function in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        (n.name, n.lineno, n.end_lineno - n.lineno + 1)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit
    ]


def test_no_function_longer_than_80_lines():
    files = sorted(p for pkg in ("pipeline", "models") for p in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 20
    long = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)" for p in files for name, line, n in long_functions(p)]
    assert long == [], f"functions over {MAX_LINES} lines (split them into named steps): " + ", ".join(long)


def test_long_function_is_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path / "m.py") == [("long", 5, MAX_LINES + 1)]
