"""transformers' common-test modules (copied from its source distribution at test time) with our stand-ins for the
modules the source distribution does not ship; see `tests/transformers_common/conftest.py`."""
