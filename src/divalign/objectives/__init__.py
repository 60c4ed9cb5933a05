"""Objectives: pure loss functions of tensors, registered by name (see :mod:`divalign.objectives.registry`).

Families and their signatures:

* ``online`` (GRPO, Dr. GRPO, DAPO, RLOO, PPO, DaGRPO, f-GRPO): ``loss(OnlineBatch, options) -> (loss, metrics)``;
* ``hybrid`` (f-HAL): ``loss(OnlineBatch | None, UnpairedBatch | None, options) -> (loss, metrics)``;
* ``pairs`` (DPO, IPO, f-DPO, f-PO): ``loss(PairBatch, options) -> (loss, metrics)``;
* ``unpaired`` (FDO and its presets KLDO/BCO/HDO, KTO): ``loss(UnpairedBatch, options, state) -> (loss,
  metrics)``, then ``options.next_state(state, metrics)`` once per batch;
* ``reward`` (Bradley–Terry): ``loss(chosen_scores, rejected_scores, options, num_pairs) -> (loss, metrics)``.
"""

from divalign.objectives import dagrpo, fgrpo, fhal, grpo, pairs, ppo, reward, rloo, unpaired  # noqa: F401
from divalign.objectives.batch import OnlineBatch, make_batch
from divalign.objectives.pairs import PairBatch
from divalign.objectives.registry import Objective, get, names, register
from divalign.objectives.unpaired import UnpairedBatch

__all__ = ["Objective", "OnlineBatch", "PairBatch", "UnpairedBatch", "get", "make_batch", "names", "register"]
