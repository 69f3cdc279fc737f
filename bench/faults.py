"""Benchmark 10: reliability under kill -9 (a randomised fault campaign).

Why: a deletion is acknowledged only once it is durable, and no crash may leave a run that
breaks the exactness invariant. Each trial starts real `s3t` processes on one run (MiniLM on
WordNet nouns) and kills them with SIGKILL at a random moment:

* ``forget``: one `s3t forget` process, killed at a uniform random time between 0.3 and 1.3
  times its usual duration (timed uninterrupted first and again every ``RECALIBRATE``
  trials, as a shared machine's load drifts; start-up is the first part of it);
* ``parallel``: four `s3t forget` processes at once on different ids, each killed at its own
  random time (some finish);
* ``retrain``: one `s3t retrain`, killed at a uniform random time within an uninterrupted
  retrain's duration.

* ``swap`` (issue 24; ``--swap-only`` runs just these, on a smaller run): a process holds the
  run open as a server does and acknowledges deletions; a backup of the ledger was taken at a
  random point; then the ledger file is swapped under it: the backup moved into place (a
  restore), copied over it in place, the file deleted, or its first pages overwritten. Three
  more deletions follow. Counted: how many of them were acknowledged after the change (must be
  0: the first must be refused), and whether, when the run is opened again, every deletion
  acknowledged before is in the ledger or the open is refused naming the replay (0 lost).

After every kill -9 trial the run is opened as any command opens it (which finishes
interrupted erasures) and audited. Reported: trials, outcomes (applied / not applied), acknowledged
deletions lost (a process printed a certificate, but the ledger does not hold the deletion:
must be 0), audits failed after repair (must be 0), and whether a final uninterrupted
retrain restores full capacity with a passing audit.

    python -m bench faults [--quick] [--seeds 0] [--swap-only]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench import harness
from bench.harness import parser, print_header, provenance, seeds_for, size_for, tmp_run_dir, write_result

QUICK = {"n_train": 240, "forget_trials": 24, "parallel_trials": 4, "retrain_trials": 3,
         "epochs": 1, "shards": 2, "slices": 3, "swap_trials": 20}
FULL = {"n_train": 400, "forget_trials": 400, "parallel_trials": 60, "retrain_trials": 24,
        "epochs": 1, "shards": 2, "slices": 3, "swap_trials": 20}
#: Each kill -9 trial starts `s3t` processes: at the smoke size, one parallel trial of two
#: forgets and one retrain, killed within ``retrain_kill_s`` (no calibration retrain).
SMOKE = {"n_train": 40, "forget_trials": 0, "parallel_trials": 1, "retrain_trials": 1,
         "epochs": 1, "shards": 2, "slices": 2, "swap_trials": 1, "parallel": 2,
         "retrain_kill_s": 5.0}
SWAP_ONLY = {"n_train": 120, "epochs": 1, "shards": 2, "slices": 2, "swap_trials": 20}
SWAPS = ("older-copy", "older-copy-in-place", "deleted", "corrupted")
PARALLEL = 4
RECALIBRATE = 25  # trials between two timings of an uninterrupted forget


def s3t_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "s3t.cli", *map(str, args)]


def spawn(*args: object) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen(s3t_cmd(*args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, delay: float) -> tuple[bool, str]:
    """SIGKILL ``proc`` after ``delay`` s unless it ended; return (finished with 0, stdout)."""
    try:
        out, _ = proc.communicate(timeout=delay)
        return proc.returncode == 0, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return False, ""


def ledger_state(run: Path) -> tuple[dict[str, str], list[str]]:
    """Deleted id -> request, and the retained ids, read from the ledger directly."""
    conn = sqlite3.connect(run / "ledger.sqlite")
    try:
        rows = conn.execute("SELECT sample_id, deleted_request FROM samples").fetchall()
    finally:
        conn.close()
    return ({sid: req for sid, req in rows if req is not None},
            sorted(sid for sid, req in rows if req is None))


def reopen_and_audit(run: Path) -> list[str]:
    from s3t.run import Run

    Run.open(run).close()  # repair: what every command does first
    opened = Run.open(run, repair=False)
    try:
        return opened.audit().violations
    finally:
        opened.close()


def capacity(run: Path) -> float:
    from s3t.run import Run

    opened = Run.open(run)
    try:
        return opened.status()["capacity"]
    finally:
        opened.close()


def timed(*args: object) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(s3t_cmd(*args), env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def swap_ledger(run: Path, how: str, older: Path) -> None:
    ledger = run / "ledger.sqlite"
    if how == "older-copy":  # a restore: the backup copied beside it, then moved into place
        staged = run / "ledger.sqlite.restoring"
        shutil.copyfile(older, staged)
        os.replace(staged, ledger)
    elif how == "older-copy-in-place":
        shutil.copyfile(older, ledger)
    elif how == "deleted":
        ledger.unlink()
    else:  # corrupted: garbage over the header and the first pages, in place
        with open(ledger, "r+b") as f:
            f.write(os.urandom(8192))


def swap_trial(base: Path, how: str, rng: random.Random) -> dict:
    """One swap trial on a fresh copy of ``base``; see the module docstring."""
    from s3t.run import Run
    from s3t.run.storage import LedgerChangedError, RunFault

    run = tmp_run_dir("swap")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run)
    holder = Run.open(run)  # the writing process: a server's records view, or `s3t forget`
    _, retained = ledger_state(run)
    victims = rng.sample(retained, 8)
    acknowledged: dict[str, str] = {}
    before_backup = rng.randint(0, 2)
    after_backup = rng.randint(1, 3)
    for sid in victims[:before_backup]:
        acknowledged[sid] = holder.forget([sid])[1]["request_id"]
    backup = run.with_name(run.name + "-backup.sqlite")
    source, target = sqlite3.connect(run / "ledger.sqlite"), sqlite3.connect(backup)
    source.backup(target)
    source.close()
    target.close()
    for sid in victims[before_backup:before_backup + after_backup]:
        acknowledged[sid] = holder.forget([sid])[1]["request_id"]
    swap_ledger(run, how, backup)
    after_change, refused_first = 0, None
    for n, sid in enumerate(victims[5:8]):
        try:
            holder.forget([sid])
            after_change += 1
        except LedgerChangedError:
            if refused_first is None:
                refused_first = n
    holder.close()
    lost, opened = [], "opened"
    try:
        reopened = Run.open(run)
    except RunFault as err:
        opened = f"refused: {type(err).__name__}" + ("" if "--replay" in str(err) else
                                                      " (without the replay command)")
    else:
        deleted, _ = ledger_state(run)
        lost = [sid for sid, rid in acknowledged.items() if deleted.get(sid) != rid]
        reopened.close()
    shutil.rmtree(run, ignore_errors=True)
    backup.unlink(missing_ok=True)
    return {"how": how, "acknowledged": len(acknowledged), "lost": lost,
            "acknowledged_after_change": after_change, "first_refused": refused_first,
            "reopen": opened}


def swap_campaign(run: Path, seed: int, trials: int) -> dict:
    rng = random.Random(seed + 1)
    results: dict[str, dict] = {}
    for how in SWAPS:
        outcomes = [swap_trial(run, how, rng) for _ in range(trials)]
        reopen: dict[str, int] = {}
        for o in outcomes:
            reopen[o["reopen"]] = reopen.get(o["reopen"], 0) + 1
        results[how] = {
            "trials": trials,
            "acknowledged_before_change": sum(o["acknowledged"] for o in outcomes),
            "acknowledged_lost": sum(len(o["lost"]) for o in outcomes),
            "acknowledged_after_change": sum(o["acknowledged_after_change"] for o in outcomes),
            "first_request_refused": sum(o["first_refused"] == 0 for o in outcomes),
            "reopen": reopen,
        }
        print(f"  swap {how}: {results[how]}", flush=True)
    return results


def train_base(seed: int, size: dict) -> Path:
    from s3t import S3T, S3TConfig
    from s3t.data.loaders import load_wordnet

    run = tmp_run_dir("faults")
    data = load_wordnet(limit=size["n_train"], seed=seed)
    config = S3TConfig(model=harness.backbone(),
                       shards=size["shards"], slices=size["slices"], epochs=size["epochs"],
                       max_seq_len=32, seed=seed)
    S3T(config, run_dir=run).fit(data, progress=False).close()
    return run


def campaign(seed: int, size: dict) -> dict:
    rng = random.Random(seed)
    parallel = size.get("parallel", PARALLEL)  # concurrent forget processes in a parallel trial
    run = train_base(seed, size)
    swaps = swap_campaign(run, seed, size["swap_trials"])  # on the untouched trained run

    # calibration: how long an uninterrupted forget and retrain take here
    _, retained = ledger_state(run)
    forget_s, done = timed("forget", run, "--ids", retained[0], "--json")
    assert done.returncode == 0, done.stderr
    if "retrain_kill_s" in size:  # smoke: kill within this window, no calibration retrain
        retrain_s = size["retrain_kill_s"]
    else:
        retrain_s, done = timed("retrain", run, "--json")
        assert done.returncode == 0, done.stderr
    counts = {"forget": {"applied": 0, "not_applied": 0, "acknowledged": 0},
              "parallel": {"applied": 0, "not_applied": 0, "acknowledged": 0},
              "retrain": {"completed": 0, "killed": 0}}
    lost: list[str] = []
    audit_failures: list[dict] = []
    maintenance = 0
    kinds = (["forget"] * size["forget_trials"] + ["parallel"] * size["parallel_trials"]
             + ["retrain"] * size["retrain_trials"])
    rng.shuffle(kinds)
    calibrations = [forget_s]
    for trial, kind in enumerate(kinds):
        deleted, retained = ledger_state(run)
        if trial and trial % RECALIBRATE == 0:  # the machine's load drifts: time a forget again
            forget_s, done = timed("forget", run, "--ids", retained[0], "--json")
            assert done.returncode == 0, done.stderr
            calibrations.append(forget_s)
            deleted, retained = ledger_state(run)
        if capacity(run) < 0.5 or len(retained) < parallel:
            ok, out = kill_after(spawn("retrain", run, "--json"), 3600)
            maintenance += 1
        if kind == "retrain":
            ok, _ = kill_after(spawn("retrain", run, "--json"), rng.uniform(0, retrain_s))
            counts["retrain"]["completed" if ok else "killed"] += 1
        else:
            ids = rng.sample(retained, parallel if kind == "parallel" else 1)
            procs = [(sid, spawn("forget", run, "--ids", sid, "--json")) for sid in ids]
            # Interpreter start-up is most of a forget process's life: kill within the later
            # part, where the commit and the erasure happen (4 processes share 2 cores).
            span = forget_s * (parallel / 2 if kind == "parallel" else 1.0)
            deadline = time.perf_counter()
            results = []
            for sid, proc in procs:
                remaining = deadline + rng.uniform(0.3 * span, 1.3 * span) - time.perf_counter()
                results.append((sid, *kill_after(proc, max(remaining, 0.0))))
            deleted, _ = ledger_state(run)
            for sid, acknowledged, out in results:
                applied = sid in deleted
                counts[kind]["applied" if applied else "not_applied"] += 1
                if acknowledged:
                    counts[kind]["acknowledged"] += 1
                    certificate = json.loads(out)
                    if deleted.get(sid) != certificate["request_id"]:
                        lost.append(sid)
        violations = reopen_and_audit(run)
        if violations:
            audit_failures.append({"trial": trial, "kind": kind, "violations": violations[:5]})
        if (trial + 1) % 20 == 0:
            print(f"  trial {trial + 1}/{len(kinds)}: lost {len(lost)}, "
                  f"audits failed {len(audit_failures)}", flush=True)
    final_s, done = timed("retrain", run, "--json")
    final = {"returncode": done.returncode, "seconds": final_s,
             "capacity": capacity(run) if done.returncode == 0 else None,
             "audit_violations": reopen_and_audit(run)}
    return {"seed": seed, "trials": len(kinds), "counts": counts,
            "acknowledged_lost": lost, "audits_failed_after_repair": audit_failures,
            "maintenance_retrains": maintenance, "swaps": swaps,
            "calibration_seconds": {"forget": calibrations[0], "retrain": retrain_s,
                                    "forget_recalibrated": calibrations}, "final": final}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--swap-only", action="store_true",
                   help="only the ledger-swap trials, on a smaller run (writes faults-swap.json)")
    args = p.parse_args(argv)
    if args.swap_only:
        seeds = seeds_for(args, [0], [0])
        prov = provenance("faults-swap", args.quick, seeds, SWAP_ONLY)
        print_header(prov)
        runs = [{"seed": seed, "swaps": swap_campaign(train_base(seed, SWAP_ONLY), seed,
                                                       SWAP_ONLY["swap_trials"])}
                for seed in seeds]
        write_result("faults-swap", args.quick, prov, {"runs": runs})
        return 0
    size = size_for(args, QUICK, FULL, SMOKE)
    seeds = seeds_for(args, [0], [0])
    prov = provenance("faults", args.quick, seeds, size)
    print_header(prov)
    runs = []
    for seed in seeds:
        print(f"seed {seed}: {size}", flush=True)
        runs.append(campaign(seed, size))
        r = runs[-1]
        print(f"seed {seed}: {r['trials']} trials, counts {r['counts']}, acknowledged lost "
              f"{len(r['acknowledged_lost'])}, audits failed {len(r['audits_failed_after_repair'])}, "
              f"final retrain rc {r['final']['returncode']} capacity {r['final']['capacity']}",
              flush=True)
    write_result("faults", args.quick, prov, {"runs": runs})
    # the campaign's swap trials are section 20's result too (as --swap-only writes it)
    swap_prov = provenance("faults-swap", args.quick, seeds, size)
    write_result("faults-swap", args.quick, swap_prov,
                 {"runs": [{"seed": r["seed"], "swaps": r["swaps"]} for r in runs]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
