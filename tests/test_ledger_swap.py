"""A run notices when its ledger is swapped under it, and the run alone decides replays.

Scenarios of issue 24 (each answered 200 before): while a server holds the run, its
``ledger.sqlite`` is replaced by an older copy (moved into place, as a restore does, or
copied over the file in place), deleted, or corrupted. The next deletion must be refused
(503, saying what changed), readiness and audit too, and no acknowledged deletion may be lost:
after the server stops, every acknowledged deletion is in the ledger at the path, or opening
the run is refused with the replay command to run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from test_cli_engine import invoke
from test_service import AUTH, free_port, samples_in, serving, start_server

from s3t.run import Run
from s3t.run.faults import FAULT_ENV, FAULT_EXIT
from s3t.run.storage import LedgerChangedError, LedgerDamagedError, RunFault, RunFileMissingError
from s3t.run.subject import SubjectOpening


def backup(run: Path, dest: Path) -> Path:
    """A consistent copy of the ledger (SQLite's backup API), as a backup tool takes it."""
    source, target = sqlite3.connect(run / "ledger.sqlite"), sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return dest


def swap(run: Path, how: str, older: Path) -> None:
    ledger = run / "ledger.sqlite"
    if how == "older-copy":  # a restore: the backup copied beside it, then moved into place
        staged = run / "ledger.sqlite.restoring"
        shutil.copyfile(older, staged)
        os.replace(staged, ledger)
    elif how == "older-copy-in-place":  # cp backup/ledger.sqlite run/ (same inode)
        shutil.copyfile(older, ledger)
    elif how == "deleted":
        ledger.unlink()
    elif how == "corrupted":  # garbage over the header and the first pages, in place
        with open(ledger, "r+b") as f:
            f.write(os.urandom(8192))
    else:
        raise AssertionError(how)


WHAT = {"older-copy": "replaced by another file", "older-copy-in-place": "overwritten",
        "deleted": "was deleted", "corrupted": "overwritten"}
AT_OPEN = {"older-copy": (LedgerChangedError, 8), "older-copy-in-place": (LedgerChangedError, 8),
           "deleted": (RunFileMissingError, 6), "corrupted": (LedgerDamagedError, 7)}


@pytest.mark.parametrize("how", list(WHAT))
def test_a_swapped_ledger_is_refused_within_one_request_and_nothing_acknowledged_is_lost(
        run_copy, tmp_path, how):
    ids = samples_in(run_copy, (0, 0), 2) + samples_in(run_copy, (1, 1), 2)
    older = backup(run_copy, tmp_path / "backup.sqlite")
    acknowledged = []
    with serving(run_copy) as client:
        for sid in ids[:2]:
            answer = client.post("/v1/deletions", json={"sample_ids": [sid]}, headers=AUTH)
            assert answer.status_code == 200, answer.text
            acknowledged.append(answer.json()["request_id"])
        assert client.get("/readyz").status_code == 200
        swap(run_copy, how, older)
        refused = client.post("/v1/deletions", json={"sample_ids": [ids[2]]}, headers=AUTH)
        assert refused.status_code == 503, refused.text  # the first request after the change
        body = refused.json()
        assert body["error"] == "unavailable" and WHAT[how] in body["message"]
        assert "--replay" in body["message"]
        again = client.post("/v1/deletions", json={"sample_ids": [ids[3]]}, headers=AUTH)
        assert again.status_code == 503  # and every one after it
        ready = client.get("/readyz")
        assert ready.status_code == 503 and WHAT[how] in ready.json()["reason"]
        assert client.get("/v1/audit", headers=AUTH).status_code == 503
        predicted = client.post("/v1/predict", json={"inputs": ["red cat"]}, headers=AUTH)
        assert predicted.status_code == 200  # serving goes on from what it holds (exact)
    error, code = AT_OPEN[how]
    with pytest.raises(error) as raised:
        Run.open(run_copy).close()
    assert "--replay" in str(raised.value)  # the replay, never a bare restore
    status = invoke("status", run_copy)
    assert status.exit_code == code and status.stderr.startswith("error: ")
    assert len(status.stderr.strip().splitlines()) == 1
    forgot = invoke("forget", run_copy, "--ids", ids[3])
    assert forgot.exit_code == code
    # Not lost: each acknowledged deletion's certificate is on disk, and a ledger without
    # them is refused until they are replayed.
    assert all((run_copy / "certificates" / f"{rid}.json").is_file() for rid in acknowledged)


def test_a_server_started_on_an_older_ledger_refuses_to_start(run_copy, tmp_path):
    older = backup(run_copy, tmp_path / "backup.sqlite")
    assert invoke("forget", run_copy, "--ids", samples_in(run_copy, (0, 0))[0]).exit_code == 0
    shutil.copyfile(older, run_copy / "ledger.sqlite")
    for extra in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (run_copy / extra).unlink(missing_ok=True)
    with pytest.raises(LedgerChangedError, match="behind the run's certificates"), \
            serving(run_copy):
        pass
    audit = invoke("audit", run_copy)  # audit opens without repair: it reports, first
    assert audit.exit_code == 1 and "behind the run's certificates" in audit.stdout
    assert "s3t restore" in audit.stdout


def test_a_retry_after_a_crash_between_commit_and_answer_is_a_replay(run_copy, tmp_path,
                                                                     monkeypatch):
    """Request K deletes [a, b], a deleted before by J; the server dies after K's commit,
    before answering. The retry with K must get K's certificate: no new (empty) certificate
    is committed into the chain. The client key is recorded in K's own transaction."""
    a, b = samples_in(run_copy, (0, 1), 2)
    with serving(run_copy) as client:
        assert client.post("/v1/deletions", json={"sample_ids": [a], "request_id": "J"},
                           headers=AUTH).status_code == 200
    port, log = free_port(), tmp_path / "server.log"
    monkeypatch.setenv(FAULT_ENV, "forget:after-commit")
    proc = start_server(run_copy, port, log)
    monkeypatch.delenv(FAULT_ENV)
    try:
        with pytest.raises(httpx.TransportError):
            httpx.post(f"http://127.0.0.1:{port}/v1/deletions", headers=AUTH, timeout=60,
                       json={"sample_ids": [a, b], "request_id": "K"})
        assert proc.wait(timeout=60) == FAULT_EXIT
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    committed = Run.open(run_copy, repair=False)
    try:
        k_request = committed.ledger.client_key("K")[1]
        count = committed.ledger.deletion_count()
    finally:
        committed.close()
    assert count == 2
    with serving(run_copy) as client:
        retry = client.post("/v1/deletions", json={"sample_ids": [b, a], "request_id": "K"},
                            headers=AUTH)
        assert retry.status_code == 200 and retry.headers["s3t-replayed"] == "true"
        certificate = retry.json()
        assert certificate["request_id"] == k_request
        assert certificate["samples"] == [b] and certificate["already_deleted"] == [a]
        assert client.get("/v1/deletions/K", headers=AUTH).json()["request_id"] == k_request
        assert client.get("/v1/audit", headers=AUTH).json()["ok"] is True
        other = client.post("/v1/deletions", json={"sample_ids": [a], "request_id": "K"},
                            headers=AUTH)
        assert other.status_code == 409  # the key with another body
    run = Run.open(run_copy, repair=False)
    try:
        assert run.ledger.deletion_count() == 2, "no empty certificate joined the chain"
    finally:
        run.close()


def test_run_faults_have_their_own_exit_codes_and_http_statuses():
    codes = {cls.__name__: (cls.exit_code, cls.http_status) for cls in RunFault.__subclasses__()}
    assert codes == {"ReadOnlyRunError": (3, 503), "RunPermissionError": (4, 503),
                     "DiskFullError": (5, 507), "RunFileMissingError": (6, 503),
                     "LedgerDamagedError": (7, 503), "LedgerChangedError": (8, 503)}


# --- an erasure request's follow-up writes (s3t.run.subject) -----------------------------------

HOOK = "http://127.0.0.1:9/hook"
FOLLOW_UPS = {  # the writes after a deletion: the subjects' thread makes them
    "advance": lambda ledger: ledger.advance_subjects(),
    "claim": lambda ledger: ledger.due_callbacks(time.time(), 5.0),
    "settle": lambda ledger: ledger.callback_done(
        ledger.conn.execute("SELECT MIN(id) FROM callbacks").fetchone()[0], True),
}


@pytest.mark.parametrize("write", list(FOLLOW_UPS))
@pytest.mark.parametrize("how", ["older-copy", "deleted"])
def test_an_erasure_s_follow_up_writes_refuse_a_swapped_ledger(run_copy, tmp_path, how, write):
    """Like a deletion: no state moves and no callback is claimed or settled in a ledger file
    the run no longer has."""
    older = backup(run_copy, tmp_path / "backup.sqlite")
    victim = samples_in(run_copy, (0, 0))[0]
    run = Run.open(run_copy)
    try:
        run.forget([victim], client_key="swap-1", subject=SubjectOpening(
            "swap-1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", (HOOK,)))
        ledger = run.ledger
        recorded = ledger.subject_request("swap-1")
        assert recorded["state"] == "erased" and recorded["callbacks_pending"] == 3
        swap(run_copy, how, older)
        with pytest.raises(LedgerChangedError, match=WHAT[how]):
            FOLLOW_UPS[write](ledger)
        # the file this connection holds is as it was: nothing advanced, claimed or settled
        assert ledger.subject_request("swap-1") == recorded
        assert ledger.conn.execute("SELECT SUM(attempts) FROM callbacks").fetchone()[0] == 0
        with pytest.raises(LedgerChangedError):  # and every later write is refused
            ledger.advance_subjects()
    finally:
        run.close()


def test_after_a_swap_no_erasure_callback_goes_out_and_the_log_says_why(run_copy, tmp_path,
                                                                        caplog):
    from test_dsr import SECRET, Receiver, erasure

    older = backup(run_copy, tmp_path / "backup.sqlite")
    receiver = Receiver(free_port())  # down at first: the first tries fail
    victim = samples_in(run_copy, (0, 0))[0]
    with caplog.at_level(logging.WARNING, logger="s3t.service"), serving(
            run_copy, callback_secret=SECRET, callback_allow=("127.0.0.1",),
            callback_backoff_s=2.0) as client:
        answer = client.post("/v1/dsr", json=erasure("swapped", [victim], [receiver.url]),
                             headers=AUTH)
        assert answer.status_code == 200 and answer.json()["callbacks_pending"] == 3, answer.text
        # the first round fails (receiver down) and is settled before the swap, so every later
        # claim is made after it: the next round is two seconds of back-off away
        deadline = time.monotonic() + 30
        while sum("failed, try 1 of" in r.getMessage() for r in caplog.records) < 3:
            assert time.monotonic() < deadline, "the first round of callbacks never ran"
            time.sleep(0.05)
        swap(run_copy, "older-copy", older)
        receiver.start()
        try:
            deadline = time.monotonic() + 30
            while not any("erasure requests" in r.getMessage() and
                          "replaced by another file" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.1)
            time.sleep(1.5)  # a retry or two more
        finally:
            receiver.kill()
    assert receiver.received == []  # nothing from a ledger the run no longer has
    line = next(r.getMessage() for r in caplog.records if "erasure requests" in r.getMessage())
    assert "--replay" in line and "Traceback" not in line
