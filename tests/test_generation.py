import pytest
import torch

from divalign.charlm import build_char_tokenizer, tiny_llama
from divalign.generation import HFDecoder, Sampler, left_pad, make_sampler, sample_next
from divalign.models import completion_logprobs, load_causal_lm
from divalign.models.llama import llama_params
from divalign.models.llama.decoder import LlamaDecoder

PROMPTS = ["12+3=", "1+1=", "45-67=", "9="]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    model.eval()
    return model, tok


def seeds(prompts, base=0):
    """One sampling seed per prompt."""
    return list(range(base, base + len(prompts)))


def encode(tok, prompts, repeat=1):
    return [tok(p)["input_ids"] for p in prompts for _ in range(repeat)]


def hf_sampler(model, tok):
    """The generic sampler, whatever the model's forward path."""
    return Sampler(model, tok, HFDecoder(model))


def test_fast_sampler_is_chosen_for_llama_and_matches_hf_logits(model_and_tok):
    model, tok = model_and_tok
    fast = make_sampler(model, tok).decoder
    assert isinstance(fast, LlamaDecoder)
    ids = encode(tok, PROMPTS)
    padded, mask = left_pad(ids, tok.pad_token_id)
    with torch.no_grad():
        state_f, logits_f = fast.prefill(padded, mask, 4)
        state_h, logits_h = HFDecoder(model).prefill(padded, mask, 4)
        torch.testing.assert_close(logits_f, logits_h, atol=2e-5, rtol=1e-4)
        nxt = logits_f.argmax(-1)
        torch.testing.assert_close(
            fast.step(state_f, nxt), HFDecoder(model).step(state_h, nxt), atol=2e-5, rtol=1e-4
        )
        assert state_f["first_qkv"] is None  # 4 rows, fewer than the vocabulary: no per-token table


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1), (6, 2)])
def test_fast_sampler_follows_hf_over_steps_for_every_head_grouping(heads, kv_heads):
    tok = build_char_tokenizer("0123456789+-=")
    model = tiny_llama(tok, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=heads,
                       num_kv_heads=kv_heads)
    model.eval()
    padded, mask = left_pad(encode(tok, PROMPTS), tok.pad_token_id)
    fast, generic = LlamaDecoder(llama_params(model)), HFDecoder(model)
    with torch.no_grad():
        state_f, logits_f = fast.prefill(padded, mask, 6)
        state_h, logits_h = generic.prefill(padded, mask, 6)
        state_f, state_h = fast.repeat(state_f, 5), generic.repeat(state_h, 5)
        logits_f, logits_h = logits_f.repeat_interleave(5, 0), logits_h.repeat_interleave(5, 0)
        for step in range(5):
            torch.testing.assert_close(logits_f, logits_h, atol=2e-5, rtol=1e-4)
            nxt = torch.arange(20) % 10 + step  # different tokens per row
            logits_f, logits_h = fast.step(state_f, nxt), generic.step(state_h, nxt)
        torch.testing.assert_close(logits_f, logits_h, atol=2e-5, rtol=1e-4)
        assert len(tok) <= 20 and state_f["first_qkv"] is not None  # 20 rows: the first layer read a per-token table


@pytest.mark.parametrize("repeat", [4, 8])  # 16 rows, and 32: more rows than vocabulary entries (per-token table)
def test_fast_and_generic_samplers_draw_the_same_tokens(model_and_tok, repeat):
    model, tok = model_and_tok
    assert 4 * 4 < len(tok) <= 4 * 8
    ids = encode(tok, PROMPTS, repeat=repeat)
    a = make_sampler(model, tok).generate(ids, 10, seeds=seeds(ids, 3))
    b = hf_sampler(model, tok).generate(ids, 10, seeds=seeds(ids, 3))
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_behaviour_logprobs_equal_a_training_forward(model_and_tok):
    model, tok = model_and_tok
    ids = encode(tok, PROMPTS, 8)
    rollout = make_sampler(model, tok).generate(ids, 12, temperature=0.7, seeds=seeds(ids))
    with torch.no_grad():
        again, _ = completion_logprobs(model, rollout.sequences(), temperature=0.7)
    torch.testing.assert_close(again, rollout.logprobs, atol=1e-5, rtol=0)


