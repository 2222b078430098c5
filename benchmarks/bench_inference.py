"""Where inference time goes, stage by stage, and what each speed option buys (results: benchmarks/README.md).

Models:
- `small`: the shipped default model (`default_model_path()`), answering the README's question about
  `examples/example.mp4`.
- `merv-full-shaped`: random weights with merv-full's widths, input resolutions, frame counts (16/16/32/16) and
  token counts (1024 visual tokens per video), with the depth cut for a 2-core CPU: every encoder runs 2 layers up
  to its feature layer (merv-full runs 23/23/12/11) and the LLM has 2 of Llama-2-7B's 32 layers. Encoder and LLM
  times grow linearly with depth; the README scales them.

Sections (`--sections`, comma-separated):
- `stages`: one request, stage by stage (decode + preprocess, each encoder, alignment, fusion, LLM prefill,
  per-token decode), and the whole `generate` call; both models.
- `throughput`: `generate` tokens/s at batch 1, 4 and 8 (different videos and prompt lengths, left padding), small.
- `encoder-calls`: encoder runs per `generate` call (greedy and beam search) on the small model.
- `options`: attention eager vs SDPA and sequential vs concurrent encoders (both models); fp32 vs bf16 and
  `torch.compile` (small model).
- `feature-layer`: stopping each encoder at its feature layer vs the authors' full run, at full depth (few frames).
- `gpu` (needs CUDA): merv-full with random weights in bf16: time to first token, decode tokens/s and peak memory
  at batch 1 and 8 against the compute floor (FLOPs counted with `FlopCounterMode`) and the weight-bandwidth floor
  of decoding; encoders sequential vs concurrent (CUDA streams) at each batch size.

    python benchmarks/bench_inference.py [--repeats 3] [--sections stages,throughput] [--small-only]
"""

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervConfig, MervForConditionalGeneration, MervVideoProcessor, default_model_path
from transformers_merv.configuration_merv import (
    DINOV2_LARGE_REG4_CONFIG,
    LLAMA2_7B_TEXT_CONFIG,
    SIGLIP_B16_224_CONFIG,
    VIVIT_B_16X2_CONFIG,
)
from transformers_merv.synthetic import generate_dataset

from timing import Timing, measure


REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE_VIDEO = REPOSITORY / "examples" / "example.mp4"
EXAMPLE_QUESTION = "What color is the circle?"
PANCAKE = REPOSITORY.parent / "shared" / "media" / "flipping_a_pancake.mkv"
SECTIONS = ("stages", "throughput", "encoder-calls", "options", "feature-layer", "gpu")
NEW_TOKENS = 16
THROUGHPUT_BATCHES = (1, 4, 8)
BEAMS = 4
REDUCED_ENCODER_LAYERS = 2
REDUCED_LLM_LAYERS = 2
PROMPT_TOKENS = 24
"""Text tokens of the random-weight models' prompts (BOS + question), besides the video placeholders."""
FIRST_TEXT_ID = 3
"""Llama's ids below this are special (unk, BOS, EOS)."""
FULL_DEPTH_FRAMES = {"languagebind": 8, "dinov2": 2, "siglip": 2}
"""Frames for the full-depth feature-layer comparison: LanguageBind needs one whole temporal group (8)."""


# ---------------------------------------------------------------- models and inputs


def small_request():
    """The shipped model and the README's request, preprocessed by its processor."""
    model = AutoModel.from_pretrained(default_model_path()).eval()
    processor = AutoProcessor.from_pretrained(default_model_path())
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(EXAMPLE_VIDEO)}, {"type": "text", "text": EXAMPLE_QUESTION}],
        }
    ]

    def preprocess():
        return processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    return model, preprocess


def merv_full_sub_config(name: str, **overrides) -> dict:
    """merv-full's config of encoder `name` (or of the LLM, `text`) with `overrides`."""
    settings = {
        "text": {"model_type": "llama", **LLAMA2_7B_TEXT_CONFIG},
        "languagebind": {},  # `MervLanguageBindVideoConfig`'s defaults are merv-full's
        "dinov2": DINOV2_LARGE_REG4_CONFIG,
        "vivit": VIVIT_B_16X2_CONFIG,
        "siglip": SIGLIP_B16_224_CONFIG,
    }[name]
    return {**settings, **overrides}


