"""Evaluation pieces with hand values, and divalign eval / report end to end on real tiny models."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from divalign.eval.calibration import expected_calibration_error
from divalign.eval.generations import Decoding, GenerationCache, generate
from divalign.eval.metrics import kl_to_reference, length_stats, perplexity, wilson_interval, win_rate
from divalign.eval.safety.judge import is_refusal
from divalign.eval.separation import bhattacharyya, separation
from divalign.models import load_causal_lm

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def divalign(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "divalign", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_win_rate_counts_ties_as_half_with_a_wilson_interval():
    result = win_rate([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.0])
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    low, high = result["win_rate_ci95"]
    assert low < 0.625 < high and 0 <= low and high <= 1
    # Wilson interval for 8/10 (textbook value 0.490–0.943).
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-3)


def test_expected_calibration_error_hand_value():
    confidences = [0.05, 0.15, 0.95, 0.9, 0.35]
    correct = [False, True, True, False, True]
    ece, rows = expected_calibration_error(confidences, correct, bins=10)
    # bins: [0,.1): 0.05 vs 0; [.1,.2): 0.15 vs 1; [.3,.4): 0.35 vs 1; [.9,1]: 0.925 vs 0.5
    expected = (0.05 + 0.85 + 0.65 + 2 * 0.425) / 5
    assert ece == pytest.approx(expected)
    assert sum(r[2] for r in rows) == 5


def test_bhattacharyya_matches_the_closed_form_and_separation_grows():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 1))
    b = rng.normal(2.0, 1.0, size=(20000, 1))
    assert bhattacharyya(a, b) == pytest.approx(2.0**2 / 8, abs=0.02)  # equal unit variances: Δμ²/8
    near = separation(rng.normal(0, 1, (200, 16)), rng.normal(0.1, 1, (200, 16)))
    far = separation(rng.normal(0, 1, (200, 16)), rng.normal(3.0, 1, (200, 16)))
    assert far["bhattacharyya_distance"] > near["bhattacharyya_distance"] + 1
    assert far["silhouette"] > near["silhouette"]


def test_refusal_keywords():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI language model, I cannot")
    assert not is_refusal("Sure, here is how to bake bread: first, ...")


def test_perplexity_equals_the_exponent_of_the_mean_token_nll(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    texts = ["12+3=15", "7-2=5 and 1+1=2"]
    result = perplexity(model, tok, texts)
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_kl_is_zero_to_itself_and_positive_to_another_model(tiny_model_dir, tmp_path):
    model, tok = load_causal_lm(tiny_model_dir)
    other, _ = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["12+3=", "45-6=", "7+7="]
    same = kl_to_reference(model, model, tok, prompts, max_new_tokens=8)
    assert same["kl"] == 0.0 and same["kl_samples"] == 12
    different = kl_to_reference(model, other, tok, prompts, max_new_tokens=8)
    assert different["kl_k3"] > 0 and different["kl_stderr"] > 0


def test_generation_cache_resumes_without_regenerating(tiny_model_dir, tmp_path):
    model, tok = load_causal_lm(tiny_model_dir)
    path = tmp_path / "gen.jsonl"
    decoding = Decoding(max_new_tokens=6)
    first = generate(model, tok, ["1+1=", "2+2="], decoding, cache=GenerationCache(path), show_progress=False)
    lines = path.read_text().splitlines()
    # An interruption left a cut line; a new run reuses the two answers and adds only the new prompt.
    path.write_text("\n".join(lines) + '\n{"key": "cut', encoding="utf-8")
    again = generate(model, tok, ["1+1=", "2+2=", "3+3="], decoding, cache=GenerationCache(path),
                     show_progress=False)
    assert [a["response"] for a in again[:2]] == [f["response"] for f in first]
    assert len([line for line in path.read_text().splitlines() if line.startswith('{"key": "') and
                line.endswith("}")]) == 3
    assert length_stats([a["tokens"] for a in again])["length_max"] <= 6


def test_a_response_budget_beyond_the_context_keeps_the_prompt(tmp_path):
    from divalign.charlm import write_tiny_model

    folder = write_tiny_model(tmp_path / "m", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                              num_kv_heads=1, max_positions=16)
    model, tok = load_causal_lm(folder)
    prompt = "12+34="  # shorter than half the context
    fits = generate(model, tok, [prompt], Decoding(max_new_tokens=4), show_progress=False)[0]
    beyond = generate(model, tok, [prompt], Decoding(max_new_tokens=48), show_progress=False)[0]
    # The whole prompt is still seen (greedy answers agree on their first tokens) and the answer fits the context.
    assert beyond["response"][: len(fits["response"])] == fits["response"]
    assert len(tok(prompt)["input_ids"]) + beyond["tokens"] <= 16


def test_eval_and_report_end_to_end(tmp_path, tiny_model_dir, shared_data):
    out = tmp_path / "eval"
    proc = divalign("eval", "--model", tiny_model_dir, "--output-dir", out, "--task", "arithmetic", "--task-limit",
                    12, "--pass-k", 2, "--max-new-tokens", 6, "--calibration", "--prompts", "hh-rlhf:helpful",
                    "--prompts-limit", 4, "--reference", tiny_model_dir, "--safety", "--harmful-requests", 4,
                    "--requests-per-template", 1, "--template-families", "gptfuzzer-short,autodan",
                    "--benign-requests", 4, "--separation", "--separation-prompts", 12, "--gcg", 1,
                    "--gcg-steps", 2, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"task", "calibration", "lengths", "kl", "safety", "gcg", "separation", "seconds"}
    assert results["kl"]["kl"] == 0.0  # the reference is the model itself
    safety = results["safety"]
    assert safety["attacks"] == 25 + 2 and set(safety["asr_by_family"]) == {"gptfuzzer-short", "autodan"}
    assert 0 <= safety["asr_templates"] <= 1 and safety["judge_held_out"]["judge"]["accuracy"] > 0.9
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    cached = (out / "generations.jsonl").read_text().count("\n")
    # Resuming reuses every cached generation.
    proc = divalign("eval", "--model", tiny_model_dir, "--output-dir", out, "--resume", "--task", "arithmetic",
                    "--task-limit", 12, "--pass-k", 2, "--max-new-tokens", 6, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (out / "generations.jsonl").read_text().count("\n") == cached

    run = tmp_path / "rl"
    proc = divalign("rl", "--model", tiny_model_dir, "--output-dir", run, "--task", "arithmetic", "--steps", 3,
                    "--prompts-per-step", 2, "--num-generations", 4, "--max-new-tokens", 6, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "report" / "index.html"
    proc = divalign("report", run, out, "--output", page)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "Evaluation results" in text and "asr_templates" in text and "data:image/png;base64," in text
    figures = int(text.split('data-figures="')[1].split('"')[0])
    assert figures >= 4 and len(list((tmp_path / "report" / "index_files").glob("*.png"))) == figures
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: the page was written but not rendered")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-plots-rendered="{figures}"' in dom  # every plot decoded and shown by the browser


def test_eval_and_report_bad_input(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    for args, message in [
        (["--model-b", tiny_model_dir, "--prompts", "hh-rlhf:helpful"], "--model-b needs --judge-rm"),
        (["--calibration"], "--calibration needs --task"),
        (["--reward", "numeric"], "--reward needs --prompts"),
        (["--safety", "--template-families", "dan"], "template-families: unknown dan"),
    ]:
        proc = divalign("eval", "--model", tiny_model_dir, "--output-dir", out, *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert not out.exists()
    proc = divalign("report", tmp_path / "missing", "--output", tmp_path / "r.html")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "r.html").exists()
