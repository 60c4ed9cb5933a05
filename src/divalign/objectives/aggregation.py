"""The one place where per-token or per-sequence loss terms become a scalar (docs/algorithms.md#aggregation).

All modes divide by counts of the *whole* accumulated batch (carried by :class:`OnlineBatch`), so summing the
micro-batch losses gives exactly the whole-batch loss whatever the micro-batch split.
"""

from __future__ import annotations

from torch import Tensor

from divalign.groups import group_sum
from divalign.objectives.batch import OnlineBatch

#: Token-level aggregation modes and where they come from.
MODES = {
    "seq_mean_token_mean": "GRPO (arXiv 2402.03300): mean over responses of each response's token mean",
    "token_mean": "DAPO (arXiv 2503.14476): sum over all tokens / number of tokens in the batch",
    "seq_mean_token_sum_norm": "Dr. GRPO (arXiv 2503.20783): token sum / (responses × completion budget)",
    "group_token_mean": "f-GRPO Form B: per prompt, token sum / that prompt's tokens; mean over prompts",
    "token_sum": "sum over all tokens of the batch, no normaliser (verl's token-sum)",
    "seq_mean_token_sum": "mean over responses of each response's token sum (verl's seq-mean-token-sum)",
}


def check_mode(mode: str, where: str = "aggregation") -> None:
    if mode not in MODES:
        raise ValueError(f"{where}: unknown aggregation '{mode}' (expected one of: {', '.join(MODES)})")


#: How responses without a real token (all masked, e.g. truncated under DAPO's mask) count in the sequence means.
EMPTY_RESPONSES = {
    "count": "they count in N (TRL)",
    "skip": "N counts only responses with a real token (verl)",
}


def aggregate(per_token: Tensor, batch: OnlineBatch, mode: str, empty_responses: str = "count") -> Tensor:
    """Reduce a (B, T) tensor of per-token terms to the batch loss share of this micro-batch."""
    check_mode(mode)
    token_sums = batch.sequence_sum(per_token)
    responses = batch.num_sequences
    if empty_responses == "skip" and batch.num_nonempty is not None:
        responses = max(batch.num_nonempty, 1)
    if mode == "seq_mean_token_mean":
        return (token_sums / batch.lengths.clamp(min=1)).sum() / responses
    if mode == "token_mean":
        return token_sums.sum() / max(batch.num_tokens, 1)
    if mode == "seq_mean_token_sum_norm":
        return token_sums.sum() / (responses * batch.max_length)
    if mode == "token_sum":
        return token_sums.sum()
    if mode == "seq_mean_token_sum":
        return token_sums.sum() / responses
    group_tokens = group_sum(batch.lengths, batch.group_ids, batch.local_groups)[batch.group_ids]
    return (token_sums / group_tokens.clamp(min=1)).sum() / batch.num_groups


def group_average(per_sequence: Tensor, batch: OnlineBatch) -> Tensor:
    """Reduce (B,) per-response terms: E_x[(1/G) Σ_i term_i], i.e. mean within each prompt, then over prompts."""
    ones = per_sequence.new_ones(per_sequence.shape)
    sizes = group_sum(ones, batch.group_ids, batch.local_groups)[batch.group_ids]
    return (per_sequence / sizes).sum() / batch.num_groups


def token_share(per_token: Tensor, batch: OnlineBatch) -> float:
    """This micro-batch's share of a whole-batch per-token mean (for additive metrics)."""
    return float(batch.sequence_sum(per_token).sum().item()) / max(batch.num_tokens, 1)


def sequence_share(per_sequence: Tensor, batch: OnlineBatch) -> float:
    """This micro-batch's share of a whole-batch per-response mean (for additive metrics)."""
    return float(per_sequence.sum().item()) / max(batch.num_sequences, 1)