def merv_full_shaped_config() -> MervConfig:
    """merv-full with `REDUCED_ENCODER_LAYERS` encoder layers run up to each feature layer and `REDUCED_LLM_LAYERS`
    LLM layers."""
    feature_layers = MervConfig().vision_feature_layer
    return MervConfig(
        text_config=merv_full_sub_config("text", num_hidden_layers=REDUCED_LLM_LAYERS),
        **{
            f"{name}_config": merv_full_sub_config(
                name, num_hidden_layers=REDUCED_ENCODER_LAYERS - 1 - layer if layer < 0 else REDUCED_ENCODER_LAYERS
            )
            for name, layer in feature_layers.items()
        },
    )


def random_prompt(config: MervConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """BOS, one video's placeholders (where MERV puts them), then `PROMPT_TOKENS - 1` random text ids that are
    neither special nor the placeholder."""
    shape = (batch_size, PROMPT_TOKENS)
    text = torch.randint(FIRST_TEXT_ID, config.text_config.vocab_size, shape, generator=generator)
    text[text == config.video_token_id] = FIRST_TEXT_ID
    text[:, 0] = config.text_config.bos_token_id
    placeholders = torch.full((batch_size, config.num_video_tokens), config.video_token_id)
    return torch.cat([text[:, :1], placeholders, text[:, 1:]], dim=1)


def merv_full_shaped_request(config: MervConfig):
    """A random-weight merv-full-shaped model and a request on the pancake clip (merv-full's preprocessing)."""
    torch.manual_seed(0)
    model = MervForConditionalGeneration(config).eval()
    video_processor = MervVideoProcessor()
    input_ids = random_prompt(config, 1, torch.Generator().manual_seed(0))

    def preprocess():
        pixels = video_processor(str(PANCAKE), return_tensors="pt")["pixel_values_videos"]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels}

    return model, preprocess


# ---------------------------------------------------------------- stages


def one_request_by_stage(model: MervForConditionalGeneration, preprocess: Callable[[], dict]) -> dict[str, float]:
    """Seconds of each stage of one greedy request of `NEW_TOKENS` tokens, run stage by stage as `generate` does."""
    inner, times = model.model, {}
    start = time.perf_counter()
    inputs = preprocess()
    times["decode + preprocess"] = time.perf_counter() - start
    projected, alignment = {}, 0.0
    pixels = inner.split_pixel_values_videos(inputs["pixel_values_videos"])
    for name in model.config.vision_encoders:
        start = time.perf_counter()
        features = inner._encode(name, pixels[name]).features
        times[f"encoder: {name}"] = time.perf_counter() - start
        start = time.perf_counter()
        projected[name] = inner._align(name, features)
        alignment += time.perf_counter() - start
    times["alignment: pool + project (all encoders)"] = alignment
    start = time.perf_counter()
    fused, _ = inner.fusion(list(projected.values()))
    times["fusion"] = time.perf_counter() - start
    input_ids = inputs["input_ids"]
    start = time.perf_counter()
    embeds = model.get_input_embeddings()(input_ids)
    embeds[input_ids == model.config.video_token_id] = fused.reshape(-1, fused.shape[-1])
    output = inner.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], use_cache=True)
    token = model.lm_head(output.last_hidden_state[:, -1:]).argmax(-1)
    times["LLM prefill"] = time.perf_counter() - start
    cache, mask = output.cache, inputs["attention_mask"]
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        output = inner.language_model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
        token = model.lm_head(output.last_hidden_state).argmax(-1)
    times["LLM decode, per token"] = (time.perf_counter() - start) / NEW_TOKENS
    return times


def bench_stages(label: str, model, preprocess, repeats: int) -> dict[str, float]:
    rounds = []

    def whole_generate():
        inputs = preprocess()
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)

    with torch.no_grad():
        one_request_by_stage(model, preprocess)  # warm-up
        for _ in range(repeats):
            rounds.append(one_request_by_stage(model, preprocess))
        whole = measure({"generate": whole_generate}, repeats)["generate"]
    medians = {stage: sorted(r[stage] for r in rounds)[len(rounds) // 2] for stage in rounds[0]}
    medians[f"whole request: preprocess + generate({NEW_TOKENS} tokens)"] = whole.wall
    report(f"stages, {label}", {stage: f"{seconds * 1000:.1f} ms" for stage, seconds in medians.items()})
    return medians


# ---------------------------------------------------------------- throughput and encoder calls


def throughput_inputs(batch_size: int, data_dir: Path, processor) -> dict:
    questions = json.loads((data_dir / "test_q.json").read_text())
    chosen = sorted(questions, key=lambda q: len(q["question"]))[:: max(1, len(questions) // batch_size)][:batch_size]
    videos = [str(next((data_dir / "videos").glob(f"{q['video_name']}.*"))) for q in chosen]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q["question"]}]}],
            add_generation_prompt=True,
        )
        for q in chosen
    ]
    return processor(text=texts, videos=videos, padding=True, return_tensors="pt")


