import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny_bert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")
