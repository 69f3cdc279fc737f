"""Typed access to the result files: one schema per result kind, checked on load.

The report (bench/report.py) reads every result through :func:`load`, which checks that
each key the report indexes is present and says which file and which key is not; the smoke
test loads every smoke result the same way, so a benchmark that renames a key fails the
test rather than only the report. A schema lists dotted key paths; ``*`` stands for every
value of a mapping or every item of a list (an empty one passes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVENANCE = ("provenance.command", "provenance.timestamp", "provenance.size",
              "provenance.seeds", "provenance.machine.cpu_model", "provenance.machine.cpu_count",
              "provenance.machine.cpu_affinity", "provenance.machine.ram_gib",
              "provenance.versions", "provenance.git")
_CHECKPOINTS = ("requests", "capacity_mean", "seeds_serving", "seeds")


def _deletion_summary(metric: str) -> tuple[str, ...]:
    return ("provenance.size.shards", "provenance.size.slices", "summary.*.label",
            f"summary.*.{metric}_before", "summary.*.requests_until_retrain",
            "summary.*.requests_until_first_shard_dies", "summary.*.audit_ok",
            *(f"summary.*.checkpoints.*.{k}" for k in (*_CHECKPOINTS, f"{metric}_mean")))


def _each(prefix: str, *keys: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{k}" for k in keys)


SCHEMAS: dict[str, tuple[str, ...]] = {
    "accuracy": (*_each("summary.*", "label", "accuracy", "stages_trained", "train_seconds"),
                 "runs.*.accuracy", "runs.*.key"),
    "deletions": _deletion_summary("accuracy"),
    "deletion_cost": (*_each("summary", "s3t_forget_ms", "s3t_forget_ms_erasing",
                             "s3t_forget_ms_no_erase", "s3t_forget_core_ms",
                             "s3t_requests_after_all_shards_dead", "s3t_copies_forget_ms_erasing",
                             "s3t_copies_forget_ms_all", "fresh_load_forget_ms", "fresh_load_ms",
                             "fresh_forget_ms", "fresh_import_s", "fresh_process_wall_s",
                             "sisa_time_to_exact_s", "sisa_time_to_exact_by_slice",
                             "sisa_forget_ms", "full_time_to_exact_s", "all_restored"),
                      *_each("summary.ratios", "sisa_mean_over_s3t_p99", "sisa_min_over_s3t_p99",
                             "full_mean_over_s3t_p99", "sisa_mean_over_fresh_load_forget_p50")),
    "deletion_rate": (*_each("paper.*", "case", "printed", "closed_form", "matches"),
                      *_each("rows.*", "m", "L", "strategy", "budget", "distinct_first_slices",
                             "simulated", "simulated_sem", "closed_form", "rel_error",
                             "first_death_simulated", "first_death_closed_form",
                             "first_death_rel_error", "trials")),
    "training_cost": _each("summary.*", "label", "kind", "stages", "sample_passes_per_epoch",
                           "sample_passes", "layer_passes", "train_seconds"),
    "perf": ("training.config", "training.n_train",
             *_each("training.reps.*", "speedup", "cached.train_seconds", "cached.peak_rss_mib",
                    "uncached.train_seconds", "uncached.peak_rss_mib"),
             "serving.shards",
             *(f"serving.batch_{b}.{k}" for b in (1, 32) for k in (
                 "samples_per_s.shared_trunk", "samples_per_s.single_merged_model",
                 "samples_per_s.naive_ensemble", "ratios.shared_over_single",
                 "ratios.naive_over_single")),
             *_each("forget_ms", "p50", "p90", "p99", "max", "n"), "memory",
             *_each("scaling_shards.*", "shards", "shared_trunk", "single_merged_model",
                    "naive_ensemble"),
             *_each("scaling_n.*", "n_train", "train_seconds", "peak_rss_mib")),
    "cache": ("storage.config",
              *_each("storage.summary.*", "train_seconds", "time_ratio_to_memory_fp32",
                     "peak_rss_mib", "cache_mib_in_memory", "cache_mib_on_disk", "accuracy",
                     "max_abs_probability_change", "prediction_agreement"),
              "deep_backbone.config", "deep_backbone.speedup",
              *_each("deep_backbone.reps.*", "speedup", "cached.train_seconds",
                     "uncached.train_seconds", "cached.peak_rss_mib", "uncached.peak_rss_mib")),
    "vit": (*_deletion_summary("accuracy"), "public_id_forget_refused",
            *_each("provenance.size.backbone", "parameters", "public_samples", "train_seconds",
                   "test_accuracy", "test_samples", "recipe.layers", "recipe.hidden",
                   "recipe.patch", "recipe.epochs")),
    "vit_pretrain": ("public_samples", "train_seconds", "test_accuracy", "test_samples"),
    "llm": (*_deletion_summary("perplexity"), "results.*.label", "results.*.runs.*.seed",
            "results.*.runs.*.train_seconds", "results.*.runs.*.evaluation_at_0.perplexity",
            "results.*.runs.*.evaluation_at_0.per_route.*.perplexity"),
    "backups": _each("runs.*", "seed", "totals.trials", "totals.acknowledged",
                       "totals.replayed", "totals.resurrected", "totals.text_on_disk",
                       "totals.audits_failed", "totals.verify_failed",
                       "totals.restores_without_source_refused"),
    "faults-swap": _each("runs.*.swaps.*", "trials", "acknowledged_before_change",
                         "acknowledged_lost", "acknowledged_after_change",
                         "first_request_refused"),
    "faults": (*_each("runs.*", "seed", "trials", "acknowledged_lost",
                      "audits_failed_after_repair", "maintenance_retrains",
                      "calibration_seconds.forget", "calibration_seconds.retrain",
                      "final.returncode", "final.capacity", "final.audit_violations",
                      "counts.retrain.killed", "counts.retrain.completed"),
               *(f"runs.*.counts.{kind}.{k}" for kind in ("forget", "parallel")
                 for k in ("applied", "not_applied", "acknowledged"))),
    "service": (*_each("provenance.size", "max_batch", "clients", "delete_clients",
                       "duration_s", "warmup_s", "reps"),
                *_each("summary", "throughput", "clients_top", "clients_bottom",
                       "deletion_ms", "deletion_ms_erasing", "deletion_ms_no_erase",
                       "deletion_core_ms", "deletions_sent", "deletions_acknowledged",
                       "deletion_rounds", "predict_during_deletions.throughput_rps",
                       "predict_during_deletions.latency_ms", "responses.status_counts",
                       "responses.n_5xx", "responses.server_counted_5xx", "lost_deletions",
                       "audits", "server_exit_codes"),
                *(f"summary.ratio_top_over_one_client.{k}" for k in (
                    "over_best_single_client", "over_single_client_batching",
                    "over_single_client_no_batching", "batching_over_no_batching_at_top"))),
    "stream": ("stream", *_each("provenance.size", "rate_per_min", "duration_s", "train",
                                "shards", "slices", "budget", "epochs", "eval_every_s", "test"),
               *(f"results.{system}.summary.{k}" for system in ("s3t", "sisa") for k in (
                   "time_avg_accuracy", "time_avg_capacity", "time_with_a_serving_shard",
                   "time_at_full_capacity", "min_live_shards", "retrain_jobs.succeeded",
                   "retrain_jobs.failed", "stages_retrained", "stages_discarded",
                   "deletion_ms", "deletion_errors", "predicts.errors", "lost_deletions",
                   "audit.ok", "train_seconds"))),
    "bulk-deletion": ("provenance.size.ids", "provenance.size.samples",
                      *_each("summary.*", "n", "mean", "min", "max"),
                      *_each("trials.*", "shape", "seconds", "ids", "body_bytes")),
    "sweep": ("users", "provenance.cores",
              *_each("provenance.size", "train", "shards", "slices", "epochs", "user_size",
                     "zipf", "duration_s", "rates_per_min"),
              *_each("trained.*", "train_seconds", "stages"), "sustainable_rate_per_min.*",
              *_each("cells.*.*.*", "time_avg_accuracy", "undisturbed_accuracy",
                     "time_avg_capacity", "time_at_full_capacity", "time_with_all_shards_full",
                     "stages_retrained", "stages_discarded", "retrain_seconds",
                     "stages_invalidated_per_deletion", "deletions_acknowledged",
                     "deletion_errors", "lost_deletions", "audit.ok", "plan")),
    "distributed": ("runs.local_1_thread.train_seconds",
                    *_each("runs.*", "train_seconds", "stages_per_minute", "executor"),
                    *_each("provenance.size", "train", "shards", "slices", "budget", "epochs",
                           "near_empty_per_cell"),
                    "near_empty.ray.stages", "near_empty.per_stage_wall_s.ray",
                    "near_empty.per_stage_wall_s.local",
                    *_each("near_empty.overheads", "dispatch_median", "return_median",
                           "commit_median", "bytes_per_stage"),
                    *_each("model.parameters", "overhead_per_stage_s", "commit_per_stage_s",
                           "worker_setup_s", "worker_start_s", "features_total_s",
                           "total_work_s", "critical_path_s"),
                    *_each("model.checks.*", "run", "measured_s", "predicted_s", "error"),
                    *_each("model.curves.*", "stages", "total_work_s", "critical_path_s",
                           "bound", "speedup", "workers")),
    "mia": (*_each("results.*.*", "seed", "n.train", "n.heldout", "train_seconds",
                   "retrain_seconds", "cells_hit_by_forget", "after_handful.live_shards",
                   "after_handful.capacity", "audit_ok"),
            *(f"results.*.*.{stage}.{group}.*.{k}"
              for stage, group in (("before", "retained"), ("before", "forgotten"),
                                   ("before", "handful"), ("after_handful", "served_members"),
                                   ("after_handful", "unserved"), ("after_handful", "handful"),
                                   ("after_retrain", "retained"), ("after_retrain", "forgotten"),
                                   ("after_retrain", "forgotten_all"))
              for k in ("auc", "low", "high", "n_members", "n_heldout", "chance_inside"))),
    "scale": (*_each("summary.*", "recipe", "size", "key", "label", "test_accuracy",
                     "val_accuracy", "stages_trained", "train_seconds"),
              *_each("runs.*", "recipe", "size", "key", "test_accuracy")),
    "recipe": (*_each("summary.*", "recipe", "size", "val_accuracy", "test_accuracy",
                      "train_seconds"),
               *_each("runs.*", "seed", "recipe", "size", "val_accuracy", "test_accuracy")),
    "scale_deletions": (*_each("runs.*", "recipe", "seed", "label", "accuracy", "capacity",
                               "mean_accuracy", "audit_ok"),
                        *_each("targets.*", "target", "measured", "met")),
    "orderings": _each("runs.*", "seed", "size", "recipe", "serve_orderings", "val_accuracy",
                       "test_accuracy", "predict_seconds", "test_size"),
    "first_position": ("agreement.same_labels", "agreement.max_abs_probability_difference",
                       "batch_*.samples_per_s.first_position",
                       "batch_*.samples_per_s.whole_layer", "batch_*.speedup.mean"),
    "ensemble": ("provenance.size.train", "provenance.size.shards", "provenance.size.slices",
                 "provenance.size.budget",
                 *_each("summary.*", "fraction", "requests", "capacity", "mean.n", "depth.n",
                        "validation.n"),
                 *_each("runs.*", "seed", "train_seconds", "audit_ok"),
                 *_each("runs.*.checkpoints.*", "fraction", "requests", "live_shards",
                        "capacity", "depths", "modes"),
                 *(f"runs.*.checkpoints.*.modes.*.{k}" for k in ("test_accuracy",
                                                                   "val_accuracy", "weights"))),
    "anchor": ("provenance.size.fraction",
               *_each("summary.*", "size", "label", "anchor", "test_accuracy", "val_accuracy",
                      "train_seconds", "stages_trained", "anchor_samples", "gain"),
               *_each("runs.*", "size", "seed", "key", "never_deletable", "test_accuracy")),
    # service --fairness [--tag T] writes service-fairness<T>.json (not in BENCHMARKS.md yet)
    "service-fairness": ("alone_ms", "beside_large_ms", "large_request_ms"),
    "retrain_cost": ("provenance.size.epochs", "summary.audit_ok", "summary.targets",
                     *_each("summary", "ratio_cpu.mean", "ratio_wall.mean",
                            "ratio_stages_cpu.mean", "ratio_first_cpu.mean", "floor_ratio_cpu.mean",
                            "full_capacity_over_first_all.mean", "step_reuse_bound.mean",
                            "ancestors_changed_share.mean", "retrain_phase_share_cpu"),
                     *_each("fits.*", "seed", "fit_wall_seconds", "fit_cpu_seconds", "stages",
                            "profile.wall", "profile.cpu", "neighbours.samples",
                            "neighbours.equal_rows_shifted", "neighbours.equal_rows_single",
                            "neighbours.single_over_chunked"),
                     *_each("deletions.*", "seed", "cell", "stages_trained", "first_cpu_seconds",
                            "retrain_stage_cpu_seconds", "retrain_cpu_seconds", "ratio_cpu",
                            "control_cpu_seconds", "control_profile.cpu",
                            "first_seconds", "retrain_wall_seconds", "ratio_wall",
                            "profile.wall", "profile.cpu", "full_capacity_seconds",
                            "first_seconds_all_invalidated", "primary_stages",
                            "structure.invalidated", "structure.ancestors_changed",
                            "structure.step_reuse_bound", "floor_ratio_cpu")),
    # service --under-retrain [--tag T] writes service-retrain<T>.json
    "service-retrain": ("phases.*.latency_ms", "phases.*.core_ms", "phases.*.lost",
                        "phases.*.audit.ok", "phases.*.load_average_after", "targets"),
    # not in BENCHMARKS.md yet (docs/design.md quotes it): the keys its printout reads
    "threads": _each("runs.*", "torch_threads", "fit_seconds", "stages", "features_seconds",
                     "lora_seconds"),
}
#: Result files that carry no provenance block (written by another benchmark's process).
NO_PROVENANCE = frozenset({"vit_pretrain"})


class ResultError(ValueError):
    """A result file lacks a key its kind's schema names (or is not JSON)."""


