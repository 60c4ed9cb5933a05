"""The off-policy part of an online objective that has one (f-HAL): a stream of preference data, read as
desirable / undesirable responses, with the reference's log-probabilities computed once."""

from __future__ import annotations

import torch

from divalign.data.encoding import encode_dataset
from divalign.data.order import EpochOrder
from divalign.data.preferences import Unpaired
from divalign.objectives import Objective, UnpairedBatch
from divalign.trainers.scoring import reference_logps, sequence_logps


class PreferencePart:
    """Preference responses in a seeded order, ``batch_size`` per optimizer step; :meth:`backward` runs the
    objective's ``preference_loss`` on the next batch."""

    def __init__(self, items: list[Unpaired], tokenizer, reference, max_length: int, batch_size: int, seed: int):
        self.pad_id = tokenizer.pad_token_id
        self.data = encode_dataset(tokenizer, items, max_length, paired=False)
        self.labels = torch.tensor([u.desirable for u in items])
        self.ref = reference_logps(reference, self.data, self.pad_id)
        self.order = EpochOrder(len(items), f"fhal-{seed}")
        self.size = batch_size

    def backward(self, policy, objective: Objective, options, update: int) -> tuple[float, dict]:
        """The loss of the batch of optimizer step ``update`` (counted over the whole run), backward; its value and
        metrics."""
        units = self.order.take(update * self.size, self.size)
        logps, _ = sequence_logps(policy, self.data, units, self.pad_id)
        labels = self.labels[units]
        batch = UnpairedBatch(logps, self.ref[units], labels, int(labels.sum()), int((~labels).sum()))
        loss, metrics = objective.preference_loss(batch, options)
        loss.backward()
        return float(loss.item()), metrics
