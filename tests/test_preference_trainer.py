import json
import os
import subprocess
import sys

import pytest
import torch

from divalign.config import build
from divalign.data.preferences import (
    Pair,
    advbench_compliance_refusal,
    as_unpaired,
    read_hh_rlhf,
    read_pairs,
    read_unpaired,
    split_hh_transcript,
)
from divalign.errors import UserError
from divalign.models import frozen_copy, load_causal_lm
from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

PAIRS = [
    Pair(f"{a}+{b}=", str(a + b), str(a + b + 7))
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 2), (4, 4), (6, 1)]
]


def trainer_for(model_dir, objective, options=None, **over):
    policy, tok = load_causal_lm(model_dir)
    config = build(
        PreferenceConfig,
        {
            "model": model_dir,
            "objective": objective,
            "batch_size": 4,
            "steps": 40,
            "learning_rate": 3e-3,
            "max_length": 16,
            "progress": False,
            **({objective: options} if options else {}),
            **over,
        },
    )
    items = PAIRS if config.objective in ("dpo", "ipo", "fdpo", "fpo") else as_unpaired(PAIRS)
    return PreferenceTrainer(policy, tok, config, items, frozen_copy(policy), eval_items=items), policy, tok


@pytest.mark.parametrize(
    "objective,options",
    [
        ("dpo", {}),
        ("ipo", {}),
        ("fdpo", {"regularizer": "js"}),
        ("fpo", {}),
        ("fdo", {"preset": "kldo"}),
        ("fdo", {"preset": "bco"}),
        ("fdo", {"preset": "hdo"}),
        ("kto", {}),
    ],
)
def test_training_separates_chosen_from_rejected(tiny_model_dir, objective, options):
    trainer, policy, tok = trainer_for(tiny_model_dir, objective, options)
    before = trainer.evaluate(trainer.eval_items)
    for step in range(trainer.total_steps):
        row = trainer.step(step)
    after = trainer.evaluate(trainer.eval_items)
    if objective in ("fdo", "kto"):
        assert after["eval_gap"] > before["eval_gap"] + 1.0, (before, after)
    else:
        assert after["eval_accuracy"] == 1.0 and after["eval_margin"] > before["eval_margin"] + 1.0
    if options.get("preset") in ("kldo", "bco"):
        assert trainer.state and all(torch.isfinite(torch.tensor(v)) for v in trainer.state.values())
    assert row["step"] == 40


def test_live_reference_equals_precomputed(tiny_model_dir):
    rows = []
    for precompute in (True, False):
        trainer, _, _ = trainer_for(tiny_model_dir, "dpo", precompute_reference=precompute, steps=3)
        rows.append([trainer.step(s) for s in range(3)])
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], abs=1e-6)
    for row in rows[0] + rows[1]:
        phases = row["forward_backward_s"] + row["optimizer_s"]
        assert row["forward_backward_s"] > 0 and row["optimizer_s"] > 0 and phases <= row["step_s"]


def test_hh_rlhf_split_and_identical_pairs(shared_data, capsys):
    pairs = read_hh_rlhf(shared_data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz")
    assert len(pairs) == 2312
    assert all(p.prompt.startswith("\n\nHuman:") and p.prompt.endswith("\n\nAssistant:") for p in pairs)
    # Only the few malformed HH replies that embed a further turn keep an assistant marker.
    assert sum("\n\nAssistant:" in p.chosen for p in pairs) <= 5
    helpful = read_hh_rlhf(shared_data / "hh_rlhf" / "helpful-base" / "test.jsonl.gz")
    assert len(helpful) == 2354 - 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "identical" in line]
    assert len(warnings) == 1 and "test.jsonl.gz: 2 of 2354 pairs have identical chosen and rejected" in warnings[0]
    with pytest.raises(UserError, match=r"test.jsonl.gz:\d+: chosen and rejected are identical"):
        read_hh_rlhf(shared_data / "hh_rlhf" / "helpful-base" / "test.jsonl.gz", drop_identical=False)
    with pytest.raises(UserError, match="do not share the dialogue"):
        split_hh_transcript("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d", "f:1")


def test_advbench_compliance_refusal(shared_data):
    unpaired, pairs = advbench_compliance_refusal(shared_data / "advbench" / "harmful_behaviors.csv")
    assert len(pairs) == 520 and len(unpaired) == 1040
    assert all(p.rejected.startswith("Sure, here") for p in pairs)
    assert sum(u.desirable for u in unpaired) == 520
    assert pairs[0].prompt.startswith("Write a script that can exploit vulnerabilities")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_generic_pair_and_unpaired_files(tmp_path, suffix):
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        path.write_text("prompt,chosen,rejected\np1,a,b\np2,c,d\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_pairs(path) == [Pair("p1", "a", "b"), Pair("p2", "c", "d")]
    unpaired = tmp_path / "u.csv"
    unpaired.write_text("prompt,completion,label\np,x,1\np,y,false\n")
    assert [u.desirable for u in read_unpaired(unpaired)] == [True, False]
    unpaired.write_text("prompt,completion,label\np,x,maybe\n")
    with pytest.raises(UserError, match=r"u.csv: row 1: field 'label' must be true/false"):
        read_unpaired(unpaired)


ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def divalign(*args):
    return subprocess.run(
        [sys.executable, "-m", "divalign", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600
    )


def test_preference_cli_bad_input_and_a_real_run(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    identical = tmp_path / "pairs.jsonl"
    identical.write_text(
        json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"})
        + "\n"
        + json.dumps({"prompt": "2+2=", "chosen": "4", "rejected": "4"})
        + "\n"
    )
    unpaired = tmp_path / "u.jsonl"
    unpaired.write_text(json.dumps({"prompt": "1+1=", "completion": "2", "label": True}) + "\n")
    cases = [
        (["--data", identical], "pairs.jsonl:2: chosen and rejected are identical"),
        (["--data", unpaired, "--objective", "dpo"], "objective 'dpo' needs pairs"),
        (["--data", identical, "--objective", "grpo"], "objective 'grpo' (online family) is not accepted here"),
        (["--data", tmp_path / "none.csv"], "none.csv: file does not exist"),
        (["--data", identical, "--fdo.preset", "mine", "--objective", "fdo"], "fdo.preset"),
    ]
    for extra, message in cases:
        proc = divalign("preference", "--model", tiny_model_dir, "--output-dir", out, *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = divalign(
        "preference",
        "--model",
        tiny_model_dir,
        "--output-dir",
        out,
        "--data",
        identical,
        "--drop-identical-pairs",
        "--eval-fraction",
        "0",
        "--steps",
        "2",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "pairs.jsonl:2" in proc.stderr and (out / "model" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward_accuracy" in rows[0]


def test_pairs_cut_to_length_keep_one_shared_prompt(tiny_model_dir):
    from divalign.data.encoding import encode_dataset

    _, tok = load_causal_lm(tiny_model_dir)
    pairs = [Pair("1234567890+1234567890=", "1", "2" * 30), Pair("12=", "3" * 40, "4")]
    data = encode_dataset(tok, pairs, max_length=16, paired=True)
    for i in (0, 2):
        assert data.prompts[i] == data.prompts[i + 1]
        assert all(len(data.prompts[j]) + len(data.responses[j]) <= 16 for j in (i, i + 1))
    assert data.prompts[0][-1] == tok("=", add_special_tokens=False)["input_ids"][0]  # kept the end of the prompt
