"""BERT-family encoders (BERT, MiniLM, RoBERTa, ...) for sequence classification."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from s3t.models.base import (
    FamilyDefaults,
    additive_mask,
    init_linear_layers,
    layer_stack,
    quiet_loading,
    register,
    submodule,
)


@register(("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilroberta"))
class EncoderFamily(FamilyDefaults):
    name = "encoder"

    def load(self, path: str, num_labels: int) -> tuple[nn.Module, Any]:
        with quiet_loading():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, attn_implementation="eager",
                ignore_mismatched_sizes=True,
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        return model, tokenizer

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return layer_stack(model, "base_model.encoder.layer")

    def layers_pattern(self) -> str:
        return "layer"

    def encode(self, processor: Any, inputs: list[Any], max_len: int) -> dict[str, torch.Tensor]:
        return dict(processor(list(inputs), padding=True, truncation=True, max_length=max_len,
                              return_tensors="pt"))

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {"input_ids": batch["input_ids"]}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        return submodule(model, "base_model.embeddings")(**kwargs)

    def run_layers(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                   start: int, end: int) -> torch.Tensor:
        return self.apply_layers(self.layers(model)[start:end], hidden, mask)

    def apply_layers(self, layers: Iterable[nn.Module], hidden: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        extended = additive_mask(mask, hidden.dtype)
        for layer in layers:
            hidden = layer(hidden, extended)
        return hidden

    def apply_layers_for_head(self, layers: nn.ModuleList, hidden: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
        """The first position only of the last layer's output, (B, 1, H): the pooler (or a
        RoBERTa-style head) reads nothing else, so the last layer's queries, attention output
        and feed-forward for the other positions would be computed for nothing (about 5/6 of
        the layer's compute; docs/design.md)."""
        if not layers:
            return hidden[:, :1]
        extended = additive_mask(mask, hidden.dtype)
        for layer in layers[:-1]:
            hidden = layer(hidden, extended)
        return first_position(layers[-1], hidden, extended)

    def head_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = {"classifier": submodule(model, "classifier")}
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None:
            modules["pooler"] = pooler
        return modules

    def head(self, model: nn.Module, hidden: torch.Tensor,
             mask: torch.Tensor | None) -> torch.Tensor:
        classifier = submodule(model, "classifier")
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is None:  # RoBERTa-style heads read the first token themselves
            return classifier(hidden)
        return classifier(submodule(model, "dropout")(pooler(hidden)))

    def init_head(self, model: nn.Module, generator: torch.Generator) -> None:
        init_linear_layers(submodule(model, "classifier"), generator,
                           getattr(model.config, "initializer_range", 0.02))


def first_position(layer: nn.Module, hidden: torch.Tensor, extended: torch.Tensor) -> torch.Tensor:
    """A BERT-style layer's output at the first position, (B, 1, H): the same operations as
    the layer's eager forward (``eager_attention_forward``, then its output and feed-forward
    blocks), with the query and everything after attention taken at that position alone.
    Keys and values still come from every position. A layer of another shape runs whole."""
    attention = getattr(getattr(layer, "attention", None), "self", None)
    needed = ("query", "key", "value", "num_attention_heads", "attention_head_size", "scaling")
    if attention is None or getattr(attention, "is_causal", False) or \
            not all(hasattr(attention, name) for name in needed):
        return layer(hidden, extended)[:, :1]
    b, t, _ = hidden.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size
    query = attention.query(hidden[:, :1]).view(b, 1, heads, size).transpose(1, 2)
    key = attention.key(hidden).view(b, t, heads, size).transpose(1, 2)
    value = attention.value(hidden).view(b, t, heads, size).transpose(1, 2)
    weights = torch.matmul(query, key.transpose(2, 3)) * attention.scaling + extended
    context = torch.matmul(torch.softmax(weights, dim=-1), value)
    context = context.transpose(1, 2).reshape(b, 1, heads * size)
    blocks: Any = layer  # HF's BertLayer: attention.output, feed_forward_chunk
    attended = blocks.attention.output(context, hidden[:, :1])
    return blocks.feed_forward_chunk(attended)
