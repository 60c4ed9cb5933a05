"""The llama2.c -> Hugging Face converter on the real stories260K model and its tok512 tokenizer.

The references below are written here from the format description in the data folder's PROVENANCE.md, without
using the converter's code: a NumPy forward pass with llama2.c's semantics (interleaved RoPE as complex rotation,
RMSNorm eps 1e-5, SwiGLU, grouped KV heads, KV cache one token at a time) and llama2.c's ``encode``.
"""

import struct

import numpy as np
import pytest
import torch

from divalign.convert import llama2c
from divalign.errors import UserError

FOLDER = "tinyllamas_stories260K"
FROM_BOS = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high"
)
FROM_ZOO = (
    "Zoo was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red "
    "ball. She wanted to play with it, but she didn't want to play with"
)
TEXTS = [
    "Hello world!",
    "  two leading spaces, two trailing  ",
    "line one\nline two\n\nafter a blank line\n",
    "Tabs\tand punctuation: (a) [b] {c}; 'single' \"double\" - dash... ok?!",
    'Lily said, "I want to play with the big red ball." Tim was happy.',
    "Non-ASCII: naïve café, Ωμέγα, 日本語, emoji 😀 and a ‘curly’ quote",
    "1234567890 + 42 = ~ | \\ ` ^ @ # $ % & *",
]


@pytest.fixture(scope="module")
def data(shared_data):
    folder = shared_data / FOLDER
    if not (folder / "stories260K.bin").is_file() or not (folder / "tok512.bin").is_file():
        pytest.skip(f"{folder} does not hold stories260K.bin and tok512.bin")
    return folder


# ---- independent readers and references -------------------------------------------------------------------------


