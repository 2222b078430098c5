"""Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py` (repository tooling, not in the source
distribution), which `test_processing_common` imports.

The real `url_to_local_path` returns the local copy of a Hub file that its script downloaded beforehand. Nothing is
downloaded here (CI has no Hub access), so URLs stay URLs; the tests that read them are skipped in our tester with
that reason.
"""


def url_to_local_path(url: str) -> str:
    return url
