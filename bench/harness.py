"""Shared benchmark plumbing: provenance (machine, versions, exact command), result files,
statistics and the WordNet train/test preparation every torch benchmark uses.

Every number in BENCHMARKS.md comes from a JSON file written here, so the JSON carries
everything needed to judge it: the command, the machine, its load, the versions and seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ipaddress
import json
import json as _json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
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
#: Where results go instead of bench/results (the smoke test writes into a temp dir).
RESULTS_ENV = "S3T_BENCH_RESULTS"
#: Set while a benchmark runs at its smoke size (children inherit it): results get "-smoke".
SMOKE_ENV = "S3T_BENCH_SMOKE"

HOST = "127.0.0.1"  # loopback only: the load never leaves this machine
REQUEST_TIMEOUT_S = 60.0      # one HTTP request
STARTUP_TIMEOUT_S = 600.0     # the server loads the run and the backbone before it is ready
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


def cpu_probe_gflops(seconds: float | None = None) -> float:
    """Float32 matmul throughput right now: on a shared machine this shows how much CPU the
    benchmark actually got (compare the value at the start and at the end of a run). 0.3 s of
    CPU; 0.02 s at the smoke size (every result file written takes two)."""
    if seconds is None:
        seconds = 0.02 if smoke_active() else 0.3
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
    """The exact command that produced a result, as it could be typed again
    (``python -m bench NAME ...`` for a benchmark run through the runner)."""
    exe = Path(sys.executable)
    with suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    argv = list(sys.argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.parent == BENCH_DIR:
        argv[:1] = ["-m", "bench" if script.stem == "__main__" else f"bench.{script.stem}"]
    return shlex.join([str(exe), *argv])


def provenance(name: str, quick: bool, seeds: Sequence[int], size: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to reproduce or discount a result."""
    return {
        "benchmark": name,
        "quick": quick,
        "smoke": smoke_active(),
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
    label = "smoke" if prov.get("smoke") else "quick" if prov["quick"] else "default"
    print(f"# {prov['benchmark']} ({label} size) "
          f"{prov['timestamp']}")
    print(f"# command: {prov['command']}")
    print(f"# machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['cpu_affinity']} usable), "
          f"{m['ram_gib']} GiB RAM, torch threads {m['torch_threads']}, "
          f"load {m['load_average_start']}, matmul probe {m.get('cpu_probe_gflops_start')} GFLOP/s")
    print("# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"# seeds: {prov['seeds']}; size: {json.dumps(prov['size'], sort_keys=True)}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- arguments


class BenchParser(argparse.ArgumentParser):
    """Parses a benchmark's flags; ``--smoke`` implies ``--quick`` (the benchmark's small-size
    code paths) and marks the process as a smoke run (see :func:`smoke_active`)."""

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 (as argparse)
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "smoke", False):
            parsed.quick = True
            start_smoke()
        return parsed


def start_smoke() -> None:
    """Mark this process (and its children) as a smoke run; its results go to a fresh temp
    directory unless one was named: smoke results never land in bench/results."""
    os.environ[SMOKE_ENV] = "1"
    if not os.environ.get(RESULTS_ENV):
        os.environ[RESULTS_ENV] = tempfile.mkdtemp(prefix="s3t-bench-smoke-")
        print(f"# smoke results in {os.environ[RESULTS_ENV]}", flush=True)


def smoke_active() -> bool:
    """Whether this process runs a benchmark at its smoke size (or is a child of one)."""
    return os.environ.get(SMOKE_ENV) == "1"


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --quick, --smoke and --seeds."""
    runner = len(sys.argv) > 1 and Path(sys.argv[0]).resolve() == BENCH_DIR / "__main__.py"
    p = BenchParser(prog=f"python -m bench {sys.argv[1]}" if runner else None,
                    description=description)
    p.add_argument("--quick", action="store_true",
                   help="small size (< 2 min on 2 cores); writes <name>-quick.json")
    p.add_argument("--smoke", action="store_true",
                   help="tiny size (seconds; checks that the benchmark runs, measures nothing); "
                        "writes <name>-smoke.json")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds to run (default depends on the size)")
    return p


def add_grid(p: argparse.ArgumentParser, shards: int = 2, slices: int = 3) -> argparse.ArgumentParser:
    """The --shards/--slices flags of the benchmarks that compare methods on one grid point."""
    p.add_argument("--shards", type=int, default=shards)
    p.add_argument("--slices", type=int, default=slices)
    return p


def size_for(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any],
             smoke: dict[str, Any] | None = None) -> dict[str, Any]:
    """The smoke, quick or default size, with --shards/--slices when the benchmark takes them."""
    if getattr(args, "smoke", False):
        if smoke is None:
            raise SystemExit("this benchmark has no smoke size: add one (SMOKE)")
        size = dict(smoke)
    else:
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


def results_dir() -> Path:
    """bench/results, or the directory in $S3T_BENCH_RESULTS (``--results-dir``)."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR)


def result_path(name: str, quick: bool, suffix: str = ".json") -> Path:
    """<results>/<name>.json, <name>-quick.json or <name>-smoke.json: a smaller size never
    overwrites a larger one's result."""
    tag = "-smoke" if smoke_active() else "-quick" if quick else ""
    return results_dir() / f"{name}{tag}{suffix}"


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def write_result(name: str, quick: bool, prov: dict[str, Any], payload: dict[str, Any]) -> Path:
    """Write provenance + payload; records the elapsed time and the final load average too."""
    prov = dict(prov)
    if "start_unix" in prov:
        prov["elapsed_seconds"] = round(time.time() - prov["start_unix"], 1)
    prov["machine"] = dict(prov["machine"], load_average_end=load_average(),
                           cpu_probe_gflops_end=cpu_probe_gflops())
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": prov, **payload}, indent=2, default=_json_default)
                    + "\n")
    print(f"# wrote {shown(path)}")
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
    print(f"# wrote {shown(path)}")
    return path


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def s3t_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "s3t.cli", *map(str, args)]


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                PYTHONPATH=str(REPO_DIR) + (os.pathsep + path if path else ""))


