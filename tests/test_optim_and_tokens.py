import pytest
import torch

from divalign.data.tokens import Ragged, pad
from divalign.trainers.optim import clip_factor


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_clip_factor_matches_torch(scale):
    """Same norm and, with the factor applied, the same clipped gradients as torch.nn.utils.clip_grad_norm_,
    below and above the threshold (no factor below it)."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.zeros(shape, requires_grad=True) for shape in [(7, 5), (3,), (4, 4)]]
    theirs = [torch.zeros_like(p, requires_grad=True) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen) * scale
        b.grad = a.grad.clone()
    norm, factor = clip_factor(ours, 1.0)
    assert (factor is None) == (scale < 1.0)
    if factor is not None:
        torch._foreach_mul_([p.grad for p in ours], factor)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    assert (norm > 1.0) == (scale > 1.0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]))
    assert float(total) == pytest.approx(min(norm, 1.0), rel=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_optimizer_step_equals_clipping_then_adamw(scale):
    """Optimization.step folds clipping into the fused AdamW kernel: the parameters after one step must equal
    torch's clip_grad_norm_ followed by AdamW."""
    from types import SimpleNamespace

    from divalign.trainers.optim import Optimization

    gen = torch.Generator().manual_seed(0)
    ours = torch.nn.Linear(6, 5)
    theirs = torch.nn.Linear(6, 5)
    theirs.load_state_dict(ours.state_dict())
    config = SimpleNamespace(learning_rate=1e-2, weight_decay=0.01, lr_schedule="constant", warmup_steps=0,
                             max_grad_norm=1.0)
    optimization = Optimization(ours, config, total_steps=10)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.grad = torch.randn(a.shape, generator=gen) * scale
            b.grad = a.grad.clone()
        row = optimization.step(loss=0.0)
        expected_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        reference.step()
        reference.zero_grad()
        assert row["grad_norm"] == pytest.approx(float(expected_norm), rel=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_pad_left_and_right():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[5, 6, 7], [8], []], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_ragged_rows_pad_like_pad():
    import random

    rng = random.Random(0)
    rows = [[rng.randrange(50) for _ in range(rng.randrange(1, 30))] for _ in range(200)]
    ragged = Ragged(rows)
    for left in (True, False):
        for _ in range(20):
            index = [rng.randrange(len(rows)) for _ in range(rng.randrange(1, 17))]
            ids, mask = ragged.padded(torch.tensor(index), 99, left=left)
            expected_ids, expected_mask = pad([rows[i] for i in index], 99, left=left)
            assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
