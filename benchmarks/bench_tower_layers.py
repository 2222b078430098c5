"""One layer of each merv-full tower, ours against the authors' block, timed in alternating rounds (results:
benchmarks/README.md, "Encoders: one layer, ours vs the authors' block").

The authors build DINOv2 and SigLIP from timm's ViT `Block` (timm 0.9.10); their LanguageBind layer is a CLIP layer
preceded by attention across the frames of each temporal group, here timm's `Attention` and `Block` in LanguageBind's
order of operations; their ViViT is transformers' own, here compared with timm's `Block` at ViViT's shape. Each
pair holds the same weights (q, k and v concatenated into timm's fused `qkv`) and is checked to give the same output
before it is timed, at merv-full's shapes: one video per call (16 frames; ViViT: 32 frames as 3137 tokens), float32
and, where the CPU has native bf16 (`cpu_has_native_bf16()`), bfloat16; both sides use PyTorch's SDPA kernel.
`--profile` lists the operators of each pair; the one difference it shows, q, k and v as three matrix products in
transformers' attention modules against timm's one fused product, is timed on its own in the same rounds.

timm needs torchvision, which pulls a CUDA build of torch: run this from a benchmark-only virtual environment that
sees the project's packages and has timm without its dependencies (timm's ViT block never calls torchvision, whose
modules it imports are replaced by placeholders while timm loads):

    python3 -m venv /tmp/timm-venv
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/timm-venv/lib/python3.11/site-packages/main.pth
    /tmp/timm-venv/bin/pip install --no-deps timm==0.9.10
    PYTHONPATH=src /tmp/timm-venv/bin/python benchmarks/bench_tower_layers.py [--repeats 5] [--profile]
"""

import argparse
import importlib
import importlib.abc
import importlib.machinery
import platform
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from transformers_merv import MervConfig
from transformers_merv.inference.devices import cpu_has_native_bf16
from transformers_merv.modeling_merv import TOWER_LAYOUTS, VIDEO_INPUT_TOWERS, build_vision_tower

from bench_inference import merv_full_sub_config
from timing import Timing, measure


PROFILE_ROWS = 8
"""Operators shown per tower by `--profile` (the most expensive, by CPU time of ours plus theirs)."""
PROFILE_ROUNDS = 3
"""Alternating calls of ours and theirs that `--profile` averages (one call's operator times vary with the load)."""


# ---------------------------------------------------------------- importing timm without torchvision


class _Placeholder(type):
    """A class standing for any torchvision name timm imports; its attributes are placeholders too."""

    def __getattr__(cls, name: str) -> type:
        return _Placeholder(name, (), {})


class _PlaceholderTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every `torchvision.*` import with an empty module whose public names are placeholders."""

    def find_spec(self, name: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] != "torchvision":
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def placeholder(name: str) -> type:
            if name.startswith("__"):  # dunders stay missing, as `inspect` and `importlib` expect
                raise AttributeError(name)
            return _Placeholder(name, (), {})

        module.__getattr__ = placeholder
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


@contextmanager
def placeholder_torchvision() -> Iterator[None]:
    """Within the block, `import torchvision...` gives placeholders; afterwards they are forgotten, so that nothing
    else (transformers' availability checks included) sees a torchvision."""
    finder = _PlaceholderTorchvision()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in sys.modules if name.partition(".")[0] == "torchvision"]:
            del sys.modules[name]


def import_timm_vision_transformer() -> types.ModuleType:
    """timm's `vision_transformer` module (`Attention`, `Block`), imported with placeholders for torchvision."""
    with placeholder_torchvision():
        return importlib.import_module("timm.models.vision_transformer")


# ---------------------------------------------------------------- the compared layers


@dataclass(frozen=True)
class LayerParts:
    """Paths of the parts of one of our layers that map to timm's `Block`: `x + ls1(attn(norm1(x)))`, then
    `x + ls2(mlp(norm2(x)))`; the attention module has `q_proj`, `k_proj`, `v_proj` and `output`."""

    norm1: str
    attention: str
    output: str
    norm2: str
    mlp: str
    layer_scales: tuple[str, str] | None = None


LAYER_PARTS = {
    "languagebind": LayerParts("layer_norm1", "self_attn", "out_proj", "layer_norm2", "mlp"),
    "dinov2": LayerParts("norm1", "attention", "o_proj", "norm2", "mlp", ("layer_scale1", "layer_scale2")),
    "vivit": LayerParts("layernorm_before", "attention", "o_proj", "layernorm_after", "mlp"),
    "siglip": LayerParts("layer_norm1", "self_attn", "out_proj", "layer_norm2", "mlp"),
}


