"""Tiny randomly initialised Hugging Face models and toy data for fast tests."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
)

from s3t.data.samples import Dataset

WORDS = ["red", "green", "blue", "cat", "dog", "fish", "sun", "moon", "star", "tree"]


def make_tiny_bert(path: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> str:
    path.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits)
    vocab = special + WORDS + chars + [f"##{c}" for c in chars]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)},
                                  do_lower_case=True)
    assert tokenizer.tokenize("red cat") == ["red", "cat"], "tiny tokenizer is broken"
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def toy_dataset(n: int = 60, seed: int = 0, groups: bool = False) -> Dataset:
    """Three classes, each tied to a keyword, with random filler: learnable but not trivial."""
    g = torch.Generator().manual_seed(seed)
    ids, texts, labels, grps = [], [], [], []
    for i in range(n):
        label = i % 3
        filler = [WORDS[3 + int(torch.randint(0, 7, (1,), generator=g))] for _ in range(3)]
        words = [WORDS[label]] + filler
        order = torch.randperm(len(words), generator=g).tolist()
        ids.append(f"s{i:04d}")
        texts.append(" ".join(words[j] for j in order))
        labels.append(label)
        grps.append(f"user{i // 4}" if groups else None)
    return Dataset(ids=ids, texts=texts, labels=labels, groups=grps,
                   label_names=["red", "green", "blue"])


def make_tiny_vit(path: Path, layers: int = 4, hidden: int = 32, image_size: int = 28,
                  patch_size: int = 7, channels: int = 1, seed: int = 0) -> str:
    """A random ViT image classifier (28x28 grey images: 16 patches + CLS) for fast tests."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=channels,
                       hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=2 * hidden, hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1, num_labels=2)
    ViTForImageClassification(config).save_pretrained(path)
    return str(path)


#: A ChatML template like SmolLM2's, without the default system turn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_chars)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<pad>", bos_token="<|im_start|>",
                                        padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def make_tiny_llama(path: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> str:
    """A random LlamaForCausalLM (tied embeddings) with a byte-level chat tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    assert tokenizer.decode(tokenizer("red cat")["input_ids"]) == "red cat", "tokenizer broken"
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, attention_dropout=0.1,
                         initializer_range=0.3)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def toy_instructions(n: int = 48, seed: int = 0, groups: bool = False) -> Dataset:
    """Instruction samples ("colour of <thing>?" -> a colour), learnable by a tiny model."""
    from s3t.data.instructions import instruction_text

    g = torch.Generator().manual_seed(seed)
    things = WORDS[3:]
    ids, texts, grps = [], [], []
    for i in range(n):
        thing = things[int(torch.randint(0, len(things), (1,), generator=g))]
        colour = WORDS[things.index(thing) % 3]
        ids.append(f"q{i:04d}")
        texts.append(instruction_text(f"colour of {thing}?", colour))
        grps.append(f"user{i // 4}" if groups else None)
    return Dataset(ids=ids, texts=texts, labels=[0] * n, groups=grps)


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A private copy of a module-scoped run directory, for a test that changes it."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy
