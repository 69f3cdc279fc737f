"""The backbone-family contract is declared (typing protocols) and enforced when a family is
picked; the exact-layer check of the adapted backbone is a real check, not an ``assert``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

from s3t.config import S3TConfig
from s3t.models import base
from s3t.models.adapted import AdaptedBackbone
from s3t.models.base import (
    BackboneFamily,
    CausalLMFamily,
    ClassifierFamily,
    FamilyDefaults,
    family_for,
    protocol_members,
)
from s3t.models.decoder import LLM_TARGETS, DecoderFamily
from s3t.models.encoder import EncoderFamily
from s3t.models.vit import ViTFamily

SHARED = {"name", "task", "default_targets", "lora_targets", "load", "layers", "layers_pattern",
          "encode", "embed", "run_layers", "apply_layers", "apply_layers_for_head",
          "head_modules", "head", "init_head"}
CAUSAL_ONLY = {"loss", "prompt_ids", "stop_ids", "pad"}


def test_protocols_declare_the_members_the_engine_calls():
    assert set(protocol_members(BackboneFamily)) == SHARED
    assert set(protocol_members(ClassifierFamily)) == SHARED
    assert set(protocol_members(CausalLMFamily)) == SHARED | CAUSAL_ONLY


@pytest.mark.parametrize(("model_type", "cls", "protocol", "task"), [
    ("bert", EncoderFamily, ClassifierFamily, "classification"),
    ("roberta", EncoderFamily, ClassifierFamily, "classification"),
    ("vit", ViTFamily, ClassifierFamily, "classification"),
    ("llama", DecoderFamily, CausalLMFamily, "causal_lm"),
    ("mistral", DecoderFamily, CausalLMFamily, "causal_lm"),
    ("qwen2", DecoderFamily, CausalLMFamily, "causal_lm"),
])
def test_each_registered_family_satisfies_its_task_protocol(model_type, cls, protocol, task):
    family = family_for(model_type)
    assert type(family) is cls and isinstance(family, FamilyDefaults)
    assert isinstance(family, BackboneFamily) and isinstance(family, protocol)
    assert family.task == task and base.TASK_PROTOCOLS[task] is protocol
    for member in protocol_members(protocol):
        assert hasattr(family, member), f"{cls.__name__} lacks {member}"
    assert isinstance(family.name, str) and family.name
    assert all(isinstance(t, str) for t in family.default_targets)
    if protocol is ClassifierFamily:
        assert not isinstance(family, CausalLMFamily)


def test_every_registered_model_type_passes_the_check():
    for model_type in base.model_types():
        base.check_family(family_for(model_type))


def test_optional_members_have_shared_defaults():
    encoder, vit, decoder = EncoderFamily(), ViTFamily(), DecoderFamily()
    assert encoder.task == vit.task == "classification"
    assert encoder.default_targets == vit.default_targets == ("query", "value")
    assert encoder.lora_targets(("query", "dense")) == ["query", "dense"]
    assert vit.lora_targets(["query", "value"]) == ["q_proj", "v_proj"]
    assert decoder.default_targets == LLM_TARGETS
    assert decoder.lora_targets(["key", "gate_proj"]) == ["k_proj", "gate_proj"]


def _tiny_classifier(config_cls):
    config = config_cls(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, num_labels=5,
                        attn_implementation="eager")  # as EncoderFamily.load
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("config_cls", [BertConfig, RobertaConfig])
def test_encoder_serving_computes_the_first_position_as_the_whole_layer_does(config_cls):
    """The last layer computed at the first position alone gives that position's hidden state
    and the head's logits as the whole layers do, with padded rows in the batch."""
    family, model = EncoderFamily(), _tiny_classifier(config_cls)
    layers = family.layers(model)
    hidden = torch.randn(4, 7, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        whole = family.apply_layers(layers, hidden, mask)
        first = family.apply_layers_for_head(layers, hidden, mask)
        assert first.shape == (4, 1, 32)
        torch.testing.assert_close(first, whole[:, :1], rtol=0, atol=1e-6)
        torch.testing.assert_close(family.head(model, first, mask), family.head(model, whole, mask),
                                   rtol=0, atol=1e-6)
        # a layer of another shape runs whole (and the first position is kept)
        odd = torch.nn.ModuleList([_AddOne()])
        assert torch.equal(family.apply_layers_for_head(odd, hidden, mask), hidden[:, :1] + 1)
        # the default for other families: every position
        vit = ViTFamily()
        assert vit.apply_layers_for_head(odd, hidden, mask).shape == (4, 7, 32)


class _AddOne(torch.nn.Module):
    def forward(self, hidden, mask=None):
        return hidden + 1


class _Incomplete(FamilyDefaults):
    """A classifier family that forgot most of the interface."""

    name = "incomplete"

    def load(self, path, num_labels):
        raise NotImplementedError


class _HalfLM(EncoderFamily):
    """Claims to be a causal LM but gives none of the generation members."""

    task = "causal_lm"


class _OddTask(EncoderFamily):
    task = "regression"


@pytest.mark.parametrize(("cls", "message"), [
    (_Incomplete, r"lacks .*layers.*of ClassifierFamily"),
    (_HalfLM, r"lacks loss, pad, prompt_ids, stop_ids of CausalLMFamily"),
    (_OddTask, r"task 'regression'; supported: classification, causal_lm"),
])
def test_family_for_refuses_a_family_that_breaks_its_contract(cls, message, monkeypatch):
    family_for("bert")
    # registering is for good (a decorator); setitem on the registry undoes it after the test
    monkeypatch.setitem(base._FAMILIES, "broken", cls)
    with pytest.raises(TypeError, match=message):
        family_for("broken")


def test_exact_layer_check_is_a_real_error(tiny_bert):
    cfg = S3TConfig(model=tiny_bert, shards=1, slices=2, budget=1, seed=7)
    backbone = AdaptedBackbone(cfg, num_labels=2)
    assert set(backbone.group_parameters(1)) and set(backbone.group_parameters(2))
    # Corrupt the bookkeeping: a module of layer group 1 filed under group 2. Private on
    # purpose: no public path files a module in the wrong group; this proves the guard fires.
    backbone._lora_by_group[2].append(backbone._lora_by_group[1][0])
    with pytest.raises(RuntimeError, match=r"layer group 1, but was collected for layer group 2"):
        backbone.group_parameters(2)
