"""Backups that cannot resurrect deleted data: `s3t backup` snapshots a run while deletions go
on; `s3t restore --replay FROM` re-applies every deletion acknowledged after the snapshot
before the restored run appears; a restore without a replay source is refused, and
`--no-replay` records the gap in the certificate chain. bench/backups.py runs the
backup-during-deletions trial many times."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from test_audit_tamper import sql
from test_cli_engine import invoke, write_csv

from s3t.data.samples import Dataset
from s3t.run import Run
from s3t.run.backup import backup, restore
from s3t.run.signing import new_key


def secret_dataset(n: int = 40) -> Dataset:
    """Every text unique (``secret<id>``), so a text found in a file names its sample."""
    words = ["red", "green", "blue"]
    return Dataset(ids=[f"s{i:04d}" for i in range(n)],
                   texts=[f"{words[i % 3]} cat secret{i:04d}x" for i in range(n)],
                   labels=[i % 3 for i in range(n)], groups=[f"user{i // 4}" for i in range(n)],
                   label_names=words)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("backup")
    key = root / "keys" / "run.key"
    key.parent.mkdir()
    new_key(key)
    run = root / "run"
    result = invoke("train", "--data", write_csv(root / "train.csv", secret_dataset()), "--out",
                    run, "--model", tiny_bert, "--shards", 2, "--slices", 2, "--budget", 2,
                    "--epochs", 1, "--batch-size", 8, "--lora-r", 2, "--lora-alpha", 4, "--json",
                    "--signing-key", key)
    assert result.exit_code == 0, result.output
    return run, key


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    shutil.copytree(trained[0], tmp_path / "run")
    return tmp_path / "run"


def texts_on_disk(run_dir: Path, ids: list[str]) -> list[str]:
    """Ids whose text is still in any file of the run directory."""
    blobs = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    return [sid for sid in ids if f"secret{sid[1:]}x".encode() in blobs]


def deleting_during_backup(run_dir: Path, dest: Path, key: Path, ids: list[str]) -> list[str]:
    """Delete ``ids`` one request at a time from a thread (its own connection, like a server)
    while the backup is taken; return the ids whose deletion was acknowledged."""
    acknowledged: list[str] = []
    started = threading.Event()

    def delete() -> None:
        worker = Run.open(run_dir)
        worker.signing_key_path = str(key)
        try:
            for sid in ids:
                worker.forget(sample_ids=[sid])
                acknowledged.append(sid)
                started.set()
        finally:
            worker.close()

    thread = threading.Thread(target=delete)
    thread.start()
    started.wait(30)
    opened = Run.open(run_dir, repair=False)
    try:
        backup(opened, dest)
    finally:
        opened.close()
    thread.join(60)
    assert not thread.is_alive()
    return acknowledged


def test_a_backup_taken_during_deletions_restores_with_every_later_deletion_applied(
        run_dir, trained, tmp_path):
    key = trained[1]
    ids = [f"s{i:04d}" for i in range(0, 40, 3)][:10]
    acknowledged = deleting_during_backup(run_dir, tmp_path / "backup", key, ids)
    assert acknowledged == ids
    head = json.loads((tmp_path / "backup" / "backup.json").read_text())["chain_head"]
    assert head["sequence"] < len(ids), "the backup was taken while deletions went on"
    assert not (tmp_path / "backup" / "s3t.json").exists(), "a backup is not a servable run"
    restored = tmp_path / "restored"
    result = invoke("restore", tmp_path / "backup", restored, "--replay",
                    run_dir / "certificates", "--signing-key", key, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["replayed"] == len(ids) - head["sequence"]
    deleted = {r[0] for r in sql(restored, "SELECT sample_id FROM samples WHERE deleted_version "
                                 "IS NOT NULL")}
    assert set(acknowledged) <= deleted, "0 resurrected samples"
    status = json.loads(invoke("status", restored, "--json").stdout)
    assert status["deleted"] == len(ids)
    assert texts_on_disk(restored, acknowledged) == []
    assert json.loads(invoke("audit", restored, "--json").stdout)["ok"]
    assert invoke("certificates", restored, "--verify").exit_code == 0
    kinds = [json.loads(r[0]).get("kind") for r in sql(
        restored, "SELECT certificate FROM deletions ORDER BY created_at")]
    assert kinds[-1] == "restore"


def test_a_restore_without_a_replay_source_is_refused_and_no_replay_records_the_gap(
        run_dir, trained, tmp_path):
    key = trained[1]
    invoke("backup", run_dir, tmp_path / "backup")
    invoke("forget", run_dir, "--ids", "s0001", "--signing-key", key)
    refused = invoke("restore", tmp_path / "backup", tmp_path / "new", "--signing-key", key)
    assert refused.exit_code == 2 and "--replay FROM" in refused.stderr
    assert not (tmp_path / "new").exists()
    gap = invoke("restore", tmp_path / "backup", tmp_path / "new", "--no-replay",
                 "--signing-key", key, "--json")
    assert gap.exit_code == 0, gap.output
    certificate = json.loads(gap.stdout)["certificate"]
    assert certificate["kind"] == "restore-gap" and "not re-applied" in certificate["gap"]
    listing = json.loads(invoke("certificates", tmp_path / "new", "--json").stdout)
    assert listing["intact"] and listing["certificates"][-1]["request_id"] == \
        certificate["request_id"]
    assert invoke("certificates", tmp_path / "new", "--verify").exit_code == 0


def test_a_replay_source_that_does_not_extend_the_backup_or_is_forged_is_refused(
        run_dir, trained, tmp_path):
    key = trained[1]
    invoke("forget", run_dir, "--ids", "s0002", "--signing-key", key)
    opened = Run.open(run_dir, repair=False)
    backup(opened, tmp_path / "backup")
    opened.close()
    invoke("forget", run_dir, "--ids", "s0005", "--signing-key", key)
    other = tmp_path / "other"
    shutil.copytree(trained[0], other)
    invoke("forget", other, "--ids", "s0007", "--signing-key", key)
    with pytest.raises(ValueError, match="does not hold the backup's chain head"):
        restore(tmp_path / "backup", tmp_path / "a", other / "certificates",
                signing_key=str(key))
    forged = tmp_path / "forged"
    shutil.copytree(run_dir / "certificates", forged)
    for path in forged.glob("*.json"):
        certificate = json.loads(path.read_text())
        if certificate["sequence"] == 2:
            certificate["signature"]["record"] = "00" * 64
            path.write_text(json.dumps(certificate))
    with pytest.raises(ValueError, match="signature does not verify"):
        restore(tmp_path / "backup", tmp_path / "b", forged, signing_key=str(key))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".*restoring*"))
    ok = restore(tmp_path / "backup", tmp_path / "c", run_dir / "certificates",
                 signing_key=str(key))
    assert ok["replayed"] == 1
