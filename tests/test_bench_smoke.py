"""Every registered benchmark runs at its smoke size, and the report reads what it wrote.

A few subprocesses (``python -m bench --smoke NAME... --results-dir TMP``), one per part
(:data:`PARTS`), run them all, one after another within a part, so torch is imported once a
part; each benchmark is then its own test case, parametrised by the registry: a benchmark
without smoke arguments, one that fails, or one whose result lacks a key the report reads
(bench/results.py) fails here, not months later when someone reruns it. Each part is a test
class, one unit of pytest-xdist's ``loadscope`` scheduling (scripts/test.sh), so the parts run
in parallel with each other and with the rest of the suite. The registry itself is checked
against bench/ and BENCHMARKS.md's headings.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, results
from bench.registry import BENCHMARKS, Benchmark

ROOT = Path(__file__).resolve().parents[1]
NOT_BENCHMARKS = {"__init__", "__main__", "harness", "registry", "results", "report"}
SMOKE_TIMEOUT_S = 1800  # one part; a hung benchmark fails instead of blocking the suite
#: ``BENCH_SMOKE_ONLY="stream service"`` runs only those (while working on them); the others skip.
ONLY = os.environ.get("BENCH_SMOKE_ONLY", "").split()


#: The benchmarks that run in a smoke subprocess of their own, by part (each part about a
#: third of the smoke's time; these serve HTTP): every other benchmark runs in part "main",
#: in registry order (vit_pretrain before the vit that uses its backbone).
PARTS = {"service": "serve", "stream": "serve", "sweep": "sweep", "bulk_deletion": "sweep"}


def part_of(bench: Benchmark) -> str:
    return PARTS.get(bench.name, "main")


@pytest.fixture(scope="module")
def smoke_dirs() -> dict[str, Path]:
    """Part -> the results of its ``python -m bench --smoke NAME...`` run (never
    bench/results), filled when a test of that part first asks (:func:`run_part`)."""
    return {}


def run_part(part: str, dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results of ``part``'s smoke run, run now unless it has run in this process."""
    if part in dirs:
        return dirs[part]
    out = tmp_path_factory.mktemp(f"bench-smoke-{part}")
    names = [b.name for b in BENCHMARKS if part_of(b) == part and (not ONLY or b.name in ONLY)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               BENCH_KEEP_RUNS="0")
    env.pop("S3T_BENCH_SMOKE", None)
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", *names,
                           "--results-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_S)
    (out / "smoke.log").write_text(done.stdout + done.stderr)
    dirs[part] = out
    return out


def _log_tail(smoke_dir: Path, name: str) -> str:
    log = (smoke_dir / "smoke.log").read_text()
    start = log.rfind(f"=== smoke {name} ")
    return log[start:][-4000:] if start >= 0 else log[-4000:]


def smoke_params(part: str) -> list:
    return [pytest.param(b, id=b.name) for b in BENCHMARKS if part_of(b) == part]


