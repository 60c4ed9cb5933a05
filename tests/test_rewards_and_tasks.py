import json
from fractions import Fraction

import pytest

from divalign.data.prompts import DatasetPrompts, Example, read_prompt_file
from divalign.errors import UserError
from divalign.eval.passk import pass_at_k
from divalign.verifiers.numeric import exact_reward, extract_number, numeric_reward
from divalign.tasks.arithmetic import ArithmeticConfig, ArithmeticTask


def gsm8k_test(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip("gsm8k/test.jsonl not in the data folder")
    return path


def perturb(answer: str) -> str:
    """Change the final number after ####: add one to it."""
    head, gold = answer.rsplit("####", 1)
    value = int(gold.strip().replace(",", ""))
    return f"{head}#### {value + 1}"


def test_every_gsm8k_gold_answer_scores_one_and_a_perturbed_one_zero(shared_data):
    path = gsm8k_test(shared_data)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1319
    for rec in records:
        assert numeric_reward(rec["answer"], rec["answer"]) == 1.0, rec["answer"][-40:]
        assert numeric_reward(perturb(rec["answer"]), rec["answer"]) == 0.0
    # A model-style completion that states the answer in words also scores.
    gold = records[0]["answer"].rsplit("####", 1)[1].strip()
    assert numeric_reward(f"So she makes ${gold}.", records[0]["answer"]) == 1.0


def test_gsm8k_reads_as_a_prompt_dataset(shared_data):
    examples = read_prompt_file(gsm8k_test(shared_data), prompt_field="question")
    assert len(examples) == 1319 and examples[0].prompt.startswith("Janet")
    assert numeric_reward("The answer is 18", examples[0].answer) == 1.0


@pytest.mark.parametrize(
    "text,value",
    [
        ("#### 1,234", Fraction(1234)),
        ("the answer is -7.", Fraction(-7)),
        ("x \\boxed{3/4}", Fraction(3, 4)),
        ("12 apples and 5.50 dollars", Fraction(11, 2)),
        ("no digits", None),
        ("$1,000,000", Fraction(1000000)),
    ],
)
def test_number_extraction(text, value):
    assert extract_number(text) == value


def test_numeric_equality_is_exact_value_not_text():
    assert numeric_reward("18.00", "#### 18") == 1.0
    assert numeric_reward("18.01", "#### 18") == 0.0
    assert numeric_reward("", "#### 18") == 0.0
    assert exact_reward(" 82\n", "82") == 1.0 and exact_reward("82+1", "82") == 0.0


def test_arithmetic_answers_and_held_out_split():
    task = ArithmeticTask(ArithmeticConfig(operands="2,3", operators="+-*"))
    evalset = task.eval_set(300)
    assert len({e.prompt for e in evalset}) == 300 and all(task.is_eval(e.prompt) for e in evalset)
    train = [e for s in range(20) for e in task.batch(s, 64, seed=5)] + task.demonstrations(500)
    assert not {e.prompt for e in train} & {e.prompt for e in evalset}
    for e in evalset + train:
        # Python's own arithmetic agrees with the stored answer.
        assert int(e.answer) == eval(e.prompt[:-1])
    assert task.batch(3, 8, seed=1) == task.batch(3, 8, seed=1) != task.batch(4, 8, seed=1)
    assert ArithmeticTask().eval_set(50) == ArithmeticTask().eval_set(50)


def test_arithmetic_config_errors():
    with pytest.raises(UserError, match="operands"):
        ArithmeticConfig(operands="two")
    with pytest.raises(UserError, match="operators"):
        ArithmeticConfig(operators="/")


def test_dataset_prompts_cover_each_epoch_once():
    examples = [Example(str(i), str(i)) for i in range(10)]
    source = DatasetPrompts(examples, seed=3)
    first_epoch = source.batch(0, 5) + source.batch(1, 5)
    assert sorted(int(e.prompt) for e in first_epoch) == list(range(10))
    assert source.batch(2, 5) + source.batch(3, 5) != first_epoch  # reshuffled


def test_pass_at_k_estimator():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 8, 8) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    # 1 − C(6, 2)/C(8, 2) = 1 − 15/28
    assert pass_at_k(8, 2, 2) == pytest.approx(1 - 15 / 28)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 8)


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="\n', r"bad.jsonl:2: invalid JSON"),
        ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n', r"bad.jsonl:2: missing field 'answer'"),
        ('{"prompt": 5, "answer": "2"}\n', r"bad.jsonl:1: field 'prompt' must be a string or a list of messages, got int"),
        ('["prompt"]\n', r"bad.jsonl:1: expected a JSON object"),
        ("\n\n", r"bad.jsonl: no records"),
    ],
)
def test_prompt_file_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_prompt_file(path)
    with pytest.raises(UserError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.jsonl")


def test_arithmetic_difficulty_counts_carries_borrows_and_signs():
    from divalign.tasks.arithmetic import ArithmeticTask

    cases = {"12+34=": 0, "58+67=": 2, "99+1=": 2, "100-1=": 2, "40-61=": 1, "3-5=": 1, "95+5=": 2, "5-3=": 0}
    for prompt, expected in cases.items():
        assert ArithmeticTask.difficulty(Example(prompt, "")) == expected, prompt
