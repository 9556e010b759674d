"""A tiny BERT built from a config: real model code that loads and trains in seconds.

What the test suite and the benchmarks' quick modes (`python -m bench.train --quick`) use in
place of the real weights, so that they exercise the loading and training code without its cost.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer, saved in `folder`."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.ml.runtime.loading import offline_weights

    tokenizer = AutoTokenizer.from_pretrained(offline_weights())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
