"""A fast `generate` from a cached prompt: transformers' static KV cache and a `torch.compile`d forward.

The cached video prefix (`prefix_cache.VideoPrefix`) is a `DynamicCache` computed once. A compiled decode needs a
`StaticCache` instead, whose tensors have a fixed length: `StaticPromptCache` holds one, sized up to a multiple of
`STATIC_CACHE_BUCKET` tokens, and copies the cached prompt into it before each `generate` (or, for the next turn of a
chat that is already in it, keeps it and drops the tokens after the shared part). `generate` prefills the question
eagerly and runs every decoding step through the forward that `torch.compile` compiled on its first call (transformers
keeps it on the model), so a process compiles once per model while the rows and the cache length stay the same; a
new row count or a longer bucket compiles again, after which torch treats that size as dynamic."""

import math

import torch
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import Cache


STATIC_CACHE_BUCKET = 256
"""Static cache lengths are multiples of this many tokens, so that prompts of different lengths share one compiled
forward."""


def compile_config() -> CompileConfig:
    """transformers' default compile settings, on every device (transformers compiles on accelerators only unless
    told otherwise)."""
    config = CompileConfig()
    config._compile_all_devices = True  # transformers' own switch for compiling on the CPU
    return config


COMPILE_CONFIG = compile_config()
"""One config for every call: transformers compiles again whenever the config differs from the last one."""


def compile_problem(device: torch.device) -> str | None:
    """Why `torch.compile` cannot generate on `device` here (None if it can): the CPU backend needs a C++ compiler,
    an accelerator's needs Triton."""
    if device.type == "cpu":
        from torch._inductor import config as inductor_config
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler as err:
            return f"torch.compile on the CPU needs a C++ compiler ({err}; searched {inductor_config.cpp.cxx})"
        return None
    from torch.utils._triton import has_triton

    return None if has_triton() else f"torch.compile on {device.type} needs Triton, which is not installed"


def check_compile_support(device: torch.device) -> None:
    """Raise `RuntimeError` naming what is missing when `torch.compile` cannot generate on `device`."""
    problem = compile_problem(device)
    if problem:
        raise RuntimeError(f"cannot compile generation: {problem}")


def bucketed_length(tokens: int) -> int:
    """`tokens` rounded up to a multiple of `STATIC_CACHE_BUCKET`."""
    return math.ceil(tokens / STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET


class StaticPromptCache:
    """The static KV cache one user of a model decodes into (an `answer_questions` call, a `VideoChat`): allocated
    for the rows and a bucket of lengths, then refilled for each `generate`, so the compiled forward sees the same
    shapes (and tensors) call after call."""

    def __init__(self, model):
        self.model = model
        self.cache: StaticCache | None = None

    def prepare(self, source: Cache, length: int, rows: int, total_length: int) -> StaticCache:
        """The static cache holding the first `length` tokens of `source` (a batch of one) in each of `rows` rows,
        with room for `total_length` tokens in all."""
        if self.cache is None or self._rows() != rows or self.cache.layers[0].max_cache_len < total_length:
            self.cache = StaticCache(config=self.model.config, max_cache_len=bucketed_length(total_length))
        if source is self.cache:  # the next chat turn: the shared tokens are already there
            for layer in self.cache.layers:
                layer.cumulative_length.fill_(length)
            return self.cache
        self.cache.reset()
        for copied, layer in zip(source.layers, self.cache.layers, strict=True):
            keys, values = copied.keys[:1, :, :length], copied.values[:1, :, :length]
            layer.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
        return self.cache

    def _rows(self) -> int | None:
        layer = self.cache.layers[0]
        return layer.batch_size if layer.is_initialized else None


__all__ = [
    "COMPILE_CONFIG",
    "STATIC_CACHE_BUCKET",
    "StaticPromptCache",
    "bucketed_length",
    "check_compile_support",
    "compile_problem",
]
