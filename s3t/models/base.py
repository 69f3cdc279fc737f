"""What the engine needs from a backbone family, and the registry that picks one for a model.

A family says how to load a model, turn raw inputs into hidden states, run a range of
its transformer layers and apply its head. The engine never touches architecture details
beyond this interface, so a new family (ViT, Llama, ...) is one new module.

The contract is declared as runtime-checkable protocols: :class:`BackboneFamily` (shared),
refined by :class:`ClassifierFamily` and :class:`CausalLMFamily` according to ``task``. A
family inherits :class:`FamilyDefaults` for the optional members, and :func:`family_for`
checks it against its task's protocol when it is picked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class BackboneFamily(Protocol):
    """Members every family has, whatever its task (:class:`FamilyDefaults` fills the optional
    ones). The engine only ever calls these, plus the task's own members below."""

    name: str
    #: ``"classification"`` (:class:`ClassifierFamily`) or ``"causal_lm"`` (:class:`CausalLMFamily`).
    task: str
    #: LoRA target names used when the config names none (before :meth:`lora_targets`).
    default_targets: tuple[str, ...]

    def lora_targets(self, names: Sequence[str]) -> list[str]:
        """Translate configured LoRA target names (e.g. ``query``) into this family's module names."""

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

    def apply_layers(self, layers: Iterable[nn.Module], hidden: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Run the given layer modules (e.g. merged copies for serving) in order."""

    def apply_layers_for_head(self, layers: nn.ModuleList, hidden: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
        """As ``apply_layers`` where only ``head`` reads the result (serving): positions the
        head does not read may be left out of the last layer's output."""

    def head_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules trained per stage on top of the layers (classifier, pooler...)."""

    def head(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states -> logits: (B, num_labels) for a classifier, (..., vocab) for an LM."""

    def init_head(self, model: nn.Module, generator: torch.Generator) -> None:
        """Give the head's untrained parts a data-independent, seeded initial value."""


@runtime_checkable
class ClassifierFamily(BackboneFamily, Protocol):
    """``task == "classification"``: ``head`` gives (B, num_labels) logits, trained with
    cross-entropy on the sample labels."""


@runtime_checkable
class CausalLMFamily(BackboneFamily, Protocol):
    """``task == "causal_lm"``: instruction-tuned decoders.

    ``encode`` also returns token ``labels`` (-100 where unsupervised), ``head`` gives
    per-token logits, and the stage trainer, the evaluator and ``generate`` need the members
    below.
    """

    def loss(self, model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of final hidden states against token ``targets``."""

    def prompt_ids(self, tokenizer: Any, instruction: str) -> list[int]:
        """Token ids of the prompt the model answers (what ``generate`` continues)."""

    def stop_ids(self, model: nn.Module, tokenizer: Any) -> set[int]:
        """Tokens that end a generated answer."""

    def pad(self, tokenizer: Any, rows: Sequence[Sequence[int]],
            labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Pad token rows into ``input_ids``/``attention_mask`` (and ``labels``)."""


#: The protocol a family of each task must satisfy.
TASK_PROTOCOLS: dict[str, type] = {"classification": ClassifierFamily, "causal_lm": CausalLMFamily}


class FamilyDefaults:
    """Defaults for the optional members, so every family has every protocol member.

    A family inherits this and overrides what differs (a causal LM sets ``task``,
    ``default_targets`` and usually ``lora_targets``).
    """

    task: str = "classification"
    default_targets: tuple[str, ...] = ("query", "value")
    apply_layers: Callable[[Iterable[nn.Module], torch.Tensor, torch.Tensor], torch.Tensor]

    def apply_layers_for_head(self, layers: nn.ModuleList, hidden: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
        """Every position: a family whose head reads fewer may compute fewer."""
        return self.apply_layers(layers, hidden, mask)

    def lora_targets(self, names: Sequence[str]) -> list[str]:
        """Identity: the configured names are already this family's module names."""
        return list(names)


def check_family(family: object) -> None:
    """Raise ``TypeError`` naming the missing members if ``family`` breaks its task's protocol.

    Run when a family is picked, so a half-implemented family fails at load time with a
    clear message rather than deep inside training or generation.
    """
    task = getattr(family, "task", None)
    protocol = TASK_PROTOCOLS.get(task) if isinstance(task, str) else None
    if protocol is None:
        raise TypeError(f"backbone family {type(family).__name__} has task {task!r}; "
                        f"supported: {', '.join(TASK_PROTOCOLS)}")
    if not isinstance(family, protocol):
        missing = [m for m in protocol_members(protocol) if not hasattr(family, m)]
        raise TypeError(f"backbone family {type(family).__name__} (task {task!r}) lacks "
                        f"{', '.join(missing)} of {protocol.__name__}: implement them or "
                        "inherit s3t.models.base.FamilyDefaults")


def protocol_members(protocol: type) -> list[str]:
    """Names a family must define to satisfy ``protocol`` (attributes and methods)."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (object, Protocol, Generic) or not getattr(cls, "_is_protocol", False):
            continue  # not a protocol class: its members are not part of the contract
        names.update(getattr(cls, "__annotations__", {}))
        names.update(k for k, v in vars(cls).items() if callable(v) and not k.startswith("_"))
    return sorted(names)


_FAMILIES: dict[str, type] = {}


def register(model_types: tuple[str, ...]) -> Callable[[type], type]:
    """Class decorator: make a family available for the given ``config.model_type`` values."""

    def wrap(cls: type) -> type:
        for model_type in model_types:
            _FAMILIES[model_type] = cls
        return cls

    return wrap


def family_for(model_type: str) -> BackboneFamily:
    """A fresh family for ``config.model_type``, checked against its task's protocol.

    ``ValueError`` for an unknown model type, ``TypeError`` for a family that breaks its
    contract (see :func:`check_family`).
    """
    if model_type not in model_types():
        raise ValueError(f"no backbone family for model type {model_type!r}; supported: "
                         f"{', '.join(model_types())}")
    family = _FAMILIES[model_type]()
    check_family(family)
    return family


def model_types() -> list[str]:
    """The ``config.model_type`` values a family is registered for, sorted (the supported
    backbones, as ``family_for``'s error lists them)."""
    # Import the built-in families so that they register themselves.
    from s3t.models import decoder, encoder, vit  # noqa: F401

    return sorted(_FAMILIES)


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


def submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.<path>`` for a dotted attribute path (``"model.norm"``), checked to be a module.

    ``nn.Module`` types an attribute it does not declare as ``Tensor | Module``; family code
    reaches into models through this (torch's ``get_submodule``, which follows attributes as
    ``model.a.b`` does) rather than through unchecked attribute chains.
    """
    return model.get_submodule(path)


def layer_stack(model: nn.Module, path: str) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer layers at ``model.<path>``; ``TypeError`` otherwise."""
    layers = model.get_submodule(path)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}.{path} is a {type(layers).__name__}, "
                        "not the ModuleList of layers this family expects")
    return layers


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
