"""Every malformed input gets one line naming the file (line, row, field or option) and what was expected, exit code
2, and nothing written — checked before any model loads. One test per class of mistake, through the command line's
own entry point."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from divalign.cli import main
from divalign.models import load_causal_lm, save_model

FAILING_TEMPLATE = ("{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('cannot render boom') }}"
                    "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant: {% endif %}")


def error_line(capsys, *argv) -> str:
    """Run the command line; assert one error line and exit code 2; return the line."""
    capsys.readouterr()  # drop what the test's own set-up printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("divalign: error: "), err
    return lines[0]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    yield folder
    assert not folder.exists(), "a rejected command wrote its output folder"


@pytest.fixture
def sft_data(tmp_path):
    return jsonl(tmp_path / "sft.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(4)])


def test_non_finite_or_nonsensical_options(capsys, tiny_model_dir, sft_data, out):
    for flag, value, message in [("--learning-rate", "nan", "learning_rate must be a finite number > 0 (got nan)"),
                                 ("--learning-rate", "-1", "learning_rate must be a finite number > 0"),
                                 ("--epochs", "-1", "epochs must be a number > 0 when steps is 0 (got -1.0)"),
                                 ("--max-grad-norm", "inf", "max_grad_norm must be a finite number >= 0")]:
        line = error_line(capsys, "sft", "--model", tiny_model_dir, "--data", sft_data, "--output-dir", out, flag,
                          value)
        assert message in line, line


def test_an_output_folder_that_cannot_be_written(capsys, tmp_path, tiny_model_dir, sft_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(capsys, "sft", "--model", tiny_model_dir, "--data", sft_data, "--output-dir", blocker / "run")
    assert f"output folder '{blocker / 'run'}' cannot be written ('{blocker}' is not a writable folder)" in line


def test_a_chat_template_failing_on_a_later_row(capsys, tmp_path, tiny_model_dir, out):
    model_dir = tmp_path / "templated"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": FAILING_TEMPLATE}))
    rows = [{"messages": [{"role": "user", "content": f"{i}+1="}, {"role": "assistant", "content": str(i + 1)}]}
            for i in range(30)]
    rows[27]["messages"][0]["content"] = "boom"
    data = jsonl(tmp_path / "chat.jsonl", rows)
    line = error_line(capsys, "sft", "--model", model_dir, "--data", data, "--output-dir", out)
    assert "chat.jsonl:28: the chat template fails on this conversation (cannot render boom)" in line


def test_a_reward_model_folder_whose_config_is_not_json(capsys, tmp_path, tiny_model_dir, out):
    broken = tmp_path / "rm"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{not json")
    line = error_line(capsys, "rl", "--model", tiny_model_dir, "--task", "arithmetic", "--reward", f"rm:{broken}",
                      "--output-dir", out)
    assert f"{broken / 'config.json'}: invalid JSON" in line


def test_pickled_weights_that_hold_more_than_tensors(capsys, tmp_path, tiny_model_dir, sft_data, out):
    folder = tmp_path / "pickled"
    model, tok = load_causal_lm(tiny_model_dir)
    save_model(model, tok, folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": print}, folder / "pytorch_model.bin")  # a global a restricted load refuses
    line = error_line(capsys, "sft", "--model", folder, "--data", sft_data, "--output-dir", out, "--no-progress")
    assert "pickled weights (*.bin) hold objects other than tensors, so they are refused" in line


def test_custom_code_is_refused_by_every_command_including_rm(capsys, tmp_path, tiny_model_dir, out):
    custom = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.M"}}))
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 4)
    for command in ("rm", "preference"):
        assert "needs custom code (config.json has auto_map)" in error_line(
            capsys, command, "--model", custom, "--data", pairs, "--output-dir", out)


def test_blank_prompts_are_refused_by_sft_rl_and_eval(capsys, tmp_path, tiny_model_dir, out):
    data = jsonl(tmp_path / "blank.jsonl", [{"prompt": "1+1=", "completion": "2", "answer": "2"},
                                            {"prompt": "  ", "completion": "3", "answer": "3"}])
    for argv in (["sft", "--data", data], ["rl", "--prompts", data], ["eval", "--prompts", data, "--reward", "exact"]):
        line = error_line(capsys, *argv, "--model", tiny_model_dir, "--output-dir", out)
        assert "blank.jsonl:2: field 'prompt' is empty" in line, argv


def test_a_csv_with_a_quote_left_open_or_a_stray_comma(capsys, tmp_path, tiny_model_dir, out):
    quote = tmp_path / "quote.csv"
    quote.write_text('prompt,answer,completion\n"1+1=,2,2\n2+2=,4,4\n')
    stray = tmp_path / "stray.csv"
    stray.write_text("prompt,answer,completion\n1+1=,2,2,extra\n")
    for argv in (["eval", "--prompts"], ["sft", "--data"], ["rl", "--prompts"]):
        assert "quote.csv:3: cannot be read as CSV (unexpected end of data; a quote left open?)" in error_line(
            capsys, *argv, quote, "--model", tiny_model_dir, "--output-dir", out)
        assert "stray.csv: row 1: 4 fields where the header has 3" in error_line(
            capsys, *argv, stray, "--model", tiny_model_dir, "--output-dir", out)


def test_encoding_and_json_errors_are_reported_at_their_line(capsys, tmp_path, tiny_model_dir, out):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "caf\xe9", "completion": "3"}\n')
    assert "latin.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)" in error_line(
        capsys, "sft", "--model", tiny_model_dir, "--data", latin, "--output-dir", out)
    unclosed = tmp_path / "unclosed.jsonl"
    unclosed.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", "completion": "4"\n')
    assert "unclosed.jsonl:2: invalid JSON at the end of the line" in error_line(
        capsys, "sft", "--model", tiny_model_dir, "--data", unclosed, "--output-dir", out)
    array = tmp_path / "array.json"
    array.write_text('[{"prompt": "1+1=", "completion": "2"}\n {"prompt": "2+2=", "completion": "4"}]\n')
    assert "array.json:2: invalid JSON (Expecting ',' delimiter at column 2)" in error_line(
        capsys, "sft", "--model", tiny_model_dir, "--data", array, "--output-dir", out)


def test_a_byte_order_mark_is_read(capsys, tmp_path, tiny_model_dir):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffprompt,completion\n1+1=,2\n".encode())
    code = main(["sft", "--model", tiny_model_dir, "--data", str(bom), "--output-dir", str(tmp_path / "run"),
                 "--steps", "1", "--no-progress"])
    assert code == 0 and (tmp_path / "run" / "model").exists()


def test_eval_checks_its_data_before_loading_the_model_and_is_quiet_without_progress(capsys, tmp_path,
                                                                                      tiny_model_dir, out):
    missing = jsonl(tmp_path / "noanswer.jsonl", [{"prompt": "1+1="}])
    line = error_line(capsys, "eval", "--model", tiny_model_dir, "--prompts", missing, "--reward", "numeric",
                      "--output-dir", out, "--no-progress")
    assert "noanswer.jsonl:1: missing field 'answer' (the gold answer the reward checks)" in line
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "3+4=", "answer": "7"}])
    code = main(["eval", "--model", tiny_model_dir, "--prompts", str(prompts), "--reward", "exact",
                 "--max-new-tokens", "4", "--output-dir", str(tmp_path / "ev"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and err == "", err  # no bar of divalign's or of the libraries'
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert 0.0 <= results["reward"]["reward_mean"] <= 1.0


def test_eval_scores_its_reward_against_the_gold_answers(capsys, tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "gold.py").write_text("def is_gold(completion, answer):\n    return float(answer == 'GOLD')\n")
    monkeypatch.chdir(tmp_path)
    prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "answer": "GOLD"}] * 3)
    code = main(["eval", "--model", tiny_model_dir, "--prompts", str(prompts), "--reward", "gold:is_gold",
                 "--max-new-tokens", "2", "--output-dir", str(tmp_path / "ev"), "--no-progress"])
    assert code == 0 and json.loads((tmp_path / "ev" / "results.json").read_text())["reward"]["reward_mean"] == 1.0


def test_preference_pairs_name_their_file_and_rl_has_the_option_it_suggests(capsys, tmp_path, tiny_model_dir, out):
    same = jsonl(tmp_path / "same.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "2"}])
    line = error_line(capsys, "preference", "--model", tiny_model_dir, "--data", same, "--output-dir", out,
                      "--drop-identical-pairs")
    assert f"{same}: no usable preference pairs" in line
    line = error_line(capsys, "rl", "--model", tiny_model_dir, "--task", "arithmetic", "--objective", "fhal",
                      "--preference-data", same, "--output-dir", out)
    assert "same.jsonl:1: chosen and rejected are identical (remove the pair, or allow dropping such pairs with " \
           "--drop-identical-pairs)" in line
    assert f"{same}: no usable preference pairs" in error_line(
        capsys, "rl", "--model", tiny_model_dir, "--task", "arithmetic", "--objective", "fhal", "--preference-data",
        same, "--drop-identical-pairs", "--output-dir", out)


def test_one_generation_per_prompt_is_refused_where_advantages_compare_completions(capsys, tiny_model_dir, out):
    line = error_line(capsys, "rl", "--model", tiny_model_dir, "--task", "arithmetic", "--num-generations", 1,
                      "--output-dir", out)
    assert "the advantage estimator 'group' compares the completions of a prompt, so it needs num-generations >= 2" \
           in line


def test_gold_answers_the_reward_cannot_read(capsys, tmp_path, tiny_model_dir, out):
    latex = jsonl(tmp_path / "latex.jsonl", [{"prompt": "Half of one?", "answer": "\\frac{1}{2}"}])
    assert "latex.jsonl:1: the gold answer '\\\\frac{1}{2}' is not a plain number, which the numeric reward " \
           "compares; use --reward math" in error_line(
               capsys, "rl", "--model", tiny_model_dir, "--prompts", latex, "--output-dir", out)
    nonsense = jsonl(tmp_path / "nonsense.jsonl", [{"prompt": "?", "answer": "\\frac{"}])
    assert "nonsense.jsonl:1: the gold answer '\\\\frac{' cannot be read as mathematics" in error_line(
        capsys, "rl", "--model", tiny_model_dir, "--prompts", nonsense, "--reward", "math", "--output-dir", out)
    assert os.path.exists(latex)
