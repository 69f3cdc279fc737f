"""A run's numeric environment: what, besides the data, the config and the seed, decides a
stage's bits.

Float reductions round differently with another torch thread count, another kernel choice
(deterministic algorithms or not, CPU or CUDA) or another library version. The run card
records one environment when the run is created (``numeric``), and every process that trains
or verifies a stage of the run (local, a Ray worker, the background retrainer's child,
``s3t verify``) applies it, or refuses before it starts when it cannot (``mismatch``). So the
same run gives the same bits whichever executor trains it.

Pure bookkeeping (no torch import): applying it is :mod:`s3t.train.numeric`.

Cards written before this field have no ``numeric``: they read as :data:`LEGACY`, which
fixes nothing (training keeps the process's own thread count, as those runs were trained,
versions are not checked, and ``verify`` rebuilds each stage at the thread count its
``meta.json`` recorded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import metadata

#: Libraries whose kernels and defaults shape a stage's floats.
LIBRARIES = ("torch", "transformers", "peft")
DEVICES = ("cpu", "cuda")
#: cuBLAS needs a fixed workspace for deterministic CUDA matmuls (NVIDIA's documented value).
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class NumericEnv:
    """The environment a run's stages are computed in (see the module docstring).

    ``torch_threads`` None (legacy cards only): the process's own count."""

    torch_threads: int | None
    deterministic: bool = True
    dtype: str = "float32"
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def legacy(self) -> bool:
        return self.torch_threads is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> NumericEnv:
        """Parse the card's ``numeric`` object, field by field (``ValueError`` names the bad one)."""
        if not isinstance(data, dict):
            raise ValueError(f"`numeric` must be an object, got {type(data).__name__}")
        unknown = set(data) - {"torch_threads", "deterministic", "dtype", "device", "versions"}
        if unknown:
            raise ValueError(f"`numeric` has unknown keys {sorted(unknown)}")
        threads = data.get("torch_threads")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`numeric.torch_threads` must be an integer >= 1, got {threads!r}")
        deterministic = data.get("deterministic", True)
        if not isinstance(deterministic, bool):
            raise ValueError("`numeric.deterministic` must be true or false")
        dtype, device = data.get("dtype", "float32"), data.get("device", "cpu")
        if dtype != "float32":
            raise ValueError(f"`numeric.dtype` must be 'float32', got {dtype!r}")
        if device not in DEVICES:
            raise ValueError(f"`numeric.device` must be one of {', '.join(DEVICES)}, got {device!r}")
        versions = data.get("versions", {})
        if not isinstance(versions, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
            raise ValueError("`numeric.versions` must map library names to version strings")
        return cls(threads, deterministic, dtype, device, dict(versions))


#: What a card without ``numeric`` reads as: nothing fixed (see the module docstring).
LEGACY = NumericEnv(torch_threads=None, deterministic=False)


def installed_versions() -> dict[str, str]:
    """This process's versions of :data:`LIBRARIES` (read from package metadata, no import)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def new_env(torch_threads: int, device: str = "cpu") -> NumericEnv:
    """The environment recorded for a run created now, in this process."""
    return NumericEnv(torch_threads=torch_threads, deterministic=True, dtype="float32",
                      device=device, versions=installed_versions())


def mismatch(env: NumericEnv, versions: dict[str, str] | None = None,
             cuda_available: bool | None = None, where: str = "this process") -> str | None:
    """Why ``where`` cannot compute the run's bits (one sentence naming the fix), or None.

    ``versions`` defaults to this process's; ``cuda_available`` is the caller's (only a torch
    process knows it; None skips the check)."""
    if env.legacy:
        return None
    found = installed_versions() if versions is None else versions
    wrong = [f"{name} {found.get(name, 'not installed')} (the run's: {want})"
             for name, want in sorted(env.versions.items()) if found.get(name) != want]
    if wrong:
        pins = " ".join(f"{name}=={want}" for name, want in sorted(env.versions.items())
                        if found.get(name) != want)
        return (f"{where} has {', '.join(wrong)}: another version can round differently, so "
                f"its stages would not be bitwise the run's; install {pins} there")
    if env.device == "cuda" and cuda_available is False:
        return (f"the run computes on CUDA but {where} has no CUDA device: run it on a machine "
                "with a GPU (a CPU computes other bits)")
    return None
