"""Integrations with other engines, each imported only by that engine's plugin entry point."""
