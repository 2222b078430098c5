"""Why a model folder does not load, in one line naming the file: a truncated or mismatched safetensors file, or a
PyTorch checkpoint that needs pickled code (refused: it is loaded with `weights_only=True`).

`diagnose_model_folder` runs only after loading failed, so a model that loads pays nothing for it."""

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModel


PICKLED_WEIGHTS_SUFFIXES = (".bin", ".pt", ".pth")


def safetensors_problem(path: Path) -> str | None:
    """What safetensors' own reader finds wrong with a file (truncated, corrupt header), or None when it is sound."""
    try:
        with safe_open(path, "pt"):
            return None
    except SafetensorError as err:
        return f"{path} is not a readable safetensors file: {err}"


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header of a sound safetensors file."""
    with safe_open(path, "pt") as handle:
        return {name: handle.get_slice(name).get_shape() for name in handle.keys()}


def shape_mismatch(folder: Path, weight_files: list[Path]) -> str | None:
    """The first tensor whose shape differs from what `config.json` builds, naming its file, or None."""
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for path in weight_files:
        for name, shape in safetensors_shapes(path).items():
            if name in expected and expected[name] != shape:
                return (
                    f"{path} does not match {folder / 'config.json'}: {name} has shape {shape}, "
                    f"the config builds {expected[name]}"
                )
    return None


def pickled_weights_problem(path: Path) -> str | None:
    """Why a PyTorch checkpoint does not load with `weights_only=True` (it needs pickled code), or None."""
    try:
        torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        needed = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = f"it references {needed.group(1)}" if needed else _first_line(str(err))
        return f"{path} needs pickled code to load, which is refused (weights_only=True): {reason}"
    except RuntimeError as err:
        return f"{path} cannot be read as a PyTorch checkpoint: {_first_line(str(err))}"
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def diagnose_model_folder(folder: str | Path) -> str | None:
    """One line naming the weight file of `folder` at fault and what is wrong with it, or None when none is found."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    safetensors = sorted(folder.glob("*.safetensors"))
    for path in safetensors:
        problem = safetensors_problem(path)
        if problem:
            return problem
    for path in sorted(p for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS_SUFFIXES):
        problem = pickled_weights_problem(path)
        if problem:
            return problem
    if safetensors and (folder / "config.json").is_file():
        try:
            return shape_mismatch(folder, safetensors)
        except (OSError, ValueError):  # the config itself is at fault: the loader's message says so
            return None
    return None
