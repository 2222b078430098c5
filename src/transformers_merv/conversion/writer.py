"""Writing a converted model: safetensors shards streamed tensor by tensor (bounded memory) with strict key
accounting, verification against the sources, the model card, and the Hub upload."""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int

from ..modeling_merv import MAX_SHARD_SIZE
from .errors import ConversionError


SHARD_METADATA = {"format": "pt"}


def parse_size(size: int | str) -> int:
    """Bytes in `size` (an int, or a string such as "5GB", "500MB", "1GiB"), read by the parser `save_pretrained`
    uses for its `max_shard_size` (huggingface_hub's own is private), so both accept the same sizes."""
    try:
        return convert_file_size_to_int(size)
    except ValueError as err:
        raise ConversionError(f"cannot read size {size!r}; use a number of bytes or e.g. '5GB'") from err


@dataclass
class ShardWriter:
    """Collects `(name, tensor)` pairs into safetensors shards of at most `max_shard_size` bytes, checking every name
    and shape against `expected` (the model's state dict on the meta device) as it goes."""

    output_dir: Path
    expected: dict[str, torch.Tensor]
    dtype: torch.dtype | None = None
    max_shard_size: int = parse_size(MAX_SHARD_SIZE)
    weight_map: dict[str, str] = field(default_factory=dict)
    total_size: int = 0
    _pending: dict[str, torch.Tensor] = field(default_factory=dict)
    _pending_size: int = 0
    _shard_files: list[Path] = field(default_factory=list)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.expected:
            raise ConversionError(f"source tensor maps to {name!r}, which the model does not have")
        if name in self.weight_map or name in self._pending:
            raise ConversionError(f"two source tensors map to {name!r}")
        if tuple(tensor.shape) != tuple(self.expected[name].shape):
            raise ConversionError(
                f"{name}: source shape {tuple(tensor.shape)} != model shape {tuple(self.expected[name].shape)}"
            )
        tensor = self.cast(tensor)
        if self._pending and self._pending_size + tensor.nbytes > self.max_shard_size:
            self._flush()
        self._pending[name] = tensor
        self._pending_size += tensor.nbytes

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor as stored: in `dtype` (floating tensors only), owning its memory (views of fused tensors are
        copied, as safetensors refuses shared storage)."""
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            return tensor.to(self.dtype)
        if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
            return tensor.contiguous().clone()
        return tensor

    def _flush(self) -> None:
        path = self.output_dir / f"shard-{len(self._shard_files):05d}.safetensors.partial"
        save_file(self._pending, path, metadata=SHARD_METADATA)
        self._shard_files.append(path)
        self.weight_map.update(dict.fromkeys(self._pending, path.name))
        self.total_size += self._pending_size
        self._pending, self._pending_size = {}, 0

    def finish(self) -> list[Path]:
        """Write the last shard and the index; fail listing the model tensors no source filled."""
        missing = sorted(set(self.expected) - set(self.weight_map) - set(self._pending))
        if missing:
            raise ConversionError(f"no source tensor for model weights {missing}")
        if self._pending:
            self._flush()
        count = len(self._shard_files)
        final_names = {
            path.name: SAFE_WEIGHTS_NAME if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            for index, path in enumerate(self._shard_files)
        }
        for path in self._shard_files:
            path.rename(self.output_dir / final_names[path.name])
        if count > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: final_names[file] for name, file in sorted(self.weight_map.items())},
            }
            (self.output_dir / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
        return [self.output_dir / name for name in final_names.values()]


def write_weights(
    tensors: Iterator[tuple[str, torch.Tensor]],
    expected: dict[str, torch.Tensor],
    output_dir: Path,
    dtype: torch.dtype | None,
    max_shard_size: int | str,
    progress: bool = True,
) -> list[Path]:
    """Stream `tensors` into shards under `output_dir`; only one shard is held in memory at a time."""
    writer = ShardWriter(output_dir, expected, dtype, parse_size(max_shard_size))
    for name, tensor in tqdm(
        tensors, total=len(expected), desc="Converting tensors", unit="tensor", disable=not progress
    ):
        writer.add(name, tensor)
    return writer.finish()


def verify_tensors(
    model: torch.nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype | None
) -> int:
    """Check that every tensor of the reloaded `model` equals its source tensor (after the dtype cast); returns the
    number of tensors checked."""
    state_dict = model.state_dict()
    caster = ShardWriter(Path("."), state_dict, dtype)
    differing, checked = [], 0
    for name, tensor in tensors:
        checked += 1
        if not torch.equal(state_dict[name], caster.cast(tensor)):
            differing.append(name)
    if differing:
        raise ConversionError(f"--verify: reloaded tensors differ from their sources: {differing}")
    return checked


MODEL_CARD = """---
library_name: transformers
pipeline_tag: video-text-to-text
license: {license}
base_model: {base_model}
tags:
- merv
- video-llm
- multi-encoder
---

# {model_id} (MERV, converted to transformers)

This is the authors' **{model_id}** checkpoint of MERV (*Unifying Specialized Visual Encoders for Video Language
Models*, ICML 2025; github.com/princetonvisualai/merv), converted with the `transformers-merv` converter to a
transformers model. Encoders: {encoders}; alignment
`{alignment}`; fusion `{fusion}`; {num_video_tokens} visual tokens per video; prompt format `{prompt_format}`.

## Usage

```python
import transformers_merv  # or pass trust_remote_code=True to the Auto classes
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained("{repo}")
conversation = [{{"role": "user", "content": [{{"type": "video", "path": "clip.mp4"}},
                                             {{"type": "text", "text": "What is happening in this video?"}}]}}]
inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt").to(model.device)
answer = model.generate(**inputs, max_new_tokens=64)
print(processor.batch_decode(answer[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

## Conversion

```
{command}
```

Source: run `{run_id}` (model id `{model_id}`), checkpoint `checkpoints/latest-checkpoint.pt` (projectors,
fine-tuned LLM, fusion), plus the public encoder weights. Weights stored as {dtype}.

Verification: {verification}

The converter is tested for numerical parity with the authors' code on tiny random-weight models of every
projector and fusion variant: encoder features, projector outputs, fusion weights, fused tokens and logits within
1.1e-5, identical greedy ids, loss within 2e-7 relative (fp32, CPU).

## License

The conversion code is MIT; the MERV reference implementation is MIT. These weights inherit the licenses of their
sources: {license_notes}
"""

LLAMA2_LICENSE_NOTES = (
    "the LLM is fine-tuned from Llama 2 (Llama 2 Community License, Meta); LanguageBind (MIT), DINOv2 "
    "(Apache-2.0), ViViT (Apache-2.0) and SigLIP (Apache-2.0) keep their own terms."
)


def write_model_card(output_dir: Path, **fields: str) -> None:
    card = MODEL_CARD.format(license="llama2", license_notes=LLAMA2_LICENSE_NOTES, **fields)
    (output_dir / "README.md").write_text(card)


def push_folder(output_dir: Path, repo_id: str, private: bool) -> str:
    """Upload `output_dir` to the Hub model repository `repo_id` (created if needed); returns the commit url."""
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(folder_path=output_dir, repo_id=repo_id, commit_message="Convert MERV checkpoint")
    return commit.commit_url
