"""Crashes at named fault points, concurrent processes and hostile run directories.

Every process here is a real `s3t` command in a fresh interpreter; a fault point makes it
exit abruptly (``os._exit``, like kill -9) where ``S3T_FAULT`` says. After each crash the run
is reopened, audited and the request re-issued.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli_engine import invoke, write_csv
from tiny import copy_run, toy_dataset

from s3t.engine import S3T
from s3t.run import Run, UnsafeRunError
from s3t.run.faults import FAULT_ENV, FAULT_EXIT, POINTS

FORGET_POINTS = [p for p in POINTS if p.startswith("forget:")]
TRAIN_POINTS = [p for p in POINTS if not p.startswith("forget:")]


def s3t(*args: object, fault: str | None = None, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "s3t.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("faults")
    train = write_csv(root / "train.csv", toy_dataset(40, groups=True))
    run = root / "run"
    result = invoke("train", "--data", train, "--out", run, "--model", tiny_bert, "--shards", 2,
                    "--slices", 2, "--budget", 2, "--epochs", 1, "--batch-size", 8,
                    "--lora-r", 2, "--lora-alpha", 4, "--json")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    return copy_run(trained, tmp_path)


def victim_in(run_dir: Path, shard: int) -> str:
    """A sample whose deletion invalidates several stages of ``shard``."""
    run = Run.open(run_dir)
    try:
        return run.ledger.cell_samples(shard, 0)[0][0]
    finally:
        run.close()


def deleted(run_dir: Path) -> dict[str, str]:
    """Deleted sample -> the request that deleted it, read from the ledger directly."""
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        rows = conn.execute(
            "SELECT sample_id, deleted_request FROM samples WHERE deleted_version IS NOT NULL")
        return dict(rows.fetchall())
    finally:
        conn.close()


def audit_ok(run_dir: Path) -> list[str]:
    run = Run.open(run_dir)  # with repair, as every command opens it
    run.close()
    run = Run.open(run_dir, repair=False)
    try:
        return run.audit().violations
    finally:
        run.close()


@pytest.mark.parametrize("point", FORGET_POINTS)
def test_forget_killed_at_a_fault_point_applies_fully_or_not_at_all(run_dir, point):
    victim = victim_in(run_dir, 0)
    crashed = s3t("forget", run_dir, "--ids", victim, "--json", fault=point)
    assert crashed.returncode == FAULT_EXIT, crashed.stderr
    applied = victim in deleted(run_dir)
    assert applied == (point != "forget:before-commit")
    assert audit_ok(run_dir) == [], "reopening finishes the interrupted erasure"
    again = s3t("forget", run_dir, "--ids", victim, "--json")
    assert again.returncode == 0, again.stderr
    certificate = json.loads(again.stdout)
    assert certificate["samples"] == [victim]
    if applied:
        assert certificate["request_id"] == deleted(run_dir)[victim], "the original certificate"
        # the open that finished the erasure and the scrub says so in the certificate
        assert certificate["files_erased"] is True and certificate["ledger_scrubbed"] is True
        on_disk = json.loads((run_dir / "certificates" /
                              f"{certificate['request_id']}.json").read_text())
        assert on_disk["files_erased"] is True and on_disk["ledger_scrubbed"] is True
    certificates = run_dir / "certificates"
    assert (certificates / f"{certificate['request_id']}.json").is_file(), "restored on open"
    assert not list(certificates.glob("*.tmp*")), "a crashed writer's temporary file is removed"
    assert deleted(run_dir) == {victim: certificate["request_id"]}
    assert audit_ok(run_dir) == []


@pytest.mark.parametrize("point", TRAIN_POINTS)
def test_retrain_killed_at_a_fault_point_leaves_an_exact_run_that_retrain_completes(run_dir,
                                                                                    point):
    assert s3t("forget", run_dir, "--ids", victim_in(run_dir, 0)).returncode == 0
    reference = run_dir.with_name("reference")
    shutil.copytree(run_dir, reference)
    if point == "retrain:after-quarantine":  # give the quarantine something to do
        stage = next(p for p in sorted((run_dir / "stages" / "1").iterdir()))
        (stage / "head.safetensors").write_bytes(b"damaged")
    crashed = s3t("retrain", run_dir, "--json", fault=point)
    assert crashed.returncode == FAULT_EXIT, crashed.stderr
    assert audit_ok(run_dir) == []
    done = s3t("retrain", run_dir, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["capacity"] == 1.0
    assert audit_ok(run_dir) == []
    if point == "train:after-stage-commit":  # bitwise what an uninterrupted retrain gives
        assert s3t("retrain", reference).returncode == 0
        got, want = S3T.load(run_dir).live_weights(), S3T.load(reference).live_weights()
        assert got.keys() == want.keys()
        for key in got:
            for name in ("adapter", "head"):
                a, b = getattr(got[key], name), getattr(want[key], name)
                assert all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_forgets_all_succeed_and_are_all_applied(run_dir):
    run = Run.open(run_dir)
    ids = [row[0] for shard in (0, 1) for sl in (0, 1) for row in run.ledger.cell_samples(shard, sl)[:2]]
    run.close()
    procs = {sid: s3t("forget", run_dir, "--ids", sid, "--json", wait=False) for sid in ids}
    certificates = {}
    for sid, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        certificates[sid] = json.loads(out)
    assert all(certificates[sid]["samples"] == [sid] for sid in ids)
    assert len({c["request_id"] for c in certificates.values()}) == len(ids)
    assert deleted(run_dir) == {sid: c["request_id"] for sid, c in certificates.items()}
    assert len(list((run_dir / "certificates").glob("*.json"))) == len(ids)
    assert audit_ok(run_dir) == []


def test_opening_the_run_during_a_retrain_never_removes_a_stage_it_writes(run_dir):
    assert s3t("forget", run_dir, "--ids", victim_in(run_dir, 0)).returncode == 0
    retrain = s3t("retrain", run_dir, "--json", fault="train:after-stage-write=1.0", wait=False)
    opened, deadline = 0, time.monotonic() + 120
    while retrain.poll() is None and time.monotonic() < deadline and opened < 2000:
        Run.open(run_dir).close()  # repair=True: the sweep every command runs
        opened += 1
    out, err = retrain.communicate(timeout=300)
    assert retrain.returncode == 0, err
    assert opened > 0 and json.loads(out)["capacity"] == 1.0
    assert audit_ok(run_dir) == [], "every live stage still has its files"


def lock_held(lock: Path) -> bool:
    """Whether a process holds a flock on ``lock``, read from /proc/locks: probing with a lock
    of our own could make the holder-to-be fail to take it."""
    suffix = f":{lock.stat().st_ino} "
    return any(" FLOCK " in line and suffix in line
               for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_second_retrain_is_refused_with_one_line(run_dir):
    """The first retrain is stopped (SIGSTOP) while it holds the lock, so the second finds it
    held however slowly it starts on a loaded machine; then the first goes on and finishes."""
    assert s3t("forget", run_dir, "--ids", victim_in(run_dir, 0)).returncode == 0
    lock = run_dir / ".retrain.lock"  # already there: training left it (unlocked)
    first = s3t("retrain", run_dir, fault="train:after-stage-write=1", wait=False)
    try:
        deadline = time.monotonic() + 120
        while not lock_held(lock) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # it holds the lock for a second after each stage
        assert lock_held(lock), "the first retrain never took the lock"
        second = s3t("retrain", run_dir)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 1
    assert second.stderr.startswith("error: another retrain") and "Traceback" not in second.stderr


# --- hostile run directories ------------------------------------------------------------------

@pytest.mark.parametrize("link", ["stages", "stages/0", "feature-cache"])
def test_symlinks_in_the_run_are_refused_and_nothing_outside_is_touched(run_dir, tmp_path, link):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    canary = outside / "keep" / "canary.txt"
    canary.write_text("still here")
    target = run_dir / link
    if target.exists():
        shutil.copytree(target, outside, dirs_exist_ok=True)
        shutil.rmtree(target)
    target.symlink_to(outside, target_is_directory=True)
    for command in (["status"], ["forget", "--ids", victim_in_unsafe(run_dir)], ["audit"]):
        result = s3t(command[0], run_dir, *command[1:])
        assert result.returncode != 0
        assert "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert canary.read_text() == "still here"
    with pytest.raises(UnsafeRunError):
        Run.open(run_dir)


def victim_in_unsafe(run_dir: Path) -> str:
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        return conn.execute("SELECT sample_id FROM samples ORDER BY sample_id").fetchone()[0]
    finally:
        conn.close()


def test_stray_entries_are_reported_never_deleted(run_dir):
    notes = run_dir / "stages" / "0" / "notes.txt"
    notes.write_text("mine")
    mine = run_dir / "stages" / "1" / "my-folder"
    mine.mkdir()
    assert s3t("status", run_dir).returncode == 0
    forgot = s3t("forget", run_dir, "--ids", victim_in(run_dir, 0), "--json")
    assert forgot.returncode == 0, forgot.stderr
    audit = s3t("audit", run_dir)
    assert audit.returncode == 1 and "notes.txt" in audit.stdout and "my-folder" in audit.stdout
    assert notes.read_text() == "mine" and mine.is_dir()


def test_a_damaged_stage_in_another_shard_does_not_block_a_deletion(run_dir):
    stage = next(p for p in sorted((run_dir / "stages" / "1").iterdir()))
    blob = bytearray((stage / "adapter.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (stage / "adapter.safetensors").write_bytes(bytes(blob))
    victim = victim_in(run_dir, 0)
    forgot = s3t("forget", run_dir, "--ids", victim, "--json")
    assert forgot.returncode == 0, forgot.stderr
    assert victim in deleted(run_dir)
    status = s3t("status", run_dir)
    assert status.returncode == 1 and "altered" in status.stderr, "status still reports it"


def test_an_edited_run_card_is_refused(run_dir):
    card = json.loads((run_dir / "s3t.json").read_text())
    card["config"]["shards"] = 5
    (run_dir / "s3t.json").write_text(json.dumps(card))
    result = s3t("forget", run_dir, "--ids", victim_in_unsafe(run_dir))
    assert result.returncode != 0 and "5 shards" in result.stderr
    assert deleted(run_dir) == {}


def test_a_card_rewrite_left_by_a_crash_is_swept_and_nothing_else(run_dir, tmp_path):
    """A writer killed between writing ``s3t.json.<pid>.tmp`` and renaming it leaves the old
    card in force; opening the run (no writer running) removes the leftover, never a file or
    a link that merely looks alike."""
    card = (run_dir / "s3t.json").read_bytes()
    leftover = run_dir / "s3t.json.4242.tmp"
    leftover.write_text('{"half": ')
    notes = run_dir / "s3t.json.notes.tmp"
    notes.write_text("mine")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = run_dir / "s3t.json.77.tmp"
    link.symlink_to(outside)
    assert s3t("status", run_dir).returncode == 0
    assert not leftover.exists()
    assert notes.read_text() == "mine" and link.is_symlink() and outside.read_text() == "keep"
    assert (run_dir / "s3t.json").read_bytes() == card


def test_a_run_whose_creation_was_interrupted_is_named_as_such(tmp_path, trained):
    """A ledger without its card (creation killed before the card's rename) is refused by
    train with a message that says what happened and what to do; nothing is changed."""
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(trained / "ledger.sqlite", half / "ledger.sqlite")
    before = (half / "ledger.sqlite").read_bytes()
    with pytest.raises(FileExistsError, match="creation was interrupted"):
        Run.refuse_existing(half)
    train = write_csv(tmp_path / "train.csv", toy_dataset(20))
    result = invoke("train", "--data", train, "--out", half, "--model", "unused")
    assert result.exit_code == 2 and "creation was interrupted" in result.stderr
    assert sorted(p.name for p in half.iterdir()) == ["ledger.sqlite"]
    assert (half / "ledger.sqlite").read_bytes() == before


def test_a_truncated_ledger_gives_one_line(run_dir):
    ledger = run_dir / "ledger.sqlite"
    ledger.write_bytes(ledger.read_bytes()[:1000])
    result = s3t("status", run_dir)
    assert result.returncode != 0 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr


def test_validation_samples_say_why_they_cannot_be_forgotten(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "train.csv", toy_dataset(24))
    val = dataclasses.replace(toy_dataset(6, seed=5), ids=[f"val-{i}" for i in range(6)])
    val_csv = write_csv(tmp_path / "val.csv", val)
    run = tmp_path / "run"
    assert invoke("train", "--data", train, "--eval", val_csv, "--out", run, "--model",
                  tiny_bert, "--shards", 1, "--slices", 2, "--epochs", 1, "--json").exit_code == 0
    result = s3t("forget", run, "--ids", val.ids[0])
    assert result.returncode == 2 and "validation samples cannot be forgotten" in result.stderr
    assert deleted(run) == {}


def test_a_crash_before_the_scrub_is_reported_until_the_wal_is_scrubbed(run_dir):
    """A serving process holds the ledger open; a forget dies after its commit: the deleted
    text may still be in the write-ahead log, and audit must say so until it is scrubbed."""
    reader = sqlite3.connect(run_dir / "ledger.sqlite")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM samples").fetchone()  # an open read snapshot
    victim = victim_in(run_dir, 0)
    assert s3t("forget", run_dir, "--ids", victim, fault="forget:after-commit").returncode == \
        FAULT_EXIT
    run = Run.open(run_dir)  # repair: erases the stages, cannot scrub past the reader
    try:
        assert any("write-ahead log" in v for v in run.audit().violations)
    finally:
        run.close()
    reader.execute("ROLLBACK")
    reader.close()
    assert audit_ok(run_dir) == []
    assert deleted(run_dir) and sqlite_meta(run_dir, "scrub_pending") is None


def sqlite_meta(run_dir: Path, key: str) -> str | None:
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def test_an_erased_stage_folder_that_cannot_be_removed_is_a_warning_not_a_failure(
        run_dir, monkeypatch, caplog):
    """One erased stage's folder the file system refuses to remove: every command still
    works (it used to fail them all), audit reports the folder, a later open removes it."""
    from test_cli_engine import invoke

    from s3t.run import StageStore

    victim = victim_in(run_dir, 0)
    forgot = s3t("forget", run_dir, "--ids", victim, "--json")
    assert forgot.returncode == 0, forgot.stderr
    key = json.loads(forgot.stdout)["erased_stages"][0]
    stuck = run_dir / "stages" / "0" / key
    stuck.mkdir()
    (stuck / "adapter.safetensors").write_bytes(b"left behind")
    real_erase = StageStore.erase

    def refuse(self, shard, key_, sync=True):
        if key_ == key:
            raise PermissionError(13, "Operation not permitted", str(stuck))
        return real_erase(self, shard, key_, sync)

    monkeypatch.setattr(StageStore, "erase", refuse)
    for command in (["status"], ["forget", "--ids", victim_in(run_dir, 1)], ["certificates"]):
        result = invoke(command[0], run_dir, *command[1:])
        assert result.exit_code == 0, (command, result.output, result.exception)
    assert "could not remove" in caplog.text
    audit = invoke("audit", run_dir)
    assert audit.exit_code == 1 and key in audit.stdout
    monkeypatch.undo()
    assert invoke("status", run_dir).exit_code == 0
    assert not stuck.exists() and audit_ok(run_dir) == []
