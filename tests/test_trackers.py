"""Experiment trackers: --report-to tensorboard writes event files whose scalars, read back by TensorBoard's own
reader, are the metrics.jsonl numbers; an unknown tracker or a missing package is one line before any model loads."""

import importlib.util
import json

import pytest

from divalign.cli import main


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(8)))
    return path


def test_tensorboard_gets_every_metric_of_every_step(tmp_path, tiny_model_dir, sft_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(sft_file), "--steps", "3", "--batch-size", "4",
                 "--report-to", "tensorboard", "--output-dir", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "grad_norm", "lr"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert "config/text_summary" in events.Tags()["tensors"]
    assert b"learning_rate" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0]


def test_unknown_or_missing_trackers_are_one_line(capsys, tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(sft_file), "--report-to", "neptune",
                 "--output-dir", str(out)]) == 2
    assert "report_to: unknown tracker 'neptune' (expected none or any of tensorboard, wandb, trackio, mlflow)" \
        in capsys.readouterr().err
    missing = next((n for n in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(n) is None), None)
    if missing:
        assert main(["sft", "--model", tiny_model_dir, "--data", str(sft_file), "--report-to", missing,
                     "--output-dir", str(out)]) == 2
        assert f"report_to: {missing} needs the {missing} package" in capsys.readouterr().err
    assert not out.exists()
