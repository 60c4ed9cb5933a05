"""divalign: align causal language models with divergence-based and group-relative objectives."""

__version__ = "0.1.0"
