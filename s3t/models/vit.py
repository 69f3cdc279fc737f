"""Vision Transformers (Hugging Face ``ViTForImageClassification``) for image classification.

Inputs are images as data URIs (see ``s3t.data.images``), decoded with Pillow, converted to
the model's channel count, resized to its ``image_size`` and normalised: with the model
directory's own image processor when it ships one (``preprocessor_config.json``), otherwise
with mean = std = 0.5 per channel. Every image yields ``num_patches + 1`` tokens (CLS first),
so the attention mask is all ones; ViT attention needs no mask and the layers ignore it.

The head a stage trains is the final layer norm plus the classifier (logits from the CLS
token): like the BERT pooler, the layer norm is pretrained, starts each stage from its
parent's copy and is stored in each stage's head file, so it never carries another stage's
data. The classifier is re-initialised from the run's seed.

Layout of the installed transformers 5: the layers are ``model.vit.layers`` and the attention
projections ``q_proj``/``k_proj``/``v_proj`` (old checkpoints with ``encoder.layer`` and
``attention.attention.query`` are renamed on load); the usual LoRA targets ``query``,
``key``, ``value`` are translated to those names (``lora_targets``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, ViTForImageClassification

from s3t.data.images import decode_image
from s3t.models.base import (
    FamilyDefaults,
    init_linear_layers,
    layer_stack,
    quiet_loading,
    register,
    submodule,
)

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_TARGET_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


@dataclass
class ImagePreprocessor:
    """Images -> ``pixel_values`` (B, C, H, W) for one model."""

    height: int
    width: int
    channels: int
    patch_height: int
    patch_width: int
    image_processor: Any = None  # the model directory's Hugging Face image processor, if any
    mean: float = 0.5
    std: float = 0.5

    @property
    def tokens(self) -> int:
        """Patches plus the CLS token."""
        return (self.height // self.patch_height) * (self.width // self.patch_width) + 1

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        from PIL import Image

        mode = _MODES[self.channels]
        converted = [image if image.mode == mode else image.convert(mode) for image in images]
        if self.image_processor is not None:
            pixels = self.image_processor(converted, return_tensors="pt")["pixel_values"]
        else:
            arrays = []
            for image in converted:
                if image.size != (self.width, self.height):
                    image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
                arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            pixels = (torch.from_numpy(np.stack(arrays)) - self.mean) / self.std
        expected = (len(images), self.channels, self.height, self.width)
        if tuple(pixels.shape) != expected:
            raise ValueError(f"the image processor produced pixel values of shape "
                             f"{tuple(pixels.shape)}, the model needs {expected}")
        return pixels.float()


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@register(("vit",))
class ViTFamily(FamilyDefaults):
    name = "vit"

    def load(self, path: str, num_labels: int) -> tuple[nn.Module, ImagePreprocessor]:
        with quiet_loading():
            model = ViTForImageClassification.from_pretrained(
                path, num_labels=num_labels, ignore_mismatched_sizes=True,
                attn_implementation="eager",
            )
            image_processor = None
            if (Path(path) / "preprocessor_config.json").is_file():
                image_processor = AutoImageProcessor.from_pretrained(path)
        config = model.config
        if config.num_channels not in _MODES:
            raise ValueError(f"{path}: ViT with {config.num_channels} input channels; "
                             f"supported: {sorted(_MODES)}")
        height, width = _pair(config.image_size)
        patch_height, patch_width = _pair(config.patch_size)
        return model, ImagePreprocessor(height, width, config.num_channels, patch_height,
                                        patch_width, image_processor)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return layer_stack(model, "vit.layers")

    def layers_pattern(self) -> str:
        return "layers"

    def lora_targets(self, names: Sequence[str]) -> list[str]:
        """Map the usual encoder target names onto ViT's projection names."""
        return [_TARGET_ALIASES.get(name, name) for name in names]

    def encode(self, processor: ImagePreprocessor, inputs: list[Any],
               max_len: int) -> dict[str, torch.Tensor]:
        """Data URIs (or PIL images) -> ``pixel_values`` and an all-ones attention mask.

        ``max_len`` does not apply: an image is always ``num_patches + 1`` tokens.
        """
        pixels = processor([decode_image(value) for value in inputs])
        mask = torch.ones((len(inputs), processor.tokens), dtype=torch.long)
        return {"pixel_values": pixels, "attention_mask": mask}

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        embeddings = submodule(model, "vit.embeddings")
        dtype = embeddings.get_parameter("patch_embeddings.projection.weight").dtype
        return embeddings(batch["pixel_values"].to(dtype))

    def run_layers(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                   start: int, end: int) -> torch.Tensor:
        return self.apply_layers(self.layers(model)[start:end], hidden, mask)

    def apply_layers(self, layers: Iterable[nn.Module], hidden: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        # Every token of an image is real (the mask is all ones): no attention mask.
        for layer in layers:
            hidden = layer(hidden)
        return hidden

    def head_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"layernorm": submodule(model, "vit.layernorm"),
                "classifier": submodule(model, "classifier")}

    def head(self, model: nn.Module, hidden: torch.Tensor,
             mask: torch.Tensor | None) -> torch.Tensor:
        return submodule(model, "classifier")(submodule(model, "vit.layernorm")(hidden)[:, 0])

    def init_head(self, model: nn.Module, generator: torch.Generator) -> None:
        init_linear_layers(submodule(model, "classifier"), generator,
                           getattr(model.config, "initializer_range", 0.02))
