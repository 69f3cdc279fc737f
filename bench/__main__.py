"""One runner for every benchmark (see bench/__init__.py for the commands)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from bench import harness
from bench.registry import BENCHMARKS, Benchmark, get

SUMMARY = "smoke-summary.json"


def run(bench: Benchmark, args: list[str]) -> int:
    """``bench.NAME.main(args)`` with ``python -m bench NAME args`` as the recorded command."""
    module = importlib.import_module(bench.module)
    sys.argv = [sys.argv[0], bench.name, *args]
    return int(module.main(args) or 0)


def cpu_seconds() -> float:
    """User+system CPU of this process and of its children that have been waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def smoke(names: list[str], results_dir: Path) -> int:
    """Each benchmark at its smoke size, one after another; a failure does not stop the
    others. Writes ``smoke-summary.json`` (per benchmark: ok, seconds, cpu_s, error) to the
    results directory; non-zero when any failed. ``cpu_s`` (user+system, children included)
    is what the smoke size is budgeted in: wall seconds depend on the machine's load."""
    results_dir.mkdir(parents=True, exist_ok=True)
    os.environ[harness.RESULTS_ENV] = str(results_dir.resolve())
    summary: dict[str, dict[str, object]] = {}
    for name in names:
        bench = get(name)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        if bench.smoke is None:
            summary[name] = {"ok": False, "seconds": 0.0, "error": "no smoke arguments"}
            continue
        print(f"=== smoke {name} {' '.join(bench.smoke)}", flush=True)
        try:
            rc = run(bench, list(bench.smoke))
            error = None if rc == 0 else f"exit status {rc}"
        except BaseException as err:  # noqa: BLE001 (report it, go on with the next one)
            if isinstance(err, KeyboardInterrupt):
                raise
            traceback.print_exc()
            error = f"{type(err).__name__}: {err}"[-2000:]
        seconds = round(time.perf_counter() - start, 1)
        cpu = round(cpu_seconds() - cpu_start, 1)
        summary[name] = {"ok": error is None, "seconds": seconds, "cpu_s": cpu, "error": error}
        print(f"=== smoke {name}: {'ok' if error is None else 'FAILED: ' + error} "
              f"({seconds} s, {cpu} s CPU)", flush=True)
        (results_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(s["ok"] for s in summary.values()) else 1


def run_all(args: list[str]) -> int:
    """Every benchmark in section order, one after another (never in parallel: they time the
    machine), each with ``args``; then the report. Stops at the first failure."""
    for bench in sorted(BENCHMARKS, key=lambda b: b.sections or (99,)):
        print(f"=== python -m bench {bench.name} {' '.join(args)}", flush=True)
        start = time.perf_counter()
        rc = run(bench, list(args))
        print(f"=== {bench.name} took {time.perf_counter() - start:.0f} s (exit {rc})", flush=True)
        if rc:
            return rc
    from bench import report

    return report.main([])


def list_benchmarks() -> str:
    rows = [f"{'name':<16} {'section':<12} purpose"]
    for b in BENCHMARKS:
        sections = ", ".join(map(str, b.sections)) or "-"
        rows.append(f"{b.name:<16} {sections:<12} {b.purpose}")
    rows.append(f"{'all':<16} {'-':<12} every benchmark in section order, then the report")
    rows.append(f"{'report':<16} {'-':<12} regenerate BENCHMARKS.md from bench/results/")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                epilog="NAME's own flags follow it: python -m bench NAME --help")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their sections")
    p.add_argument("--smoke", metavar="NAME", nargs="+",
                   help="run at the smoke size: 'all' or benchmark names")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="write results here instead of bench/results (smoke: a temp dir)")
    p.add_argument("name", nargs="?", help="the benchmark to run, 'all', or 'report'")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    args = p.parse_args(argv)
    if args.list:
        print(list_benchmarks())
        return 0
    if args.smoke:
        names = [b.name for b in BENCHMARKS] if args.smoke == ["all"] else args.smoke
        for name in names:
            get(name)  # unknown names fail before anything runs
        results = args.results_dir or Path(
            __import__("tempfile").mkdtemp(prefix="s3t-bench-smoke-"))
        print(f"# smoke results in {results}", flush=True)
        return smoke(names, results)
    if not args.name:
        p.error("name a benchmark (python -m bench --list), or --smoke all")
    if args.results_dir is not None:
        os.environ[harness.RESULTS_ENV] = str(args.results_dir.resolve())
    if args.name == "report":
        from bench import report

        return report.main(args.args)
    if args.name == "all":
        return run_all(args.args)
    return run(get(args.name), args.args)


if __name__ == "__main__":
    raise SystemExit(main())