@dataclass(frozen=True)
class Result:
    """One result file, checked against its kind's schema."""

    kind: str
    path: Path
    quick: bool
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def _missing(node: Any, parts: list[str], seen: list[str]) -> str | None:
    """The first path below ``node`` that does not resolve, or None."""
    if not parts:
        return None
    head, rest = parts[0], parts[1:]
    if head == "*" or head.endswith("_*"):
        if isinstance(node, Mapping):
            items = [(k, v) for k, v in node.items()
                     if head == "*" or k.startswith(head[:-1])]
        elif isinstance(node, list) and head == "*":
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            return ".".join([*seen, head]) + " (not a mapping or list)"
        for key, value in items:
            found = _missing(value, rest, [*seen, key])
            if found:
                return found
        return None
    if not isinstance(node, Mapping) or head not in node:
        return ".".join([*seen, head])
    return _missing(node[head], rest, [*seen, head])


def check(kind: str, data: Any, path: Path) -> None:
    """Raise :class:`ResultError` naming ``path`` and the first missing key of ``kind``."""
    if kind not in SCHEMAS:
        raise ResultError(f"{path}: no schema for result kind {kind!r} (add it to "
                          "bench/results.py SCHEMAS)")
    if not isinstance(data, Mapping):
        raise ResultError(f"{path}: not a JSON object")
    paths = SCHEMAS[kind] if kind in NO_PROVENANCE else (*PROVENANCE, *SCHEMAS[kind])
    for dotted in paths:
        missing = _missing(data, dotted.split("."), [])
        if missing:
            raise ResultError(f"{path}: missing key {missing!r} (the {kind} schema needs "
                              f"{dotted!r}); rerun the benchmark or fix its writer")


def read(kind: str, path: Path, quick: bool = False) -> Result:
    """The result file ``path`` of ``kind``, checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ResultError(f"{path}: unreadable result file ({err})") from err
    check(kind, data, path)
    return Result(kind, path, quick, data)


def load(kind: str, directory: Path, tag: str | None = None) -> Result | None:
    """``<directory>/<kind>.json`` if present, else ``<kind>-quick.json`` (``quick`` set);
    with ``tag`` (e.g. "smoke") only ``<kind>-<tag>.json``. None when there is none."""
    candidates = ([(f"-{tag}", True)] if tag else [("", False), ("-quick", True)])
    for suffix, quick in candidates:
        path = directory / f"{kind}{suffix}.json"
        if path.is_file():
            return read(kind, path, quick)
    return None