def bench_throughput(repeats: int) -> dict[int, float]:
    model = AutoModel.from_pretrained(default_model_path()).eval()
    processor = AutoProcessor.from_pretrained(default_model_path())
    with tempfile.TemporaryDirectory() as directory:
        generate_dataset(Path(directory), {"train": 0, "validation": 0, "test": max(THROUGHPUT_BATCHES)}, seed=1)
        batches = {size: throughput_inputs(size, Path(directory), processor) for size in THROUGHPUT_BATCHES}
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    with torch.no_grad():
        timings = measure(
            {size: (lambda inputs=inputs: model.generate(**inputs, **settings)) for size, inputs in batches.items()},
            repeats,
        )
    tokens_per_second = {size: size * NEW_TOKENS / timing.wall for size, timing in timings.items()}
    base = tokens_per_second[1]
    report(
        f"generate throughput, small model ({NEW_TOKENS} new tokens per row, left padding)",
        {
            f"batch {size}": f"{rate:.1f} tokens/s = {rate / base:.2f}x batch 1"
            for size, rate in tokens_per_second.items()
        },
    )
    return tokens_per_second


def bench_encoder_calls() -> dict[str, int]:
    model, preprocess = small_request()
    inputs = preprocess()
    counts = {}
    for label, settings in {"greedy": {}, f"beam search ({BEAMS} beams)": {"num_beams": BEAMS}}.items():
        with mock.patch.object(model.model, "_encode", wraps=model.model._encode) as encode, torch.no_grad():
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **settings)
        counts[label] = encode.call_count
    report(
        f"encoder runs per generate call ({NEW_TOKENS} tokens, {len(model.config.vision_encoders)} encoders)", counts
    )
    return counts


# ---------------------------------------------------------------- options


def visual_and_prefill(model, inputs) -> Callable[[], object]:
    """One forward pass over the request: encoders, alignment, fusion and LLM prefill."""

    def forward():
        with torch.no_grad():
            model(**inputs, logits_to_keep=1)

    return forward


