"""What the engine needs from a backbone family, and the registry that picks one for a model.

A family says how to load a model, turn raw inputs into hidden states, run a range of
its transformer layers and apply its head. The engine never touches architecture details
beyond this interface, so a new family (ViT, Llama, ...) is one new module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn


class BackboneFamily(Protocol):
    name: str

    def load(self, path: str, num_labels: int) -> tuple[nn.Module, Any]:
        """Return ``(model, processor)``; the processor turns raw inputs into tensors."""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The stack of transformer layers, bottom first."""

    def layers_pattern(self) -> str:
        """The attribute name of that stack, for peft's ``layers_pattern``."""

    def encode(self, processor: Any, inputs: list[Any], max_len: int) -> dict[str, torch.Tensor]:
        """Raw inputs -> model inputs; must contain ``attention_mask`` (B, T)."""

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Model inputs -> hidden states entering layer 0, shape (B, T, H)."""

    def run_layers(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                   start: int, end: int) -> torch.Tensor:
        """Run layers ``start..end-1`` on ``hidden`` with a (B, T) 0/1 mask."""

    def apply_layers(self, layers: Sequence[nn.Module], hidden: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Run the given layer modules (e.g. merged copies for serving) in order."""

    def head_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules trained per stage on top of the layers (classifier, pooler...)."""

    def head(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits (B, num_labels)."""

    def init_head(self, model: nn.Module, generator: torch.Generator) -> None:
        """Give the head's untrained parts a data-independent, seeded initial value."""

    # Optional: ``lora_targets(names) -> list[str]`` translates the configured LoRA target
    # names (e.g. ``query``, ``value``) into the family's module names; identity if absent.
    # ``default_targets``: the LoRA targets when the config names none (``query``, ``value``
    # if absent).
    # ``task``: ``"classification"`` if absent; ``"causal_lm"`` families (``decoder.py``) also
    # return token ``labels`` from ``encode`` (-100 where unsupervised), return per-token
    # logits from ``head`` and give ``loss(model, hidden, targets)``.


_FAMILIES: dict[str, type] = {}


def register(model_types: tuple[str, ...]):
    """Class decorator: make a family available for the given ``config.model_type`` values."""

    def wrap(cls: type) -> type:
        for model_type in model_types:
            _FAMILIES[model_type] = cls
        return cls

    return wrap


def family_for(model_type: str) -> BackboneFamily:
    # Import the built-in families so that they register themselves.
    from s3t.models import decoder, encoder, vit  # noqa: F401

    try:
        return _FAMILIES[model_type]()
    except KeyError:
        raise ValueError(
            f"no backbone family for model type {model_type!r}; supported: "
            f"{', '.join(sorted(_FAMILIES))}"
        ) from None


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' loading reports and bars while a model loads.

    Heads are re-initialised per run (``init_head``), so a checkpoint's head of another
    size, or a missing one, is expected and not worth a warning.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def init_linear_layers(module: nn.Module, generator: torch.Generator, std: float) -> None:
    """Seeded normal(0, std) weights and zero biases for every Linear in ``module``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                if layer.bias is not None:
                    layer.bias.zero_()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, 1, 1, T) additive mask for eager attention."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
