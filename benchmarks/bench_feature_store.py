"""Training from the feature store vs from live videos (results: benchmarks/README.md).

A feature store (`transformers_merv.inference.feature_store`) keeps each video's frozen features (decoding, the four
encoders, the parameter-free pooling) on disk; training reads them instead of decoding the video and running the
encoders at every step. Measured here, live vs store, in one process, the compared cases in alternating rounds
(`timing.measure`), with the CPU time of the process beside the wall clock:

- data-loader time per sample: `VideoLlavaDataset.__getitem__` + `MervDataCollator` for one example (decode +
  preprocess + tokenization live; store read + tokenization from the store);
- training step (loading the batch in the main process, forward, backward, SGD step), batch 1, stages `finetune`
  (projectors, fusion and LLM trained) and `align` (projectors and fusion), activation checkpointing on the LLM layers
  as in the training recipe, bf16 autocast with float32 weights where the CPU computes bf16 natively (what
  `examples/train.py` picks on such a machine), float32 otherwise;
- the first step's loss from the store and live, in float32 (checked equal);
- the one-off cost: building the store, per video (decode + preprocess + the frozen modules in float32 + writing).

Models:
- `small`: the shipped default model (`default_model_path()`), on `examples/example.mp4` and the pancake clip.
- `merv-full-shaped`: random weights; merv-full's four encoders at full size (depth, width, frames: `MervConfig()`'s,
  as `bench_inference.merv_full_sub_config` gives them) and the LLM at Llama-2-7B's width with `LLM_LAYERS[-1]`
  layers, on the pancake clip through merv-full's preprocessing. The step is timed with the LLM running its first
  `LLM_LAYERS[0]` and all `LLM_LAYERS[-1]` layers; one per-layer cost fitted to live and store together (they run
  the same LLM layers on the same sequence) plus a fixed cost per side give the 32-layer step by linear
  extrapolation, as `bench_inference.py` scales its measured stacks (`fit`). SGD, not AdamW: AdamW's two extra
  states would not fit ~12 GB at 2 layers, and its update adds the same time to both sides.

    python benchmarks/bench_feature_store.py [--repeats 1] [--stages finetune,align] [--full-stages finetune]
    python benchmarks/bench_feature_store.py --quick      # the small model only

About 15 minutes on 2 shared CPU cores (+6 with `--full-stages finetune,align`), peak memory 10.8 GB.
"""

import argparse
import itertools
import json
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor

from transformers_merv import (
    MervConfig,
    MervForConditionalGeneration,
    MervProcessor,
    MervVideoProcessor,
    default_model_path,
)
from transformers_merv.compat import enable_activation_checkpointing
from transformers_merv.inference.devices import cpu_has_native_bf16
from transformers_merv.inference.feature_store import FeatureStore, compute_frozen_features, feature_fingerprint
from transformers_merv.training import MervDataCollator, VideoLlavaDataset, set_trainable

from bench_inference import EXAMPLE_VIDEO, PANCAKE, merv_full_sub_config, report
from timing import Timing, measure


STAGES = ("finetune", "align")
STAGE_FORMATS = {"finetune": "chat", "align": "caption"}
"""The data format each stage trains on (`examples/train.py`'s default)."""
LLM_LAYERS = (1, 2)
"""LLM depths of the merv-full-shaped step timings: two points fit a per-layer cost and a fixed cost (2 layers of
Llama-2-7B + the 4 full encoders + embeddings and head stay under ~12 GB with SGD)."""
FULL_LLM_LAYERS = 32
"""Llama-2-7B's depth, the extrapolation target."""
LEARNING_RATE = 1e-6
"""Any small rate: the weights are random and only the time is measured."""
MAX_RELATIVE_LOSS_DIFFERENCE = 1e-6
"""float32: the store's features are computed a video at a time as live ones are; only summation order may differ
(the tests' bound, tests/training/test_training.py)."""
EXAMPLES_PER_VIDEO = 2
"""Two examples of each video: the loader's per-sample time is a median over a pass of the dataset."""
SMALL_VIDEOS = (EXAMPLE_VIDEO, PANCAKE)
FULL_VIDEOS = (PANCAKE,)
QUESTION = "<video>\nWhat happens in this video, step by step?"
ANSWER = "A pan is held over a stove; the pancake in it is tossed, turns over in the air and lands back in the pan."
SMALL_LOADER_ROUNDS = 10
"""Rounds over the dataset for the small model's loader and step timings (each round is a few seconds)."""
GIGABYTE = 1e9
STORED_VIDEOS_PER_ROW = 1000
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MACHINE_THREADS = torch.get_num_threads()
"""torch's default: one thread per core."""


