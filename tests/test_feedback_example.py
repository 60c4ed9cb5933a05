"""examples/feedback_loop.sh runs end to end on the real stories260K model, and each step's files are what the next
step reads: people's and a judge's labels -> reward model -> f-HAL -> A/B study -> Constitutional AI data -> SFT."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_feedback_loop_example_runs_end_to_end(tmp_path, shared_data):
    out = tmp_path / "feedback"
    env = {**os.environ, "DIVALIGN": str(Path(sys.executable).parent / "divalign"), "PYTHON": sys.executable,
           "DIVALIGN_DATA": str(shared_data)}
    result = subprocess.run(["bash", str(ROOT / "examples" / "feedback_loop.sh"), str(out)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert {r["source"] for r in labels} == {"human", "judge"} and len(labels) == 64
    # the judge's position bias and its agreement with the person are reported
    assert "the order changed the verdict on" in result.stdout and "Cohen's kappa" in result.stdout
    assert (out / "rm" / "model" / "config.json").exists() and (out / "fhal" / "model" / "config.json").exists()
    rm_config = (out / "fhal" / "config.yaml").read_text()
    assert f"rm:{out}/rm/model" in rm_config and "feedback/labels.jsonl" in rm_config
    ab = [json.loads(line) for line in (out / "ab.pairs.jsonl").read_text().splitlines()]
    assert ab and all(p["model_a"] == f"{out}/fhal/model" for p in ab)
    win = json.loads((out / "eval" / "results.json").read_text())["win_rate"]
    assert win["comparisons"] == 32 and 0 <= win["win_rate"] <= 1
    sft = [json.loads(line) for line in (out / "constitutional" / "sft.jsonl").read_text().splitlines()]
    assert sft and all(row["completion"] for row in sft)
    assert (out / "sft-cai" / "model" / "config.json").exists()
