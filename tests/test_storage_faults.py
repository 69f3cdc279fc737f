"""Errors that tell the truth (issue 24, item 3): a read-only run directory, a full disk, a
permission refused, each with its own one-line message and exit status on the command line
and its own HTTP status (503, 507 for a full disk; never 500), and none advising a restore.
Reading commands work on a read-only run directory.

Real mounts where the machine allows them (a read-only bind mount, a small tmpfs filled up);
otherwise those tests skip with the reason, and the injected faults below still run.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cli_engine import invoke
from test_service import AUTH, samples_in, serving

from s3t.errors import describe
from s3t.run import Ledger, Run
from s3t.run.storage import DiskFullError, ReadOnlyRunError
from s3t.run.subject import SubjectOpening


def _mount(*args: object) -> None:
    try:
        subprocess.run(["mount", *map(str, args)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        pytest.skip(f"this machine cannot mount (`mount {' '.join(map(str, args))}`: "
                    f"{err} {detail.decode(errors='replace').strip()}); the injected-fault "
                    "tests cover the messages")


def _unmount(where: Path) -> None:
    """Unmount, after dropping connections the in-process commands left to the collector;
    lazily if something still holds a file there (a mount must never outlive its test)."""
    gc.collect()
    if subprocess.run(["umount", str(where)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen through a read-only bind mount at ``target``."""
    target.mkdir()
    _mount("--bind", source, target)
    try:
        _mount("-o", "remount,ro,bind", target)
        yield target
    finally:
        _unmount(target)


@contextmanager
def small_disk(where: Path, size_kib: int) -> Iterator[Path]:
    where.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", where)
    try:
        yield where
    finally:
        _unmount(where)


