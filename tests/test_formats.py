"""TRL's standard dataset formats, plain and conversational, through every command they fit (README: "Data
formats"). Conversational rows go through the tokenizer's chat template; without one, the command stops with one
line before any model loads."""

import json
import shutil

import pytest

from divalign.cli import main
from divalign.data.chat import Rendered
from divalign.data.preferences import read_pairs, read_unpaired, render_pairs, render_unpaired
from divalign.data.prompts import read_prompt_file, render_examples
from divalign.data.sft import read_sft, render_demonstrations
from divalign.models import load_tokenizer

TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}a:{% endif %}")
USER = [{"role": "user", "content": "1+1="}]


def reply(text):
    return [{"role": "assistant", "content": text}]


#: format -> (plain row, conversational row), as TRL documents them.
FORMATS = {
    "language modeling": ({"text": "1+1=2"}, {"messages": USER + reply("2")}),
    "prompt-only": ({"prompt": "1+1="}, {"prompt": USER}),
    "prompt-completion": ({"prompt": "1+1=", "completion": "2"}, {"prompt": USER, "completion": reply("2")}),
    "preference": ({"prompt": "1+1=", "chosen": "2", "rejected": "3"},
                   {"prompt": USER, "chosen": reply("2"), "rejected": reply("3")}),
    "implicit-prompt preference": ({"chosen": "1+1= 2", "rejected": "1+1= 3"},
                                   {"chosen": USER + reply("2"), "rejected": USER + reply("3")}),
    "unpaired preference": ({"prompt": "1+1=", "completion": "2", "label": True},
                            {"prompt": USER, "completion": reply("2"), "label": False}),
}

#: format -> the commands that read it: (command and the option naming the file, further options, plain only).
RL = ["--steps", "1", "--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "3"]
TRAIN = ["--steps", "1", "--batch-size", "2"]
USES = {
    "language modeling": [(["sft", "--data"], TRAIN, False), (["eval", "--perplexity-data"], [], True)],
    "prompt-only": [(["rl", "--prompts"], [*RL, "--reward", "lengthy:score"], False),
                    (["eval", "--prompts"], ["--max-new-tokens", "3"], False)],
    "prompt-completion": [(["sft", "--data"], TRAIN, False)],
    "preference": [(["preference", "--data"], TRAIN, False), (["rm", "--data"], TRAIN, False),
                   (["preference", "--data"], [*TRAIN, "--objective", "kto"], False),
                   (["rl", "--preference-data"], [*RL, "--task", "arithmetic", "--objective", "fhal"], False)],
    "implicit-prompt preference": [(["preference", "--data"], TRAIN, False), (["rm", "--data"], TRAIN, False),
                                   (["rl", "--preference-data"], [*RL, "--task", "arithmetic", "--objective", "fhal"],
                                    False)],
    "unpaired preference": [(["preference", "--data"], [*TRAIN, "--objective", "kto"], False)],
}
CASES = [(fmt, conversational, command, extra)
         for fmt, uses in USES.items() for command, extra, plain_only in uses
         for conversational in ((False,) if plain_only else (False, True))]


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a chat template."""
    folder = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = load_tokenizer(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_rows(path, row, n=4):
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(n)))
    return path


@pytest.mark.parametrize("fmt,conversational,command,extra", CASES,
                         ids=[f"{f}-{'conv' if c else 'plain'}-{cmd[0]}{'-' + x[-1] if '--objective' in x else ''}"
                              for f, c, cmd, x in CASES])
def test_each_format_runs_through_each_command_it_fits(tmp_path, monkeypatch, capsys, chat_model_dir,
                                                       tiny_model_dir, fmt, conversational, command, extra):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lengthy.py").write_text("def score(completion, answer):\n    return len(completion) / 10\n")
    data = write_rows(tmp_path / "data.jsonl", FORMATS[fmt][conversational])
    argv = [*command, str(data), *extra, "--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, "--model", chat_model_dir]) == 0, capsys.readouterr().err
    assert any((tmp_path / "run").glob("model/*.safetensors")) or (tmp_path / "run" / "results.json").exists()
    if conversational:  # without a template: one line, before any model loads, nothing written
        shutil.rmtree(tmp_path / "run")
        capsys.readouterr()
        assert main([*argv, "--model", tiny_model_dir]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "data.jsonl:1: conversational data needs a tokenizer with a chat template" \
            in err, err
        assert not (tmp_path / "run").exists()


def test_conversational_rows_render_through_the_template(tmp_path, chat_model_dir):
    tokenizer = load_tokenizer(chat_model_dir)

    def rows(fmt):
        return write_rows(tmp_path / f"{fmt}.jsonl", FORMATS[fmt][1], n=1)

    prompt = "u:1+1=\na:"  # the template's rendering of the user turn with the generation prompt
    assert render_demonstrations(tokenizer, read_sft(rows("language modeling"))) == [Rendered(prompt, "2\n", True)]
    assert render_demonstrations(tokenizer, read_sft(rows("prompt-completion"))) == [Rendered(prompt, "2\n", True)]
    (example,) = render_examples(tokenizer, read_prompt_file(rows("prompt-only"), answers=False))
    assert (example.prompt, example.answer, example.templated) == (prompt, "", True)
    for fmt in ("preference", "implicit-prompt preference"):
        (pair,) = render_pairs(tokenizer, read_pairs(rows(fmt)))
        assert (pair.prompt, pair.chosen, pair.rejected, pair.templated) == (prompt, "2\n", "3\n", True)
    (unpaired,) = render_unpaired(tokenizer, read_unpaired(rows("unpaired preference")))
    assert (unpaired.prompt, unpaired.completion, unpaired.desirable, unpaired.templated) == (prompt, "2\n", False,
                                                                                              True)


def test_plain_implicit_prompt_splits_at_the_last_shared_space(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", {"chosen": "Q: 12+3= 15", "rejected": "Q: 12+3= 16"}, n=1)
    (pair,) = read_pairs(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q: 12+3=", " 15", " 16")
