"""Convert a Karpathy llama2.c checkpoint and its tokenizer into a Hugging Face Llama folder.

Usage: ``python -m divalign.convert.llama2c MODEL.bin TOK.bin OUT_DIR`` (paths may start with ``data:``).

Formats (little-endian), as written by llama2.c's legacy export:

* model (version 0 layout): 7 int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len``, then
  float32 blocks, matrices row-major as (out, in): token_embedding (V, dim), rms_att (L, dim), wq (L, dim, dim),
  wk and wv (L, kv_dim, dim) with kv_dim = dim * n_kv_heads / n_heads, wo (L, dim, dim), rms_ffn (L, dim),
  w1 and w3 (L, hidden_dim, dim), w2 (L, dim, hidden_dim), rms_final (dim), freq_cis_real and freq_cis_imag
  (seq_len, head_size / 2; precomputed RoPE tables, not needed by HF), and wcls (V, dim) only when the header's
  vocab_size is negative (an unshared classifier; otherwise the classifier is the token embedding). The file must be
  exactly that long. The newer versioned exports (magic ``ak42``) are refused.
* tokenizer: int32 max_token_length, then per token: float32 score, int32 byte length, the piece's raw UTF-8 bytes.
  Ids 0, 1, 2 are unk, BOS, EOS (stored as ``<unk>``, ``"\\n<s>\\n"``, ``"\\n</s>\\n"``), 3..258 the byte tokens
  ``<0x00>``..``<0xFF>``, then the SentencePiece pieces with the word marker ``▁`` already written as a plain space.

RoPE: llama2.c rotates interleaved pairs (x[2i], x[2i+1]) of each head, HF Llama rotates halves (x[i], x[i + d/2]),
both with angle pos * 10000^(-2i/d). So in each head of wq and wk, output row 2i moves to row i and row 2i+1 to row
i + d/2 (the permutation used when converting Meta's Llama checkpoints). q.k is unchanged because q and k are
permuted alike; wv and wo are untouched. Llama's gate/up/down projections are w1/w3/w2; RMSNorm eps is 1e-5.

Tokenizer: a ``tokenizers`` BPE over the piece table with one merge per split of a piece into two pieces, ranked by
the merged piece's score; this is llama2.c's ``encode`` (repeatedly merge the adjacent pair whose concatenation scores
highest), with byte fallback, a dummy-prefix space on non-empty text and a BOS. Decoding strips one leading space.

Deviations from llama2.c: BOS/EOS are named ``<s>``/``</s>`` (llama2.c's surrounding newlines are display
decoration) and a literal ``<s>`` in text is read as that token, as in HF Llama tokenizers; a ``▁`` in a piece table
is read as a space; decoding strips the leading space of the text, not only after a BOS; two different splits of one
piece tie-break by piece ids, not position (matters only for pieces like ``aba`` = ``ab``+``a`` = ``a``+``ba``).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from divalign.errors import UserError
from divalign.paths import resolve

HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
NORM_EPS = 1e-5
ROPE_THETA = 10000.0
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
FIRST_PIECE = 3 + 256  # ids 0..2 are unk/BOS/EOS, 3..258 the byte tokens


def _read_bytes(path) -> bytes:
    try:
        return Path(resolve(str(path))).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parse_header(path, data: bytes) -> dict:
    if data[:4] == b"ak42":
        raise UserError(f"{path}: versioned llama2.c export (magic 'ak42') is not supported; export with version 0")
    if len(data) < 4 * len(HEADER_FIELDS):
        raise UserError(f"{path}: truncated: {len(data)} bytes, shorter than the 28-byte llama2.c header")
    config = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", data)))
    config["shared_classifier"] = config["vocab_size"] > 0
    config["vocab_size"] = abs(config["vocab_size"])
    if min(config[name] for name in HEADER_FIELDS) <= 0:
        raise UserError(f"{path}: not a llama2.c checkpoint (header {struct.unpack_from('<7i', data)})")
    if config["dim"] % config["n_heads"] or config["n_heads"] % config["n_kv_heads"]:
        raise UserError(f"{path}: dim must divide into n_heads, and n_heads into n_kv_heads (header {config})")
    return config


def _block_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The float32 blocks after the header, in file order."""
    dim, hidden, layers, vocab = config["dim"], config["hidden_dim"], config["n_layers"], config["vocab_size"]
    head_size = dim // config["n_heads"]
    kv_dim = head_size * config["n_kv_heads"]
    shapes = [
        ("token_embedding", (vocab, dim)),
        ("rms_att", (layers, dim)),
        ("wq", (layers, dim, dim)),
        ("wk", (layers, kv_dim, dim)),
        ("wv", (layers, kv_dim, dim)),
        ("wo", (layers, dim, dim)),
        ("rms_ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (config["seq_len"], head_size // 2)),
        ("freq_cis_imag", (config["seq_len"], head_size // 2)),
    ]
    return shapes if config["shared_classifier"] else shapes + [("wcls", (vocab, dim))]


def read_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Parse a llama2.c (version 0) checkpoint: its header as a dict and its float32 blocks by name."""
    data = _read_bytes(path)
    config = _parse_header(path, data)
    shapes = _block_shapes(config)
    expected = 28 + 4 * sum(int(np.prod(shape)) for _, shape in shapes)
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header implies"
        raise UserError(
            f"{path}: {kind}: {len(data)} bytes, expected {expected} for header "
            f"{ {k: config[k] for k in HEADER_FIELDS} }"
        )
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    weights, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        weights[name] = torch.from_numpy(floats[offset : offset + size].reshape(shape).astype(np.float32))
        offset += size
    return config, weights


def read_tokenizer(path) -> tuple[list[str], list[float], int]:
    """Parse a llama2.c tokenizer file: its pieces, their scores and the stored max_token_length."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise UserError(f"{path}: truncated: {len(data)} bytes, shorter than the 4-byte header")
    (max_token_length,) = struct.unpack_from("<i", data)
    pieces, scores, offset = [], [], 4
    while offset < len(data):
        if offset + 8 > len(data):
            raise UserError(f"{path}: truncated inside the record of token {len(pieces)}")
        score, length = struct.unpack_from("<fi", data, offset)
        raw = data[offset + 8 : offset + 8 + length]
        if length < 0 or len(raw) != length:
            raise UserError(f"{path}: truncated inside the record of token {len(pieces)}")
        try:
            pieces.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}: token {len(pieces)} is not valid UTF-8 ({raw!r})") from None
        scores.append(score)
        offset += 8 + length
    return pieces, scores, max_token_length


def _check_pieces(pieces: list[str]) -> None:
    if len(pieces) < FIRST_PIECE:
        raise UserError(f"piece table has {len(pieces)} tokens, fewer than unk/BOS/EOS plus 256 byte tokens")
    if pieces[1].strip() != BOS or pieces[2].strip() != EOS:
        raise UserError(f"ids 1 and 2 are {pieces[1]!r} and {pieces[2]!r}, expected BOS and EOS")
    bad = [i for i in range(256) if pieces[3 + i] != f"<0x{i:02X}>"]
    if bad:
        raise UserError(f"id {3 + bad[0]} is {pieces[3 + bad[0]]!r}, expected byte token <0x{bad[0]:02X}>")


def _merges(pieces: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, best merged score first (SentencePiece BPE priority)."""
    ids = {piece: i for i, piece in enumerate(pieces) if i >= FIRST_PIECE}
    ranked = []
    for i, piece in enumerate(pieces[FIRST_PIECE:], FIRST_PIECE):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], ids[left], ids[right]))
    return [(pieces[a], pieces[b]) for _, a, b in sorted(ranked)]


def build_tokenizer(pieces: list[str], scores: list[float]):
    """A fast HF tokenizer that encodes and decodes like llama2.c's tokenizer for this piece table."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    _check_pieces(pieces)
    pieces = [UNK, BOS, EOS] + pieces[3:FIRST_PIECE] + [p.replace("\u2581", " ") for p in pieces[FIRST_PIECE:]]
    if len(set(pieces)) != len(pieces):
        raise UserError("piece table has duplicate pieces")
    bpe = models.BPE(
        vocab={p: i for i, p in enumerate(pieces)},
        merges=_merges(pieces, scores),
        unk_token=UNK,
        byte_fallback=True,
        fuse_unk=True,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Prepend(" ")  # the dummy prefix; empty text stays empty, as in llama2.c
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    # The model was trained without padding, so no token is "the" pad. <unk> (id 0) is used: byte fallback means
    # the encoder never emits it, so a pad position cannot be mistaken for text, whereas pad = EOS would make a
    # padded batch look like finished sequences.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def _rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from interleaved pairs (2i, 2i+1) to halves (i, i + d/2)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_config(config: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["dim"],
        intermediate_size=config["hidden_dim"],
        num_hidden_layers=config["n_layers"],
        num_attention_heads=config["n_heads"],
        num_key_value_heads=config["n_kv_heads"],
        max_position_embeddings=config["seq_len"],
        rms_norm_eps=NORM_EPS,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=config["shared_classifier"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def hf_state_dict(config: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The llama2.c blocks under HF Llama parameter names, with wq/wk permuted for HF's RoPE."""
    state = {
        "model.embed_tokens.weight": weights["token_embedding"],
        "model.norm.weight": weights["rms_final"],
        "lm_head.weight": weights.get("wcls", weights["token_embedding"]),
    }
    for i in range(config["n_layers"]):
        pre = f"model.layers.{i}."
        state[pre + "input_layernorm.weight"] = weights["rms_att"][i]
        state[pre + "self_attn.q_proj.weight"] = _rope_permute(weights["wq"][i], config["n_heads"])
        state[pre + "self_attn.k_proj.weight"] = _rope_permute(weights["wk"][i], config["n_kv_heads"])
        state[pre + "self_attn.v_proj.weight"] = weights["wv"][i]
        state[pre + "self_attn.o_proj.weight"] = weights["wo"][i]
        state[pre + "post_attention_layernorm.weight"] = weights["rms_ffn"][i]
        state[pre + "mlp.gate_proj.weight"] = weights["w1"][i]
        state[pre + "mlp.up_proj.weight"] = weights["w3"][i]
        state[pre + "mlp.down_proj.weight"] = weights["w2"][i]
    return state


def build_model(config: dict, weights: dict[str, torch.Tensor]):
    """A float32 ``LlamaForCausalLM`` holding the llama2.c weights."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(hf_config(config))
    model.load_state_dict(hf_state_dict(config, weights), strict=True)
    model.generation_config.pad_token_id = 0
    return model.eval()


def convert(model_path, tokenizer_path, out_dir) -> Path:
    """Write a HF Llama folder (config, safetensors weights, tokenizer) for a llama2.c model; return the folder."""
    config, weights = read_checkpoint(model_path)
    pieces, scores, _ = read_tokenizer(tokenizer_path)
    if len(pieces) != config["vocab_size"]:
        raise UserError(
            f"{tokenizer_path}: has {len(pieces)} tokens but {model_path} has vocab_size {config['vocab_size']}"
        )
    try:
        tokenizer = build_tokenizer(pieces, scores)
    except UserError as exc:
        raise UserError(f"{tokenizer_path}: {exc}") from None
    tokenizer.model_max_length = config["seq_len"]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder '{out}' is a file")
    out.mkdir(parents=True, exist_ok=True)
    build_model(config, weights).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m divalign.convert.llama2c", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="llama2.c checkpoint (.bin, version 0 layout)")
    parser.add_argument("tokenizer", help="llama2.c tokenizer (.bin)")
    parser.add_argument("out_dir", help="folder to write the Hugging Face model into")
    args = parser.parse_args(argv)
    try:
        out = convert(args.model, args.tokenizer, args.out_dir)
    except UserError as exc:
        print(f"divalign: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