def synchronized(function: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`function`, returning only once the device has finished its work (so that wall-clock timing is right)."""

    def run():
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def compare(label: str, cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    timings = measure(cases, repeats)
    first = next(iter(timings.values()))
    report(label, {name: f"{timing} = {timing.ratio(first)} the first" for name, timing in timings.items()})
    return timings


def bench_attention(label: str, model, inputs, repeats: int) -> dict[str, Timing]:
    def with_attention(implementation: str):
        def forward():
            model.set_attn_implementation(implementation)
            visual_and_prefill(model, inputs)()

        return forward

    return compare(
        f"attention, {label}: forward (encoders + prefill)",
        {name: with_attention(name) for name in ("sdpa", "eager")},
        repeats,
    )


def bench_concurrency(label: str, model, inputs, repeats: int) -> dict[str, Timing]:
    device = inputs["input_ids"].device

    def with_concurrency(concurrent: bool):
        def features():
            model.config.concurrent_encoders = concurrent
            with torch.no_grad():
                model.get_video_features(inputs["pixel_values_videos"])

        return synchronized(features, device)

    timings = compare(
        f"encoders sequential vs concurrent (threads and CUDA streams), {label}: get_video_features",
        {"sequential": with_concurrency(False), "concurrent": with_concurrency(True)},
        repeats,
    )
    model.config.concurrent_encoders = False
    return timings


def bench_precision(model, inputs, repeats: int) -> dict[str, Timing]:
    bf16 = AutoModel.from_pretrained(default_model_path(), dtype=torch.bfloat16).eval()
    return compare(
        "precision, small model: forward (encoders + prefill)",
        {"float32": visual_and_prefill(model, inputs), "bfloat16": visual_and_prefill(bf16, inputs)},
        repeats,
    )


def bench_compile(model, inputs, repeats: int) -> dict[str, object]:
    compiled = AutoModel.from_pretrained(default_model_path()).eval()
    compiled.forward = torch.compile(compiled.forward, dynamic=False)
    start = time.perf_counter()
    try:
        visual_and_prefill(compiled, inputs)()
    except Exception as err:  # report why compile does not work here instead of failing the whole benchmark
        report("torch.compile, small model", {"result": f"failed: {type(err).__name__}: {str(err)[:200]}"})
        return {"error": repr(err)}
    compile_seconds = time.perf_counter() - start
    timings = compare(
        f"torch.compile, small model: forward (first call with compilation: {compile_seconds:.1f} s)",
        {"eager (not compiled)": visual_and_prefill(model, inputs), "compiled": visual_and_prefill(compiled, inputs)},
        repeats,
    )
    return {"compile_seconds": compile_seconds, **timings}


# ---------------------------------------------------------------- stopping at the feature layer


def bench_feature_layer(repeats: int) -> dict[str, Timing]:
    """merv-full's encoders at full depth (random weights, few frames): the authors run every layer and keep hidden
    state `vision_feature_layer`; ours stops there."""
    feature_layers = MervConfig().vision_feature_layer
    encoders = [name for name, layer in feature_layers.items() if layer != -1]
    config = MervConfig(
        text_config=merv_full_sub_config("text", num_hidden_layers=1),
        **{f"{name}_config": merv_full_sub_config(name) for name in encoders},
        vision_encoders=encoders,
        num_frames={name: FULL_DEPTH_FRAMES[name] for name in encoders},
        fusion_type="concat_tokens",
    )
    torch.manual_seed(0)
    model = MervForConditionalGeneration(config).eval()
    inner, cases = model.model, {}
    for name in encoders:
        tower = inner.vision_towers[name]
        video = torch.randn(1, *config.video_pixel_shapes()[name])
        frames = video.flatten(0, 1)  # our piecewise run takes frames folded into the batch
        tower_input = video if name == "languagebind" else frames  # LanguageBind's forward takes whole videos
        layer = config.vision_feature_layer[name]

        def authors(tower=tower, tower_input=tower_input, layer=layer):
            with torch.no_grad():
                return tower(tower_input, output_hidden_states=True).hidden_states[layer]

        def ours(name=name, tower=tower, frames=frames):
            with torch.no_grad():
                return inner._tower_hidden_state(name, tower, frames).features

        torch.testing.assert_close(ours(), authors(), rtol=0, atol=0)
        cases[f"{name}: all layers (authors)"] = authors
        cases[f"{name}: up to the feature layer (ours)"] = ours
    timings = measure(cases, repeats)
    rows = {}
    for name in encoders:
        before, after = timings[f"{name}: all layers (authors)"], timings[f"{name}: up to the feature layer (ours)"]
        rows[f"{name} ({FULL_DEPTH_FRAMES[name]} frames)"] = f"{before} -> {after}: {before.ratio(after)} faster"
    report("stop at the feature layer, full-depth encoders", rows)
    return timings


# ---------------------------------------------------------------- GPU: merv-full against the hardware floors


GPU_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
"""Dense bf16 FLOP/s and memory bytes/s of the SXM parts (NVIDIA datasheets), matched in the device name."""
GPU_BATCHES = (1, 8)
GPU_NEW_TOKENS = 64


def random_request(config: MervConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Random pixels and a prompt of `PROMPT_TOKENS` text tokens around each video's placeholders."""
    generator = torch.Generator().manual_seed(batch_size)
    width = sum(math.prod(shape) for shape in config.video_pixel_shapes().values())
    pixels = torch.randn(batch_size, width, generator=generator).to(device, dtype)
    input_ids = random_prompt(config, batch_size, generator).to(device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels}


def hardware_peaks(device: torch.device, peak_tflops: float | None, peak_bandwidth: float | None):
    """(FLOP/s, bytes/s) from the flags, else from `GPU_PEAKS` by device name."""
    if peak_tflops and peak_bandwidth:
        return peak_tflops * 1e12, peak_bandwidth * 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    for part, peaks in GPU_PEAKS.items():
        if part in name:
            return peaks
    raise SystemExit(f"unknown peaks for {name!r}: pass --peak-tflops and --peak-bandwidth-gbs")


def decode_bytes_per_token(model: MervForConditionalGeneration) -> int:
    """Weight bytes one decode step must read: every LLM layer and the LM head (one embedding row is negligible)."""
    language_model = model.model.language_model
    weights = [p for n, p in language_model.named_parameters() if not n.startswith("embed_tokens")]
    weights += list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in weights)


