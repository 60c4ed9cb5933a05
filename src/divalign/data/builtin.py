"""Built-in preference datasets (read from the shared data folder) and the training / held-out split of
preference data that every command taking it uses."""

from __future__ import annotations

import random
from collections.abc import Callable

from divalign.data.preferences import Pair, Unpaired, advbench_compliance_refusal, as_unpaired, read_hh_rlhf
from divalign.errors import UserError
from divalign.paths import data_dir

#: Names usable wherever a preference data file is expected.
BUILTIN = ("hh-rlhf:harmless-base", "hh-rlhf:helpful-base", "advbench")


def builtin_data(name: str) -> tuple[list[Pair], list[Unpaired] | None]:
    """The pairs of a built-in dataset, and its own unpaired form when it has one (AdvBench's refusal and
    compliance responses); None when its unpaired form is its pairs split (:func:`as_unpaired`)."""
    root = data_dir()
    if root is None:
        raise UserError(f"'{name}' needs the shared data folder: set DIVALIGN_DATA")
    if name == "advbench":
        unpaired, pairs = advbench_compliance_refusal(root / "advbench" / "harmful_behaviors.csv")
        return pairs, unpaired
    return read_hh_rlhf(root / "hh_rlhf" / name.split(":", 1)[1] / "test.jsonl.gz"), None


def builtin_unpaired(name: str) -> list[Unpaired]:
    """A built-in dataset as desirable / undesirable responses."""
    pairs, unpaired = builtin_data(name)
    return unpaired or as_unpaired(pairs)


def split_by_prompt(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the distinct prompts (all their items go to the same side)."""
    prompts = sorted({item.prompt for item in items})
    random.Random(f"eval-split-{seed}").shuffle(prompts)
    held = set(prompts[: round(fraction * len(prompts))])
    return [i for i in items if i.prompt not in held], [i for i in items if i.prompt in held]


def train_and_held_out(read: Callable[[str], list], data: str, eval_data: str, eval_fraction: float, seed: int,
                       what: str = "items") -> tuple[list, list]:
    """The training items and the held-out ones: ``read(eval_data)`` when given, else a split of ``read(data)``
    by prompt; an empty training side is the user's error."""
    items = read(data)
    if eval_data:
        train, held = items, read(eval_data)
    else:
        train, held = split_by_prompt(items, eval_fraction, seed)
    if not train:
        raise UserError(f"{data}: no training {what} left after holding out the evaluation split")
    return train, held
