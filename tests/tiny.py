"""Tiny randomly initialised Hugging Face models and toy data for fast tests."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
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