@dataclass
class Setup:
    """A model, its processor and a folder of training data and stores for it."""

    label: str
    model: MervForConditionalGeneration
    processor: MervProcessor
    videos: tuple[Path, ...]
    directory: Path
    threads: int
    """torch's intra-op threads: 1 for the small model, whose tensors are too small to share out (on a shared machine
    two OpenMP threads mostly spin waiting for each other), every core for merv-full's."""


# ---------------------------------------------------------------- models


def small_setup(directory: Path) -> Setup:
    model = MervForConditionalGeneration.from_pretrained(default_model_path())
    processor = AutoProcessor.from_pretrained(default_model_path())
    return Setup("small", model, processor, SMALL_VIDEOS, directory, threads=1)


def merv_full_shaped_setup(directory: Path) -> Setup:
    """Random weights: merv-full's encoders (`MervConfig()`'s), a 4096-wide LLM of `LLM_LAYERS[-1]` layers; the small
    model's tokenizer (its ids fit the 32064-row embedding) with merv-full's preprocessing and 1024 visual tokens."""
    small = AutoProcessor.from_pretrained(default_model_path())
    tokenizer = small.tokenizer
    text = merv_full_sub_config("text", num_hidden_layers=LLM_LAYERS[-1], pad_token_id=tokenizer.pad_token_id)
    encoders = {f"{name}_config": merv_full_sub_config(name) for name in MervConfig().vision_encoders}
    config = MervConfig(text_config=text, video_token_id=small.video_token_id, **encoders)
    torch.manual_seed(0)
    model = MervForConditionalGeneration(config)
    processor = MervProcessor(
        video_processor=MervVideoProcessor(), tokenizer=tokenizer, num_video_tokens=config.num_video_tokens
    )
    return Setup("merv-full-shaped", model, processor, FULL_VIDEOS, directory, threads=MACHINE_THREADS)


def set_llm_layers(model: MervForConditionalGeneration, layers: int) -> None:
    """Run the first `layers` LLM layers only (Llama runs `layers[: config.num_hidden_layers]`)."""
    model.model.language_model.config.num_hidden_layers = layers


# ---------------------------------------------------------------- data and store


def write_data(setup: Setup, stage: str) -> Path:
    """A training JSON of `EXAMPLES_PER_VIDEO` examples per video (absolute paths; the media root is unused)."""
    entries = [
        {
            "id": f"{video.stem}-{index}",
            "video": str(video),
            "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}],
        }
        for video in setup.videos
        for index in range(EXAMPLES_PER_VIDEO)
    ]
    path = setup.directory / f"{stage}.json"
    path.write_text(json.dumps(entries))
    return path


def build_store(setup: Setup) -> tuple[FeatureStore, Timing]:
    """A float32 store of the setup's videos, and the median time per video to build it (decode + preprocess +
    frozen modules + writing; the last shard is written when the writer closes, counted in the last video)."""
    model, processor = setup.model.eval(), setup.processor
    store = FeatureStore.create(setup.directory / "store", feature_fingerprint(model, processor, torch.float32))
    walls, cpus = [], []
    with store.writer() as writer:
        for index, video in enumerate(setup.videos):
            wall, cpu = time.perf_counter(), time.process_time()
            pixels = processor.video_processor([str(video)], return_tensors="pt")["pixel_values_videos"]
            features, _ = compute_frozen_features(model, pixels)
            writer.add(video, None, {name: tensor[0] for name, tensor in features.items()})
            if index == len(setup.videos) - 1:
                writer.flush()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return store, Timing(sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2])


