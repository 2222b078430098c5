"""What `merv` reports as one line."""

from ..demo.sources import DemoError
from ..evaluation import EvaluationRunError
from ..inference.feature_store import FeatureStoreError
from ..utils.console import EXPECTED_ERRORS


class CliError(Exception):
    """A problem with the user's input, reported as one line."""


REPORTED_ERRORS = (*EXPECTED_ERRORS, CliError, DemoError, EvaluationRunError, FeatureStoreError)
"""Errors `merv` reports by their message alone (anything else adds its type and a pointer to `--debug`)."""
