"""The layering and size rules of docs/design.md, checked so they cannot silently erode."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
REASON = "Long on purpose:"  # a file over MAX_LINES says why in its first lines


def test_import_contracts_hold() -> None:
    """The import-linter contracts in pyproject.toml (layers; no torch on the deletion path)."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        lint = Path(shutil.which("lint-imports") or "lint-imports")
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "s3t").rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_long_without_a_reason(path: Path) -> None:
    lines = path.read_text().splitlines()
    if len(lines) > MAX_LINES:
        assert any(REASON in line for line in lines[:15]), (
            f"{path.relative_to(ROOT)} has {len(lines)} lines: split it, or say why at its top "
            f"({REASON!r})")


def test_deletion_path_imports_no_torch() -> None:
    """Opening a run, forgetting, status and audit: ledger and file work only."""
    code = ("import sys, s3t.run, s3t.plan, s3t.config, s3t.data.loaders; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'safetensors') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