def datasets(setup: Setup, store: FeatureStore, stage: str) -> dict[str, tuple[VideoLlavaDataset, MervDataCollator]]:
    """`{"live": ..., "store": ...}`: the stage's dataset and collator, from the videos and from the store."""
    data, data_format = write_data(setup, stage), STAGE_FORMATS[stage]
    shapes = setup.model.config.frozen_feature_shapes()
    return {
        "live": (
            VideoLlavaDataset(data, setup.directory, setup.processor, data_format=data_format),
            MervDataCollator.from_processor(setup.processor),
        ),
        "store": (
            VideoLlavaDataset(data, setup.directory, setup.processor, data_format=data_format, feature_store=store),
            MervDataCollator.from_processor(setup.processor, frozen_feature_shapes=shapes),
        ),
    }


def batch_loader(dataset: VideoLlavaDataset, collator: MervDataCollator) -> Callable[[], dict]:
    """Each call: the next example of the dataset (in order, cycling), collated as a batch of 1."""
    positions = itertools.count()
    return lambda: collator([dataset[next(positions) % len(dataset)]])


# ---------------------------------------------------------------- measurements


def loader_time_per_sample(sources: dict, rounds: int) -> dict[str, Timing]:
    """Median time of `__getitem__` + collation per example, live vs store, one pass over the dataset per round."""

    def one_pass(dataset, collator):
        return lambda: [collator([dataset[index]]) for index in range(len(dataset))]

    timings = measure({name: one_pass(*source) for name, source in sources.items()}, rounds)
    size = len(next(iter(sources.values()))[0])
    return {name: Timing(timing.wall / size, timing.cpu / size) for name, timing in timings.items()}


def first_step_losses(model: MervForConditionalGeneration, sources: dict) -> dict[str, float]:
    """The first example's loss in float32, training mode, live and from the store (same weights)."""
    model.train()
    with torch.no_grad():
        return {name: model(**collator([dataset[0]])).loss.item() for name, (dataset, collator) in sources.items()}


def training_step(model, optimizer, load: Callable[[], dict], precision: torch.dtype | None) -> Callable[[], None]:
    """One step: load a batch, forward (under bf16 autocast when `precision` is bf16), backward, SGD step."""

    def step():
        batch = load()
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def stage_steps(
    setup: Setup, sources: dict, stage: str, layer_counts: tuple[int, ...], precision, rounds: int, warmup: bool
) -> dict[tuple[str, int], Timing]:
    """Step timings `{(source, layers): Timing}` of `stage`, live and store alternating at each LLM depth. Without a
    warm-up round (too long at merv-full's size), one untimed store step at the largest depth warms up the kernels."""
    model = setup.model
    set_trainable(model, stage)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    cases = {}
    for layers in layer_counts:
        for name, source in sources.items():
            step = training_step(model, optimizer, batch_loader(*source), precision)

            def at_depth(step=step, layers=layers):
                set_llm_layers(model, layers)
                step()

            cases[(name, layers)] = at_depth
    if not warmup:
        cases[("store", layer_counts[-1])]()
    timings = measure(cases, rounds, warmup=warmup)
    set_llm_layers(model, layer_counts[-1])
    return timings


