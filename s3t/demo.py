"""The end-to-end demonstration: train S3T on WordNet nouns with MiniLM, forget random
samples one request at a time (latency, accuracy, capacity), then retrain."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from s3t.config import S3TConfig
from s3t.data.loaders import load_wordnet, train_test_split
from s3t.engine import S3T


def run_demo(config: S3TConfig, n_train: int = 2000, n_test: int = 300, deletions: int = 12,
             out: str | Path | None = None, plot: str | Path | None = "s3t-demo.png",
             progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Train, forget one request at a time, retrain; return the measurements (echoed as they
    come) so that ``s3t demo --json`` and the plot show the same numbers."""
    data = load_wordnet(limit=n_train + n_test, seed=config.seed)
    train, test = train_test_split(data, n_test, seed=config.seed)
    echo(f"WordNet nouns: {len(train)} training and {len(test)} test glosses, "
         f"{len(data.label_names)} categories")
    echo(f"S3T: {config.shards} shards x {config.slices} slices, budget {config.budget} "
         f"({config.strategy}), {config.epochs} epochs, seed {config.seed}")
    started = time.perf_counter()
    est = S3T(config, run_dir=out).fit(train, progress=progress)
    train_seconds = time.perf_counter() - started
    if est.last_train is None:  # fit always records them
        raise RuntimeError("S3T.fit recorded no training statistics")
    accuracy = est.score(test)
    echo(f"trained {est.last_train['stages_trained']} stages in {train_seconds:.1f} s; "
         f"test accuracy {accuracy:.3f}")

    history = [{"deletions": 0, "accuracy": accuracy, "capacity": 1.0,
                "live_shards": config.shards, "latency_ms": None}]
    rng = random.Random(config.seed)
    victims = rng.sample(train.ids, min(deletions, len(train)))
    echo(f"{'#':>3}  {'sample':<14} {'latency ms':>10} {'live':>4} {'capacity':>8} {'accuracy':>8}")
    for i, sid in enumerate(victims, start=1):
        t0 = time.perf_counter()
        est.forget([sid])
        latency = (time.perf_counter() - t0) * 1000
        status = est.status()
        acc = est.score(test) if status["live_shards"] else None
        history.append({"deletions": i, "accuracy": acc, "capacity": status["capacity"],
                        "live_shards": status["live_shards"], "latency_ms": latency})
        shown = "retrain" if acc is None else f"{acc:.3f}"
        echo(f"{i:>3}  {sid:<14} {latency:>10.2f} {status['live_shards']:>4} "
             f"{status['capacity']:>8.2f} {shown:>8}")
        if not status["live_shards"]:
            echo("every shard has lost its first slice: retraining is required")
            break
    audit_ok = est.audit().ok
    t0 = time.perf_counter()
    summary = est.retrain(progress=progress)
    retrain_seconds = time.perf_counter() - t0
    final = est.score(test)
    # Audited before and after retraining: forgetting and retraining must both keep exactness.
    audit_ok = audit_ok and est.audit().ok
    echo(f"retrained {summary['stages_trained']} stages in {retrain_seconds:.1f} s; "
         f"capacity {est.status()['capacity']:.2f}, test accuracy {final:.3f}; "
         f"audit {'passed' if audit_ok else 'FAILED'}")
    latencies = sorted(h["latency_ms"] for h in history if h["latency_ms"] is not None)
    result = {
        "config": config.to_dict(), "n_train": len(train), "n_test": len(test),
        "train_seconds": train_seconds, "test_accuracy": accuracy, "history": history,
        "forget_ms_median": latencies[len(latencies) // 2] if latencies else None,
        "forget_ms_max": latencies[-1] if latencies else None,
        "retrain_seconds": retrain_seconds, "stages_retrained": summary["stages_trained"],
        "accuracy_after_retrain": final, "audit_ok": audit_ok,
        "run_dir": str(est.run_dir),
    }
    if plot:
        write_plot(Path(plot), history, final)
        result["plot"] = str(plot)
        echo(f"plot written to {plot}")
    return result


def write_plot(path: Path, history: list[dict], final_accuracy: float) -> None:
    """Accuracy and capacity against deletions: the demo's claim in one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [h["deletions"] for h in history]
    ax.plot(xs, [h["accuracy"] if h["accuracy"] is not None else float("nan") for h in history],
            "o-", label="test accuracy")
    ax.plot(xs, [h["capacity"] for h in history], "s--", label="capacity (served prefix / L)")
    ax.axhline(final_accuracy, color="gray", ls=":", label="accuracy after retrain")
    ax.set_xlabel("deletion requests")
    ax.set_ylim(0, 1.05)
    ax.set_title("S3T on WordNet nouns (MiniLM): forgetting without retraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
