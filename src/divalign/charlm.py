"""A character-level tokenizer and tiny Llama models built locally (demo, tests, benchmarks).

The tokenizer is a real ``tokenizers`` WordLevel model over single characters wrapped as a Hugging Face fast
tokenizer, saved and reloaded with ``AutoTokenizer``. A Llama config keeps it on load (a Qwen2 config would
be paired with a byte-level tokenizer instead).
"""

from __future__ import annotations

import os

import torch

from divalign.models import save_model

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ARITHMETIC_ALPHABET = "0123456789+-=*/() \n"


def build_char_tokenizer(alphabet: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK] + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def tiny_llama(
    tokenizer,
    *,
    hidden_size=128,
    intermediate_size=512,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    max_positions=128,
    seed=0,
    tie_embeddings=False,
):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_embeddings,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_tiny_model(folder: str | os.PathLike, alphabet: str = ARITHMETIC_ALPHABET, **arch) -> str:
    """Create a tiny randomly initialised Llama with a character tokenizer in ``folder``; return the folder."""
    tokenizer = build_char_tokenizer(alphabet)
    save_model(tiny_llama(tokenizer, **arch), tokenizer, folder)
    return str(folder)
