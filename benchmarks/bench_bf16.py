"""bfloat16 vs float32 on this CPU: speed, and what it does to the answers (results: benchmarks/README.md).

Sections (`--sections`, comma-separated):
- `capability`: what torch reports about the CPU (`transformers_merv.inference.devices`) and a 2048² matmul in each dtype.
- `speed`: the merv-full-shaped model (bench_inference.py) and the default model: forward (encoders + prefill) and
  `generate` (16 new tokens) in float32 vs bfloat16, alternating rounds in one process.
- `accuracy`: the default model's open-ended accuracy on its test split (the 400 test videos of
  `examples/build_default_model.py`, 4 new tokens) in float32 vs bfloat16, and how many predictions change.
- `logits`: every converted fixture (tiny-merv-full and its variants): the logits of the fixture prompt in bfloat16
  vs float32 (largest difference, relative to the largest logit; same greedy next token?; same 8 greedy tokens?).

    python benchmarks/bench_bf16.py [--repeats 3] [--sections capability,speed,accuracy,logits]
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.conversion import EncoderSources, convert

from transformers_merv.evaluation import OPEN_ENDED, evaluate, load_items
from transformers_merv.inference.devices import cpu_capabilities, cpu_has_native_bf16
from transformers_merv.synthetic import DEFAULT_NUM_VIDEOS, generate_dataset

from bench_inference import NEW_TOKENS, merv_full_shaped_config, merv_full_shaped_request, report, small_request
from timing import measure


SECTIONS = ("capability", "speed", "accuracy", "logits")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MATMUL_SIZE = 2048
ACCURACY_NEW_TOKENS = 4
"""As `examples/build_default_model.py` evaluates the default model."""
LOGITS_NEW_TOKENS = 8
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
FIXTURE_IMAGE_SIZES = {"languagebind": 32, "dinov2": 56, "vivit": 28, "siglip": 64}
"""The tiny fixtures were built with these input resolutions (tests/conftest.py)."""


def bench_capability() -> dict:
    flags = {name: value for name, value in cpu_capabilities().items() if "bf16" in name or "amx" in name}
    rates = {}
    for label, dtype in DTYPES.items():
        a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype), torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
        rates[label] = lambda a=a, b=b: a @ b
    timings = measure(rates, repeats=5)
    flops = 2 * MATMUL_SIZE**3
    results = {"native bf16 (cpu_has_native_bf16)": cpu_has_native_bf16(), **flags}
    results |= {
        f"{MATMUL_SIZE}² matmul, {label}": f"{flops / t.wall / 1e9:.0f} GFLOP/s" for label, t in timings.items()
    }
    report("CPU capability", results)
    return results


def bench_speed(repeats: int) -> dict:
    results = {}
    for label, (model, preprocess) in {
        "merv-full-shaped": merv_full_shaped_request(merv_full_shaped_config()),
        "default model": small_request(),
    }.items():
        inputs = preprocess()
        models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
        settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

        def forward(model=None):
            with torch.inference_mode():
                model(**_cast(inputs, model.dtype))

        def generate(model=None):
            with torch.inference_mode():
                return model.generate(**_cast(inputs, model.dtype), **settings)

        timings = measure(
            {
                f"{kind} {dtype}": (lambda f=f, m=m: f(m))
                for kind, f in (("forward", forward), ("generate", generate))
                for dtype, m in models.items()
            },
            repeats,
        )
        same = torch.equal(generate(models["float32"]), generate(models["bfloat16"]))
        for kind in ("forward", "generate"):
            fp32, bf16 = timings[f"{kind} float32"], timings[f"{kind} bfloat16"]
            results[f"{label}: {kind}"] = f"float32 {fp32}, bfloat16 {bf16}: bfloat16 takes {bf16.ratio(fp32)}"
        results[f"{label}: same {NEW_TOKENS} greedy tokens in both"] = same
        del models
    report(f"bfloat16 vs float32 on this CPU (median of {repeats} alternating rounds)", results)
    return results


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {**inputs, "pixel_values_videos": inputs["pixel_values_videos"].to(dtype)}


def bench_accuracy() -> dict:
    processor = AutoProcessor.from_pretrained(default_model_path())
    results, predictions = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory)
        generate_dataset(data, {"test": DEFAULT_NUM_VIDEOS["test"]})
        items = load_items(data / "test_q.json", data / "test_a.json", OPEN_ENDED)
        for label, dtype in DTYPES.items():
            model = AutoModel.from_pretrained(default_model_path(), dtype=dtype).eval()
            start = time.perf_counter()
            output = evaluate(
                model,
                processor,
                items,
                data / "videos",
                OPEN_ENDED,
                generation_kwargs={"max_new_tokens": ACCURACY_NEW_TOKENS},
                progress=False,
            )
            summary = output["summary"]
            predictions[label] = [entry["prediction"] for entry in output["results"]]
            results[f"accuracy, {label}"] = (
                f"{100 * summary['accuracy']:.2f}% ({summary['correct']}/{summary['evaluated']}; "
                f"{time.perf_counter() - start:.0f} s)"
            )
    changed = sum(a != b for a, b in zip(predictions["float32"], predictions["bfloat16"]))
    results["predictions that differ"] = f"{changed} of {len(items)}"
    report("default model, test split, open-ended", results)
    return results


def bench_logits() -> dict:
    inputs = load_file(FIXTURES / "tiny-merv-full" / "inputs.safetensors")
    pixels = {key.split(".", 1)[1]: value for key, value in inputs.items() if key.startswith("pixel_values.")}
    pixels["languagebind"] = pixels["languagebind"].transpose(1, 2)  # the authors feed LanguageBind (B, C, T, H, W)
    runs = {"tiny-merv-full": FIXTURES / "tiny-merv-full" / "run"}
    runs |= {path.name: path / "run" for path in sorted((FIXTURES / "tiny-merv-variants").iterdir()) if path.is_dir()}
    results = {}
    encoders = EncoderSources(
        directories={name: FIXTURES / "encoders" / name for name in FIXTURE_IMAGE_SIZES},
        image_sizes=FIXTURE_IMAGE_SIZES,
    )
    for name, run in runs.items():
        with tempfile.TemporaryDirectory() as directory:
            convert(run, FIXTURES / "llm", encoders, directory, progress=False)
            outputs = {label: _fixture_outputs(directory, dtype, inputs, pixels) for label, dtype in DTYPES.items()}
        (fp32_logits, fp32_tokens), (bf16_logits, bf16_tokens) = outputs["float32"], outputs["bfloat16"]
        difference = (bf16_logits - fp32_logits).abs().max().item()
        same_next = torch.equal(bf16_logits[:, -1].argmax(-1), fp32_logits[:, -1].argmax(-1))
        results[name] = (
            f"max |Δlogit| {difference:.3g} ({difference / fp32_logits.abs().max().item():.2%} of the largest); "
            f"next token {'same' if same_next else 'differs'}; {LOGITS_NEW_TOKENS} greedy tokens "
            f"{'same' if bf16_tokens == fp32_tokens else 'differ'}"
        )
    report("fixtures: bfloat16 vs float32 logits of the fixture prompt", results)
    return results


def _fixture_outputs(folder: str, dtype: torch.dtype, inputs: dict, pixels: dict) -> tuple[torch.Tensor, list]:
    model = AutoModel.from_pretrained(folder, dtype=dtype).eval()
    num_tokens, video_id = model.config.num_video_tokens, model.config.video_token_id
    ids = inputs["input_ids"]
    input_ids = torch.cat([ids[:, :1], torch.full((1, num_tokens), video_id), ids[:, 1:]], dim=1)
    cast = {name: value.to(dtype) for name, value in pixels.items()}
    with torch.inference_mode():
        logits = model(input_ids=input_ids, pixel_values_videos=cast).logits.float()
        tokens = model.generate(
            input_ids=input_ids, pixel_values_videos=cast, max_new_tokens=LOGITS_NEW_TOKENS, do_sample=False
        )
    return logits, tokens[0, input_ids.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sections = args.sections.split(",")
    if "capability" in sections:
        bench_capability()
    if "logits" in sections:
        bench_logits()
    if "accuracy" in sections:
        bench_accuracy()
    if "speed" in sections:
        bench_speed(args.repeats)


if __name__ == "__main__":
    main()
