"""The allocator setting removes the page faults of activations freed and allocated again each training step
(measured in fresh processes, since the setting is process-wide)."""

import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from divalign.allocator import keep_freed_memory
    assert keep_freed_memory()
from divalign.charlm import build_char_tokenizer, tiny_llama
tokenizer = build_char_tokenizer("0123456789+-=")
model = tiny_llama(tokenizer, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2,
                   max_positions=64, seed=0)
ids = torch.randint(3, 15, (16, 27), generator=torch.Generator().manual_seed(0))
def step():
    model(input_ids=ids, labels=ids).loss.backward()
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_training_steps_stop_page_faulting():
    default, tuned = faults_per_step("default"), faults_per_step("tuned")
    assert default >= 100, f"glibc's defaults were expected to fault on every step here ({default} per step)"
    assert tuned <= default / 5, (default, tuned)