@torch.no_grad()
def load_attention(theirs: nn.Module, ours: nn.Module, output: str) -> None:
    """timm `Attention` <- our attention module: q, k and v stacked into `qkv`, `output` into `proj`."""
    projections = [getattr(ours, name) for name in ("q_proj", "k_proj", "v_proj")]
    theirs.qkv.weight.copy_(torch.cat([projection.weight for projection in projections]))
    theirs.qkv.bias.copy_(torch.cat([projection.bias for projection in projections]))
    theirs.proj.load_state_dict(getattr(ours, output).state_dict())


@torch.no_grad()
def timm_block(
    block_class: type[nn.Module], ours: nn.Module, config: PretrainedConfig, parts: LayerParts
) -> nn.Module:
    """timm's `Block` at the shape of our layer `ours` (of a tower with `config`), holding its weights."""
    attention, mlp = ours.get_submodule(parts.attention), ours.get_submodule(parts.mlp)
    block = block_class(
        config.hidden_size,
        config.num_attention_heads,
        mlp_ratio=mlp.fc1.out_features / config.hidden_size,
        qkv_bias=True,
        init_values=getattr(config, "layerscale_value", None) if parts.layer_scales else None,
        act_layer=lambda: ACT2FN[config.hidden_act],  # the tower's activation: numerics must match
        norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
    )
    load_attention(block.attn, attention, parts.output)
    block.norm1.load_state_dict(ours.get_submodule(parts.norm1).state_dict())
    block.norm2.load_state_dict(ours.get_submodule(parts.norm2).state_dict())
    block.mlp.fc1.load_state_dict(mlp.fc1.state_dict())
    block.mlp.fc2.load_state_dict(mlp.fc2.state_dict())
    for timm_scale, our_scale in zip((block.ls1, block.ls2), parts.layer_scales or ()):
        timm_scale.gamma.copy_(ours.get_submodule(our_scale).lambda1)
    return block.eval()