def fit(timings: dict, layer_counts: tuple[int, int], pick: Callable[[Timing], float]) -> tuple[float, dict]:
    """Least squares of `pick(step time) = fixed[source] + layers x per_layer` over both sources and both depths: one
    per-layer cost (live and store run the same LLM layers on the same sequence; their steps differ only in what
    comes before the LLM), one fixed cost per source. Returns (per_layer, {source: fixed})."""
    sources = sorted({source for source, _ in timings})
    mean_layers = sum(layer_counts) / len(layer_counts)
    slopes = []
    for source in sources:
        values = [pick(timings[(source, layers)]) for layers in layer_counts]
        mean = sum(values) / len(values)
        slopes.append(sum((l - mean_layers) * (v - mean) for l, v in zip(layer_counts, values)))
    spread = len(sources) * sum((layers - mean_layers) ** 2 for layers in layer_counts)
    per_layer = sum(slopes) / spread
    fixed = {
        source: sum(pick(timings[(source, layers)]) - per_layer * layers for layers in layer_counts)
        / len(layer_counts)
        for source in sources
    }
    return per_layer, fixed


def extrapolate(timings: dict, layer_counts: tuple[int, int], target: int) -> dict[str, Timing]:
    """Per source, the step time at `target` LLM layers from `fit` (wall and CPU time alike), with the fitted
    per-layer and fixed costs and each source's own per-layer difference (a consistency check)."""
    low, high = layer_counts
    (wall_slope, wall_fixed), (cpu_slope, cpu_fixed) = (
        fit(timings, layer_counts, lambda t: t.wall),
        fit(timings, layer_counts, lambda t: t.cpu),
    )
    results = {"per layer (shared)": Timing(wall_slope, cpu_slope)}
    for name in wall_fixed:
        results[name] = Timing(wall_fixed[name] + target * wall_slope, cpu_fixed[name] + target * cpu_slope)
        results[f"{name}: fixed"] = Timing(wall_fixed[name], cpu_fixed[name])
        a, b = timings[(name, low)], timings[(name, high)]
        results[f"{name}: own per-layer difference"] = Timing(
            (b.wall - a.wall) / (high - low), (b.cpu - a.cpu) / (high - low)
        )
    return results


def steps_per_second(timing: Timing) -> str:
    """Steps/s from a (measured or extrapolated) step time; a non-positive one comes from a fit that load changes
    between rounds spoiled, and is said so."""
    if timing.wall <= 0:
        return f"not usable: wall time {timing.wall:.2f} s (load changed between rounds; CPU {timing.cpu:.2f} s)"
    return f"{1 / timing.wall:.3g} steps/s ({timing.wall:.2f} s a step, CPU {timing.cpu:.2f} s)"


def store_size_per_thousand() -> dict[str, str]:
    """GB per `STORED_VIDEOS_PER_ROW` videos at merv-full's frozen shapes (exact: elements x bytes, no metadata)."""
    elements = sum(tokens * dim for tokens, dim in MervConfig().frozen_feature_shapes().values())
    return {
        str(dtype).removeprefix("torch."): f"{elements * dtype.itemsize * STORED_VIDEOS_PER_ROW / GIGABYTE:.2f} GB "
        f"per {STORED_VIDEOS_PER_ROW} videos ({elements:,} values a video)"
        for dtype in DTYPES
    }


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIGABYTE


# ---------------------------------------------------------------- one model


def check_losses(setup: Setup, stage: str, sources: dict) -> dict[str, float]:
    """Print the first step's float32 loss live and from the store; stop if they differ."""
    set_trainable(setup.model, stage)
    losses = first_step_losses(setup.model, sources)
    difference = abs(losses["store"] - losses["live"]) / abs(losses["live"])
    report(
        f"{setup.label}, {stage}: first step's loss in float32",
        {**{name: f"{loss:.8f}" for name, loss in losses.items()}, "relative difference": f"{difference:.1e}"},
    )
    if difference > MAX_RELATIVE_LOSS_DIFFERENCE:
        raise SystemExit(f"the store's loss differs from the live one by {difference:.1e}")
    return losses


