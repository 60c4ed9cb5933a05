import os

import pytest
import torch

from divalign.charlm import write_tiny_model
from divalign.paths import data_dir

# Tests run on CPU with a fixed, small thread count so timings and float reductions are stable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised 2-layer Llama with the arithmetic character tokenizer, saved as a HF folder."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    write_tiny_model(
        folder, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, max_positions=64
    )
    return str(folder)


@pytest.fixture(scope="session")
def shared_data():
    root = data_dir()
    if root is None or not root.is_dir():
        pytest.skip("shared data folder not found (set DIVALIGN_DATA to the folder holding gsm8k/, hh_rlhf/, ...)")
    return root
