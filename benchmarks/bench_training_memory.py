"""Memory of one finetune-stage training step: with and without gradient checkpointing of the LLM layers, and with
the video encoders frozen (as in every MERV stage) or, for comparison, trainable.

Model: a small MERV (4 encoders of width 128 and 4 layers at their real frame counts 16/16/32/16, 256 visual
tokens; a Llama of 8 layers, width 512), random weights, a batch of 2 videos with 128 text tokens each, fp32 on CPU.

Two measures of the forward + backward pass (the optimizer step is left out: its state is the same in every row
with frozen encoders):
- peak tensor memory: the most bytes held by live CPU tensors at any point of the pass, above what was held before
  it (parameters, inputs), from the allocator events recorded by `torch.profiler` (`export_memory_timeline`); it
  counts every tensor the step allocates (activations, gradients, temporaries), not allocator slack;
- saved for backward: bytes of the tensors autograd keeps between forward and backward (each storage once,
  parameters excluded), from `torch.autograd.graph.saved_tensors_hooks`, in total and inside the encoders. Under
  checkpointing, the checkpointed layers keep only their inputs, which this hook does not see; the peak counts them.

    python benchmarks/bench_training_memory.py
"""

import argparse
import json
import math
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from transformers_merv import MervConfig, MervForConditionalGeneration
from transformers_merv.compat import enable_activation_checkpointing
from transformers_merv.testing_utils import tiny_config
from transformers_merv.training import set_trainable


BATCH_SIZE = 2
TEXT_TOKENS = 128
MEBIBYTE = 2**20
VIDEO_TOKEN_ID = 4001


def bench_config() -> MervConfig:
    """`tiny_config` widened until activations dominate memory."""
    encoder = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)  # MLPs 4x wide, as DINOv2's ratio
    return tiny_config(
        text_config=dict(
            vocab_size=4096,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            pad_token_id=4000,
        ),
        languagebind_config=dict(encoder, intermediate_size=512, image_size=64, patch_size=8),
        dinov2_config=dict(encoder, image_size=112),
        vivit_config=dict(encoder, intermediate_size=512, image_size=64, tubelet_size=[2, 8, 8]),
        siglip_config=dict(encoder, intermediate_size=512, image_size=128),
        alignment_tokens_per_frame=16,
        fusion_hidden_size=128,
        video_token_id=VIDEO_TOKEN_ID,
    )


def make_batch(config: MervConfig) -> dict:
    generator = torch.Generator().manual_seed(0)
    width = sum(math.prod(shape) for shape in config.video_pixel_shapes().values())
    pixels = torch.randn(BATCH_SIZE, width, generator=generator)
    text = torch.randint(3, 4000, (BATCH_SIZE, TEXT_TOKENS), generator=generator)
    placeholders = torch.full((BATCH_SIZE, config.num_video_tokens), VIDEO_TOKEN_ID)
    input_ids = torch.cat([text[:, :1], placeholders, text[:, 1:]], dim=1)
    return {"input_ids": input_ids, "pixel_values_videos": pixels, "labels": input_ids.clone(), "use_cache": False}


class SavedForBackward:
    """Counts the bytes autograd saves for backward while active (each storage once, parameters excluded), and which
    of them were saved while a submodule of `modules` was running."""

    def __init__(self, model: nn.Module, modules: list[nn.Module]):
        self.parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
        self.sizes: dict[int, int] = {}
        self.inside: set[int] = set()
        self.depth = 0
        for module in (submodule for root in modules for submodule in root.modules()):
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _enter(self, *args) -> None:
        self.depth += 1

    def _leave(self, *args) -> None:
        self.depth -= 1

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.sizes[storage.data_ptr()] = storage.nbytes()
            if self.depth:
                self.inside.add(storage.data_ptr())
        return tensor

    def total(self) -> int:
        return sum(self.sizes.values())

    def in_modules(self) -> int:
        return sum(self.sizes[pointer] for pointer in self.inside)


def peak_above_start(timeline_file: Path) -> int:
    """Highest total of live tensor bytes minus the total at the start, from an exported memory timeline."""
    _, sizes = json.loads(timeline_file.read_text())
    totals = [sum(row) for row in sizes]
    return max(totals) - totals[0]


@dataclass
class Measurement:
    peak: int
    saved: int
    saved_in_encoders: int


def measure(checkpointing: bool, encoders_trainable: bool, workdir: Path) -> Measurement:
    torch.manual_seed(0)
    config = bench_config()
    model = MervForConditionalGeneration(config)
    set_trainable(model, "finetune")
    if encoders_trainable:
        model.model.vision_towers.requires_grad_(True)
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    batch = make_batch(config)
    saved = SavedForBackward(model, list(model.model.vision_towers.values()))
    timeline = workdir / f"timeline-{checkpointing}-{encoders_trainable}.json"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        with saved.hooks:
            loss = model(**batch).loss
        loss.backward()
    with warnings.catch_warnings():
        # deprecated in favour of CUDA memory snapshots; torch offers nothing else that records CPU allocations
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(timeline), "cpu")
    return Measurement(peak_above_start(timeline), saved.total(), saved.in_modules())


ROWS = [
    ("frozen encoders, no checkpointing", False, False),
    ("frozen encoders, checkpointing (LLM layers)", True, False),
    ("trainable encoders, no checkpointing (comparison)", False, True),
    ("trainable encoders, checkpointing (LLM and encoder layers; comparison)", True, True),
]
"""`activation_checkpointing_enable` checkpoints every layer that runs with gradients in training mode: frozen encoders
run in eval mode without autograd, so only the LLM layers are checkpointed."""


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    config = bench_config()
    model = MervForConditionalGeneration(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"{parameters / 1e6:.1f} M parameters, batch {BATCH_SIZE} x {config.num_video_tokens} visual + "
        f"{TEXT_TOKENS} text tokens"
    )
    print("| setting | peak tensor memory of forward + backward | saved for backward (of which in the encoders) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for label, checkpointing, trainable in ROWS:
            result = measure(checkpointing, trainable, Path(workdir))
            print(
                f"| {label} | {result.peak / MEBIBYTE:.0f} MiB | {result.saved / MEBIBYTE:.0f} MiB "
                f"({result.saved_in_encoders / MEBIBYTE:.0f} MiB) |"
            )


if __name__ == "__main__":
    main()
