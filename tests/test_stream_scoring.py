"""The stream benchmarks' served accuracy comes from the prediction traffic: each
prediction's correctness holds until the next, time-averaged."""

from __future__ import annotations

import pytest

from bench.stream import rolling_accuracy, summarize, targets, time_average


def test_each_prediction_holds_until_the_next() -> None:
    traffic = [{"t": 0.0, "correct": 1}, {"t": 1.0, "correct": 0}, {"t": 4.0, "correct": 1}]
    # right for 1 s, wrong for 3 s, right for the last 6 s of 10
    assert time_average(traffic, "correct", 10.0) == pytest.approx(0.7)


def test_summary_reads_accuracy_from_the_traffic_and_capacity_from_the_polls() -> None:
    result = {
        "traffic": [{"t": 0.0, "correct": 1, "served": True},
                    {"t": 5.0, "correct": 0, "served": False}],  # a 503 counts as wrong
        "samples": [{"t": 0.0, "capacity": 1.0, "live_shards": 2},
                    {"t": 2.0, "capacity": 0.5, "live_shards": 1}],
        "deletions": [{"status": 200, "ms": 3.0}], "jobs": [],
        "predicts": {"ok": 1, "unavailable": 1, "errors": 0}, "predict_errors": {}}
    summary = summarize(result, {"duration_s": 10.0})
    assert summary["time_avg_accuracy"] == pytest.approx(0.5)
    assert summary["time_avg_capacity"] == pytest.approx(0.6)
    assert summary["predictions_scored"] == 2 and summary["min_live_shards"] == 1


def test_rolling_accuracy_forgets_predictions_older_than_the_window() -> None:
    traffic = [{"t": float(t), "correct": c} for t, c in enumerate([1, 1, 0, 0, 0])]
    times, values = rolling_accuracy(traffic, 1.5)
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert values == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_the_traffic_cycles_through_the_test_subset_in_a_seeded_shuffled_order() -> None:
    from bench.stream import traffic_order
    from s3t.data.samples import Dataset

    test = Dataset(ids=[f"t{i}" for i in range(40)], texts=[f"text {i}" for i in range(40)],
                   labels=[i // 10 for i in range(40)], label_names=["a", "b", "c", "d"])
    texts, labels = traffic_order(test, 0)
    assert sorted(texts) == sorted(test.texts) and texts != test.texts
    assert all(lab == "abcd"[int(t.split()[1]) // 10] for t, lab in zip(texts, labels, strict=True))
    assert traffic_order(test, 0) == (texts, labels) and traffic_order(test, 1)[0] != texts
    # a window of the cycle is a sample of the subset, not one category
    assert len(set(labels[:10])) > 1


def test_with_several_seeds_the_accuracy_target_is_on_their_mean() -> None:
    def seed(s3t: float, sisa: float) -> dict:
        ok = {"min_live_shards": 1, "deletion_errors": 0, "predicts": {"errors": 0},
              "lost_deletions": [], "audit": {"ok": True}}
        return {"s3t": {"summary": dict(ok, time_avg_accuracy=s3t)},
                "sisa": {"summary": dict(ok, time_avg_accuracy=sisa)}}

    first, second = seed(0.40, 0.42), seed(0.46, 0.43)
    alone = targets(first)[0]
    assert not alone["met"] and alone["measured"] == "0.400 vs 0.420"
    both = targets(first, [first, second])[0]
    assert both["met"] and "mean of 2 seeds" in both["target"]
    assert both["measured"] == "0.430 vs 0.425"


def test_a_jobs_start_up_is_its_time_outside_stage_training(tmp_path) -> None:
    from bench.sweep import job_overhead, job_stage_seconds

    log = tmp_path / "service" / "retrain.log"
    log.parent.mkdir()
    log.write_text(
        'retrain-1 2026-12-07T12:00:00Z event {"event": "plan"}\n'
        'retrain-1 2026-12-07T12:00:09Z event {"event": "summary", "stage_seconds": '
        '{"0-0v1": 1.5, "0-0v1_1v0": 2.5}}\n'
        'retrain-2 2026-12-07T12:01:00Z log a line that is not an event\n'
        'retrain-2 2026-12-07T12:01:09Z event {"event": "summary", "stage_seconds": {}}\n')
    seconds = job_stage_seconds(tmp_path)
    assert seconds == {"retrain-1": 4.0, "retrain-2": 0.0}
    jobs = [{"id": "retrain-1", "started": 100.0, "finished": 112.0},
            {"id": "retrain-2", "started": 200.0, "finished": 208.0},
            {"id": "retrain-3", "started": 300.0, "finished": None}]  # still running
    for job in jobs:
        job["stage_seconds"] = seconds.get(job["id"])
    assert job_overhead(jobs) == pytest.approx((8.0 + 8.0) / 2)
    assert job_overhead([]) == 0.0 and job_stage_seconds(tmp_path / "none") == {}