def raw_checkpoint(path):
    """Header ints and float blocks, parsed straight from the documented layout."""
    blob = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = np.frombuffer(blob[:28], dtype="<i4").tolist()
    hs, kv_dim = dim // heads, dim // heads * kv_heads
    floats = np.frombuffer(blob[28:], dtype="<f4").astype(np.float64)
    sizes = [
        ("emb", (abs(vocab), dim)),
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
        ("cos", (seq_len, hs // 2)),
        ("sin", (seq_len, hs // 2)),
    ] + ([("wcls", (-vocab, dim))] if vocab < 0 else [])
    w, at = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        w[name] = floats[at : at + n].reshape(shape)
        at += n
    assert at == len(floats)
    w.setdefault("wcls", w["emb"])
    return dict(dim=dim, layers=layers, heads=heads, kv_heads=kv_heads, hs=hs), w


def raw_pieces(path):
    blob = path.read_bytes()
    pieces, scores, at = [], [], 4
    while at < len(blob):
        score, n = struct.unpack_from("<fi", blob, at)
        pieces.append(blob[at + 8 : at + 8 + n].decode())
        scores.append(score)
        at += 8 + n
    return pieces, scores


def rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x) + 1e-5) * weight


def rope_interleaved(v, pos, hs):
    z = v[0::2] + 1j * v[1::2]  # (x[2i], x[2i+1]) of every head as one complex number
    i = np.arange(z.size) % (hs // 2)
    z = z * np.exp(1j * pos * 10000.0 ** (-2.0 * i / hs))
    out = np.empty_like(v)
    out[0::2], out[1::2] = z.real, z.imag
    return out


def reference_step(cfg, w, token, pos, cache):
    """llama2.c's ``forward``: logits for one token at ``pos``, appending its keys/values to ``cache``."""
    hs, heads, group = cfg["hs"], cfg["heads"], cfg["heads"] // cfg["kv_heads"]
    x = w["emb"][token].copy()
    for layer in range(cfg["layers"]):
        h = rmsnorm(x, w["rms_att"][layer])
        q = rope_interleaved(w["wq"][layer] @ h, pos, hs).reshape(heads, hs)
        cache[layer][0].append(rope_interleaved(w["wk"][layer] @ h, pos, hs).reshape(-1, hs))
        cache[layer][1].append((w["wv"][layer] @ h).reshape(-1, hs))
        keys, values = np.stack(cache[layer][0]), np.stack(cache[layer][1])  # (t, kv_heads, hs)
        heads_out = []
        for head in range(heads):
            att = keys[:, head // group] @ q[head] / np.sqrt(hs)
            att = np.exp(att - att.max())
            heads_out.append((att / att.sum()) @ values[:, head // group])
        x = x + w["wo"][layer] @ np.concatenate(heads_out)
        h = rmsnorm(x, w["rms_ffn"][layer])
        gate = w["w1"][layer] @ h
        x = x + w["w2"][layer] @ (gate / (1 + np.exp(-gate)) * (w["w3"][layer] @ h))
    return w["wcls"] @ rmsnorm(x, w["rms_final"])


def reference_greedy(cfg, w, steps, start=1):
    cache = [([], []) for _ in range(cfg["layers"])]
    ids, logits = [start], []
    for pos in range(steps):
        logits.append(reference_step(cfg, w, ids[-1], pos, cache))
        ids.append(int(np.argmax(logits[-1])))
    return ids, np.stack(logits)


def llama2c_encode(text, pieces, scores):
    """llama2.c's ``encode(text, bos=1, eos=0)``: dummy prefix, code points or bytes + 3, best-score pair merges."""
    lookup = {p: i for i, p in enumerate(pieces)}
    tokens = [lookup[" "]] if text else []
    for ch in text:
        tokens += [lookup[ch]] if ch in lookup else [b + 3 for b in ch.encode()]
    while True:
        best = None
        for i in range(len(tokens) - 1):
            j = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], i, j)
        if best is None:
            return [1] + tokens
        _, i, j = best
        tokens[i : i + 2] = [j]


# ---- the converted folder ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(data, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("llama2c") / "stories260K"
    llama2c.convert(data / "stories260K.bin", data / "tok512.bin", out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    return model, AutoTokenizer.from_pretrained(out)


def test_reader_matches_documented_layout(data):
    config, weights = llama2c.read_checkpoint(data / "stories260K.bin")
    assert config == dict(
        dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512, shared_classifier=True
    )
    assert weights["wk"].shape == (5, 32, 64) and weights["w2"].shape == (5, 64, 172) and "wcls" not in weights
    assert sum(t.numel() for t in weights.values()) == 264128
    # The legacy RoPE tables confirm theta 10000 on adjacent pairs: cos/sin(pos * 10000^(-2i/8)).
    angle = torch.arange(512.0)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2.0) / 8)
    torch.testing.assert_close(weights["freq_cis_real"], torch.cos(angle), atol=2e-4, rtol=0)
    torch.testing.assert_close(weights["freq_cis_imag"], torch.sin(angle), atol=2e-4, rtol=0)
    pieces, scores, max_len = llama2c.read_tokenizer(data / "tok512.bin")
    assert (len(pieces), max_len) == (512, 7) and max(len(p.encode()) for p in pieces) == 7
    assert pieces[:4] == ["<unk>", "\n<s>\n", "\n</s>\n", "<0x00>"] and pieces[259] == " t"
    assert "\u2581" not in "".join(pieces)  # the export already wrote SentencePiece's word marker as a space


def test_converted_model_matches_reference_forward(data, converted):
    model, _ = converted
    cfg, w = raw_checkpoint(data / "stories260K.bin")
    ref_ids, ref_logits = reference_greedy(cfg, w, steps=40)
    with torch.no_grad():
        generated = model.generate(torch.tensor([[1]]), max_new_tokens=40, do_sample=False)[0].tolist()
        logits = model(torch.tensor([ref_ids[:-1]])).logits[0].double().numpy()
    assert generated == ref_ids
    assert np.abs(logits - ref_logits).max() < 1e-4
    assert np.abs(ref_logits).max() > 1.0  # real logits, not a degenerate near-zero model


def test_documented_greedy_outputs(data, converted):
    model, tok = converted
    provenance = (data / "PROVENANCE.md").read_text()
    assert f'"{FROM_BOS}"' in provenance and f'"{FROM_ZOO}"' in provenance
    for prompt, expected in (("", FROM_BOS), ("Zoo", FROM_ZOO)):
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0, 0].item() == tok.bos_token_id == 1
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=60, do_sample=False)
        text = tok.decode(out[0], skip_special_tokens=True)
        assert text.startswith(expected), text


def test_tokenizer_matches_llama2c_encode_and_round_trips(data, converted):
    _, tok = converted
    pieces, scores = raw_pieces(data / "tok512.bin")
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 0)
    for text in TEXTS + [FROM_BOS, FROM_ZOO, "Zoo", ""]:
        ids = tok(text).input_ids
        assert ids == llama2c_encode(text, pieces, scores), text
        assert tok.decode(ids, skip_special_tokens=True) == text
    ids = tok("日本😀").input_ids  # no such characters in the table: byte fallback to their UTF-8 bytes
    assert ids == [1, 410] + [b + 3 for b in "日本😀".encode()]
    assert tok.decode([1, 265, 2], skip_special_tokens=True) == "the"  # dummy-prefix space removed on decode


def test_truncated_or_missing_files_give_one_line_errors(data, tmp_path, capsys):
    model_blob = (data / "stories260K.bin").read_bytes()
    short = tmp_path / "short_model.bin"
    short.write_bytes(model_blob[:-100])
    with pytest.raises(UserError, match="short_model.bin: truncated"):
        llama2c.read_checkpoint(short)
    short_tok = tmp_path / "short_tok.bin"
    short_tok.write_bytes((data / "tok512.bin").read_bytes()[:-3])
    with pytest.raises(UserError, match="short_tok.bin: truncated"):
        llama2c.read_tokenizer(short_tok)
    assert llama2c.main([str(short), str(data / "tok512.bin"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "short_model.bin" in err and not (tmp_path / "out").exists()
    assert llama2c.main([str(tmp_path / "absent.bin"), str(data / "tok512.bin"), str(tmp_path / "out")]) == 2
    assert "absent.bin: file does not exist" in capsys.readouterr().err
