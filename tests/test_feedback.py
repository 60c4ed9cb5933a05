"""Collecting preferences without a browser: pairs files, the preference file, agreement statistics, the server's
guards (a real server process), the judge (RLAIF) and Constitutional AI data on a tiny real model."""

import json
import string
import urllib.error
import urllib.request

import pytest
import torch
from label_server import Server, free_port

from divalign.charlm import write_tiny_model
from divalign.cli import main
from divalign.data.preferences import read_pairs
from divalign.errors import UserError
from divalign.eval.metrics import win_rate
from divalign.feedback.agreement import ab_win_rates, agreement, cohen_kappa, position_bias
from divalign.feedback.constitution import load_constitution
from divalign.feedback.judge import Judge, combine
from divalign.feedback.labels import Label, LabelFile, label_record, shows_b_first
from divalign.feedback.pairs import LabelPair, read_label_pairs
from divalign.models import load_causal_lm

PAIRS = [
    {"prompt": "Name a fruit.", "response_a": "An apple.", "response_b": "A chair.", "model_a": "m1",
     "model_b": "m2"},
    {"prompt": "Add 2 and 2.", "response_a": "4", "response_b": "22", "model_a": "m1", "model_b": "m2"},
    {"prompt": "Greet me.", "response_a": "Hello!", "response_b": "No.", "model_a": "m1", "model_b": "m2"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny random Llama with a character tokenizer over printable text and a 1024-token context."""
    folder = tmp_path_factory.mktemp("text") / "model"
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n"
    write_tiny_model(folder, alphabet=alphabet, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_positions=1024)
    return str(folder)


# --- pairs and the preference file ------------------------------------------------------------------------------

def test_pairs_file_ids_are_stable_and_errors_name_the_line(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", PAIRS)
    first, again = read_label_pairs(path), read_label_pairs(path)
    assert [p.id for p in first] == [p.id for p in again] and len({p.id for p in first}) == 3
    for rows, message in [
        ([{"prompt": "x", "response_a": "y"}], "pairs.jsonl:1: missing field 'response_b'"),
        ([PAIRS[0], {"prompt": "x", "response_a": "same", "response_b": "same"}], "pairs.jsonl:2: response_a and "
                                                                                  "response_b are the same text"),
        ([PAIRS[0], PAIRS[0]], "pairs.jsonl:2: pair id"),
        ([{"prompt": "x", "response_a": 3, "response_b": "y"}], "pairs.jsonl:1: field 'response_a' must be a string"),
    ]:
        with pytest.raises(UserError, match=message):
            read_label_pairs(_write(tmp_path / "pairs.jsonl", rows))


def test_label_records_are_trl_pairs_and_ties_carry_no_preference(tmp_path):
    pair = read_label_pairs(_write(tmp_path / "p.jsonl", PAIRS))[0]
    b = label_record(pair, "b", "ann", "a", "why")
    assert (b["chosen"], b["rejected"], b["choice"], b["left"]) == ("A chair.", "An apple.", "b", "a")
    tie = label_record(pair, "tie", "ann", "b")
    assert "chosen" not in tie and "rejected" not in tie
    chat = LabelPair("c", [{"role": "user", "content": "hi"}], "hello", "go")
    record = label_record(chat, "a", "ann", "a")
    assert record["chosen"] == [{"role": "assistant", "content": "hello"}]
    # the training commands read the file as it is, leaving out the tie
    labels = LabelFile(tmp_path / "prefs.jsonl")
    for r in (b, tie, record):
        labels.append(r)
    pairs = read_pairs(tmp_path / "prefs.jsonl")
    assert len(pairs) == 2 and pairs[0].chosen == "A chair." and pairs[1].prompt == (("user", "hi"),)
    only_ties = LabelFile(tmp_path / "ties.jsonl")
    only_ties.append(tie)
    with pytest.raises(UserError, match="no preference pairs"):
        read_pairs(tmp_path / "ties.jsonl")


def test_a_write_cut_short_is_dropped_and_appending_goes_on(tmp_path, capsys):
    pair = read_label_pairs(_write(tmp_path / "p.jsonl", PAIRS))[0]
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(label_record(pair, "a", "ann", "a")) + "\n" + '{"prompt": "Name a fr')
    labels = LabelFile(path)
    assert "its last line is unfinished" in capsys.readouterr().err
    assert labels.done("ann") == {pair.id}
    labels.append(label_record(pair, "b", "bob", "b"))
    assert [json.loads(line)["annotator"] for line in path.read_text().splitlines()] == ["ann", "bob"]
    path.write_text('{"pair_id": "x", "annotator": "a", "choice": "maybe"}\n')
    with pytest.raises(UserError, match="prefs.jsonl:1: field 'choice' must be one of"):
        LabelFile(path)


def test_the_shuffle_is_a_fair_coin_that_restarts_do_not_change():
    flips = [shows_b_first(0, f"pair{i}", "ann") for i in range(2000)]
    assert flips == [shows_b_first(0, f"pair{i}", "ann") for i in range(2000)]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    assert flips != [shows_b_first(0, f"pair{i}", "bob") for i in range(2000)]


# --- agreement, position bias, win rate -------------------------------------------------------------------------

def test_cohen_kappa_by_hand():
    x = ["a", "a", "b", "b", "tie", "a"]
    y = ["a", "b", "b", "b", "tie", "a"]
    # p_o = 5/6; p_e = Σ_k p_x(k) p_y(k) = (3/6)(2/6) + (2/6)(3/6) + (1/6)(1/6) = 13/36
    assert cohen_kappa(x, y) == pytest.approx((5 / 6 - 13 / 36) / (1 - 13 / 36), abs=1e-12)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined


def test_agreement_position_bias_and_win_rate():
    labels = [Label("p1", "ann", "a", "a"), Label("p2", "ann", "b", "a"), Label("p3", "ann", "a", "a"),
              Label("p1", "bob", "a", "b"), Label("p2", "bob", "tie", "b"), Label("p1", "ann", "b", "a")]
    rows = agreement(labels)
    assert rows[0]["raters"] == ["ann", "bob"] and rows[0]["shared_pairs"] == 2
    assert rows[0]["agreement"] == 0.0  # ann's last label on p1 is b
    bias = position_bias(labels)
    assert bias["ann"]["decisive"] == 3 and bias["ann"]["left_share"] == pytest.approx(1 / 3)
    assert bias["bob"]["left_share"] == 0.0 and bias["people"]["decisive"] == 4
    judged = [Label("p1", "judge:x", "a", None, "judge", orders=("a", "a")),
              Label("p2", "judge:x", "tie", None, "judge", orders=("a", "b"))]
    assert position_bias(judged)["judge:x"] == {"pairs": 2, "order_disagreement": 0.5, "first_position_share": 0.75}
    ab = [Label(f"p{i}", "ann", c, "a", model_a="new", model_b="old")
          for i, c in enumerate(["a", "a", "b", "tie", "both_bad"])]
    (row,) = ab_win_rates(ab + [Label("q", "ann", "a", "a", model_a="same", model_b="same")])
    expected = win_rate([1, 1, 0, 0.5, 0.5], [0, 0, 1, 0.5, 0.5])  # the statistic divalign eval reports
    assert row["win_rate"] == expected["win_rate"] == 0.6 and row["win_rate_ci95"] == expected["win_rate_ci95"]


# --- the server's guards (a real process) ------------------------------------------------------------------------

def _request(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_server_accepts_its_own_page_only_and_a_repeated_click_is_written_once(tmp_path):
    output = tmp_path / "prefs.jsonl"
    server = Server(_write(tmp_path / "pairs.jsonl", PAIRS), output, free_port(), tmp_path / "log")
    server.start()
    try:
        status, headers, _ = _request(server.url)
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert _request(server.url, headers={"Host": "attacker.example"})[0] == 400  # DNS rebinding
        state = json.loads(_request(server.url + "api/next?annotator=ann")[2])
        body = json.dumps({"annotator": "ann", "pair_id": state["pair"]["id"], "side": "right"}).encode()
        json_type = {"Content-Type": "application/json"}
        assert _request(server.url + "api/label", body, {**json_type, "Origin": "http://evil.example"})[0] == 403
        assert _request(server.url + "api/label", b"annotator=ann", {"Content-Type": "text/plain"})[0] == 415
        assert not output.exists()
        for _ in range(2):
            status, _, answer = _request(server.url + "api/label", body, json_type)
            assert status == 200 and json.loads(answer)["done"] == 1
        bad = json.dumps({"annotator": "ann", "pair_id": "nope", "side": "left"}).encode()
        assert _request(server.url + "api/label", bad, json_type)[0] == 400
        assert len(output.read_text().splitlines()) == 1
        assert json.loads(_request(server.url + "api/summary")[2])["raters"]["ann"]["labelled"] == 1
    finally:
        server.stop()


# --- the command line: one line and exit code 2 for a user's mistake ---------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--pairs", "x.jsonl"], "no output"),
    (["--output", "o.jsonl"], "no pairs"),
    (["--pairs", "missing.jsonl", "--output", "o.jsonl", "--no-browser"], "missing.jsonl: file does not exist"),
    (["--model-b", "m", "--output", "o.jsonl"], "--model-b needs --model-a"),
    (["--model-a", "m", "--output", "o.jsonl"], "--model-a needs --prompts"),
    (["--pairs", "p.jsonl", "--output", "o.jsonl", "--port", "70000"], "port must be in"),
    (["--output", "o.jsonl", "--summary"], "o.jsonl: file does not exist"),
])
def test_label_user_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "p.jsonl", PAIRS)
    assert main(["label", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_label_a_taken_port_and_a_bad_judge_template_are_one_line(tmp_path, capsys, text_model):
    import socket

    pairs = _write(tmp_path / "p.jsonl", PAIRS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["label", "--pairs", str(pairs), "--output", str(tmp_path / "o.jsonl"), "--port", str(port),
                     "--no-browser", "--no-progress"]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    template = tmp_path / "t.txt"
    template.write_text("Compare {first} with {secnd}")
    assert main(["label", "--pairs", str(pairs), "--output", str(tmp_path / "o.jsonl"), "--judge", text_model,
                 "--judge-template", str(template)]) == 2
    assert "must contain {first} and {second} (missing: second)" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# --- the judge ---------------------------------------------------------------------------------------------------

def test_combining_the_two_orders():
    assert combine(0.8, 0.3).choice == "a"  # A first: A; B first: the first (B) loses → A
    assert combine(0.2, 0.9).choice == "b"
    tie = combine(0.8, 0.8)  # both orders prefer whatever is shown first
    assert tie.choice == "tie" and tie.verdicts == {"a_first": "a", "b_first": "b"}
    assert tie.probability == pytest.approx(0.5)


def test_judge_probability_is_the_answer_tokens_softmax(text_model):
    model, tokenizer = load_causal_lm(text_model)
    judge = Judge(model, tokenizer, answers=("A", "B"), batch_size=2)
    texts = ["Which? Answer:", "Here is a longer prompt. Which one? Answer:", "Short:"]
    got = judge.first_preferred(texts)
    for text, p in zip(texts, got):
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        a, b = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B"))
        expected = torch.softmax(logits[[a, b]], -1)[0].item()  # a single-token answer: its next-token probability
        assert p == pytest.approx(expected, abs=1e-5)


def test_label_with_a_judge_resumes_and_reports_agreement_with_people(tmp_path, capsys, text_model):
    pairs_file = _write(tmp_path / "pairs.jsonl", PAIRS)
    output = tmp_path / "prefs.jsonl"
    human = LabelFile(output)
    for pair, choice in zip(read_label_pairs(pairs_file), ["a", "a", "b"]):
        human.append(label_record(pair, choice, "ann", "a"))
    args = ["label", "--pairs", str(pairs_file), "--output", str(output), "--judge", text_model, "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    judged = [r for r in records if r["source"] == "judge"]
    assert len(judged) == 3 and {r["annotator"] for r in judged} == {"judge:model"}
    for r in judged:
        p_a, p_b = r["judge_probabilities"]
        assert 0 < p_a < 1 and 0 < p_b < 1 and r["judge_probability"] == pytest.approx((p_a + p_b) / 2)
        assert r["choice"] == combine(p_a, 1 - p_b).choice and r["left"] is None
    out = capsys.readouterr().out
    assert "judge:model labelled 3 pairs" in out and "ann / judge:model: Cohen's kappa" in out
    assert main(args) == 0  # a rerun has nothing left to judge
    assert len(output.read_text().splitlines()) == 6
    capsys.readouterr()
    assert main(["label", "--output", str(output), "--summary"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["agreement"][0]["shared_pairs"] == 3 and summary["position_bias"]["judge:model"]["pairs"] == 3
    assert summary["win_rates"][0]["raters"] == "judge:model" and summary["win_rates"][1]["raters"] == "people"


def test_label_generates_pairs_from_two_models_once(tmp_path, capsys, text_model):
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"Story {i}:"} for i in range(4)])
    other = tmp_path / "other"
    write_tiny_model(other, alphabet=string.ascii_letters + string.digits + string.punctuation + " \n",
                     hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_positions=1024, seed=1)
    args = ["label", "--model-a", text_model, "--model-b", str(other), "--prompts", str(prompts), "--output",
            str(tmp_path / "ab.jsonl"), "--max-new-tokens", "8", "--judge", text_model, "--no-progress"]
    assert main(args) == 0
    pairs = read_label_pairs(tmp_path / "ab.pairs.jsonl")
    assert pairs and all(p.model_a == text_model and p.model_b == str(other) for p in pairs)
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 0
    assert "using the pairs already generated" in capsys.readouterr().out
    assert [p.id for p in read_label_pairs(tmp_path / "ab.pairs.jsonl")] == [p.id for p in pairs]


# --- Constitutional AI data --------------------------------------------------------------------------------------

def test_default_constitution_and_its_errors(tmp_path):
    constitution = load_constitution()
    assert {p.name for p in constitution.principles} >= {"no-harm", "honesty", "helpfulness"}
    assert constitution.draw(0, 3, 0) == constitution.draw(0, 3, 0)
    bad = tmp_path / "c.yaml"
    for text, message in [
        ("principles: []", "non-empty list 'principles'"),
        ("principles:\n  - name: x\n    critique: c\n    revision: r\n", "principles\\[0\\]: field 'comparison'"),
        ("principles:\n  - {name: x, critique: c, revision: r, comparison: q}\ntemplates:\n  critique: '{prompt} "
         "{answer}'\n", "templates.critique uses unknown field {answer}"),
        ("principles: [", "invalid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_constitution(str(bad))


@pytest.mark.parametrize("mode", ["revision", "judge"])
def test_constitutional_writes_sft_data_and_pairs(tmp_path, capsys, text_model, mode):
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about {w}."} for w in
                                                  ("cats", "rain", "bread", "maps")])
    out = tmp_path / "cai"
    args = ["constitutional", "--model", text_model, "--prompts", str(prompts), "--output-dir", str(out),
            "--max-new-tokens", "12", "--revisions", "2", "--pairs", mode, "--no-progress", "--sample"]
    assert main(args) == 0
    transcripts = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert len(transcripts) == 4 and all(len(t["rounds"]) == 2 for t in transcripts)
    names = {p.name for p in load_constitution().principles}
    assert all(step["principle"] in names for t in transcripts for step in t["rounds"])
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [row["completion"] for row in sft] == [t["final"] for t in transcripts if t["final"]]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    if mode == "revision":
        assert all(p["chosen"] != p["rejected"] for p in pairs)
        finals = {t["final"] for t in transcripts}
        assert all(p["chosen"] in finals for p in pairs)
    else:
        assert pairs and all(p["source"] == "judge" and p["principle"] in names for p in pairs)
    # a rerun with --resume generates nothing new: every generation comes from the cache
    cached = (out / "generations.jsonl").read_text()
    assert main([*args, "--resume"]) == 0
    assert (out / "generations.jsonl").read_text() == cached
