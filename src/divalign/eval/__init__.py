"""Evaluation: task accuracy (greedy pass@1, unbiased pass@k), reward, length."""
