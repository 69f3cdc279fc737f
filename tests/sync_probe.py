"""Run under ``strace -f -e trace=fsync,fdatasync`` by tests/test_deletion_syncs.py: single-sample
deletions of a run, first in process (``Run.forget``), then through the HTTP endpoint
(``POST /v1/deletions``, a TestClient on a second copy of the run). Before each deletion it
calls ``fdatasync(MARK_FD)`` on a descriptor that is not open: it fails at once and marks
the trace where the deletion starts.

    python tests/sync_probe.py RUN_IN_PROCESS RUN_HTTP N
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

MARK_FD = 987_654


def mark() -> None:
    with contextlib.suppress(OSError):
        os.fdatasync(MARK_FD)


def victims(run_dir: Path, n: int) -> list[str]:
    """``n`` samples, alternately from two cells of shard 0 and then other cells, so that some
    deletions erase stages and some do not."""
    from s3t.run import Run

    run = Run.open(run_dir, repair=False)
    try:
        rows = run.ledger.conn.execute("SELECT sample_id FROM samples WHERE deleted_version IS NULL "
                                       "ORDER BY shard, slice, sample_id").fetchall()
    finally:
        run.close()
    return [r[0] for r in rows[::max(1, len(rows) // n)]][:n]


def main() -> None:
    from fastapi.testclient import TestClient

    from s3t.run import Run
    from s3t.service import create_app

    in_process, http, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    ids = victims(in_process, n)
    run = Run.open(in_process)
    for sid in ids:
        mark()
        run.forget(sample_ids=[sid])
    mark()
    run.close()
    ids = victims(http, n)
    with TestClient(create_app(http, token="t")) as client:
        for sid in ids:
            mark()
            response = client.post("/v1/deletions", json={"sample_ids": [sid]},
                                   headers={"Authorization": "Bearer t"})
            assert response.status_code == 200, response.text
        mark()


if __name__ == "__main__":
    main()
