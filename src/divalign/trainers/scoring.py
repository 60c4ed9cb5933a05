"""Log-probabilities of the policy and the reference that the trainers read, built on
:func:`divalign.models.completion_forward`: per token for sampled batches (online RL), summed per response for
preference data."""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.data.encoding import Encoded
from divalign.data.tokens import SequenceBatch
from divalign.models import completion_forward, completion_logprobs


@torch.no_grad()
def token_logprobs(model, sequences: SequenceBatch, micro_batches: list[list[int]], group_size: int,
                   temperature: float, value_head=None) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probabilities (B, T) of every row, micro-batch by micro-batch, without gradient; and the
    value head's predictions (B, T) on the model's last hidden states when a head is given."""
    rows = sequences.input_ids.shape[0]
    width = sequences.completion_mask.shape[1]
    device = sequences.input_ids.device
    logps = torch.zeros((rows, width), device=device)
    values = torch.zeros((rows, width), device=device) if value_head is not None else None
    for micro in micro_batches:
        index = torch.tensor(micro)
        out = completion_forward(model, sequences.select(index), temperature, group_size=group_size,
                                 with_hidden=value_head is not None)
        logps[index] = out.logprobs
        if value_head is not None:
            values[index] = value_head(out.hidden.float()).squeeze(-1)
    return logps, values


def sequence_logps(model, data: Encoded, rows: list[int], pad_id: int, device="cpu") -> tuple[Tensor, Tensor]:
    """(Σ_t log π(y_t | x, y_<t), response lengths) for the given rows (whole groups)."""
    return batch_logps(model, data.batch(rows, pad_id).to(device), data.group)


def batch_logps(model, batch: SequenceBatch, group: int) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` of an assembled batch (one batch serves the policy and the reference)."""
    logp, _ = completion_logprobs(model, batch, group_size=group)
    return logp.sum(-1), batch.completion_mask.sum(-1).float()


def policy_and_reference_logps(policy, reference, batch: SequenceBatch, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """(policy's sequence log-probabilities, response lengths, reference's sequence log-probabilities without
    gradient), in one pass where the models allow it (see :func:`divalign.models.completion_forward`)."""
    out = completion_forward(policy, batch, group_size=group, reference=reference)
    return out.logprobs.sum(-1), batch.completion_mask.sum(-1).float(), out.reference_logprobs.sum(-1)


@torch.no_grad()
def reference_logps(model, data: Encoded, pad_id: int, chunk: int = 64, device="cpu") -> Tensor:
    """Sequence log-probabilities of every response under ``model``, computed once (the cached reference)."""
    was_training = model.training
    model.eval()
    out = []
    rows = list(range(len(data.responses)))
    step = max(data.group, chunk - chunk % data.group)
    for start in range(0, len(rows), step):
        out.append(sequence_logps(model, data, rows[start : start + step], pad_id, device)[0])
    model.train(was_training)
    return torch.cat(out)
