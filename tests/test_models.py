import json

import pytest
import torch

from divalign.charlm import build_char_tokenizer, tiny_llama, write_tiny_model
from divalign.data.tokens import SequenceBatch
from divalign.errors import UserError
from divalign.generation import HFDecoder, make_sampler
from divalign.models import (
    completion_forward,
    completion_logprobs,
    configure,
    frozen_copy,
    load_causal_lm,
    param_count,
    prompt_sharing_pays,
    runtime_of,
    save_model,
)
from divalign.models.llama import norm, train
from divalign.models.llama.decoder import LlamaDecoder
from divalign.models.llama.layout import MIN_SLOTS, token_layout
from divalign.models.positions import position_ids


def test_char_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = build_char_tokenizer("abc 12\n+=")
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "a b\n12+21=c "
    ids = loaded(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id and len(ids) == len(text) + 1
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_save_and_load_round_trip(tmp_path, tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    save_model(model, tok, tmp_path / "copy")
    again, _ = load_causal_lm(tmp_path / "copy")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_completion_logprobs_match_full_log_softmax_and_ignore_left_padding(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    prompt, completion = tok("12+3=")["input_ids"], tok("15", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + completion])
    full = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = torch.stack([full[len(prompt) - 1 + i, t] for i, t in enumerate(completion)])

    pad = tok.pad_token_id
    padded = torch.tensor([[pad, pad] + prompt + completion, [pad] * 0 + prompt + completion + [pad, pad]])
    mask = torch.tensor(
        [[0, 0] + [1] * (len(prompt) + len(completion)), [1] * (len(prompt) + len(completion)) + [0, 0]]
    )
    # Row 0: left-padded prompt; row 1 is laid out differently, so evaluate each in its own batch.
    b0 = SequenceBatch(padded[:1], mask[:1], prompt_length=len(prompt) + 2)
    got, ent = completion_logprobs(model, b0, with_entropy=True)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)
    assert (ent > 0).all()
    assert position_ids(mask[:1])[0, 2].item() == 0


def test_completion_logprobs_are_zero_on_padding_and_finite(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([[0, 1, 5, 6, 7, 8], [1, 5, 6, 7, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    got, _ = completion_logprobs(model, SequenceBatch(ids, mask, prompt_length=3))
    assert torch.isfinite(got).all()
    assert got[1, 1:].eq(0).all() and got[1, 0] < 0


def test_loading_errors_name_the_problem(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        load_causal_lm(tmp_path / "empty")
    bert = tmp_path / "t5"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UserError, match="'t5' model, which is not a causal language model"):
        load_causal_lm(bert)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((__import__("pathlib").Path(tiny_model_dir) / "config.json").read_text())
    with pytest.raises(UserError, match="has no weights"):
        load_causal_lm(noweights)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        load_causal_lm(broken)


def test_tied_embeddings_model_loads(tmp_path):
    tok = build_char_tokenizer("0123456789")
    save_model(
        tiny_llama(
            tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, tie_embeddings=True
        ),
        tok,
        tmp_path,
    )
    model, _ = load_causal_lm(tmp_path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_lean_and_shared_prompt_logprobs_equal_the_hf_forward_in_value_and_gradient(tiny_model_dir):
    """The Hugging Face forward without sharing is the reference; the lean Llama path and prompt sharing (on both
    paths) must give the same log-probabilities and the same parameter gradients."""
    model, tok = load_causal_lm(tiny_model_dir)
    prompts = [tok(p)["input_ids"] for p in ["12+3=", "1+1=", "45-67="]]
    rollout = make_sampler(model, tok).generate(prompts, 7, seeds=list(range(len(prompts))), num_samples=4)
    batch = rollout.sequences()
    weights = torch.randn(batch.completion_mask.shape)
    results = {}
    for fast in (False, True):
        configure(model, fast_path=fast)
        for group in (1, 4):
            model.zero_grad()
            logp, _ = completion_logprobs(model, batch, temperature=0.8, group_size=group, share_prompt=group > 1)
            (logp * weights).sum().backward()
            results[fast, group] = (logp.detach(), [p.grad.clone() for p in model.parameters()])
    reference_logp, reference_grads = results[False, 1]
    for key, (logp, grads) in results.items():
        torch.testing.assert_close(logp, reference_logp, atol=1e-5, rtol=0)
        for g, g_ref in zip(grads, reference_grads):
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="groups of 3"):
        completion_logprobs(model, batch, group_size=3)


def _policy_and_reference(tmp_path, kv_heads: int = 2, layers: int = 2):
    """A tiny Llama, its tokenizer, and a frozen reference that differs from it (the policy's weights moved)."""
    folder = write_tiny_model(tmp_path / "m", hidden_size=64, intermediate_size=96, num_layers=layers, num_heads=4,
                              num_kv_heads=kv_heads, max_positions=64)
    model, tok = load_causal_lm(folder)
    reference = frozen_copy(model)
    with torch.no_grad():  # make the two models differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model, tok, reference


@pytest.mark.parametrize("kv_heads,group,new_tokens,samples,layers",
                         [(2, 1, 7, 2, 2), (4, 1, 7, 2, 2), (2, 2, 7, 2, 2), (2, 2, 12, 2, 2), (2, 1, 7, 1, 2),
                          (2, 2, 12, 2, 1)])
def test_reference_in_the_policy_pass_equals_separate_hf_forwards(tmp_path, kv_heads, group, new_tokens, samples,
                                                                   layers):
    """The written-out backward with the reference stacked in the same pass (models.llama.train), padding skipped and,
    with groups, each prompt run once: the policy's values and gradients and the reference's values equal
    separate, unshared Hugging Face forwards; the reference gets no gradient. Sequences of 14 columns get empty
    attention slots up to MIN_SLOTS; those of 19 run as they are. With two samples per prompt the batch repeats
    its tokens enough for the first layer's norm and QKV product to run once per distinct token; with one it
    does not. With one layer, the first is also the last, which runs its MLP only for the predicting tokens."""
    model, tok, reference = _policy_and_reference(tmp_path, kv_heads, layers)
    prompts = [tok(p)["input_ids"] for p in ["12+3=", "1+1=", "45-67="]]
    batch = make_sampler(model, tok).generate(prompts, new_tokens, seeds=[3, 4, 5],
                                              num_samples=samples).sequences()
    assert not batch.attention_mask.all()  # left-padded prompts and right-padded completions
    layout = token_layout(batch.input_ids, batch.attention_mask, batch.prompt_length, group)
    assert layout.length == max(batch.input_ids.shape[1], MIN_SLOTS)
    assert (batch.input_ids.shape[1] < MIN_SLOTS) == (new_tokens == 7)  # both cases are exercised
    assert (train._distinct_tokens(layout) is not None) == (samples > 1)  # likewise (for these sampling seeds)
    assert layout.predicting.shape == batch.completion_mask.shape
    weights = torch.randn(batch.completion_mask.shape)

    expected, _, expected_grads, expected_ref = _hf_expectations(model, reference, batch, weights)

    configure(model)
    model.zero_grad()
    out = completion_forward(model, batch, temperature=0.8, group_size=group, reference=reference)
    (out.logprobs * weights).sum().backward()
    torch.testing.assert_close(out.logprobs.detach(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reference_logprobs, expected_ref, atol=1e-5, rtol=0)
    assert not out.reference_logprobs.requires_grad
    assert all(p.grad is None for p in reference.parameters())
    for p, g_ref in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, g_ref, atol=1e-5, rtol=1e-4)


def _hf_expectations(model, reference, batch, weights, with_entropy=False):
    """What the fast pass must reproduce, from the Hugging Face forwards at temperature 0.8: the policy's
    log-probabilities (and entropies), the gradients of sum(weights · log-probabilities) and the reference's
    log-probabilities. Leaves the gradients on the model; switches it to the Hugging Face forward."""
    configure(model, fast_path=False)
    logprobs, entropy = completion_logprobs(model, batch, temperature=0.8, with_entropy=with_entropy)
    (logprobs * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        reference_logprobs = completion_logprobs(hf_forward(reference), batch, temperature=0.8)[0]
    return logprobs, entropy, grads, reference_logprobs


@pytest.mark.parametrize("blocks", ["head rows", "attention entries"])
def test_the_pass_in_small_blocks_equals_the_hf_forward(tmp_path, monkeypatch, blocks):
    """The output head runs a few rows at a time (models.llama.head) and attention a few head-major entries at a
    time (models.llama.train): with blocks of 5 head rows, or of one attention entry, the policy's
    log-probabilities, entropies and gradients and the reference's log-probabilities equal unshared Hugging Face
    forwards. The saved activations are copied out of the stacked tensors here (done only for large ones)."""
    from divalign.models.llama import head, train

    model, tok, reference = _policy_and_reference(tmp_path)
    monkeypatch.setattr(train, "COPY_OUT_BYTES", 0)
    if blocks == "head rows":
        monkeypatch.setattr(head, "BLOCK_BYTES", 4 * model.config.vocab_size * 5)
        monkeypatch.setattr(head, "MIN_BLOCK_ROWS", 1)
    else:
        monkeypatch.setattr(train, "ATTENTION_BLOCK_BYTES", 1)
    prompts = [tok(p)["input_ids"] for p in ["12+3=", "1+1=", "45-67="]]
    batch = make_sampler(model, tok).generate(prompts, 9, seeds=[3, 4, 5], num_samples=2).sequences()
    weights = torch.randn(batch.completion_mask.shape)
    expected, expected_entropy, expected_grads, expected_ref = _hf_expectations(model, reference, batch, weights,
                                                                                 with_entropy=True)
    configure(model)
    model.zero_grad()
    out = completion_forward(model, batch, temperature=0.8, with_entropy=True, reference=reference)
    assert int(batch.completion_mask.sum()) > 5 * 3  # several blocks
    (out.logprobs * weights).sum().backward()
    torch.testing.assert_close(out.logprobs.detach(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy, expected_entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reference_logprobs, expected_ref, atol=1e-5, rtol=0)
    for p, g_ref in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, g_ref, atol=1e-5, rtol=1e-4)


def test_two_policies_sharing_a_reference_keep_their_own_gradients(tiny_model_dir):
    """The stacked pass keeps the weights of the policy and its reference in buffers shared per reference; a
    second policy's forward in between must not change the first one's gradients."""
    first, tok = load_causal_lm(tiny_model_dir)
    reference = frozen_copy(first)
    second = frozen_copy(first).requires_grad_(True)
    with torch.no_grad():
        for p in list(first.parameters()) + list(second.parameters()):
            p.add_(0.05 * torch.randn(p.shape))
    ids = torch.tensor([tok("12+3=45")["input_ids"], tok("7+8=15")["input_ids"][:1] + tok("7+8=15")["input_ids"]])
    batch = SequenceBatch(ids, torch.ones_like(ids), 4)
    configure(first, fast_path=False)
    expected = completion_logprobs(first, batch)[0]
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in first.parameters()]
    configure(first)
    first.zero_grad()

    out = completion_forward(first, batch, reference=reference)
    completion_forward(second, batch, reference=reference)  # writes its own weights into the shared buffers
    out.logprobs.sum().backward()
    for p, g_ref in zip(first.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, g_ref, atol=1e-5, rtol=1e-4)


def test_the_stacked_pass_holds_the_reference_once_and_sees_it_change(tiny_model_dir):
    """The stacked pass keeps the reference's layer weights in its buffers and makes the reference's parameters
    views of them (held once); a reference changed in place, or a parameter given a new tensor, must still give the
    reference's own log-probabilities in the next pass."""
    policy, tok = load_causal_lm(tiny_model_dir)
    reference = frozen_copy(policy)
    ids = torch.tensor([tok("12+3=45")["input_ids"], tok("17+8=25")["input_ids"]])
    batch = SequenceBatch(ids, torch.ones_like(ids), 4)
    configure(policy)

    def expected_reference_logprobs():
        return completion_logprobs(hf_forward(reference), batch)[0]

    first = completion_forward(policy, batch, reference=reference).reference_logprobs
    torch.testing.assert_close(first, expected_reference_logprobs(), atol=1e-5, rtol=0)
    up = reference.model.layers[0].mlp.up_proj.weight
    storages = {p.untyped_storage().data_ptr() for p in reference.model.layers.parameters()}
    assert len(storages) < len(list(reference.model.layers.parameters()))  # views of shared buffers

    with torch.no_grad():
        up.mul_(1.5)
    changed = completion_forward(policy, batch, reference=reference).reference_logprobs
    assert not torch.allclose(changed, first, atol=1e-4)
    torch.testing.assert_close(changed, expected_reference_logprobs(), atol=1e-5, rtol=0)

    key = reference.model.layers[-1].self_attn.k_proj.weight
    key.data = key.data * 0.5  # a new tensor, not a change in place
    replaced = completion_forward(policy, batch, reference=reference).reference_logprobs
    assert not torch.allclose(replaced, changed, atol=1e-4)
    torch.testing.assert_close(replaced, expected_reference_logprobs(), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_lean_forward_equals_eager_in_value_and_gradient(tiny_model_dir):
    """``compile: true`` (torch.compile of the lean forward, about a minute on CPU) changes no value or gradient."""
    model, tok = load_causal_lm(tiny_model_dir)
    prompts = [tok(p)["input_ids"] for p in ["12+3=", "45-67="]]
    batch = make_sampler(model, tok).generate(prompts, 6, seeds=list(range(len(prompts))),
                                              num_samples=4).sequences()
    results = []
    for compiled in (False, True):
        assert runtime_of(model).compiled is False
        compiled_model = model
        if compiled:
            compiled_model = frozen_copy(model).requires_grad_(True)
            configure(compiled_model, compile=True)
        compiled_model.zero_grad()
        logp, _ = completion_logprobs(compiled_model, batch, group_size=4, share_prompt=True)
        logp.sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in compiled_model.parameters()]))
    (eager, eager_grads), (compiled_logp, compiled_grads) = results
    torch.testing.assert_close(compiled_logp, eager, atol=1e-5, rtol=0)
    for g, g_ref in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


def test_prompt_sharing_pays_only_when_the_saved_prompt_work_outweighs_a_second_pass():
    """The break-even measured on the 0.5M-parameter speed model: a DPO step (8 pairs, 7-token prompts) runs
    unshared, a GRPO step (4 prompts × 8 samples) shares; a 100× larger model shares both."""
    tok = build_char_tokenizer("0123456789+-=")
    small = tiny_llama(tok, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
                       max_positions=64)
    assert 4e5 < param_count(small) < 6e5

    def batch(rows):
        return SequenceBatch(torch.ones(rows, 27, dtype=torch.long), torch.ones(rows, 27, dtype=torch.long), 7)

    assert not prompt_sharing_pays(small, batch(16), 2)
    assert prompt_sharing_pays(small, batch(32), 8)
    large = tiny_llama(tok, hidden_size=1024, intermediate_size=4096, num_layers=4, num_heads=8, num_kv_heads=4,
                       max_positions=64)
    assert prompt_sharing_pays(large, batch(16), 2)


def hf_forward(model):
    """A copy of ``model`` that runs its Hugging Face forward."""
    copy = frozen_copy(model)
    configure(copy, fast_path=False)
    return copy


def test_the_forward_path_is_decided_once_per_model_and_kept_by_its_copies(tiny_model_dir):
    """One decision point (models.runtime.configure): loading applies the options, copies keep the decision, the
    sampler factory and the forward follow it, and a model the kernels do not cover never takes them."""
    model, tok = load_causal_lm(tiny_model_dir)
    assert runtime_of(model).lean and not runtime_of(model).compiled
    assert isinstance(make_sampler(model, tok).decoder, LlamaDecoder)
    copy = frozen_copy(model)  # a copy's kernels read the copy's own parameters
    assert runtime_of(copy).llama.embed is copy.model.embed_tokens.weight is not model.model.embed_tokens.weight
    generic, _ = load_causal_lm(tiny_model_dir, fast_path=False)
    assert not runtime_of(generic).lean and not runtime_of(frozen_copy(generic)).lean
    assert isinstance(make_sampler(generic, tok).decoder, HFDecoder)
    biased = tiny_llama(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    biased.config.attention_bias = True  # outside what the kernels cover
    assert not configure(biased, fast_path=True, compile=True).lean
    assert not runtime_of(biased).compiled
    batch = make_sampler(model, tok).generate([tok("12+3=")["input_ids"]], 5, num_samples=2, seeds=[0]).sequences()
    with torch.no_grad():
        torch.testing.assert_close(completion_forward(generic, batch).logprobs, completion_forward(model, batch).logprobs,
                                   atol=1e-5, rtol=0)


def test_the_rms_norm_of_the_written_out_pass_equals_the_fused_kernel():
    generator = torch.Generator().manual_seed(0)
    for shape in [(7, 64), (3, 5, 128)]:
        x, gain = torch.randn(shape, generator=generator), torch.randn(shape[-1], generator=generator)
        normed, r = norm.normalize(x, 1e-5)
        torch.testing.assert_close(normed * gain, norm.rms_norm(x, gain, 1e-5), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(r.squeeze(-1), x.pow(2).mean(-1).add(1e-5).rsqrt(), atol=1e-6, rtol=1e-6)
