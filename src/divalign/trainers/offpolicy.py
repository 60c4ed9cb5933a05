"""The off-policy part of an online objective that has one (f-HAL): a stream of preference data, read as
desirable / undesirable responses, with the reference's log-probabilities computed once."""

from __future__ import annotations

import torch

from divalign.data.encoding import encode_dataset
from divalign.data.order import EpochOrder
from divalign.data.preferences import Unpaired
from divalign.objectives import Objective, UnpairedBatch
from divalign.parallel import World
from divalign.trainers.scoring import reference_logps, sequence_logps


class PreferencePart:
    """Preference responses in a seeded order, ``batch_size`` per optimizer step; :meth:`backward` runs the
    objective's ``preference_loss`` on the next batch."""

    def __init__(self, items: list[Unpaired], tokenizer, reference, max_length: int, batch_size: int, seed: int,
                 device="cpu"):
        self.pad_id, self.device = tokenizer.pad_token_id, device
        self.data = encode_dataset(tokenizer, items, max_length, paired=False)
        self.labels = torch.tensor([u.desirable for u in items], device=device)
        self.ref = reference_logps(reference, self.data, self.pad_id, device=device)
        self.order = EpochOrder(len(items), f"fhal-{seed}")
        self.size = batch_size

    def passes(self, policy, objective: Objective, options, update: int, world: World) -> list:
        """The pass of this process's share of the batch of optimizer step ``update`` (counted over the whole
        run): the objective's ``preference_loss``, its sides' counts the whole batch's; its loss comes back as the
        metric ``preference_loss``. No pass when the share is empty."""
        units = self.order.take(update * self.size, self.size)
        labels = self.labels[units]
        counts = int(labels.sum()), int((~labels).sum())
        mine = [units[i] for i in world.share(len(units))]
        if not mine:
            return []

        def run():
            logps, _ = sequence_logps(policy, self.data, mine, self.pad_id, self.device)
            batch = UnpairedBatch(logps, self.ref[mine], self.labels[mine], *counts)
            loss, metrics = objective.preference_loss(batch, options)
            return loss, {"preference_loss": float(loss.item()), **metrics}
        return [run]
