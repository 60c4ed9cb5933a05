import os

import pytest
import torch

from divalign.checkpoint import atomic_directory, latest_checkpoint, load_state, save_checkpoint
from divalign.models import load_causal_lm


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash while writing")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_existing_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    save_checkpoint(tmp_path, 5, model, tok, {"step": 5})
    # What a crash in the middle of writing step 10 leaves behind: a hidden temporary folder.
    partial = tmp_path / "checkpoints" / f".tmp-step-00000010-{os.getpid() + 1}"
    (partial / "model").mkdir(parents=True)
    (partial / "model" / "model.safetensors").write_bytes(b"truncated")
    found = latest_checkpoint(tmp_path)
    assert found.name == "step-00000005" and load_state(found)["step"] == 5
    assert not partial.exists()  # leftovers are cleaned on resume
    # A complete checkpoint folder whose "latest" pointer was never updated is still found.
    save_checkpoint(tmp_path, 10, model, tok, {"step": 10})
    (tmp_path / "checkpoints" / "latest").write_text("step-00000005")
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step-00000010"


def test_old_checkpoints_are_pruned_and_weights_round_trip(tmp_path, tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        save_checkpoint(tmp_path, step, model, tok, {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002", "step-00000003"]
    again, _ = load_causal_lm(tmp_path / "checkpoints" / "step-00000003" / "model")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


class _Payload:
    """What an attacker would add to a trainer state: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_runs_no_code_from_a_state_file_and_follows_no_pointer_outside(tmp_path, tiny_model_dir):
    from divalign.errors import UserError

    model, tok = load_causal_lm(tiny_model_dir)
    genuine = save_checkpoint(tmp_path, 4, model, tok, {"step": 4, "optimizer": {"state": {}, "param_groups": []},
                                                         "torch_rng": torch.get_rng_state()})
    assert load_state(genuine)["step"] == 4  # a state divalign wrote loads with the restricted unpickler
    marker = tmp_path / "pwned"
    state = torch.load(genuine / "trainer_state.pt", weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, genuine / "trainer_state.pt")
    with pytest.raises(UserError, match="trainer_state.pt: refused: not a trainer state divalign wrote") as refused:
        load_state(genuine)
    assert "GLOBAL posix.system" in str(refused.value)  # the object refused is named, not torch's advice
    assert not marker.exists()

    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere")
    with pytest.raises(UserError, match="latest: names '../../elsewhere', which is not a checkpoint folder"):
        latest_checkpoint(tmp_path)


def test_resume_removes_what_a_killed_final_save_left(tmp_path):
    leftover = tmp_path / f".tmp-model-{os.getpid() + 7}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "metrics.jsonl").write_text("")
    assert latest_checkpoint(tmp_path) is None
    assert not leftover.exists() and (tmp_path / "metrics.jsonl").exists()
