"""Bulk deletions over HTTP: 10,000 sample ids in one request, end to end.

Why: a compliance back-end sends deletions in bulk; the issue asks for 10,000 ids per request
in under 1 s end to end, through both request shapes: ``POST /v1/deletions`` (ids) and
``POST /v1/dsr`` (an OpenDSR-shaped erasure, 10,000 ``sample_id`` identities, with its
states written in the deletion's transaction). A run of 12,000 samples (a MiniLM-shaped
encoder at width 32 with random weights, m=2, L=2, B=1, one epoch: the deletion path never
reads a stage's weights) is trained once; each repetition serves a fresh copy with ``s3t
serve`` (a subprocess on 127.0.0.1, ``--max-ids 10000``), deletes one other id to warm
the deletion path, and times, client side, from sending the request to the parsed answer
(the certificate or the request's status, files already erased). The shapes alternate in
order between repetitions. ``--baseline-repo DIR`` also serves each copy from another
checkout (e.g. main before this change), for ``/v1/deletions`` only, interleaved with the
others on the same machine.

    python -m bench bulk_deletion [--repeats 3] [--ids 10000] [--baseline-repo /work/main]
    python -m bench bulk_deletion --smoke    # runs end to end (measures nothing)
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from pathlib import Path

from bench import harness

NAME = "bulk-deletion"
FULL = {"ids": 10_000, "samples": 12_000, "repeats": 3}
QUICK = dict(FULL, repeats=1)
SMOKE = {"ids": 100, "samples": 400, "repeats": 1}
WORDS = ["red", "green", "blue", "cat", "dog", "fish", "sun", "moon", "star", "tree"]


def train_run(root: Path, n: int) -> Path:
    from s3t.config import S3TConfig
    from s3t.data.samples import Dataset
    from s3t.engine import S3T
    from s3t.models.adapted import default_model_dir

    model = root / "tiny-encoder"
    harness._build_tiny(str(default_model_dir()), model, layers=4)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]
    data = Dataset(ids=[f"sample-{i:06d}" for i in range(n)], texts=texts,
                   labels=[i % 3 for i in range(n)], label_names=["a", "b", "c"])
    config = S3TConfig(model=str(model), shards=2, slices=2, budget=1, epochs=1, batch_size=128,
                       max_seq_len=16, seed=0)
    run = root / "pristine"
    S3T(config, run_dir=run).fit(data, progress=False).close()
    return run


def measure(pristine: Path, root: Path, shape: str, ids: list[str], warm: str, token: str,
            token_file: Path, rep: int, baseline: Path | None = None) -> dict:
    import httpx

    run = root / f"{shape}-{rep}-{'baseline' if baseline else 'this'}"
    shutil.copytree(pristine, run)
    limits = ["--max-body-bytes", "2000000"] + ([] if baseline else ["--max-ids", str(len(ids))])
    checkout = harness.REPO_DIR
    harness.REPO_DIR = baseline or checkout  # the server's code (cwd and PYTHONPATH)
    try:
        server = harness.Server(run, token_file, 32, 5.0, root / "server.log", limits).start()
    finally:
        harness.REPO_DIR = checkout
    try:
        if shape == "deletions":
            path, body = "/v1/deletions", {"sample_ids": ids, "request_id": f"bulk-{rep}"}
        else:
            path, body = "/v1/dsr", {
                "subject_request_id": f"bulk-{rep}", "submitted_time": "2026-12-06T10:00:00Z",
                "subject_identities": [{"identity_type": "sample_id", "identity_value": i}
                                       for i in ids]}
        with httpx.Client(base_url=server.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            http.get("/v1/status").raise_for_status()  # a warm connection
            # and a warm deletion path (one id not in the timed request), as in service
            http.post("/v1/deletions", json={"sample_ids": [warm]}).raise_for_status()
            start = time.perf_counter()
            answer = http.post(path, json=body)
            answer.raise_for_status()
            record = answer.json()
            seconds = time.perf_counter() - start
        deleted = record["samples"] if shape == "dsr" else len(record["samples"])
        assert deleted == len(ids), record
        return {"shape": shape + ("-baseline" if baseline else ""),
                "seconds": round(seconds, 4), "ids": len(ids),
                "body_bytes": len(answer.request.content)}
    finally:
        server.stop()
        shutil.rmtree(run, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--ids", type=int, default=None)
    parser.add_argument("--baseline-repo", type=Path, default=None)
    args = parser.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    size.update({k: v for k, v in (("ids", args.ids), ("repeats", args.repeats)) if v})
    prov = harness.provenance(NAME, args.quick, [0], size)
    harness.print_header(prov)
    root = harness.tmp_run_dir(NAME).parent
    token = "bulk-token-" + "x" * 16
    token_file = root / "token"
    token_file.write_text(token)
    started = time.perf_counter()
    pristine = train_run(root, size["samples"])
    print(f"# trained the run in {time.perf_counter() - started:.1f} s")
    rng = random.Random(1)
    every = [f"sample-{i:06d}" for i in range(size["samples"])]
    trials = []
    for rep in range(size["repeats"]):
        shapes: list[tuple[str, Path | None]] = [("deletions", None), ("dsr", None)]
        if args.baseline_repo is not None:
            shapes.append(("deletions", args.baseline_repo.resolve()))
        for shape, baseline in shapes if rep % 2 == 0 else shapes[::-1]:
            ids = rng.sample(every, size["ids"] + 1)
            trial = measure(pristine, root, shape, ids[1:], ids[0], token, token_file, rep,
                            baseline)
            print(trial)
            trials.append(trial)
    summary = {shape: harness.summarize([t["seconds"] for t in trials if t["shape"] == shape])
               for shape in sorted({t["shape"] for t in trials})}
    print(summary)
    harness.write_result(NAME, args.quick, prov, {"trials": trials, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
