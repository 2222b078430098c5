"""Stand-in for transformers' `tests/exporters/test_export.py`, which the source distribution does not ship.

`ModelTesterMixin` derives from `ExportTesterMixin`, whose tests export every model class with `torch.export`, ONNX
and ExecuTorch. They are all `@slow` (skipped unless `RUN_SLOW=1`), so this empty base leaves untested only what a
slow run would test: exporting MERV.
"""


class ExportTesterMixin:
    """The base of `ModelTesterMixin`; holds none of transformers' export tests."""
