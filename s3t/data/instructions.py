"""The stored form of instruction-tuning samples (for causal LMs), kept free of torch.

The ledger stores every input as TEXT, so an instruction sample is a JSON string
``{"instruction": ..., "response": ...}``. Loaders write that form and the decoder family
reads it back; both use these helpers, so data loading never imports the model stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def instruction_text(instruction: str, response: str) -> str:
    """The stored form of an instruction-tuning sample."""
    return json.dumps({"instruction": instruction, "response": response}, ensure_ascii=False)


def parse_instruction(text: Any) -> tuple[str, str]:
    """``(instruction, response)`` of a stored sample (a JSON string or a mapping).

    Raises ``ValueError`` naming the fix when the input is not instruction data, e.g. plain
    classification text given to a causal LM.
    """
    obj = text
    if isinstance(text, str):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("instruction"), str) \
            or not isinstance(obj.get("response"), str):
        raise ValueError(
            "a causal LM trains on JSON objects {\"instruction\": ..., \"response\": ...}; got "
            f"{str(text)[:80]!r}: load instruction data (JSONL with id, instruction, response, "
            "or instruct:wordnet)")
    return obj["instruction"], obj["response"]
