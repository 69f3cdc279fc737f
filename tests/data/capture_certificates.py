"""Capture real certificates for ``certificates-main.json``: a tiny signed run, three
deletions, a backup after the second, a restore with ``--replay``; prints, per certificate,
the ledger row's JSON text, the certificate file's text and the chain digest.

Run from the repository root on the version whose bytes are to be pinned:
``python tests/data/capture_certificates.py WORKDIR OUT.json`` (about 20 s on a CPU).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_cli_engine import invoke, write_csv  # noqa: E402
from tiny import make_tiny_bert, toy_dataset  # noqa: E402

from s3t.run.chain import certificate_sha256  # noqa: E402
from s3t.run.signing import new_key  # noqa: E402


def main(root: Path, out: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_bert(root / "tiny-bert")
    key = root / "run.key"
    new_key(key)
    data = toy_dataset(24, groups=True)
    run = root / "run"

    def cli(*args: object) -> None:
        result = invoke(*args)
        assert result.exit_code == 0, result.output

    cli("train", "--data", write_csv(root / "train.csv", data), "--out", run, "--model", model,
        "--shards", 2, "--slices", 2, "--budget", 2, "--epochs", 1, "--batch-size", 8,
        "--lora-r", 2, "--lora-alpha", 4, "--json", "--signing-key", key)
    group = next(g for g in data.groups if g)
    cli("forget", run, "--ids", f"{data.ids[0]},{data.ids[1]}", "--json", "--signing-key", key)
    cli("forget", run, "--groups", group, "--json", "--signing-key", key)
    cli("backup", run, root / "backup")
    cli("forget", run, "--ids", data.ids[5], "--json", "--signing-key", key)
    cli("restore", root / "backup", root / "restored", "--replay", run / "certificates",
        "--signing-key", key)
    certificates = []
    for directory in (run, root / "restored"):
        conn = sqlite3.connect(directory / "ledger.sqlite")
        for request_id, text in conn.execute(
                "SELECT request_id, certificate FROM deletions ORDER BY created_at, request_id"):
            certificates.append({
                "ledger_row": text,
                "file": (directory / "certificates" / f"{request_id}.json").read_text(),
                "sha256": certificate_sha256(json.loads(text))})
        conn.close()
    card = json.loads((run / "s3t.json").read_text())
    out.write_text(json.dumps({"signing_key": card["signing_key"],
                               "certificates": certificates}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
