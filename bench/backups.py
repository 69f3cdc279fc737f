"""Backups taken during a stream of deletions, restored with replay: 0 resurrected samples.

Each trial copies one trained, signed run, starts a thread that deletes samples one request at
a time (its own connection, as a server's deletion path), takes `backup` while it runs, lets
the stream finish, then `restore --replay` from the run's certificates folder (and, every
other trial, from an export taken after the stream). It counts acknowledged deletions whose
sample is retained in the restored run (resurrected), those whose text is still in any file
of the restored run, audits that fail, and `certificates --verify` failures. A restore
without a replay source must be refused every time.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from bench.harness import (
    backbone,
    parser,
    print_header,
    provenance,
    seeds_for,
    size_for,
    tmp_run_dir,
    write_result,
)

QUICK = {"n_train": 120, "trials": 10, "deletions": 8, "shards": 2, "slices": 2, "epochs": 1}
FULL = {"n_train": 240, "trials": 30, "deletions": 12, "shards": 2, "slices": 3, "epochs": 1}
SMOKE = {"n_train": 24, "trials": 2, "deletions": 4, "shards": 2, "slices": 2, "epochs": 1}


def retained_ids(run: Path) -> list[str]:
    conn = sqlite3.connect(run / "ledger.sqlite")
    try:
        return sorted(r[0] for r in conn.execute(
            "SELECT sample_id FROM samples WHERE deleted_version IS NULL"))
    finally:
        conn.close()


def texts(run: Path, ids: list[str]) -> dict[str, str]:
    conn = sqlite3.connect(run / "ledger.sqlite")
    try:
        return {sid: text for sid, text in conn.execute(
            f"SELECT sample_id, input FROM samples WHERE sample_id IN "
            f"({','.join('?' * len(ids))})", ids)}
    finally:
        conn.close()


def trial(source: Path, work: Path, key: Path, rng: random.Random, size: dict,
          use_export: bool) -> dict:
    from s3t.run import Run
    from s3t.run.backup import backup, restore

    run = work / "run"
    shutil.copytree(source, run)
    victims = rng.sample(retained_ids(run), size["deletions"])
    text_of = texts(run, victims)
    acknowledged: list[str] = []
    first = threading.Event()

    def stream() -> None:
        worker = Run.open(run)
        worker.signing_key_path = str(key)
        try:
            for sid in victims:
                worker.forget(sample_ids=[sid])
                acknowledged.append(sid)
                first.set()
        finally:
            worker.close()

    thread = threading.Thread(target=stream)
    thread.start()
    first.wait(60)
    time.sleep(rng.uniform(0, 0.05))
    opened = Run.open(run, repair=False)
    started = time.perf_counter()
    try:
        manifest = backup(opened, work / "backup")
    finally:
        opened.close()
    backup_s = time.perf_counter() - started
    thread.join(120)
    replay_from = run / "certificates"
    if use_export:
        opened = Run.open(run, repair=False)
        opened.export_certificates(work / "export")
        opened.close()
        replay_from = work / "export"
    refused = False
    try:
        restore(work / "backup", work / "refused", None, signing_key=str(key))
    except ValueError:
        refused = not (work / "refused").exists()
    started = time.perf_counter()
    result = restore(work / "backup", work / "restored", replay_from, signing_key=str(key))
    restore_s = time.perf_counter() - started
    restored = work / "restored"
    back = set(retained_ids(restored)) & set(acknowledged)
    blobs = b"".join(p.read_bytes() for p in restored.rglob("*") if p.is_file())
    # a text can be shared by several samples: only a text no retained sample has counts
    kept_texts = set(texts(restored, retained_ids(restored)).values())
    on_disk = [sid for sid in acknowledged if text_of[sid] not in kept_texts
               and text_of[sid].encode() in blobs]
    opened = Run.open(restored, repair=False)
    try:
        violations = opened.audit().violations
        from s3t.run.proof import verify_run

        verified = verify_run(opened, None)["intact"]
    finally:
        opened.close()
    return {"acknowledged": len(acknowledged), "in_backup": manifest["chain_head"]["sequence"],
            "replayed": result["replayed"], "resurrected": sorted(back),
            "text_on_disk": on_disk, "audit_violations": violations[:3],
            "verify_ok": verified, "refused_without_source": refused,
            "replay_source": "export" if use_export else "certificates",
            "backup_seconds": round(backup_s, 3), "restore_seconds": round(restore_s, 3)}


def campaign(seed: int, size: dict) -> dict:
    from s3t import S3T, S3TConfig
    from s3t.data.loaders import load_wordnet
    from s3t.run.signing import ENV, new_key

    rng = random.Random(seed)
    source = tmp_run_dir("backups")
    key = source.parent / "keys" / "run.key"
    key.parent.mkdir()
    new_key(key)
    import os

    os.environ[ENV] = str(key)  # the run is created signed
    data = load_wordnet(limit=size["n_train"], seed=seed)
    config = S3TConfig(model=backbone(), shards=size["shards"], slices=size["slices"],
                       epochs=size["epochs"], max_seq_len=32, seed=seed)
    S3T(config, run_dir=source).fit(data, progress=False).close()
    del os.environ[ENV]
    trials = []
    for n in range(size["trials"]):
        work = source.parent / f"trial-{n}"
        work.mkdir()
        trials.append(trial(source, work, key, rng, size, use_export=n % 2 == 1))
        shutil.rmtree(work)
        t = trials[-1]
        print(f"  trial {n + 1}: {t['acknowledged']} acknowledged, {t['in_backup']} in the "
              f"backup, {t['replayed']} replayed, resurrected {len(t['resurrected'])}, text on "
              f"disk {len(t['text_on_disk'])}, audit {'ok' if not t['audit_violations'] else 'FAILED'}",
              flush=True)
    return {"seed": seed, "trials": trials,
            "totals": {"trials": len(trials),
                       "acknowledged": sum(t["acknowledged"] for t in trials),
                       "replayed": sum(t["replayed"] for t in trials),
                       "resurrected": sum(len(t["resurrected"]) for t in trials),
                       "text_on_disk": sum(len(t["text_on_disk"]) for t in trials),
                       "audits_failed": sum(bool(t["audit_violations"]) for t in trials),
                       "verify_failed": sum(not t["verify_ok"] for t in trials),
                       "restores_without_source_refused": sum(t["refused_without_source"]
                                                              for t in trials)}}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    size = size_for(args, QUICK, FULL, SMOKE)
    seeds = seeds_for(args, [0], [0])
    prov = provenance("backups", args.quick, seeds, size)
    print_header(prov)
    runs = []
    for seed in seeds:
        print(f"seed {seed}: {size}", flush=True)
        runs.append(campaign(seed, size))
        print(f"seed {seed}: {runs[-1]['totals']}", flush=True)
    write_result("backups", args.quick, prov, {"runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
