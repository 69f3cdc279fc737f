"""Apply a run's numeric environment (:mod:`s3t.run.numeric`) to this process's torch.

Every place that computes a stage enters :func:`numeric_env` first: the local executor, each
Ray task, the background retrainer's child (through the local or Ray executor) and
``s3t verify``. It refuses, before anything is trained, a process that cannot compute the
run's bits (another torch, transformers or peft version; no CUDA for a CUDA run), then sets
the thread count and deterministic kernels, and puts back what it changed on exit (a library
caller's own settings survive ``fit``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from s3t.run.numeric import CUBLAS_WORKSPACE, NumericEnv, installed_versions, mismatch


class NumericEnvError(ValueError):
    """This process cannot compute the run's bits (see the message for the fix); a
    ``ValueError`` so front ends print it as one line, like another backbone's refusal."""


def check_env(env: NumericEnv, where: str = "this process") -> None:
    """Raise :class:`NumericEnvError` if ``where`` cannot match ``env``."""
    cuda = torch.cuda.is_available() if env.device == "cuda" else None
    problem = mismatch(env, cuda_available=cuda, where=where)
    if problem is not None:
        raise NumericEnvError(problem)


@contextmanager
def numeric_env(env: NumericEnv, where: str = "this process") -> Iterator[dict]:
    """Check ``env``, then run the block under it; yields what was used (for reports)."""
    check_env(env, where)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if env.torch_threads is not None and env.torch_threads != threads:
        torch.set_num_threads(env.torch_threads)
    if env.deterministic:
        if env.device == "cuda":  # cuBLAS reads it when its handle is made: before any matmul
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield used(env)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if torch.are_deterministic_algorithms_enabled() != deterministic:
            torch.use_deterministic_algorithms(deterministic)
        if env.device == "cuda" and workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def used(env: NumericEnv) -> dict:
    """The environment this process computes in now (what ``verify --json`` reports)."""
    return {"torch_threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "dtype": env.dtype, "device": env.device, "legacy_card": env.legacy,
            "versions": installed_versions()}
