"""Where the shared real data lives: one setting, ``DIVALIGN_DATA``, defaulting to ``../shared/data``.

Any data path given to divalign may start with ``data:`` to mean "inside that folder", e.g.
``data:gsm8k/test.jsonl``, so configs do not depend on where the data sits.
"""

from __future__ import annotations

import os
from pathlib import Path

from divalign.errors import UserError

ENV_VAR = "DIVALIGN_DATA"


def data_dir() -> Path | None:
    """The data folder named by ``$DIVALIGN_DATA``, else ``../shared/data`` seen from the working directory or
    from this checkout; ``None`` when neither exists."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    repo = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def resolve(spec: str) -> str:
    """``data:REL`` → the data folder's REL; anything else unchanged."""
    if not spec.startswith("data:"):
        return spec
    root = data_dir()
    if root is None:
        raise UserError(f"'{spec}' refers to the data folder, which was not found: set {ENV_VAR}")
    return str(root / spec[len("data:") :])
