"""How many fsyncs one deletion pays (docs/design.md, "What a deletion syncs"): counted with
strace in a child process, in process and over HTTP, so that a change that adds one fails.
Without strace (or where ptrace is refused) the strace test is skipped; the Python-level
count and the recovery of what a deletion no longer syncs are tested everywhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sync_probe import MARK_FD
from tiny import copy_run

from s3t.run import Run

PROBE = Path(__file__).with_name("sync_probe.py")
#: A steady-state deletion: the scrub checkpoint's WAL sync (which makes the unsynced commit
#: durable) and database sync, and the WAL header sync of the outcome's transaction (the
#: table in docs/design.md).
SYNCS_PER_DELETION = 3
#: A process's first deletion also syncs a new WAL file's header and, once, the run
#: directory (SQLite, for the WAL file's entry).
FIRST_DELETION_EXTRA = 2
N = 4


def strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-e", "trace=fsync", "true"], capture_output=True)
    return probe.returncode == 0


def segments(trace: str) -> list[list[str]]:
    """The fsync/fdatasync calls between consecutive marks (``sync_probe.MARK_FD``)."""
    out: list[list[str]] = []
    for line in trace.splitlines():
        call = re.search(r"\bf(?:data)?sync\((\d+)", line)
        if call is None:
            continue  # a call's "resumed" half: counted where it started
        if int(call.group(1)) == MARK_FD:
            out.append([])
        elif out:
            out[-1].append(line)
    return out


@pytest.mark.skipif(not strace_works(), reason="needs strace (ptrace permitted)")
def test_a_deletion_pays_the_documented_syncs_in_process_and_over_http(trained, tmp_path):
    a = copy_run(trained, tmp_path / "a")
    b = copy_run(trained, tmp_path / "b")
    trace = tmp_path / "trace.txt"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace),
         sys.executable, str(PROBE), str(a), str(b), str(N)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-3000:]
    parts = segments(trace.read_text())
    # N deletions in process, the close, then N over HTTP and the server's stop
    assert len(parts) == 2 * N + 2, trace.read_text()[-3000:]
    in_process, http = parts[:N], parts[N + 1:2 * N + 1]
    for name, deletions in (("in process", in_process), ("over HTTP", http)):
        counts = [len(d) for d in deletions]
        assert counts[0] <= SYNCS_PER_DELETION + FIRST_DELETION_EXTRA, (name, deletions[0])
        assert counts[1:] == [SYNCS_PER_DELETION] * (N - 1), (name, deletions)
    # the deletions were real: each erased its samples
    for run_dir in (a, b):
        run = Run.open(run_dir)
        try:
            assert run.ledger.deletion_count() == N
        finally:
            run.close()


def test_no_python_level_sync_in_a_deletion(trained, tmp_path, monkeypatch):
    """The certificate copy, the erased stage directories and stale feature blocks are not
    synced by a deletion (SQLite's syncs are in C: the strace test counts them)."""
    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, _real=real, _name=name: (
            calls.append(_name), _real(fd))[1])
    try:
        sid = run.ledger.cell_samples(0, 0)[0][0]
        _, certificate = run.forget(sample_ids=[sid])
    finally:
        run.close()
    assert certificate["erased_stages"] and certificate["files_erased"]
    assert calls == []


@pytest.mark.parametrize("torn", [b"", b'{"request_id": "abc", "sam', b"\0" * 600, b"[]"])
def test_a_certificate_file_torn_by_a_power_loss_is_rewritten_on_open(trained, tmp_path,
                                                                       torn):
    """A deletion does not sync its certificate copy: a power loss can leave it empty, cut
    short or full of zeros. Opening the run rewrites it from the ledger; audit then passes."""
    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    _, certificate = run.forget(sample_ids=[run.ledger.cell_samples(1, 1)[0][0]])
    run.close()
    path = run_dir / "certificates" / f"{certificate['request_id']}.json"
    path.write_bytes(torn)
    run = Run.open(run_dir)
    try:
        assert json.loads(path.read_text()) == \
            run.ledger.certificate(certificate["request_id"]).to_dict()
        assert run.audit().ok
    finally:
        run.close()


def test_a_readable_certificate_file_that_differs_is_reported_not_rewritten(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    _, certificate = run.forget(sample_ids=[run.ledger.cell_samples(1, 1)[0][0]])
    run.close()
    path = run_dir / "certificates" / f"{certificate['request_id']}.json"
    edited = dict(certificate, samples=["someone-else"])
    path.write_text(json.dumps(edited))
    run = Run.open(run_dir)
    try:
        assert json.loads(path.read_text()) == edited
        assert any("differs" in v for v in run.audit().violations)
    finally:
        run.close()


def test_a_stage_directory_a_power_loss_brings_back_is_swept_on_open(trained, tmp_path):
    """A deletion does not sync the removal of erased stage directories: the ledger names
    them erased durably, and opening the run removes one that reappears."""
    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    record = next(r for r in run.ledger.stages("live") if r.shard == 0)
    saved = tmp_path / "saved"
    shutil.copytree(run.store.path(record.shard, record.key), saved)
    sid = run.ledger.cell_samples(0, record.prefix[0])[0][0]
    _, certificate = run.forget(sample_ids=[sid])
    run.close()
    assert record.key in certificate["erased_stages"]
    back = run_dir / "stages" / str(record.shard) / record.key
    assert not back.exists()
    shutil.copytree(saved, back)  # the un-synced removal undone
    run = Run.open(run_dir)
    try:
        assert not back.exists()
        assert run.audit().ok
    finally:
        run.close()


def test_a_deletion_whose_scrub_is_blocked_is_synced_before_anything_else(trained, tmp_path,
                                                                         monkeypatch):
    """The commit is not synced by itself: when a reader's snapshot blocks the scrub
    checkpoint (which would sync it), the WAL is synced before any file is erased."""
    from s3t.run.files import StageStore
    from s3t.run.ledger import Ledger

    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    events: list[str] = []
    real_sync, real_erase = Ledger.sync_wal, StageStore.erase_all
    monkeypatch.setattr(Ledger, "sync_wal", lambda self: (events.append("sync"),
                                                          real_sync(self))[1])
    monkeypatch.setattr(StageStore, "erase_all", lambda self, *a, **k: (
        events.append("erase"), real_erase(self, *a, **k))[1])
    reader = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM samples").fetchone()
        _, certificate = run.forget(sample_ids=[run.ledger.cell_samples(0, 0)[0][0]])
    finally:
        reader.close()
        run.close()
    assert certificate["ledger_scrubbed"] is False
    assert events == ["sync", "erase"]


def test_a_replay_syncs_what_it_answers_with(trained, tmp_path, monkeypatch):
    """A replay may answer with another process's commit that is not synced yet."""
    from s3t.run.ledger import Ledger

    run_dir = copy_run(trained, tmp_path)
    run = Run.open(run_dir)
    synced: list[int] = []
    real = Ledger.sync_wal
    monkeypatch.setattr(Ledger, "sync_wal", lambda self: (synced.append(1), real(self))[1])
    try:
        sid = run.ledger.cell_samples(1, 0)[0][0]
        plan, first = run.forget(sample_ids=[sid], client_key="k-1")
        assert plan.replay is None and synced == []
        plan, again = run.forget(sample_ids=[sid], client_key="k-1")
    finally:
        run.close()
    assert plan.replay == "client-key" and again["request_id"] == first["request_id"]
    assert synced == [1]
