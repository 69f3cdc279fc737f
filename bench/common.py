"""Shared benchmark plumbing: provenance (machine, versions, exact command), result files,
statistics and the WordNet train/test preparation every torch benchmark uses.

Every number in BENCHMARKS.md comes from a JSON file written here, so the JSON carries
everything needed to judge it: the command, the machine, its load, the versions and seeds.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# Nothing may be fetched from a model hub at run time: the model ships as a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
if str(REPO_DIR) not in sys.path:  # `python bench/x.py` from anywhere imports this checkout
    sys.path.insert(0, str(REPO_DIR))

PACKAGES = ("torch", "transformers", "peft", "numpy", "scipy", "safetensors", "s3t")


# --------------------------------------------------------------------------- provenance


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    """Total RAM in GiB from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def load_average() -> list[float] | None:
    """1/5/15-minute load average: the machine is shared, so timings need this context."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_probe_gflops(seconds: float = 0.3) -> float:
    """Float32 matmul throughput right now: on a shared machine this shows how much CPU the
    benchmark actually got (compare the value at the start and at the end of a run)."""
    a = np.random.default_rng(0).standard_normal((384, 384), dtype=np.float32)
    flops, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        flops += 2 * 384**3
    return round(flops / (time.perf_counter() - start) / 1e9, 1)


def machine_info() -> dict[str, Any]:
    """Cores (total and usable by this process), CPU model, RAM, OS, load, torch threads."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": usable,
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "load_average_start": load_average(),
        "cpu_probe_gflops_start": cpu_probe_gflops(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_threads"] = None
    return info


def versions() -> dict[str, str | None]:
    """Python and package versions that determine the numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether s3t/ had uncommitted changes when the run started."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--", "s3t")
    return {"commit": git("rev-parse", "HEAD"), "s3t_dirty": bool(status) if status is not None
            else None}


def command_line() -> str:
    """The exact command that produced a result, as it could be typed again."""
    exe = Path(sys.executable)
    with suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *sys.argv])


def provenance(name: str, quick: bool, seeds: Sequence[int], size: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to reproduce or discount a result."""
    return {
        "benchmark": name,
        "quick": quick,
        "command": command_line(),
        "argv": list(sys.argv),
        "cwd": str(Path.cwd()),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "start_unix": time.time(),
        "seeds": list(seeds),
        "size": size,
        "machine": machine_info(),
        "versions": versions(),
        "git": git_commit(),
    }


def print_header(prov: dict[str, Any]) -> None:
    """Print the command, machine and versions before any measurement."""
    m, v = prov["machine"], prov["versions"]
    print(f"# {prov['benchmark']} ({'quick' if prov['quick'] else 'default'} size) "
          f"{prov['timestamp']}")
    print(f"# command: {prov['command']}")
    print(f"# machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['cpu_affinity']} usable), "
          f"{m['ram_gib']} GiB RAM, torch threads {m['torch_threads']}, "
          f"load {m['load_average_start']}, matmul probe {m.get('cpu_probe_gflops_start')} GFLOP/s")
    print("# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"# seeds: {prov['seeds']}; size: {json.dumps(prov['size'], sort_keys=True)}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --quick and --seeds."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="small size (< 2 min on 2 cores); writes <name>-quick.json")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds to run (default depends on the size)")
    return p


def add_grid(p: argparse.ArgumentParser, shards: int = 2, slices: int = 3) -> argparse.ArgumentParser:
    """The --shards/--slices flags of the benchmarks that compare methods on one grid point."""
    p.add_argument("--shards", type=int, default=shards)
    p.add_argument("--slices", type=int, default=slices)
    return p


def size_for(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """The quick or default size, with --shards/--slices when the benchmark takes them."""
    size = dict(quick if args.quick else full)
    for key in ("shards", "slices"):
        if hasattr(args, key):
            size[key] = getattr(args, key)
    return size


def seeds_for(args: argparse.Namespace, quick_default: Sequence[int],
              full_default: Sequence[int]) -> list[int]:
    """Seeds from --seeds, else the size's default."""
    if args.seeds:
        return list(args.seeds)
    return list(quick_default if args.quick else full_default)


# --------------------------------------------------------------------------- results


def result_path(name: str, quick: bool, suffix: str = ".json") -> Path:
    """bench/results/<name>.json, or <name>-quick.json so quick runs never overwrite full ones."""
    return RESULTS_DIR / f"{name}{'-quick' if quick else ''}{suffix}"


def write_result(name: str, quick: bool, prov: dict[str, Any], payload: dict[str, Any]) -> Path:
    """Write provenance + payload; records the elapsed time and the final load average too."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    prov = dict(prov)
    if "start_unix" in prov:
        prov["elapsed_seconds"] = round(time.time() - prov["start_unix"], 1)
    prov["machine"] = dict(prov["machine"], load_average_end=load_average(),
                           cpu_probe_gflops_end=cpu_probe_gflops())
    path = result_path(name, quick)
    path.write_text(json.dumps({"provenance": prov, **payload}, indent=2, default=_json_default)
                    + "\n")
    print(f"# wrote {path.relative_to(REPO_DIR)}")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_result(name: str, quick: bool) -> dict[str, Any] | None:
    path = result_path(name, quick)
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    if not len(values):
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """n, mean, sample std (0 for one value), min, max."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"n": 0}
    return {"n": int(arr.size), "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max())}


def latency_summary(ms: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/max/mean of latencies in milliseconds."""
    if not len(ms):
        return {"n": 0}
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99), "max": float(max(ms)), "mean": float(np.mean(ms))}


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` holds the elapsed wall seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def fsync_latency_ms(n: int = 30) -> dict[str, float | int]:
    """Latency of write+fsync of 4 KiB on the temp filesystem: durable forgets pay this."""
    times = []
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        for _ in range(n):
            start = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - start) * 1000)
    return latency_summary(times)


# --------------------------------------------------------------------------- data


def wordnet_split(n_train: int, n_test: int, seed: int):  # noqa: ANN201 (s3t Dataset pair)
    """A seeded class-proportional WordNet noun subset split into train and test.

    The subset and the split both follow ``seed``, so seeds vary the data as well as the
    initialisation; every method within one seed sees exactly the same samples.
    """
    from s3t.data.loaders import load_wordnet, train_test_split

    data = load_wordnet(limit=n_train + n_test, seed=seed)
    return train_test_split(data, n_test, seed=seed)


_TMP_DIRS: list[Path] = []


def tmp_run_dir(tag: str) -> Path:
    """A fresh, empty run directory under the temp dir (never inside the repo).

    Removed when the process exits, unless BENCH_KEEP_RUNS=1 (to inspect a run).
    """
    parent = Path(tempfile.mkdtemp(prefix=f"s3t-bench-{tag}-"))
    if not _TMP_DIRS and os.environ.get("BENCH_KEEP_RUNS") != "1":
        atexit.register(_remove_tmp_dirs)
    _TMP_DIRS.append(parent)
    return parent / "run"


def _remove_tmp_dirs() -> None:
    for path in _TMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- plots


def pyplot():  # noqa: ANN201 (matplotlib module)
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig: Any, name: str, quick: bool) -> Path:
    path = result_path(name, quick, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    print(f"# wrote {path.relative_to(REPO_DIR)}")
    return path
