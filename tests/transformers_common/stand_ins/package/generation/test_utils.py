"""Stand-in for transformers' `tests/generation/test_utils.py`, which the source distribution does not ship.

`test_modeling_common` imports `GenerationTesterMixin` only to check that the tester of a model that can `generate`
inherits it (`test_generation_tester_mixin_inheritance`). The real mixin's generation tests (greedy, sampling, beam
search, assisted decoding, left padding, continuing from a cache, `logits_to_keep`...) are not run: MERV's
generation is covered by tests/test_generation.py and tests/test_video_prefix.py instead.
"""


class GenerationTesterMixin:
    """Marks the tester of a model that can `generate`; holds none of transformers' generation tests."""
