"""`python -m bench service --under-retrain`: HTTP deletion latency while a retrain writes
stage files on the same disk (issue 25, item 7), and the fsyncs one deletion pays.

Why: a deletion is acknowledged only once it is durable, so each of its fsyncs waits for the
disk, and behind whatever else is being written: a background retrain writes and syncs stage
files on the same file system. On fresh copies of one trained run (MiniLM, WordNet), each
phase starts a real `s3t serve` subprocess and sends single-sample deletions of random
retained ids one at a time (a random pause between them), measuring each request to its
certificate on the client:

* ``fsyncs``: the server runs under ``strace -f -e trace=fsync,fdatasync``; the syncs it
  makes between one deletion's request and the next (it is otherwise idle) are that
  deletion's (the first is reported apart: SQLite creates its WAL file then);
* ``quiet``: nothing else runs on the server;
* ``retrain``: ``--retrain eager --retrain-delay 0`` on a run whose every shard a deletion
  emptied before the server started, so the background retrainer (a niced child process)
  trains and writes stage files throughout; only deletions sent while its job runs (read
  from ``GET /v1/jobs`` before and after) count, after its first stage started;
* ``retrain_writer``: the same, plus a process writing and fsyncing ``writer_mib`` MiB files
  on the same file system, as a retrain of a larger model writes its stage files.

Each phase also reports the deletion's own time in the server (the certificate's
``duration_ms``: commit, syncs, erasure, outcome) and, per request, what the HTTP path adds to
it (``http_over_core_ms``): measured in the same requests, so unlike the latency itself it
does not move with the disk's state on a shared machine.

The machine is shared (other jobs' load is recorded): CPU contention shows in every phase.
``--tag T`` names the result ``service-retrain<T>.json`` (``-before``: measured at the commit
before the fsync changes, for BENCHMARKS.md's before/after).
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import ClientError, Server, audit, http_client, lost_deletions

NAME = "service-retrain"
SIZE = {"train": 150, "test": 16, "shards": 3, "slices": 2, "epochs": 1, "max_seq_len": 32,
        "deletions": 40, "fsync_deletions": 8, "gap_ms": [30, 120], "writer_mib": 16,
        "max_phase_s": 420.0, "max_batch": 32, "max_wait_ms": 5.0}
SMOKE = dict(SIZE, train=40, shards=2, slices=2, max_seq_len=16, deletions=3,
             fsync_deletions=3, writer_mib=1, max_phase_s=120.0)
SYNC = re.compile(r"\bf(?:data)?sync\(\d+")


def strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-f", "-e", "trace=fsync", "true"],
                          capture_output=True).returncode == 0


def syncs_in(trace: Path) -> int:
    """fsync/fdatasync calls recorded so far (an interrupted call's "resumed" half is not
    counted twice)."""
    try:
        text = trace.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if SYNC.search(line))


async def delete_one(http: Any, sid: str) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"sample_id": sid}
    try:
        response = await http.post("/v1/deletions", json={"sample_ids": [sid]})
        row.update(ms=(time.perf_counter() - start) * 1000, status=response.status_code)
        body = response.json()
        if response.status_code == 200:
            row.update(request_id=body["request_id"], erased=len(body["erased_stages"]),
                       core_ms=body.get("duration_ms"), live_shards=body.get("live_shards"))
        else:
            row["error"] = body.get("error", "?")
    except ClientError as err:
        row.update(ms=(time.perf_counter() - start) * 1000, status=0, error=str(err))
    return row


async def job_running(http: Any) -> tuple[bool, dict[str, Any] | None]:
    """Whether the server's newest retrain job runs and has started a stage; that job."""
    response = await http.get("/v1/jobs")
    jobs = response.json().get("jobs", []) if response.status_code == 200 else []
    job = jobs[0] if jobs else None
    return bool(job and job["state"] == "running" and (job.get("current_stage")
                                                       or job.get("stages_done"))), job


