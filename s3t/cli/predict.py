"""``s3t predict`` and ``s3t generate``: answers from a trained run's live shards."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from s3t.cli.errors import engine_errors, fail
from s3t.cli.inputs import JsonOpt, RunArg, emit


def predict_cmd(
    run: RunArg,
    data: Annotated[str | None, typer.Option("--data", help="CSV/JSONL, wordnet, fashion-mnist:test "
                    "or an image folder to label; accuracy is reported when it has labels.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to label (repeatable).")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts with the ensemble of live shards."""
    from s3t.data.loaders import load_source

    if (data is None) == (not text):
        raise fail("--data/--text", "give exactly one of --data FILE or --text TEXT")
    with engine_errors(run=run):
        from s3t.engine import S3T  # imports torch: loaded only by the commands that need it

        est = S3T.load(run)
        if text:
            pred = est.predict(text)
            rows = list(zip(text, pred.labels, pred.probabilities, strict=True))
            payload = {"predictions": [{"text": t, "label": lab, "confidence": float(p.max())}
                                       for t, lab, p in rows], "live_shards": pred.live_shards}
            lines = [f"{lab}\t{p.max():.3f}\t{t}" for t, lab, p in rows]
        elif data is not None:  # exactly one of the two is given (checked above)
            dataset = load_source(data, label_names=None)
            pred = est.predict(dataset.texts)
            pairs = list(zip(dataset.ids, pred.labels, strict=True))
            payload = {"n": len(dataset), "live_shards": pred.live_shards,
                       "predictions": [{"id": i, "label": lab} for i, lab in pairs]}
            lines = [f"{i}\t{lab}" for i, lab in pairs]
            if dataset.labels is not None:
                truth = [dataset.label_names[y] for y in dataset.labels]
                hits = sum(a == b for a, b in zip(truth, pred.labels, strict=True))
                payload["accuracy"] = hits / len(truth)
                lines.append(f"accuracy: {payload['accuracy']:.4f}")
    emit(as_json, payload, "\n".join(lines))


def generate_cmd(
    run: RunArg,
    prompt: Annotated[str, typer.Option("--prompt", help="The instruction to answer.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="At most this many tokens "
                              "(>= 0).")] = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Draw tokens instead of taking the most "
                      "likely one.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="With --sample (> 0).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws (with --sample).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Answer an instruction with an instruction-tuned run: the live shards' next-token
    probabilities are averaged at every step."""
    if max_new_tokens < 0:
        raise fail("--max-new-tokens", f"must be >= 0, got {max_new_tokens}")
    if sample and not (math.isfinite(temperature) and temperature > 0):
        raise fail("--temperature", f"must be a finite number > 0, got {temperature}")
    with engine_errors(run=run):
        from s3t.engine import S3T

        result = S3T.load(run).generate(prompt, max_new_tokens=max_new_tokens, greedy=not sample,
                                        temperature=temperature, seed=seed)
    payload = {"prompt": prompt, "text": result.text, "tokens": len(result.token_ids),
               "finished": result.finished, "live_shards": result.live_shards}
    emit(as_json, payload, result.text)
