"""docs/design.md's module table lists every module of the package, and nothing else.

A module that is missing from the table, or a row naming a file that no longer exists, fails
here: the table is how a newcomer finds where an idea lives, so it must not drift.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"


def table_entries() -> set[str]:
    """Paths named in the first column of the "## Modules" table. A bare name (`theory.py`)
    lives in the folder of the last full path before it in the same cell."""
    text = DOC.read_text()
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    entries: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            if "/" in name.rstrip("/"):
                entries.add(name)
                folder = name if name.endswith("/") else name.rsplit("/", 1)[0] + "/"
            else:
                entries.add(folder + name)
    return entries


def package_modules() -> set[str]:
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "s3t").rglob("*.py")}
    # A package's __init__ needs no row of its own unless it holds code worth finding.
    modules = {m for m in modules if not m.endswith("/__init__.py") or m == "s3t/cli/__init__.py"}
    return modules | {"s3t/service/page/"}


def test_every_module_is_in_the_design_doc_table() -> None:
    missing = sorted(package_modules() - table_entries())
    assert not missing, f"add a row for each to docs/design.md's module table: {missing}"


def test_the_design_doc_table_names_only_existing_modules() -> None:
    stale = sorted(e for e in table_entries() if not (ROOT / e).exists())
    assert not stale, f"docs/design.md's module table names files that do not exist: {stale}"