async def deletions(base_url: str, token: str, ids: list[str], size: dict[str, Any],
                    rng: random.Random, retrain: bool, trace: Path | None = None
                    ) -> dict[str, Any]:
    """Up to ``size['deletions']`` deletions (``size['fsync_deletions']`` with a trace); with
    ``retrain`` only those a running job spans count, waiting for it to train first."""
    quota = size["fsync_deletions"] if trace is not None else size["deletions"]
    rows: list[dict[str, Any]] = []
    skipped = 0
    jobs_seen: dict[str, Any] = {}
    deadline = time.monotonic() + size["max_phase_s"]
    async with http_client(base_url, token, 2) as http:
        pending = iter(ids)
        while len(rows) < quota and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*size["gap_ms"]) / 1000)
            if retrain:
                running, job = await job_running(http)
                if not running:
                    await asyncio.sleep(0.2)  # a job starting or between jobs
                    continue
            before = syncs_in(trace) if trace is not None else 0
            sid = next(pending, None)
            if sid is None:
                break
            row = await delete_one(http, sid)
            if trace is not None:
                await asyncio.sleep(0.3)  # the server is idle otherwise: its syncs are done
                row["fsyncs"] = syncs_in(trace) - before
            if retrain:
                running, job = await job_running(http)
                if job is not None:
                    jobs_seen[job["id"]] = {k: job.get(k) for k in (
                        "state", "stages_done", "stages_total", "stages_discarded",
                        "stages_cancelled", "replans")}
                if not running:
                    skipped += 1
                    continue
            rows.append(row)
    acked = [r for r in rows if r["status"] == 200]
    out: dict[str, Any] = {
        "deletions": rows, "skipped_job_not_running": skipped, "jobs": jobs_seen,
        "latency_ms": harness.latency_summary([r["ms"] for r in acked]),
        "core_ms": harness.latency_summary([r["core_ms"] for r in acked
                                            if r.get("core_ms") is not None]),
        # what the HTTP path adds to the deletion itself, per request (same run, same load)
        "http_over_core_ms": harness.latency_summary([r["ms"] - r["core_ms"] for r in acked
                                                      if r.get("core_ms") is not None]),
        "acknowledged": len(acked), "failed": len(rows) - len(acked),
        "load_average_after": harness.load_average()}
    if trace is not None:
        counts = [r["fsyncs"] for r in acked]
        out["fsyncs_per_deletion"] = {"first": counts[0] if counts else None,
                                      "after_first": counts[1:],
                                      "median_after_first": sorted(counts[1:])[
                                          len(counts[1:]) // 2] if counts[1:] else None}
    return out


def empty_every_shard(run: Path) -> list[str]:
    """Delete one sample of slice 0 in every shard (in this process, before serving), so that
    no stage survives and the eager retrainer has the whole run to train."""
    from s3t.run import Run

    opened = Run.open(run, verify=False)
    try:
        victims = [opened.ledger.cell_samples(shard, 0)[0][0]
                   for shard in range(opened.config.shards)]
        opened.forget(sample_ids=victims)
    finally:
        opened.close()
    return victims


def start_writer(where: Path, mib: int) -> subprocess.Popen:
    """A process that writes and fsyncs ``mib`` MiB files in ``where`` until killed."""
    where.mkdir(parents=True, exist_ok=True)
    code = ("import os,sys\nblock=os.urandom(1<<20)\ni=0\nwhile True:\n"
            f" p=os.path.join(sys.argv[1],'stage-%d.bin'%(i%4))\n with open(p,'wb') as f:\n"
            f"  for _ in range({mib}): f.write(block)\n  f.flush(); os.fsync(f.fileno())\n"
            " i+=1\n")
    return subprocess.Popen([sys.executable, "-c", code, str(where)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def phase(name: str, pristine: Path, ids: list[str], token: str, token_file: Path,
          size: dict[str, Any], rng: random.Random, server_args: list[str]) -> dict[str, Any]:
    run = pristine.parent / f"phase-{name}"
    shutil.copytree(pristine, run)
    retrain = name.startswith("retrain")
    emptied = empty_every_shard(run) if retrain else []
    wrap: list[str] = []
    trace = None
    if name == "fsyncs":
        trace = run.parent / "fsyncs.strace"
        wrap = ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
    args = [*server_args, *(["--retrain", "eager", "--retrain-delay", "0"] if retrain else [])]
    writer = start_writer(run.parent / "writer", size["writer_mib"]) \
        if name == "retrain_writer" else None
    server = Server(run, token_file, size["max_batch"], size["max_wait_ms"],
                    run.parent / f"{name}.log", args, wrap=wrap).start()
    try:
        remaining = [i for i in ids if i not in emptied]
        result = asyncio.run(deletions(server.base_url, token, rng.sample(remaining,
                                                                          len(remaining)),
                                       size, rng, retrain, trace))
    finally:
        rc = server.stop()
        if writer is not None:
            writer.kill()
            writer.wait()
            shutil.rmtree(run.parent / "writer", ignore_errors=True)
    result.update(phase=name, server_args=args, exit_code=rc, startup_s=server.startup_s,
                  lost=lost_deletions(run, result["deletions"]), audit=audit(run))
    lat = result["latency_ms"]
    core, over = result["core_ms"], result["http_over_core_ms"]
    print(f"{name}: {lat.get('n', 0)} deletions, p50 {lat.get('p50', float('nan')):.1f} ms, "
          f"p99 {lat.get('p99', float('nan')):.1f} ms, max {lat.get('max', float('nan')):.1f} ms"
          f" (in forget: p50 {core.get('p50', float('nan')):.1f} ms, p99 "
          f"{core.get('p99', float('nan')):.1f} ms; HTTP over it: p50 "
          f"{over.get('p50', float('nan')):.1f} ms, p99 {over.get('p99', float('nan')):.1f} ms)"
          + (f"; fsyncs per deletion {result['fsyncs_per_deletion']}" if trace else "")
          + f"; lost {len(result['lost'])}; audit {'passed' if result['audit']['ok'] else 'FAILED'}"
          f"; load {result['load_average_after']}", flush=True)
    shutil.rmtree(run, ignore_errors=True)
    return result


def under_retrain(args: Any) -> int:
    """Entry point of ``python -m bench service --under-retrain``."""
    from bench.service import train_run

    size = dict(SMOKE if args.smoke else SIZE)
    seed = (args.seeds or [0])[0]
    prov = harness.provenance(NAME, False, [seed], size)
    prov["fsync_ms"] = harness.fsync_latency_ms()
    harness.print_header(prov)
    rng = random.Random(seed)
    run, ids, _ = train_run(size, seed)
    token = secrets.token_urlsafe(24)
    token_file = run.parent / "token.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    pristine = run.parent / "pristine"
    shutil.copytree(run, pristine)
    names = ["quiet", "retrain", "retrain_writer"]
    if strace_works():
        names.insert(0, "fsyncs")
    else:
        print("# strace is not available here: no fsync count", flush=True)
    phases = {name: phase(name, pristine, ids, token, token_file, size, rng,
                          args.server_args.split()) for name in names}
    loaded = phases["retrain"]["latency_ms"]
    met = bool(loaded.get("n")) and loaded["p99"] < 20
    checks = [{"target": "HTTP deletion p99 under 20 ms while a background retrain runs on "
                         "the same disk",
               "measured": f"p99 {loaded['p99']:.1f} ms, p50 {loaded['p50']:.1f} ms over "
                           f"{loaded['n']} deletions" if loaded.get("n") else "none measured",
               "met": met}]
    print(f"{'MET' if met else 'NOT MET'}: {checks[0]['target']}: {checks[0]['measured']}")
    prov["fsync_ms_end"] = harness.fsync_latency_ms()
    harness.write_result(NAME + args.tag, False, prov, {"seed": seed, "phases": phases,
                                                        "targets": checks})
    return 0
