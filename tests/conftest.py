import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import copy_run, make_tiny_bert, toy_dataset  # noqa: E402

from s3t.config import S3TConfig  # noqa: E402
from s3t.data.samples import Dataset  # noqa: E402

#: The longest units of pytest-xdist's work (scripts/test.sh: ``--dist loadscope
#: --no-loadscope-reorder``), first: the benchmarks' smoke parts and the Ray and kill -9
#: files take minutes each; handed out last, one of them would run alone at the end.
LONGEST_FIRST = ("test_bench_smoke.py", "test_ray.py", "test_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of :data:`LONGEST_FIRST` first, in that order; the rest as collected."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


SERVICE_TRAIN = toy_dataset(48, groups=True)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_bert) -> Path:
    """A tiny BERT run (m=2, L=2, B=2, validation samples e0..e11) fitted on SERVICE_TRAIN,
    shared by the service tests; tests that change it work on ``run_copy``."""
    from s3t.engine import S3T

    run = tmp_path_factory.mktemp("service") / "run"
    config = S3TConfig(model=tiny_bert, shards=2, slices=2, budget=2, epochs=1, batch_size=8,
                       lora_r=4, lora_alpha=4, target_modules=["query", "key", "value"], seed=3)
    held_out = toy_dataset(12, seed=9)
    held_out = Dataset([f"e{i}" for i in range(12)], held_out.texts, held_out.labels,
                       label_names=held_out.label_names)  # validation: never deletable
    S3T(config, run_dir=run).fit(SERVICE_TRAIN, held_out, progress=False).close()
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return copy_run(trained, tmp_path)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every Ray test (2 CPUs, no dashboard), shut down at the end.

    Every test that uses it lives in tests/test_ray.py: scripts/test.sh runs pytest-xdist with
    ``--dist loadscope``, which keeps a file's tests in one worker, so two Ray instances never
    compete for the machine's 2 cores.

    Skips only where ray is not installed (scripts/setup.sh installs it); `import ray` happens
    here, so test files that do not use Ray never pay for it."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A shared 2-core CI machine can starve the local raylet for a while; Ray's default health
    # check then declares the node dead, and the driver (this pytest process) exits on the
    # spot. Tolerate minutes of silence instead; the tests' models need a small object store.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20,
             _system_config={"health_check_failure_threshold": 60,
                             "health_check_timeout_ms": 30_000,
                             "gcs_rpc_server_reconnect_timeout_s": 600})
    yield ray
    ray.shutdown()