def test_completions_stop_at_eos_and_are_padded(tmp_path):
    tok = build_char_tokenizer("ab")
    model = tiny_llama(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    with torch.no_grad():  # make the model say "a" then end-of-sequence, deterministically
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] += 0.0
    for sampler in (make_sampler(model, tok), hf_sampler(model, tok)):
        ids = encode(tok, ["ab", "b"])
        rollout = sampler.generate(ids, 6, seeds=seeds(ids))
        ids, mask = rollout.completion_ids, rollout.completion_mask
        for row in range(ids.shape[0]):
            eos_at = (ids[row] == tok.eos_token_id).nonzero()
            if len(eos_at):
                end = int(eos_at[0])
                assert mask[row, : end + 1].eq(1).all() and mask[row, end + 1 :].eq(0).all()
                assert ids[row, end + 1 :].eq(tok.pad_token_id).all()
                assert not rollout.truncated[row]
            else:
                assert mask[row].eq(1).all() and rollout.truncated[row]
        assert rollout.logprobs[mask == 0].eq(0).all()


def test_inverse_cdf_sampler_matches_the_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, logp = sample_next(logits, 1.0, greedy=False, uniform=torch.rand((20000, 1), generator=gen))
    probs = torch.softmax(logits[0], -1)
    freq = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, torch.log(probs)[tokens])
    # Temperature sharpens the distribution.
    t_tokens, _ = sample_next(logits, 0.5, greedy=False, uniform=torch.rand((20000, 1), generator=gen))
    assert (t_tokens == 0).float().mean() > freq[0] + 0.1
    g_tokens, _ = sample_next(logits[:3], 1.0, greedy=True)
    assert g_tokens.eq(0).all()


def test_sampler_sees_new_weights_after_refresh(model_and_tok):
    model, tok = model_and_tok
    sampler = make_sampler(model, tok)
    ids = encode(tok, PROMPTS)
    before = sampler.generate(ids, 5, greedy=True).completion_ids
    with torch.no_grad():
        saved = model.lm_head.weight.clone()
        model.lm_head.weight.zero_()  # all logits equal: greedy picks token 0 everywhere
    try:
        stale = sampler.generate(ids, 5, greedy=True).completion_ids
        assert torch.equal(stale, before)  # the sampler reads its own copy until refreshed
        sampler.refresh()
        after = sampler.generate(ids, 5, greedy=True).completion_ids
        assert after.eq(0).all() and not torch.equal(before, after)
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
        sampler.refresh()


def test_a_released_sampler_decodes_the_same_from_the_current_weights(model_and_tok):
    """``release`` frees the decoder's folded copies (a trainer calls it once its rollouts are in); the next
    generation makes them again from the model's current weights and decodes exactly as before."""
    model, tok = model_and_tok
    sampler = make_sampler(model, tok)
    ids = encode(tok, PROMPTS)
    before = sampler.generate(ids, 6, seeds=seeds(ids, 3), num_samples=2)
    sampler.release()
    again = sampler.generate(ids, 6, seeds=seeds(ids, 3), num_samples=2)
    assert torch.equal(again.completion_ids, before.completion_ids)
    assert torch.equal(again.logprobs, before.logprobs)
    with torch.no_grad():
        saved = model.lm_head.weight.clone()
        model.lm_head.weight.zero_()  # all logits equal: greedy picks token 0 everywhere
    try:
        sampler.release()
        assert sampler.generate(ids, 5, greedy=True).completion_ids.eq(0).all()
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
        sampler.refresh()


@pytest.mark.parametrize("fast", [True, False])
def test_a_prompts_samples_depend_on_its_seed_alone(model_and_tok, fast):
    """Rows come grouped by prompt, and a prompt's samples are the same whatever prompts share its batch (so they
    do not depend on how a step's prompts are split over processes)."""
    model, tok = model_and_tok
    sampler = make_sampler(model, tok) if fast else hf_sampler(model, tok)
    ids = encode(tok, PROMPTS)
    together = sampler.generate(ids, 8, seeds=seeds(ids, 10), num_samples=3)
    assert torch.equal(together.prompt_ids, sampler.generate(encode(tok, PROMPTS, repeat=3), 1, greedy=True).prompt_ids)
    for i in range(len(PROMPTS)):
        alone = sampler.generate(ids[i:i + 1], 8, seeds=[10 + i], num_samples=3)
        rows = slice(3 * i, 3 * i + 3)
        width = alone.completion_ids.shape[1]
        assert torch.equal(together.completion_ids[rows, :width], alone.completion_ids)
        assert together.completion_mask[rows, width:].eq(0).all()
        torch.testing.assert_close(together.logprobs[rows, :width], alone.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one seed per prompt"):
        sampler.generate(ids, 8)


