"""Helpers shared by the library layers and the applications."""
