"""A short prepared check for a machine with a GPU: the numeric environment on CUDA, and a
tiny run trained, forgotten, retrained and verified bitwise, with timings.

Why: a run's numeric environment (``run/numeric.py``) promises the same bits from every
process that computes its stages. On CUDA that needs deterministic kernels and a fixed cuBLAS
workspace (``train/numeric.py`` sets both when the card's device is cuda). This script checks,
where a GPU is lent:

1. under ``numeric_env`` with device cuda: ``CUBLAS_WORKSPACE_CONFIG`` and deterministic
   algorithms are set; a float32 matmul-and-reduce and a small attention block give the same
   bits twice (and their time);
2. the s3t flow on a tiny random BERT (train, forget one sample per shard, retrain,
   ``verify`` every stage bitwise), timed. Today s3t computes stages on the CPU (the trainer
   has no device placement yet), so this part records ``device: cpu`` on the card and checks
   that a GPU machine gives the same verified bits as any other.

    python -m bench gpu [--out result.json]

Exits non-zero if a check fails; prints one JSON object. Runs in about a minute.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tiny():  # noqa: ANN202 (the tests' tiny.py module: tiny random models and toy data)
    """tests/tiny.py, loaded from its file (tests/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", ROOT / "tests" / "tiny.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_checks() -> dict:
    import torch

    from s3t.run.numeric import NumericEnv, installed_versions
    from s3t.train.numeric import numeric_env

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    env = NumericEnv(torch_threads=1, device="cuda", versions=installed_versions())
    out: dict = {"device_name": torch.cuda.get_device_name(0)}
    with numeric_env(env) as used:
        out["environment"] = used
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(4096, 4096, device="cuda", generator=g)
        b = torch.randn(4096, 4096, device="cuda", generator=g)
        q = torch.randn(64, 8, 128, 64, device="cuda", generator=g)

        def work() -> tuple:
            attn = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return (a @ b).sum(dim=0), attn

        first = work()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        second = work()
        torch.cuda.synchronize()
        out["work_seconds"] = time.perf_counter() - t0
        out["bitwise_repeatable"] = all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    return out


def tiny_flow(workdir: Path) -> dict:
    tiny = _tiny()
    make_tiny_bert, toy_dataset = tiny.make_tiny_bert, tiny.toy_dataset

    from s3t.config import S3TConfig
    from s3t.engine import S3T
    from s3t.verify import verify_run

    model = make_tiny_bert(workdir / "tiny-bert")
    data = toy_dataset(72)
    cfg = S3TConfig(model=model, shards=2, slices=3, budget=3, epochs=2, batch_size=8,
                    learning_rate=1e-2, seed=7)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    est = S3T(cfg, run_dir=workdir / "run").fit(data, progress=False)
    times["train"] = time.perf_counter() - t0
    victims = [est.ledger.cell_samples(m, 0)[0][0] for m in range(cfg.shards)]
    t0 = time.perf_counter()
    cert = est.forget(victims)
    times["forget"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = est.retrain(progress=False)
    times["retrain"] = time.perf_counter() - t0
    card = est.run.numeric.to_dict()
    est.close()
    t0 = time.perf_counter()
    report = verify_run(workdir / "run", "all", progress=False)
    times["verify"] = time.perf_counter() - t0
    return {"seconds": times, "erased_stages": len(cert["erased_stages"]),
            "retrained_stages": again["stages_trained"], "card_numeric": card,
            "verify_ok": report.ok, "verified_stages": len(report.stages),
            "verify_environment": report.environment}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the result here")
    parser.add_argument("--smoke", action="store_true", help="accepted for the smoke runner: "
                        "the check is small already (without CUDA it records that)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3t-gpu-") as tmp:
        result = {"cuda": cuda_checks(), "tiny_run": tiny_flow(Path(tmp))}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    cuda_ok = result["cuda"].get("bitwise_repeatable", True)
    return 0 if cuda_ok and result["tiny_run"]["verify_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
