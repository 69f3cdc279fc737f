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
from s3t.run.forget import EmptyRequestError, ForgetRequestError, UnknownSamplesError
from s3t.service.errors import api_error

RUN = Path("/srv/s3t/runs/wordnet-run")


def samples() -> list[BaseException]:
    """One exception per entry of the table, in its order."""
    return [
        ConfigError("shards", "shards must be an integer >= 1, got 0"),
        UnknownSamplesError("unknown sample ids: ['nope']; nothing was deleted"),
        EmptyRequestError("empty deletion request: give at least one sample id or group"),
        ForgetRequestError("validation samples are never deletable: ['e1']"),
        NoLiveShardError("every shard lost its first slice: run `s3t retrain`"),
        DeletionLogError(f"{RUN}/ledger.sqlite: the certificate chain is broken"),
        IntegrityError(f"stage k1: file {RUN}/stages/0/k1/adapter.safetensors is missing; run "
                       "`s3t retrain`", "k1"),
        RetrainRunningError("another process is training stages of this run"),
        UnsafeRunError(f"{RUN}/stages is a symbolic link"),
        sqlite3.OperationalError("database is locked"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        sqlite3.DatabaseError("file is not a database"),
        PermissionError(13, "Permission denied", str(RUN / "stages")),
        ValueError("input 3 is not a string"),
        FileNotFoundError(2, "No such file or directory", str(RUN / "s3t.json")),
        OSError(28, "No space left on device", str(RUN / "ledger.sqlite")),
    ]


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
    served = api_error(samples()[6], RUN)
    assert served is not None and served.status == 503 and served.headers is None
    assert "s3t retrain" in served.message


def test_an_unknown_failure_is_left_to_the_caller(capsys):
    class Bug(Exception):
        pass

    assert describe(Bug("x")) is None and api_error(Bug("x")) is None
    with pytest.raises(Bug), engine_errors(run=RUN):
        raise Bug("x")