def bench_model(
    setup: Setup, stages: list[str], layer_counts: tuple[int, ...], precision, rounds: int, warmup: bool
) -> dict:
    """Store build, then for each of `stages` loader and step timings; the loss check in the first stage only when
    there is no warm-up (merv-full: each live float32 forward runs the full-depth encoders), else in every stage."""
    results = {}
    torch.set_num_threads(setup.threads)
    enable_activation_checkpointing(setup.model)
    store, build = build_store(setup)
    bytes_per_video = store.size_bytes() / len(setup.videos)
    report(
        f"{setup.label}: building the store (float32, {len(setup.videos)} videos)",
        {"per video": str(build), "shard bytes per video": f"{bytes_per_video / 2**20:.1f} MiB"},
    )
    results["store_build"] = build
    for stage in stages:
        sources = datasets(setup, store, stage)
        if warmup or stage == stages[0]:
            results[f"{stage}_losses"] = check_losses(setup, stage, sources)
        loader = loader_time_per_sample(sources, max(rounds, SMALL_LOADER_ROUNDS))
        report(
            f"{setup.label}, {stage}: data loader per sample (__getitem__ + collation)",
            {
                **{name: str(timing) for name, timing in loader.items()},
                "live / store": loader["live"].ratio(loader["store"]),
            },
        )
        steps = stage_steps(setup, sources, stage, layer_counts, precision, rounds, warmup)
        rows = {f"{name}, {layers} LLM layers": steps_per_second(t) for (name, layers), t in steps.items()}
        for layers in layer_counts:
            rows[f"store / live steps/s, {layers} layers"] = steps[("live", layers)].ratio(steps[("store", layers)])
        if len(layer_counts) == 2:
            extrapolated = extrapolate(steps, layer_counts, FULL_LLM_LAYERS)
            rows["per LLM layer, fitted to both sources"] = str(extrapolated["per layer (shared)"])
            for name in sources:
                rows[f"{name}, {FULL_LLM_LAYERS} layers (extrapolated)"] = steps_per_second(extrapolated[name])
                rows[f"{name}: fixed cost / own per-layer difference"] = (
                    f"{extrapolated[f'{name}: fixed']} / {extrapolated[f'{name}: own per-layer difference']}"
                )
            rows[f"store / live steps/s, {FULL_LLM_LAYERS} layers (extrapolated)"] = extrapolated["live"].ratio(
                extrapolated["store"]
            )
            results[f"{stage}_extrapolated"] = extrapolated
        rows["peak resident memory so far"] = f"{peak_memory_gb():.1f} GB"
        report(f"{setup.label}, {stage}: training steps (batch 1, {precision or torch.float32})", rows)
        results[stage] = {"loader": loader, "steps": steps}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of merv-full-shaped steps")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages of the small model")
    parser.add_argument("--full-stages", default=STAGES[0], help="stages of merv-full-shaped (align: +5 minutes)")
    parser.add_argument("--quick", action="store_true", help="the small model only (about a minute)")
    args = parser.parse_args()
    stages, full_stages = args.stages.split(","), args.full_stages.split(",")
    if set(stages + full_stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(set(stages + full_stages) - set(STAGES))}; choose from {STAGES}")
    native = cpu_has_native_bf16()
    precision = torch.bfloat16 if native else None
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bf16: {native} -> steps in {'bf16 autocast' if native else 'float32'}"
    )
    report("store size at merv-full's frozen shapes", store_size_per_thousand())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "small").mkdir()
        small = small_setup(folder / "small")
        depth = (small.model.config.text_config.num_hidden_layers,)
        bench_model(small, stages, depth, precision, SMALL_LOADER_ROUNDS, warmup=True)
        if not args.quick:
            (folder / "full").mkdir()
            full = merv_full_shaped_setup(folder / "full")
            bench_model(full, full_stages, LLM_LAYERS, precision, args.repeats, warmup=False)
    print(f"\nrun time {time.perf_counter() - start:.0f} s, peak resident memory {peak_memory_gb():.1f} GB")


if __name__ == "__main__":
    main()
