"""One exception-to-error table (s3t/errors.py) read by both the command line and the HTTP
service: for every entry, the same exception gives the same one-line message, the entry's
exit status on the command line and its HTTP status in the service."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import typer

from s3t.cli.errors import engine_errors
from s3t.config import ConfigError
from s3t.errors import TABLE, describe
from s3t.run import (
    DeletionLogError,
    IntegrityError,
    NoLiveShardError,
    RetrainRunningError,
    UnsafeRunError,
)
from s3t.run.forget import (
    EmptyRequestError,
    ForgetRequestError,
    RequestKeyConflict,
    UnknownSamplesError,
)
from s3t.run.storage import (
    DiskFullError,
    LedgerChangedError,
    LedgerDamagedError,
    ReadOnlyRunError,
    RunFault,
    RunFileMissingError,
    RunPermissionError,
)
from s3t.service.errors import api_error

RUN = Path("/srv/s3t/runs/wordnet-run")


def samples() -> list[BaseException]:
    """One exception per entry of the table, in its order."""
    return [
        ReadOnlyRunError(f"the run directory {RUN} is read-only"),
        RunPermissionError(f"the run directory {RUN} is not writable by this process"),
        DiskFullError(f"no space left on the device holding {RUN}"),
        RunFileMissingError(f"{RUN}/ledger.sqlite is missing"),
        LedgerDamagedError(f"{RUN}/ledger.sqlite is damaged"),
        LedgerChangedError(f"{RUN}/ledger.sqlite was replaced"),
        RunFault(f"{RUN}: a storage fault"),
        ConfigError("shards", "shards must be an integer >= 1, got 0"),
        UnknownSamplesError("unknown sample ids: ['nope']; nothing was deleted"),
        RequestKeyConflict("request_id 'k' was already used for another deletion request"),
        EmptyRequestError("empty deletion request: give at least one sample id or group"),
        ForgetRequestError("validation samples are never deletable: ['e1']"),
        NoLiveShardError("every shard lost its first slice: run `s3t retrain`"),
        DeletionLogError(f"{RUN}/ledger.sqlite: the certificate chain is broken"),
        IntegrityError(f"stage k1: file {RUN}/stages/0/k1/adapter.safetensors is missing; run "
                       "`s3t retrain`", "k1"),
        RetrainRunningError("another process is training stages of this run"),
        UnsafeRunError(f"{RUN}/stages is a symbolic link"),
        sqlite3.OperationalError("database is locked"),
        sqlite3.DatabaseError("unsupported file format"),
        PermissionError(13, "Permission denied", "/data/train.csv"),  # not the run's
        ValueError("input 3 is not a string"),
        FileNotFoundError(2, "No such file or directory", "/data/train.csv"),
        OSError(5, "Input/output error", str(RUN / "ledger.sqlite")),
    ]


def test_raw_storage_failures_in_the_run_are_said_as_what_they_mean():
    """A full disk, a read-only or damaged ledger, a missing file: each its own kind, and
    none advises restoring a backup (which would bring deleted samples back)."""
    cases = {
        OSError(28, "No space left on device", str(RUN / "ledger.sqlite")): "insufficient_storage",
        sqlite3.OperationalError("database or disk is full"): "insufficient_storage",
        sqlite3.DatabaseError("file is not a database"): "damaged_ledger",
        PermissionError(13, "Permission denied", str(RUN / "stages")): "permission_denied",
        FileNotFoundError(2, "No such file or directory", str(RUN / "s3t.json")): "file_missing",
    }
    for exc, kind in cases.items():
        failure = describe(exc, RUN)
        assert failure is not None and failure.kind.kind == kind, (exc, failure)
        assert "restore it from a backup" not in failure.message
        assert "restore the run directory from a backup" not in failure.message


def cli_line(exc: BaseException, capsys) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as raised, engine_errors(run=RUN):
        raise exc
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return raised.value.exit_code, err.removeprefix("error: ").rstrip("\n")


def test_every_entry_has_a_sample_in_order():
    assert [describe(exc, RUN).kind for exc in samples()] == list(TABLE)


@pytest.mark.parametrize("index", range(len(TABLE)))
def test_cli_and_service_give_the_entrys_message_and_codes(index, capsys):
    exc, entry = samples()[index], TABLE[index]
    code, line = cli_line(exc, capsys)
    assert code == entry.exit_code
    assert line == describe(exc, RUN).message
    served = api_error(exc, RUN)
    if entry.status is None:  # not the client's doing: a logged 500 in the service
        assert served is None
        return
    assert served is not None and served.status == entry.status
    # the same message, the run directory shown by its name only
    assert served.message == line.replace(str(RUN), RUN.name)
    assert "/srv/" not in served.message
    retry = None if served.headers is None else served.headers.get("Retry-After")
    assert retry == (None if entry.retry_after is None else str(entry.retry_after))


def test_a_damaged_stage_tells_to_retrain_and_is_not_retried():
    served = api_error(next(e for e in samples() if type(e) is IntegrityError), RUN)
    assert served is not None and served.status == 503 and served.headers is None
    assert "s3t retrain" in served.message


def test_an_unknown_failure_is_left_to_the_caller(capsys):
    class Bug(Exception):
        pass

    assert describe(Bug("x")) is None and api_error(Bug("x")) is None
    with pytest.raises(Bug), engine_errors(run=RUN):
        raise Bug("x")
