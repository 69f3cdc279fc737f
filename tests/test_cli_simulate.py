"""`s3t simulate`: table, JSON, plot, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from s3t.cli import app
from s3t.plan import deletion_rate_s3t, deletion_rate_sisa

runner = CliRunner()

BASE = ["simulate", "--shards", "5", "--slices", "4"]


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_json_output_is_one_object_with_the_documented_keys():
    res = _run(*BASE, "--budget", "2", "--trials", "3000", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # the whole of stdout is one JSON object
    for key in (
        "deletion_rate",
        "deletion_rate_std",
        "deletion_rate_closed_form",
        "sisa_deletion_rate",
        "sisa_deletion_rate_closed_form",
        "first_shard_death",
        "stages",
        "stages_without_sharing",
        "shards",
        "slices",
        "budget",
        "strategy",
        "prior",
        "trials",
        "seed",
    ):
        assert key in data, key
    assert (data["shards"], data["slices"], data["budget"]) == (5, 4, 2)
    assert data["strategy"] == "cyclic"
    assert data["trials"] == 3000 and data["seed"] == 0
    assert data["prior"] == [0.25] * 4
    assert data["deletion_rate_closed_form"] == pytest.approx(deletion_rate_s3t(5, 4, 2))
    assert data["sisa_deletion_rate_closed_form"] == pytest.approx(deletion_rate_sisa(5, 4))
    assert abs(data["deletion_rate"] - data["deletion_rate_closed_form"]) < 0.03 * 58.58
    assert abs(data["sisa_deletion_rate"] - 45.67) < 0.03 * 45.67
    assert data["stages"] == 5 * 8 and data["stages_without_sharing"] == 5 * 8
    assert data["orderings"] == [[0, 1, 2, 3], [1, 2, 3, 0]]


def test_full_budget_reports_prefix_sharing():
    res = _run(*BASE, "--strategy", "full", "--trials", "200", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["budget"] == 24
    assert data["stages"] == 5 * 64
    assert data["stages_without_sharing"] == 5 * 96


def test_bms_with_prior_and_seed_is_reproducible():
    args = [*BASE, "--strategy", "bms", "--prior", "0.1,0.4,0.4,0.1", "--budget", "2"]
    a = json.loads(_run(*args, "--trials", "500", "--seed", "3", "--json").stdout)
    b = json.loads(_run(*args, "--trials", "500", "--seed", "3", "--json").stdout)
    assert a == b
    assert a["prior"] == [0.1, 0.4, 0.4, 0.1]
    assert {o[0] for o in a["orderings"]} == {0, 3}
    assert a["deletion_rate_closed_form"] > a["sisa_deletion_rate_closed_form"]


def test_table_compares_simulated_closed_form_and_sisa():
    res = _run(*BASE, "--budget", "4", "--trials", "500")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for text in ("S3T simulated", "S3T closed form", "SISA simulated", "SISA closed form"):
        assert text in out
    assert "requests until retraining" in out
    assert "71.95" in out and "45.67" in out  # the closed forms for m=5, L=4, B=4 and SISA
    assert "stages: 80 with prefix sharing" in out


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "rate.png"
    res = _run(*BASE, "--budget", "2", "--trials", "200", "--plot", str(path))
    assert res.exit_code == 0, res.output
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--shards", "0", "--slices", "4"], "--shards"),
        (["simulate", "--shards", "5", "--slices", "0"], "--slices"),
        ([*BASE, "--budget", "25"], "--budget: must be in [1, 24]"),
        ([*BASE, "--budget", "0"], "--budget"),
        ([*BASE, "--strategy", "full", "--budget", "4"], "--budget: must be 24"),
        ([*BASE, "--strategy", "sisa", "--budget", "2"], "--budget: must be 1"),
        ([*BASE, "--strategy", "nope"], "--strategy: must be one of cyclic, bms"),
        ([*BASE, "--prior", "0.5,0.5"], "--prior"),
        ([*BASE, "--prior", "0.5,0.5,0.5,0.5"], "--prior"),
        ([*BASE, "--prior", "a,b,c,d"], "--prior"),
        ([*BASE, "--trials", "0"], "--trials"),
        ([*BASE, "--seed", "-1"], "--seed"),
        (["simulate", "--shards", "x", "--slices", "4"], "--shards"),
        (["simulate", "--slices", "4"], "--shards"),
        ([*BASE, "--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_argument(args, needle):
    res = _run(*args)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0]


def test_plot_into_missing_directory_is_a_bad_argument(tmp_path):
    res = _run(*BASE, "--plot", str(tmp_path / "missing" / "x.png"))
    assert res.exit_code == 2
    assert res.stderr.startswith("error: --plot:")


def test_module_entry_point_runs_as_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "s3t.cli", "simulate", "--shards", "7", "--slices", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shards"] == 7
    bad = subprocess.run(
        [sys.executable, "-m", "s3t.cli", *BASE, "--budget", "99"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "--budget" in bad.stderr


# --- the report behind the command (s3t.plan.report), usable without the CLI ----------------


def test_cli_prints_the_planner_report_unchanged():
    from s3t.plan.report import format_report, simulation_report

    report = simulation_report(5, 4, 2, "cyclic", None, trials=300, seed=1, t=100.0)
    args = [*BASE, "--budget", "2", "--trials", "300", "--seed", "1"]
    assert json.loads(_run(*args, "--json").stdout) == json.loads(json.dumps(report))
    assert _run(*args).stdout == format_report(report) + "\n"


@pytest.mark.parametrize(
    ("strategy", "slices", "budget"), [("cyclic", 4, 4), ("sisa", 4, 1), ("full", 4, 24), ("bms", 3, 3)]
)
def test_default_budget_is_what_the_report_uses(strategy, slices, budget):
    from s3t.plan.report import default_budget, simulation_report

    assert default_budget(strategy, slices) == budget
    report = simulation_report(2, slices, None, strategy, None, trials=20, seed=0, t=100.0)
    assert report["budget"] == budget


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"shards": 0}, "shards"),
        ({"slices": 13}, "slices"),
        ({"strategy": "nope"}, "strategy"),
        ({"budget": 25}, "budget"),
        ({"trials": 0}, "trials"),
        ({"seed": -1}, "seed"),
        ({"t": float("inf")}, "t"),
        ({"prior": [0.5, 0.5]}, "prior"),
        ({"prior": [0.5, 0.5, 0.5, -0.5]}, "prior"),
    ],
)
def test_report_arguments_are_checked_before_any_work(kwargs, parameter):
    from s3t.plan.report import SimulationArgumentError, simulation_report

    args = {"shards": 5, "slices": 4, "budget": None, "strategy": "cyclic", "prior": None,
            "trials": 10, "seed": 0, "t": 100.0, **kwargs}
    with pytest.raises(SimulationArgumentError) as info:
        simulation_report(**args)
    assert info.value.parameter == parameter
    assert str(info.value) == f"{parameter} {info.value.reason}"
    assert "--" not in str(info.value)


def test_budget_curve_covers_the_structured_strategies_up_to_2l():
    from s3t.plan.report import budget_curve

    curve = budget_curve(3, 3, None, trials=50, seed=0, t=100.0)
    assert curve["budgets"] == [1, 2, 3, 4, 5, 6]
    assert set(curve["curves"]) == {"cyclic", "bms", "random"}
    assert all(len(c["simulated"]) == 6 == len(c["closed_form"]) for c in curve["curves"].values())
    assert curve["sisa"] == pytest.approx(deletion_rate_sisa(3, 3))


def test_report_module_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys; from s3t.plan.report import format_report, simulation_report; "
        "format_report(simulation_report(3, 3, None, 'cyclic', None, 20, 0, 100.0)); "
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