def bench_gpu(label: str, config: MervConfig, device: torch.device, dtype: torch.dtype, repeats: int, peaks) -> dict:
    """Time to first token, decode tokens/s and peak memory at each of `GPU_BATCHES`, against the compute floor of
    the prefill and the weight-bandwidth floor of decoding; encoders sequential vs concurrent."""
    from torch.utils.flop_counter import FlopCounterMode

    peak_flops, peak_bandwidth = peaks
    with torch.device(device):
        model = MervForConditionalGeneration._from_config(config, dtype=dtype).eval()
    rows, results = {}, {}
    for batch_size in GPU_BATCHES:
        inputs = random_request(config, batch_size, device, dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**inputs, logits_to_keep=1)
        settings = {"do_sample": False, "max_new_tokens": 1}
        longer = {**settings, "max_new_tokens": GPU_NEW_TOKENS + 1, "min_new_tokens": GPU_NEW_TOKENS + 1}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            timings = measure(
                {
                    "first token": synchronized(lambda: model.generate(**inputs, **settings), device),
                    "longer": synchronized(lambda: model.generate(**inputs, **longer), device),
                },
                repeats,
            )
        first_token = timings["first token"].wall
        per_step = (timings["longer"].wall - first_token) / GPU_NEW_TOKENS
        compute_floor = counter.get_total_flops() / peak_flops
        bandwidth_floor = decode_bytes_per_token(model) / peak_bandwidth
        peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        results[batch_size] = {
            "first_token_s": first_token,
            "decode_tokens_per_s": batch_size / per_step,
            "prefill_tflop": counter.get_total_flops() / 1e12,
            "compute_floor_fraction": compute_floor / first_token,
            "bandwidth_floor_fraction": bandwidth_floor / per_step,
            "peak_memory_gib": peak_memory,
        }
        rows[f"batch {batch_size}"] = (
            f"first token {first_token * 1000:.0f} ms ({counter.get_total_flops() / 1e12:.1f} TFLOP: "
            f"{compute_floor / first_token:.0%} of the compute floor), decode {batch_size / per_step:.0f} tokens/s "
            f"({per_step * 1000:.1f} ms a step: {bandwidth_floor / per_step:.0%} of the bandwidth floor), "
            f"peak memory {peak_memory:.1f} GiB"
        )
    report(f"{label}, random weights, {dtype}, {device}", rows)
    results["encoders"] = {
        batch_size: bench_concurrency(
            f"{label} on {device}, batch {batch_size}",
            model,
            random_request(config, batch_size, device, dtype),
            repeats,
        )
        for batch_size in GPU_BATCHES
    }
    return results


# ---------------------------------------------------------------- main


def report(title: str, rows: dict) -> None:
    print(f"\n## {title}")
    for name, value in rows.items():
        print(f"- {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--small-only", action="store_true", help="skip the merv-full-shaped model (quick runs)")
    parser.add_argument("--peak-tflops", type=float, help="gpu: the device's dense bf16 TFLOP/s (default: by name)")
    parser.add_argument("--peak-bandwidth-gbs", type=float, help="gpu: the device's memory GB/s (default: by name)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown --sections {sorted(unknown)}; choose from {SECTIONS}")
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    if "stages" in sections or "options" in sections:
        small, small_preprocess = small_request()
        requests = {"small model": (small, small_preprocess)}
        if not args.small_only:
            requests["merv-full-shaped"] = merv_full_shaped_request(merv_full_shaped_config())
    if "stages" in sections:
        for label, (model, preprocess) in requests.items():
            bench_stages(label, model, preprocess, args.repeats)
    if "throughput" in sections:
        bench_throughput(args.repeats)
    if "encoder-calls" in sections:
        bench_encoder_calls()
    if "options" in sections:
        for label, (model, preprocess) in requests.items():
            inputs = preprocess()
            bench_attention(label, model, inputs, args.repeats)
            bench_concurrency(label, model, inputs, args.repeats)
        small_inputs = small_preprocess()
        bench_precision(small, small_inputs, args.repeats)
        bench_compile(small, small_inputs, args.repeats)
    if "feature-layer" in sections:
        bench_feature_layer(args.repeats)
    if "gpu" in sections:
        if not torch.cuda.is_available():
            print("\n## merv-full on a GPU: pending (no CUDA device on this machine)")
            return
        device = torch.device("cuda")
        peaks = hardware_peaks(device, args.peak_tflops, args.peak_bandwidth_gbs)
        bench_gpu("merv-full", MervConfig(), device, torch.bfloat16, args.repeats, peaks)


if __name__ == "__main__":
    main()
