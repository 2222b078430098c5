"""Decoding from a cached video prefix: eager `generate` (DynamicCache) vs a static cache and a `torch.compile`d
forward (`generate_from_cache(..., static=StaticPromptCache(model))`, what `merv ask --compile` runs).

Decode tokens/s comes from two `generate` lengths timed in alternating rounds (1 and 1 + `--new-tokens` new tokens:
the difference is decoding only); the first compiled call's extra time is the compilation. Both paths' greedy ids
are checked equal first.

- default: the shipped model, float32, on the CPU (its video prefix from the pancake clip).
- `--merv-full` (for a GPU): merv-full with random weights (`--dtype bfloat16`), a random video, against the
  weight-bandwidth floor of decoding (bytes of LLM weights per step / the device's memory bandwidth).

    python benchmarks/bench_compiled_decode.py [--repeats 3] [--new-tokens 32] [--rows 1]
    python benchmarks/bench_compiled_decode.py --merv-full --device cuda --dtype bfloat16
"""

import argparse
import platform
import time

import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervConfig, MervForConditionalGeneration, default_model_path
from transformers_merv.inference.prefix_cache import (
    CachedPrompt,
    generate_from_cache,
    prefill_video,
    prompt_ids,
    question_conversation,
)
from transformers_merv.inference.static_cache import StaticPromptCache

from bench_inference import PANCAKE, decode_bytes_per_token, hardware_peaks, random_request, synchronized
from timing import measure


QUESTION = "What happens in the video?"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cached_prompt(model, processor, merv_full: bool, device: torch.device) -> CachedPrompt:
    """The video prefix to decode from: the pancake clip's (shipped model), or a random video's (merv-full)."""
    if not merv_full:
        return prefill_video(model, processor, PANCAKE).prompt
    request = random_request(model.config, 1, device, model.dtype)
    input_ids = request["input_ids"][:, : model.config.num_video_tokens + 1]  # BOS and the placeholders
    with torch.inference_mode():
        output = model(input_ids=input_ids, pixel_values_videos=request["pixel_values_videos"], logits_to_keep=1)
    return CachedPrompt(input_ids, output.cache)


def load(merv_full: bool, device: torch.device, dtype: torch.dtype):
    processor = AutoProcessor.from_pretrained(default_model_path())  # pads the question ids only
    if merv_full:
        with torch.device(device):
            model = MervForConditionalGeneration._from_config(MervConfig(), dtype=dtype).eval()
    else:
        model = AutoModel.from_pretrained(default_model_path(), dtype=dtype).to(device).eval()
    return model, processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1, help="questions decoded together")
    parser.add_argument("--merv-full", action="store_true", help="merv-full with random weights (for a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--peak-bandwidth-gbs", type=float)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model, processor = load(args.merv_full, device, dtype)
    cached = cached_prompt(model, processor, args.merv_full, device)
    question = prompt_ids(processor, question_conversation(QUESTION), None)[len(processor.prompt_ids("<video>")) :]
    prompts = [cached.input_ids[0].tolist() + question] * args.rows
    static = StaticPromptCache(model)

    def generate(new_tokens: int, compiled: bool):
        settings = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
        output, input_ids = generate_from_cache(
            model, processor, cached, prompts, static if compiled else None, **settings
        )
        return output.sequences[:, input_ids.shape[1] :]

    eager_start = time.perf_counter()
    eager_ids = generate(1 + args.new_tokens, False).cpu()
    eager_seconds = time.perf_counter() - eager_start
    compile_start = time.perf_counter()
    compiled_ids = generate(1 + args.new_tokens, True).cpu()
    compile_seconds = time.perf_counter() - compile_start - eager_seconds
    assert torch.equal(eager_ids, compiled_ids), "the compiled path generated other ids"
    cases = {
        f"{name} {tokens}": synchronized(lambda tokens=tokens, compiled=compiled: generate(tokens, compiled), device)
        for name, compiled in (("eager", False), ("compiled", True))
        for tokens in (1, 1 + args.new_tokens)
    }
    timings = measure(cases, args.repeats)
    print(
        f"\n## Decoding from the cached prefix: {'merv-full (random weights)' if args.merv_full else 'shipped model'}"
    )
    print(f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}")
    print(f"- torch {torch.__version__}, {args.dtype}, {args.rows} row(s), prefix {cached.length} tokens")
    print(f"- compilation (first compiled call minus an eager one): {compile_seconds:.1f} s")
    steps = {}
    for name in ("eager", "compiled"):
        first, longer = timings[f"{name} 1"], timings[f"{name} {1 + args.new_tokens}"]
        steps[name] = (longer.wall - first.wall) / args.new_tokens
        cpu_step = (longer.cpu - first.cpu) / args.new_tokens
        print(
            f"- {name}: {args.rows / steps[name]:.0f} tokens/s decode ({steps[name] * 1000:.2f} ms a step, CPU "
            f"{cpu_step * 1000:.2f} ms); first token {first.wall * 1000:.0f} ms"
        )
    print(f"- compiled / eager decode speed: {steps['eager'] / steps['compiled']:.2f}x")
    if args.merv_full:
        _, bandwidth = hardware_peaks(device, args.peak_tflops, args.peak_bandwidth_gbs)
        floor = decode_bytes_per_token(model) / bandwidth
        for name, step in steps.items():
            print(f"- {name}: {floor / step:.0%} of the weight-bandwidth floor ({floor * 1000:.2f} ms a step)")


if __name__ == "__main__":
    main()
