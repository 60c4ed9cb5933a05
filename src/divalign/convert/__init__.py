"""Converters from other checkpoint formats to Hugging Face model folders."""
