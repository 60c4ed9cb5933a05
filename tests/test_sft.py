import json

import pytest
import torch

from divalign.data.chat import Rendered
from divalign.data.sft import Demonstration, read_sft, render_demonstrations
from divalign.errors import UserError
from divalign.models import load_causal_lm
from divalign.trainers.sft import SFTConfig, SFTTrainer, build_rows, sft_loss_terms, tokenize

TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)


def demos(n=12):
    return [Rendered(f"{i}+{i}=", str(2 * i), False) for i in range(n)]


def test_loss_mask_covers_exactly_the_completion_and_eos(tiny_model_dir):
    _, tok = load_causal_lm(tiny_model_dir)
    (ex,) = tokenize(tok, [Rendered("12+3=", "15", False)], max_length=32)
    rows = build_rows([ex], tok.pad_token_id, 32, packing=False)
    targets = rows.input_ids[0, 1:][rows.loss_mask[0].bool()].tolist()
    assert targets == tok("15", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_packing_gives_the_same_loss_and_gradient(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    examples = tokenize(tok, demos(7), max_length=24)
    results = []
    for packing in (False, True):
        rows = build_rows(examples, tok.pad_token_id, 24, packing)
        model.zero_grad()
        nll, count = sft_loss_terms(model, rows)
        (nll / count).backward()
        results.append((rows.input_ids.shape[0], (nll / count).item(), [p.grad.clone() for p in model.parameters()]))
    (rows_a, loss_a, grads_a), (rows_b, loss_b, grads_b) = results
    assert rows_b < rows_a  # really packed
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_sft_learns_its_demonstrations(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    items = demos(8)
    config = SFTConfig(
        batch_size=8, steps=150, learning_rate=3e-3, lr_schedule="constant", max_length=16, packing=True, progress=False
    )
    trainer = SFTTrainer(model, tok, items, config, eval_items=items)
    first = trainer.evaluate()["eval_loss"]
    for step in range(config.steps):
        row = trainer.step(step)
    assert row["eval_loss"] < 0.2 * first
    from divalign.generation import make_sampler

    rollout = make_sampler(model, tok).generate([tok(d.prompt)["input_ids"] for d in items], 4, greedy=True)
    texts = tok.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    assert sum(t == d.completion for t, d in zip(texts, items)) >= 6


def test_chat_messages_render_with_the_template_and_fail_without_one(tmp_path, tiny_model_dir):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}) + "\n"
    )
    (chat,) = read_sft(path)
    assert chat == Demonstration((("user", "1+1="),), (("assistant", "2"),), f"{path}:1")
    _, tok = load_causal_lm(tiny_model_dir)
    with pytest.raises(UserError, match=r"chat.jsonl:1: conversational data needs a tokenizer with a chat template"):
        render_demonstrations(tok, [chat])
    tok.chat_template = TEMPLATE
    (rendered,) = render_demonstrations(tok, [chat])
    assert rendered == Rendered("u:1+1=\na:", "2\n", True)  # the template closes the turn


@pytest.mark.parametrize(
    "line,message",
    [
        ({"messages": []}, "empty conversation"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant's reply"),
        ({"messages": [{"role": "user"}]}, r"\[0\]: expected an object with string 'role' and 'content'"),
        ({"prompt": "a"}, "missing field 'completion'"),
        ({"prompt": "", "completion": "b"}, "field 'prompt' is empty"),
        ({"text": "  "}, "field 'text' is empty"),
    ],
)
def test_sft_data_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(UserError, match=message):
        read_sft(path)
