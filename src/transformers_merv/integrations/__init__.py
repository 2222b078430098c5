"""Integrations with evaluation and serving frameworks; each module is imported only by the framework it serves."""
