"""Fitting a tokenised prompt and response into a length budget."""

from __future__ import annotations


def fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the response from the right and the prompt from the left until both fit ``max_length`` tokens.

    The response keeps at least half the budget (or all of itself), the prompt keeps its *last* tokens — the
    part closest to the response.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    response = response[: max(max_length - len(prompt), max_length // 2)]
    return prompt[len(prompt) - (max_length - len(response)):], response
