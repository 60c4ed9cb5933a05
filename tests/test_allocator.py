"""The allocator setting removes the page faults of memory that is freed and allocated again (measured in fresh
processes, since the setting is process-wide)."""

import subprocess
import sys

import pytest

CHURN = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from divalign.allocator import keep_freed_memory
    assert keep_freed_memory()
def churn():  # activations of a step: several MiB allocated, then freed together
    for _ in range(3):
        blocks = [torch.ones(1 << 20) for _ in range(4)]
        del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    churn()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_without_page_faults():
    default, tuned = faults_per_round("default"), faults_per_round("tuned")
    assert default >= 10, f"glibc defaults fault on reused memory here ({default} per round)"
    assert tuned <= default / 10, (default, tuned)