class AuthorsLanguageBindLayer(nn.Module):
    """LanguageBind's layer as its authors run it (`CLIPEncoderLayer` of LanguageBind's `modeling_video.py`, einops
    rearranges written as views): temporal embedding added over time, temporal attention over time, then the
    spatial block; timm modules stand for CLIP's."""

    def __init__(self, attention_class: type[nn.Module], block: nn.Module, ours: nn.Module, config: PretrainedConfig):
        super().__init__()
        self.group = config.temporal_group_size
        self.temporal_embedding = nn.Parameter(ours.temporal_embedding.detach().clone())
        self.temporal_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_norm.load_state_dict(ours.temporal_layer_norm1.state_dict())
        self.temporal_attn = attention_class(config.hidden_size, config.num_attention_heads, qkv_bias=True)
        load_attention(self.temporal_attn, ours.temporal_attn, LAYER_PARTS["languagebind"].output)
        self.block = block

    def _over_time(self, hidden: torch.Tensor) -> torch.Tensor:
        """'(b t) n d -> (b n) t d'"""
        rows, tokens, dim = hidden.shape
        return hidden.view(rows // self.group, self.group, tokens, dim).transpose(1, 2).reshape(-1, self.group, dim)

    def _over_space(self, hidden: torch.Tensor, tokens: int) -> torch.Tensor:
        """'(b n) t d -> (b t) n d'"""
        _, group, dim = hidden.shape
        return hidden.view(-1, tokens, group, dim).transpose(1, 2).reshape(-1, tokens, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = hidden.shape[1]
        hidden = self._over_space(self._over_time(hidden) + self.temporal_embedding, tokens)
        attended = self.temporal_attn(self.temporal_norm(self._over_time(hidden)))
        return self.block(hidden + self._over_space(attended, tokens))


@dataclass(frozen=True)
class LayerPair:
    ours: Callable[[torch.Tensor], torch.Tensor]
    theirs: nn.Module
    hidden: torch.Tensor
    """One video's input to the layer: the tower's embeddings of random pixels."""
    our_qkv: Callable[[torch.Tensor], object]
    """Our (spatial) attention's q, k and v projections: three matrix products."""
    their_qkv: nn.Module
    """timm's fused `qkv` projection holding the same weights: one matrix product."""


def layer_pair(
    name: str, dtype: torch.dtype, attention_class: type[nn.Module], block_class: type[nn.Module]
) -> LayerPair:
    """Our first layer of a one-layer merv-full tower `name`, the authors' layer with the same weights, and input."""
    torch.manual_seed(0)
    config = MervConfig(**{f"{name}_config": merv_full_sub_config(name, num_hidden_layers=1)})
    tower = build_vision_tower(config, name).eval().to(dtype)
    layout, sub_config = TOWER_LAYOUTS[name], tower.config
    layer = tower.get_submodule(layout.layers)[0]
    pixels = torch.randn(config.video_pixel_shapes()[name], dtype=dtype)
    with torch.no_grad():
        hidden = next(layout.hidden_states(tower, pixels.unsqueeze(0) if name in VIDEO_INPUT_TOWERS else pixels, 0))
    block = timm_block(block_class, layer, sub_config, LAYER_PARTS[name]).to(dtype)
    theirs = AuthorsLanguageBindLayer(attention_class, block, layer, sub_config) if name == "languagebind" else block
    attention = layer.get_submodule(LAYER_PARTS[name].attention)

    def our_qkv(hidden: torch.Tensor) -> list[torch.Tensor]:
        return [attention.q_proj(hidden), attention.k_proj(hidden), attention.v_proj(hidden)]

    return LayerPair(partial(layer, attention_mask=None), theirs.to(dtype), hidden, our_qkv, block.attn.qkv)


# ---------------------------------------------------------------- measuring and profiling


def no_grad(function: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return function(hidden)

    return run


def profile_rows(runs: dict[str, Callable[[], torch.Tensor]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per run: self CPU milliseconds and calls per operator and per call, averaged over `PROFILE_ROUNDS` rounds in
    which the runs alternate."""
    totals = {label: {} for label in runs}
    for _ in range(PROFILE_ROUNDS):
        for label, run in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                run()
            for event in profiler.key_averages():
                milliseconds, calls = totals[label].get(event.key, (0.0, 0))
                totals[label][event.key] = (milliseconds + event.self_cpu_time_total / 1000, calls + event.count)
    return {
        label: {key: (ms / PROFILE_ROUNDS, calls / PROFILE_ROUNDS) for key, (ms, calls) in rows.items()}
        for label, rows in totals.items()
    }


def print_profile(label: str, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor]) -> None:
    rows = profile_rows({"ours": ours, "theirs": theirs})
    our_rows, their_rows = rows["ours"], rows["theirs"]
    total = {key: our_rows.get(key, (0, 0))[0] + their_rows.get(key, (0, 0))[0] for key in our_rows | their_rows}
    print(f"\n### profile, {label}: self CPU ms (calls) per call, ours | theirs")
    for key in sorted(total, key=total.get, reverse=True)[:PROFILE_ROWS]:
        (our_ms, our_calls), (their_ms, their_calls) = our_rows.get(key, (0, 0)), their_rows.get(key, (0, 0))
        print(f"- {key}: {our_ms:.1f} ({our_calls:g}) | {their_ms:.1f} ({their_calls:g})")
    our_total, their_total = (sum(ms for ms, _ in rows.values()) for rows in (our_rows, their_rows))
    print(f"- all operators: {our_total:.1f} | {their_total:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print each pair's most expensive operators")
    args = parser.parse_args()
    vision_transformer = import_timm_vision_transformer()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"timm {sys.modules['timm'].__version__}, native bf16: {cpu_has_native_bf16()}"
    )
    dtypes = (torch.float32, torch.bfloat16) if cpu_has_native_bf16() else (torch.float32,)
    cases, labels = {}, []
    for dtype in dtypes:
        for name in MervConfig().vision_encoders:
            pair = layer_pair(name, dtype, vision_transformer.Attention, vision_transformer.Block)
            ours, theirs = no_grad(pair.ours, pair.hidden), no_grad(pair.theirs, pair.hidden)
            torch.testing.assert_close(ours(), theirs())
            label = f"{name} {str(dtype).removeprefix('torch.')} {tuple(pair.hidden.shape)}"
            if args.profile:
                print_profile(label, ours, theirs)
            cases[f"{label}: ours"], cases[f"{label}: theirs"] = ours, theirs
            cases[f"{label}: q, k, v ours"] = no_grad(pair.our_qkv, pair.hidden)
            cases[f"{label}: q, k, v theirs"] = no_grad(pair.their_qkv, pair.hidden)
            labels.append(label)
    timings: dict[str, Timing] = measure(cases, args.repeats)
    print(f"\n## one layer, ours vs the authors' (median of {args.repeats} alternating rounds)")
    for label in labels:
        ours, theirs = timings[f"{label}: ours"], timings[f"{label}: theirs"]
        our_qkv, their_qkv = timings[f"{label}: q, k, v ours"], timings[f"{label}: q, k, v theirs"]
        print(
            f"- {label}: ours {ours}, theirs {theirs}: ours/theirs {ours.ratio(theirs)}; q, k, v projections "
            f"(spatial attention): three products {our_qkv}, timm's fused one {their_qkv}: "
            f"{our_qkv.ratio(their_qkv)}, {(our_qkv.cpu - their_qkv.cpu) / ours.cpu:+.1%} of our layer's CPU time"
        )


if __name__ == "__main__":
    main()
