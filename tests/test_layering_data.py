"""Layering: ``s3t.data`` is the bottom layer. Models may import data, never the reverse, and
loading data must not pull in torch or transformers (seconds of import time, and the CLI's
light commands stay light)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import s3t.data

DATA_DIR = Path(s3t.data.__file__).parent
FORBIDDEN = ("s3t.models", "s3t.train", "s3t.serve", "s3t.engine", "torch", "transformers", "peft")


def imported_modules(file: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_data_module_imports_models_or_torch_even_inside_functions():
    files = sorted(DATA_DIR.glob("*.py"))
    assert files
    bad = {
        f"{file.name}: {name}"
        for file in files
        for name in imported_modules(file)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"s3t.data must not import the model stack: {sorted(bad)}"


def run_isolated(code: str) -> None:
    """Run ``code`` in a fresh interpreter and fail with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_data_modules_loads_no_torch():
    run_isolated(
        "import s3t.data.loaders, s3t.data.images, s3t.data.instructions, s3t.data.subset, sys\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )


def test_loading_instruction_and_table_data_loads_no_torch(tmp_path):
    jsonl = tmp_path / "chat.jsonl"
    rows = [{"id": f"q{i}", "instruction": f"colour of thing {i}?", "response": "red"}
            for i in range(6)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = tmp_path / "texts.csv"
    table.write_text("id,text,label\n" + "".join(f"t{i},text {i},{'ab'[i % 2]}\n" for i in range(6)),
                     encoding="utf-8")
    run_isolated(
        "import sys\n"
        "from s3t.data.instructions import parse_instruction\n"
        "from s3t.data.loaders import load_source\n"
        f"data = load_source({str(jsonl)!r}, limit=4, seed=1)\n"
        "assert len(data) == 4 and parse_instruction(data.texts[0])[1] == 'red'\n"
        f"data = load_source('instruct:' + {str(jsonl)!r})\n"
        "assert len(data) == 6\n"
        f"data = load_source({str(table)!r}, limit=4)\n"
        "assert len(data) == 4 and data.label_names == ['a', 'b']\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )


def test_instruction_helpers_round_trip():
    from s3t.data.instructions import instruction_text, parse_instruction

    text = instruction_text("Qu'est-ce qu'un chat ?", "Un félin.")
    assert "félin" in text, "stored as readable UTF-8, not escaped"
    assert parse_instruction(text) == ("Qu'est-ce qu'un chat ?", "Un félin.")
    assert parse_instruction({"instruction": "a", "response": "b"}) == ("a", "b")


def test_limit_indices_is_seeded_stratified_and_sorted_by_id():
    from s3t.data.samples import Dataset
    from s3t.data.subset import limit_indices

    data = Dataset(ids=[f"s{i:02d}" for i in range(20)], texts=[""] * 20,
                   labels=[0] * 15 + [1] * 5, label_names=["x", "y"])
    chosen = limit_indices(data, 8, seed=3)
    assert chosen == limit_indices(data, 8, seed=3)
    assert chosen == sorted(chosen, key=lambda i: data.ids[i])
    assert sum(data.labels[i] for i in chosen) == 2, "class-proportional: 6 of class 0, 2 of 1"
    assert limit_indices(data, 50, seed=0) == list(range(20))
