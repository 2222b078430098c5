"""Synthetic video QA data for the small default MERV model, and its tokenizer."""