def bench_cmd(module: str, *args: object) -> list[str]:
    """``python -m bench.<module> ARGS``: a benchmark's own child process (run it with
    ``cwd=REPO_DIR, env=child_env()`` so that it imports this checkout)."""
    return [sys.executable, "-m", f"bench.{module}", *map(str, args)]


class Server:
    """One `s3t serve` subprocess on a free loopback port; its log goes to a file."""

    def __init__(self, run: Path, token_file: Path, max_batch: int, max_wait_ms: float,
                 log_path: Path, extra_args: Sequence[str] = (), wrap: Sequence[str] = (),
                 cpus: set[int] | None = None):
        """``wrap``: a command the server runs under (``strace -f -o F``), which passes
        the server's exit status on; signals go to the server itself. ``cpus``: pin the
        server (and the retrain children it starts) to these cores."""
        self.run, self.token_file, self.log_path = run, token_file, log_path
        self.extra_args, self.wrap = list(extra_args), list(wrap)
        self.cpus = cpus
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.startup_s = 0.0
        self.args: list[str] = []
        self.clean_shutdown = False

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, tries: int = 3) -> Server:
        for attempt in range(tries):  # another process may take the port between probe and bind
            self.port = free_port()
            self.args = [*self.wrap, *s3t_cmd("serve", self.run, "--host", HOST, "--port", self.port,
                                "--token-file", self.token_file, "--max-batch", self.max_batch,
                                "--max-wait-ms", self.max_wait_ms, *self.extra_args)]
            start = time.perf_counter()
            with open(self.log_path, "ab") as log:
                log.write(f"\n# {' '.join(self.args)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=child_env(),
                                             cwd=REPO_DIR, preexec_fn=self._pin)
            if self._wait_ready(start + STARTUP_TIMEOUT_S):
                self.startup_s = time.perf_counter() - start
                return self
            rc = self.stop()
            if attempt == tries - 1 or "address already in use" not in self.log_tail().lower():
                raise RuntimeError(f"s3t serve did not become ready (exit {rc}); log tail:\n"
                                   + self.log_tail())
        raise AssertionError("unreachable")

    def _pin(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def _wait_ready(self, deadline: float) -> bool:
        import httpx

        assert self.proc is not None
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def metrics(self) -> dict[str, float]:
        """The server's own counts: 5xx responses and the predict batch-size histogram."""
        import httpx

        text = httpx.get(self.base_url + "/metrics", timeout=10.0).text
        out = {"server_5xx": 0.0, "batch_inputs_sum": 0.0, "batch_calls": 0.0}
        for line in text.splitlines():
            if line.startswith("s3t_http_requests_total{") and re.search(r'status="5\d\d"', line):
                out["server_5xx"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("s3t_predict_batch_inputs_sum "):
                out["batch_inputs_sum"] = float(line.split()[1])
            elif line.startswith("s3t_predict_batch_inputs_count "):
                out["batch_calls"] = float(line.split()[1])
        return out

    def stop(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown; it then exits 130), SIGKILL after 60 s; the
        exit status. ``clean_shutdown`` says whether the log reports a finished shutdown."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            server = _only_child(proc.pid) if self.wrap else proc.pid
            os.kill(server or proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.clean_shutdown = "Application shutdown complete" in self.log_tail(20000)
        return proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- load generator


def check_loopback(url: str) -> None:
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the load generator only targets loopback addresses, not {host}")


class ClientError(Exception):
    """A request that got no complete HTTP response (connection refused, reset, timeout)."""


class Response:
    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.body = status_code, body

    def json(self) -> Any:
        return _json.loads(self.body)


class LoopbackClient:
    """The load generator's HTTP/1.1 client: keep-alive connections over asyncio streams, at
    most ``connections`` (one per concurrent user), each used by one request at a time.

    Deliberately minimal (a POST with a JSON body; responses with a Content-Length, as the
    service sends): per request it costs a fraction of a general client's CPU (httpx spent
    about 1.6-2.8 ms per request at 32 users), CPU the server shares on a small machine.
    Every setting and both kinds of request (predictions, deletions) use it.
    """

    def __init__(self, base_url: str, token: str, connections: int,
                 timeout_s: float = REQUEST_TIMEOUT_S):
        check_loopback(base_url)
        host_port = base_url.split("://", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.head = (f"Host: {host_port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.limit, self.timeout_s = connections, timeout_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.freed = asyncio.Condition()

    async def __aenter__(self) -> LoopbackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self.freed:
            while not self.idle and self.opened >= self.limit:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            await self._release(None)
            raise

    async def _release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
                       ) -> None:
        async with self.freed:
            if conn is None:
                self.opened -= 1
            else:
                self.idle.append(conn)
            self.freed.notify()

    async def post(self, path: str, json: Any) -> Response:  # noqa: A002 (as httpx)
        body = _json.dumps(json, separators=(",", ":")).encode()
        return await self._send(f"POST {path} HTTP/1.1\r\n".encode() + self.head
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def get(self, path: str) -> Response:
        """A GET (status, jobs): the same connections and errors as :meth:`post`."""
        return await self._send(f"GET {path} HTTP/1.1\r\n".encode() + self.head + b"\r\n")

    async def _send(self, request: bytes) -> Response:
        """One request. A kept-alive connection the server closed while it sat idle (uvicorn
        closes them after 5 s) answers nothing at all: the request never reached the server,
        so it is sent once more on a new connection, as general clients do."""
        for attempt in range(2):
            try:
                conn = await asyncio.wait_for(self._connection(), self.timeout_s)
            except (OSError, asyncio.TimeoutError) as err:
                raise ClientError(type(err).__name__) from err
            reader, writer = conn
            keep = False
            try:
                writer.write(request)
                response, keep = await asyncio.wait_for(self._read(reader), self.timeout_s)
                return response
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as err:
                if attempt == 0 and not getattr(err, "partial", b""):
                    continue  # closed before any byte of an answer: a stale connection
                raise ClientError(type(err).__name__) from err
            except (OSError, asyncio.TimeoutError, ValueError) as err:
                raise ClientError(type(err).__name__) from err
            finally:
                if keep:
                    await self._release(conn)
                else:
                    writer.close()
                    await self._release(None)
        raise AssertionError("unreachable")

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[Response, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError("response without a Content-Length")
        body = await reader.readexactly(int(headers["content-length"]))
        return Response(status, body), headers.get("connection", "").lower() != "close"


def _only_child(pid: int) -> int | None:
    """The one child of ``pid`` (Linux /proc), e.g. the command a wrapper runs."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def http_client(base_url: str, token: str, connections: int,
                timeout_s: float = REQUEST_TIMEOUT_S) -> LoopbackClient:
    return LoopbackClient(base_url, token, connections, timeout_s)


def audit(run: Path) -> dict[str, Any]:
    """`s3t audit RUN --json` (with the server stopped)."""
    done = subprocess.run(s3t_cmd("audit", run, "--json"), capture_output=True, text=True,
                          env=child_env(), cwd=REPO_DIR, timeout=600)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {}
    return {"run": run.name, "returncode": done.returncode, "ok": done.returncode == 0
            and bool(report.get("ok")), "violations": report.get("violations", [])[:5],
            "stderr": done.stderr[-500:] if done.returncode else ""}


def lost_deletions(run: Path, deletions: list[dict[str, Any]]) -> list[str]:
    """Acknowledged deletions the ledger does not hold (read directly, server stopped)."""
    conn = sqlite3.connect(run / "ledger.sqlite")
    try:
        deleted = dict(conn.execute("SELECT sample_id, deleted_request FROM samples "
                                    "WHERE deleted_request IS NOT NULL").fetchall())
        requests = {r for (r,) in conn.execute("SELECT request_id FROM deletions")}
    finally:
        conn.close()
    return [d["sample_id"] for d in deletions if d["status"] == 200
            and (deleted.get(d["sample_id"]) != d["request_id"] or d["request_id"] not in requests)]


# --------------------------------------------------------------------------- backbones


def backbone(kind: str = "encoder") -> str | None:
    """The model a benchmark fine-tunes: MiniLM (``None``: the package default) for
    ``"encoder"``, SmolLM2-135M-Instruct for ``"llm"``. At the smoke size, a tiny randomly
    initialised model of the same architecture and tokenizer instead (built once per results
    directory): a smoke run checks that the benchmark works, not what it measures."""
    from s3t.models.adapted import default_model_dir
    from s3t.models.decoder import default_llm_dir

    if kind not in ("encoder", "llm"):
        raise ValueError(f"kind must be 'encoder' or 'llm', got {kind!r}")
    source = str(default_model_dir() if kind == "encoder" else default_llm_dir())
    if not smoke_active():
        return None if kind == "encoder" else source
    target = results_dir() / f"tiny-{kind}"
    if not (target / "config.json").is_file():
        _build_tiny(source, target, layers=6 if kind == "encoder" else 4)
    return str(target)


def _build_tiny(source: str, target: Path, layers: int) -> None:
    """``source``'s tokenizer and architecture at width 32 with random weights."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from s3t.models.gguf import gguf_file

    gguf = gguf_file(source)  # SmolLM2 ships as GGUF: read its config and tokenizer from it
    kw = {"gguf_file": gguf} if gguf else {}
    config = AutoConfig.from_pretrained(source, **kw)
    config.update({"hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2,
                   "intermediate_size": 64})
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = 1
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = 16
    torch.manual_seed(0)
    causal = any("CausalLM" in a for a in (config.architectures or []))
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoTokenizer.from_pretrained(source, **kw).save_pretrained(tmp)
    model.save_pretrained(tmp)
    tmp.rename(target)