# One class per part: pytest-xdist's ``loadscope`` (scripts/test.sh) sends each class to a
# worker as one unit, so the parts run in parallel and a part's subprocess runs once.
class TestSmokeMain:
    @pytest.mark.parametrize("bench", smoke_params("main"))
    def test_benchmark_runs_at_smoke_size(self, bench: Benchmark, smoke_dirs: dict[str, Path],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
        check_smoke(bench, smoke_dirs, tmp_path_factory)


class TestSmokeServe:
    @pytest.mark.parametrize("bench", smoke_params("serve"))
    def test_benchmark_runs_at_smoke_size(self, bench: Benchmark, smoke_dirs: dict[str, Path],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
        check_smoke(bench, smoke_dirs, tmp_path_factory)


class TestSmokeSweep:
    @pytest.mark.parametrize("bench", smoke_params("sweep"))
    def test_benchmark_runs_at_smoke_size(self, bench: Benchmark, smoke_dirs: dict[str, Path],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
        check_smoke(bench, smoke_dirs, tmp_path_factory)


def test_every_benchmark_is_in_one_smoke_part() -> None:
    classes = {"main": TestSmokeMain, "serve": TestSmokeServe, "sweep": TestSmokeSweep}
    assert set(PARTS.values()) | {"main"} == set(classes), "a part without its test class"
    assert set(PARTS) <= {b.name for b in BENCHMARKS}, "PARTS names an unknown benchmark"


def check_smoke(bench: Benchmark, smoke_dirs: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory) -> None:
    """``bench`` ran at its smoke size, and every result kind it writes reads and renders."""
    assert bench.smoke is not None, f"{bench.name} has no smoke arguments in bench/registry.py"
    if ONLY and bench.name not in ONLY:
        pytest.skip(f"BENCH_SMOKE_ONLY={' '.join(ONLY)}")
    smoke_dir = run_part(part_of(bench), smoke_dirs, tmp_path_factory)
    summary = json.loads((smoke_dir / "smoke-summary.json").read_text())
    assert bench.name in summary, f"{bench.name} did not run:\n{_log_tail(smoke_dir, bench.name)}"
    outcome = summary[bench.name]
    assert outcome["ok"], f"{bench.name}: {outcome['error']}\n{_log_tail(smoke_dir, bench.name)}"
    for kind in bench.results:
        if kind.endswith(".png"):
            png = kind.removesuffix(".png") + "-smoke.png"
            assert (smoke_dir / png).is_file(), f"{bench.name} wrote no {png}"
            continue
        if kind not in report.RENDERERS or kind not in _kinds_written_at_smoke(bench):
            continue
        found = results.load(kind, smoke_dir, tag="smoke")  # checks the schema
        assert found is not None, f"{bench.name} wrote no {kind}-smoke.json"
        assert found.data["provenance"]["smoke"] is True
        assert report.render_section(kind, found.data).strip()
    assert not list((ROOT / "bench" / "results").glob("*-smoke*")), "smoke wrote into the repo"


def _kinds_written_at_smoke(bench: Benchmark) -> tuple[str, ...]:
    """scale's smoke arguments run its default part only (the other parts' kinds are
    checked on the stored results by test_stored_results_match_their_schemas)."""
    return bench.results[:1] if bench.name == "scale" else bench.results


def test_registry_lists_every_benchmark_module() -> None:
    modules = {p.stem for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHMARKS
    with_main = {m for m in modules if any(
        isinstance(node, ast.FunctionDef) and node.name == "main"
        for node in ast.parse((ROOT / "bench" / f"{m}.py").read_text()).body)}
    assert with_main == {b.name for b in BENCHMARKS}


def test_sections_match_benchmarks_md_headings() -> None:
    headings = dict(re.findall(r"^## (\d+)\. (.+)$", (ROOT / "BENCHMARKS.md").read_text(), re.M))
    registered = [s for b in BENCHMARKS for s in b.sections]
    assert sorted(set(registered)) == sorted(int(n) for n in headings)
    titles = {title.split(".", 1)[0]: title.split(". ", 1)[1] for _, title, *_ in report.SECTIONS}
    for number, heading in headings.items():
        assert heading.startswith(titles[number]), (number, heading, titles[number])


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "results").glob("*.json")),
                         ids=lambda p: p.name)
def test_stored_results_match_their_schemas(path: Path) -> None:
    kind = path.stem.removesuffix("-quick")
    if kind.startswith("service-fairness"):  # service --fairness --tag T
        kind = "service-fairness"
    if kind.startswith("retrain_cost"):  # retrain_cost --tag=-before
        kind = "retrain_cost"
    if kind.startswith("service-retrain"):  # service --under-retrain --tag T
        kind = "service-retrain"
    results.read(kind, path)


def test_schema_names_the_missing_key(tmp_path: Path) -> None:
    good = json.loads((ROOT / "bench" / "results" / "first_position.json").read_text())
    del good["agreement"]["same_labels"]
    bad = tmp_path / "first_position.json"
    bad.write_text(json.dumps(good))
    with pytest.raises(results.ResultError, match=r"first_position\.json: missing key "
                                                  r"'agreement\.same_labels'"):
        results.load("first_position", tmp_path)


def test_list_shows_each_benchmark_with_its_sections() -> None:
    from bench.__main__ import list_benchmarks

    lines = {line.split()[0]: line for line in list_benchmarks().splitlines()[1:]}
    for bench in BENCHMARKS:
        shown = lines[bench.name].split(None, 1)[1]
        assert shown.startswith(", ".join(map(str, bench.sections)) or "-"), lines[bench.name]