def fill(disk: Path) -> Path:
    """Write zeros until the device is full; return the filler (delete it to free space)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def deleted_count(run: Path) -> int:
    conn = sqlite3.connect(f"file:{run / 'ledger.sqlite'}?immutable=1", uri=True)
    try:
        return conn.execute("SELECT COUNT(deleted_version) FROM samples").fetchone()[0]
    finally:
        conn.close()


def one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert "backup" not in lines[0]  # never the restore that would bring deleted data back
    return lines[0]


# --- real mounts -------------------------------------------------------------------------------

def test_reading_commands_work_on_a_read_only_run_directory(run_copy, tmp_path):
    victim = samples_in(run_copy, (0, 0))[0]
    assert invoke("forget", run_copy, "--ids", victim).exit_code == 0
    with read_only_view(run_copy, tmp_path / "ro") as ro:
        for args in (["status", "--json"], ["audit", "--json"], ["certificates", "--json"],
                     ["predict", "--text", "red cat", "--json"], ["verify", "--json"]):
            result = invoke(args[0], ro, *args[1:])
            assert result.exit_code == 0, (args, result.output, result.exception)
        assert json.loads(invoke("audit", ro, "--json").stdout)["ok"] is True
        line = one_line(invoke("forget", ro, "--ids", samples_in(run_copy, (1, 0))[0]), 3)
        assert "read-only" in line and str(ro) in line
    assert deleted_count(run_copy) == 1


def test_a_full_disk_is_its_own_error_and_deletes_nothing(run_copy, tmp_path):
    size = sum(p.stat().st_size for p in run_copy.rglob("*") if p.is_file()) // 1024
    with small_disk(tmp_path / "disk", size + 512) as disk:
        run = disk / "run"
        shutil.copytree(run_copy, run)
        victim, other = samples_in(run, (0, 0), 2)
        with serving(run) as client:
            filler = fill(disk)
            answer = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
            assert answer.status_code == 507, answer.text
            assert answer.json()["error"] == "insufficient_storage"
            assert "no space left" in answer.json()["message"]
            assert client.get("/v1/status").status_code == 200  # reading goes on
            line = one_line(invoke("forget", run, "--ids", other), 5)
            assert "no space left" in line
            assert deleted_count(run) == 0
            filler.unlink()
            again = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
            assert again.status_code == 200, again.text
        assert deleted_count(run) == 1
        assert json.loads(invoke("audit", run, "--json").stdout)["ok"] is True


# --- injected faults (any machine) -----------------------------------------------------------

FAULTS = {
    "disk-full": (lambda: sqlite3.OperationalError("database or disk is full"), 5, 507,
                  "no space left"),
    "read-only": (lambda: OSError(errno.EROFS, "Read-only file system"), 3, 503, "read-only"),
    "permission": (lambda: sqlite3.OperationalError("attempt to write a readonly database"),
                   4, 503, "not writable"),
    "no-space-os": (lambda: OSError(errno.ENOSPC, "No space left on device"), 5, 507,
                    "no space left"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_storage_faults_in_a_deletion_have_their_own_status(run_copy, monkeypatch, fault):
    make, code, http, words = FAULTS[fault]

    def failing(self, *args, **kwargs):
        raise make()

    victim = samples_in(run_copy, (0, 0))[0]
    with serving(run_copy) as client:
        monkeypatch.setattr(Ledger, "commit_deletion", failing)
        answer = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        assert answer.status_code == http, answer.text
        assert words in answer.json()["message"] and "backup" not in answer.json()["message"]
        line = one_line(invoke("forget", run_copy, "--ids", victim), code)
        assert words in line
        monkeypatch.undo()
    assert deleted_count(run_copy) == 0


def test_a_run_directory_that_cannot_be_written_opens_read_only(run_copy, monkeypatch):
    """Where the machine cannot mount: the same path as a read-only mount takes."""
    import s3t.run.storage as storage

    monkeypatch.setattr(storage, "writable", lambda path: False)
    run = Run.open(run_copy)
    try:
        assert run.read_only and run.status()["deleted"] == 0
        with pytest.raises(ReadOnlyRunError, match="read-only"):
            run.forget([samples_in(run_copy, (0, 0))[0]])
    finally:
        run.close()
    assert invoke("status", run_copy).exit_code == 0
    one_line(invoke("forget", run_copy, "--ids", samples_in(run_copy, (0, 0))[0]), 3)


def test_disk_full_is_not_a_damaged_ledger():
    from s3t.run.storage import classify

    fault = classify(sqlite3.OperationalError("database or disk is full"), Path("/r"))
    assert isinstance(fault, DiskFullError) and "damaged" not in str(fault)


# --- an erasure request's follow-up writes (states after the deletion, callback bookkeeping) ---

class FaultyConnection:
    """A ledger's connection whose statements containing ``sql`` raise ``fault()``: a write
    that fails part-way through its transaction, as on a disk that fills or a mount that
    turns read-only meanwhile."""

    def __init__(self, conn: sqlite3.Connection, sql: str, fault):
        self.conn, self.sql, self.fault = conn, sql, fault

    def execute(self, statement: str, *args):
        if self.sql in statement:
            raise self.fault()
        return self.conn.execute(statement, *args)

    def executemany(self, statement: str, *args):
        if self.sql in statement:
            raise self.fault()
        return self.conn.executemany(statement, *args)

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


@pytest.mark.parametrize("fault", ["disk-full", "read-only", "no-space-os"])
def test_an_erasure_s_follow_up_writes_fail_whole_with_the_table_s_message(run_copy, fault):
    make, _, _, words = FAULTS[fault]
    victim = samples_in(run_copy, (0, 0))[0]
    run = Run.open(run_copy)
    try:
        run.forget([victim])
        # the same sample again, as an erasure request: recorded as exact (its callbacks
        # queued), answered with the first deletion; advancing it to erased is left to the
        # follow-up writes
        run.forget([victim], client_key="late", subject=SubjectOpening(
            "late", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", ("http://127.0.0.1:9/h",)))
        ledger, real = run.ledger, run.ledger.conn

        def snapshot() -> tuple:
            return (ledger.subject_request("late"), real.execute(
                "SELECT id, state, attempts, next_attempt, failed FROM callbacks ORDER BY id"
            ).fetchall())

        before = snapshot()
        assert before[0]["state"] == "exact" and len(before[1]) == 2
        first = before[1][0][0]
        for write, sql in ((lambda: ledger.advance_subjects(restore=False), "INSERT INTO callbacks"),
                           (lambda: ledger.due_callbacks(time.time(), 5.0), "UPDATE callbacks"),
                           (lambda: ledger.callback_done(first, True), "DELETE FROM callbacks"),
                           (lambda: ledger.callback_done(first, False, time.time() + 9),
                            "UPDATE callbacks")):
            ledger.conn = FaultyConnection(real, sql, make)
            try:
                with pytest.raises((sqlite3.Error, OSError)) as raised:
                    write()
            finally:
                ledger.conn = real
            failure = describe(raised.value, run_copy)
            assert failure is not None and failure.status in (503, 507), raised.value
            assert words in failure.message and "backup" not in failure.message
            assert snapshot() == before, sql  # nothing half-changed
        # the fault gone, the same writes go through
        assert ledger.advance_subjects(restore=False) == ["late"]
        assert ledger.subject_request("late")["state"] == "erased"
    finally:
        run.close()


def test_a_full_disk_holds_erasure_callbacks_back_with_its_message_until_freed(
        run_copy, tmp_path, caplog):
    from live import free_port
    from test_dsr import SECRET, Receiver, erasure

    size = sum(p.stat().st_size for p in run_copy.rglob("*") if p.is_file()) // 1024
    receiver = Receiver(free_port())  # down at first: the first tries fail
    with small_disk(tmp_path / "disk", size + 512) as disk:
        run = disk / "run"
        shutil.copytree(run_copy, run)
        victim = samples_in(run, (0, 0))[0]
        with caplog.at_level(logging.ERROR, logger="s3t.service"), serving(
                run, callback_secret=SECRET, callback_allow=("127.0.0.1",),
                callback_backoff_s=0.2) as client:
            answer = client.post("/v1/dsr", json=erasure("full-1", [victim], [receiver.url]),
                                 headers=AUTH)
            assert answer.status_code == 200, answer.text
            filler = fill(disk)
            deadline = time.monotonic() + 30
            while not [r for r in caplog.records if "no space left" in r.getMessage()]:
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.1)
            line = next(r.getMessage() for r in caplog.records
                        if "no space left" in r.getMessage())
            assert line.startswith("erasure requests: ") and "backup" not in line
            # from now on no callback can be claimed, so none is sent while the disk is full
            # (one claimed just before it filled was tried, and its outcome not recorded)
            receiver.start()
            try:
                time.sleep(1.5)
                assert receiver.received == []
                status = client.get("/v1/dsr/full-1", headers=AUTH).json()  # reads go on
                assert (status["state"], status["callbacks_pending"]) == ("erased", 3)
                filler.unlink()
                receiver.wait_for({"received", "exact", "erased"}, timeout=60)
                deadline = time.monotonic() + 30
                while client.get("/v1/dsr/full-1", headers=AUTH).json()["callbacks_pending"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            finally:
                receiver.kill()
        assert json.loads(invoke("audit", run, "--json").stdout)["ok"] is True


@pytest.mark.parametrize("fault", ["read-only", "permission"])
def test_the_erasure_thread_logs_a_storage_fault_as_the_table_s_line(run_copy, monkeypatch,
                                                                     caplog, fault):
    from test_dsr import SECRET, erasure

    make, _, _, words = FAULTS[fault]
    victim = samples_in(run_copy, (0, 0))[0]
    with caplog.at_level(logging.ERROR, logger="s3t.service"), serving(
            run_copy, callback_secret=SECRET, callback_allow=("127.0.0.1",),
            callback_backoff_s=0.1) as client:
        monkeypatch.setattr(Ledger, "due_callbacks", lambda self, *args: (_ for _ in ()).throw(
            make()))
        answer = client.post("/v1/dsr", json=erasure("ro-1", [victim], ["http://127.0.0.1:9/h"]),
                             headers=AUTH)
        assert answer.status_code == 200, answer.text  # the deletion itself was written
        deadline = time.monotonic() + 30
        while not [r for r in caplog.records if words in r.getMessage()]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
        monkeypatch.undo()
    record = next(r for r in caplog.records if words in r.getMessage())
    assert record.getMessage().startswith("erasure requests: ") and record.exc_info is None
    assert "backup" not in record.getMessage()
