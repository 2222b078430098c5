"""Loading a model or processor by folder or Hub id for inference, failing fast and in one line: an id that is
neither a folder nor a valid Hub id, the Hub unreachable with nothing cached, or a weight file at fault (named)."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import MemoryHandler
from pathlib import Path

import torch

from ..utils.console import first_line
from .devices import DTYPES, auto_dtype, cpu_has_native
from .hub_reachability import HubUnreachableError, hub_download_kwargs
from .load_diagnostics import diagnose_model_folder


AUTO = "auto"
"""The dtype name that loads in `auto_dtype` of the device."""


class ModelLoadError(OSError):
    """A model or processor cannot be loaded; the message is one line naming the model and what is wrong."""


def check_model_id(model_id: str) -> dict[str, bool]:
    """Fail early on a name that is neither an existing folder nor a valid Hub model id, or a Hub id while the Hub
    is unreachable and the model is not cached. Returns the `from_pretrained` kwargs for where the model is."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(model_id).exists():
        return {}
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ModelLoadError(f"no model folder at {model_id} (and it is not a Hub model id)") from None
    try:
        return hub_download_kwargs(model_id)
    except HubUnreachableError as err:
        raise ModelLoadError(f"cannot load model {model_id!r}: {err}") from err


def load_processor(model_id: str):
    """The processor of `model_id` (`AutoProcessor`)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id, **check_model_id(model_id))
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one line naming the file
        raise _load_error(model_id, err) from err


def load_model(model_id: str, device: torch.device, dtype: str = AUTO, model_class: type | None = None):
    """The model of `model_id` (as `model_class`, default `AutoModel`: `MervVideoModel` reads only the video half)
    on `device` in eval mode, in `dtype` (a name of `DTYPES`, or `AUTO`). Warns on stderr when that dtype is slow on
    this CPU."""
    from transformers import AutoModel

    try:
        dtype = auto_dtype(device) if dtype == AUTO else DTYPES[dtype]
        with transformers_logs_shown_on_success():
            model = (model_class or AutoModel).from_pretrained(model_id, dtype=dtype, **check_model_id(model_id))
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one line naming the file
        raise _load_error(model_id, err) from err
    if device.type == "cpu" and not cpu_has_native(model.dtype):
        print(
            f"note: {model.dtype} on this CPU is slow: it has no native half-precision matmuls (AVX512-BF16/AMX); "
            "--dtype float32 is usually much faster here (benchmarks/README.md)",
            file=sys.stderr,
        )
    return model.to(device).eval()


@contextmanager
def transformers_logs_shown_on_success() -> Iterator[None]:
    """Hold back what transformers logs inside the block (a load report, say) and show it only if the block succeeds:
    a failed load is reported by one line, not by the loader's report followed by that line."""
    from transformers.utils import logging as transformers_logging

    library_logger = transformers_logging.get_logger("transformers")
    shown_by = list(library_logger.handlers), library_logger.propagate
    held = MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
    library_logger.handlers, library_logger.propagate = [held], False
    try:
        yield
    except BaseException:
        held.buffer.clear()
        raise
    finally:
        library_logger.handlers, library_logger.propagate = shown_by
        for record in held.buffer:
            library_logger.handle(record)


def _load_error(model_id: str, err: Exception) -> ModelLoadError:
    """A loading failure as one line: the weight file at fault and what is wrong with it when the folder shows it,
    else the loader's first line."""
    if isinstance(err, ModelLoadError):
        return err
    return ModelLoadError(f"cannot load model {model_id!r}: {diagnose_model_folder(model_id) or first_line(err)}")
