"""Seeded epoch orders: item k of a run is a pure function of (key, k), so resume needs no iterator state."""

from __future__ import annotations

import random


class EpochOrder:
    """Every epoch visits all ``n`` items once, in a permutation seeded by (``key``, epoch)."""

    def __init__(self, n: int, key: str):
        self.n, self.key = n, key
        self._cached: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            order = list(range(self.n))
            random.Random(f"{self.key}-{epoch}").shuffle(order)
            self._cached = (epoch, order)
        return self._cached[1]

    def take(self, start: int, count: int) -> list[int]:
        """Items ``start`` … ``start + count − 1`` of the endless sequence of epochs."""
        return [self.permutation(k // self.n)[k % self.n] for k in range(start, start + count)]
