"""Many questions per video: encode once and answer from the cached prefix vs the authors' per-question protocol
(results: benchmarks/README.md).

Sections (`--sections`, comma-separated):
- `eval`: `evaluate` throughput (questions/s), grouped by video and answered from the cached prefix vs
  `per_question=True`, `QUESTIONS_PER_VIDEO` questions per video, batch 8, 8 new tokens each, on the default model
  (synthetic test videos) and on the merv-full-shaped model (bench_inference.py; the pancake clip through merv-full's
  preprocessing, the fixture LLM's tokenizer); the predictions of both are compared. On the merv-full-shaped model
  the per-question protocol runs one batch (the first 8 questions): its cost per question does not depend on the
  number of questions per video, and a whole run takes most of an hour on 2 cores.
- `ask`: `merv ask VIDEO` with 5 questions in one call vs 5 separate calls (default model, subprocesses).
- `chat`: `VideoChat` turn latency after the first vs answering the same conversation from scratch, both models.
- `gpu` (needs CUDA): `eval` on merv-full itself (random weights, bfloat16 and float32): both protocols on every
  question.

    python benchmarks/bench_video_prefix.py [--repeats 3] [--sections eval,ask,chat] [--small-only]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervConfig, MervForConditionalGeneration, default_model_path
from transformers_merv.conversion import build_processor
from transformers_merv.conversion.sources import build_tokenizer
from transformers_merv.evaluation import OPEN_ENDED, evaluate, load_items
from transformers_merv.inference.prefix_cache import VideoChat, prefill_video, prompt_ids
from transformers_merv.synthetic import generate_dataset

from bench_inference import EXAMPLE_VIDEO, PANCAKE, merv_full_shaped_config, report
from timing import measure


SECTIONS = ("eval", "ask", "chat", "gpu")
QUESTIONS_PER_VIDEO = 20
SMALL_MODEL_VIDEOS = 4
NEW_TOKENS = 8
ASK_QUESTIONS = 5
CHAT_TURNS = 5
BATCH_SIZE = 8
GPU_DTYPES = (torch.bfloat16, torch.float32)
"""bfloat16 is what merv-full is served in; float32 shows whether the two protocols' predictions differ by rounding."""
FIXTURE_LLM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" / "llm"


# ---------------------------------------------------------------- models


def small_model():
    folder = default_model_path()
    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def random_weight_model(
    config: MervConfig, device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32
):
    """A random-weight model of `config` built on `device` in `dtype`, with a processor: merv-full's preprocessing,
    the fixture LLM's tokenizer (its `<video>` and pad ids set in the config); generation limited to that
    tokenizer's ids."""
    tokenizer = build_tokenizer(FIXTURE_LLM, config.text_config.vocab_size)
    config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = MervForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config.suppress_tokens = list(range(len(tokenizer), config.text_config.vocab_size))
    return model, build_processor(config, tokenizer, "pure")


def merv_full_shaped_model():
    """The merv-full-shaped model of bench_inference.py (random weights, float32, CPU)."""
    return random_weight_model(merv_full_shaped_config())


# ---------------------------------------------------------------- eval


def question_files(directory: Path, video_names: list[str], wordings: list[str]) -> list:
    """`QUESTIONS_PER_VIDEO` questions per video (cycling through `wordings`), answer files alongside."""
    questions = [
        {"question_id": f"{name}-{index}", "video_name": name, "question": wordings[index % len(wordings)]}
        for name in video_names
        for index in range(QUESTIONS_PER_VIDEO)
    ]
    (directory / "q.json").write_text(json.dumps(questions))
    (directory / "a.json").write_text(
        json.dumps([{"question_id": q["question_id"], "answer": "-"} for q in questions])
    )
    return load_items(directory / "q.json", directory / "a.json", OPEN_ENDED)


def bench_eval_model(
    label: str, model, processor, items, video_dir: Path, repeats: int, warmup: bool, per_question_items: int
) -> dict:
    """Questions/s of both protocols. The per-question protocol runs the first `per_question_items` questions only
    (at least one whole batch): its cost per question does not depend on how many questions a video has."""
    predictions = {}
    counts = {False: len(items), True: per_question_items}

    def run(per_question: bool, chosen=None):
        output = evaluate(
            model,
            processor,
            chosen or items[: counts[per_question]],
            video_dir,
            OPEN_ENDED,
            batch_size=BATCH_SIZE,
            generation_kwargs={"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS},
            progress=False,
            per_question=per_question,
        )
        predictions[per_question] = [entry["prediction"] for entry in output["results"]]

    if not warmup:  # the first calls' one-off costs, on one question
        run(False, items[:1]), run(True, items[:1])
    with torch.inference_mode():
        timings = measure({"grouped": lambda: run(False), "per-question": lambda: run(True)}, repeats, warmup)
    grouped, per_question = timings["grouped"], timings["per-question"]
    rates = {mode: counts[mode] / timing.wall for mode, timing in ((False, grouped), (True, per_question))}
    cpu_rates = {mode: counts[mode] / timing.cpu for mode, timing in ((False, grouped), (True, per_question))}
    rows = {
        "questions": f"{len(items)} ({QUESTIONS_PER_VIDEO} per video, batch {BATCH_SIZE}, {NEW_TOKENS} new tokens)",
        "grouped, cached prefix": f"{rates[False]:.3f} questions/s ({len(items)} questions: {grouped})",
        "--per-question (authors' protocol)": (
            f"{rates[True]:.3f} questions/s ({per_question_items} questions: {per_question})"
        ),
        "speed-up (questions/s)": f"{rates[False] / rates[True]:.2f}x (CPU {cpu_rates[False] / cpu_rates[True]:.2f}x)",
        "identical predictions": predictions[False][:per_question_items] == predictions[True],
    }
    report(f"eval throughput, {label}", rows)
    return rows


def synthetic_questions(data: Path) -> list[str]:
    """The synthetic test split (`SMALL_MODEL_VIDEOS` videos, under `data / "synthetic"`) and its question wordings."""
    generate_dataset(data / "synthetic", {"test": SMALL_MODEL_VIDEOS}, seed=1)
    return sorted({q["question"] for q in json.loads((data / "synthetic" / "test_q.json").read_text())})


def pancake_questions(data: Path, wordings: list[str]) -> list:
    """`QUESTIONS_PER_VIDEO` questions about the pancake clip, copied to `data / "pancake"`."""
    (data / "pancake").mkdir()
    shutil.copy(PANCAKE, data / "pancake" / PANCAKE.name)
    return question_files(data, [PANCAKE.stem], wordings)


def bench_eval(repeats: int, small_only: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory)
        wordings = synthetic_questions(data)
        videos = sorted(path.stem for path in (data / "synthetic" / "videos").iterdir())
        items = question_files(data, videos, wordings)
        videos_dir = data / "synthetic" / "videos"
        bench_eval_model("default model", *small_model(), items, videos_dir, repeats, True, len(items))
        if small_only:
            return
        items = pancake_questions(data, wordings)
        bench_eval_model("merv-full-shaped", *merv_full_shaped_model(), items, data / "pancake", 1, False, BATCH_SIZE)


def bench_eval_gpu(repeats: int) -> None:
    """Grouped vs per-question evaluation of merv-full itself (random weights) on a CUDA device, every question
    through both protocols, in each of `GPU_DTYPES`."""
    if not torch.cuda.is_available():
        print("\n## eval throughput, merv-full on a GPU: pending (no CUDA device on this machine)")
        return
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory)
        items = pancake_questions(data, synthetic_questions(data))
        for dtype in GPU_DTYPES:
            model, processor = random_weight_model(MervConfig(), torch.device("cuda"), dtype)
            label = f"merv-full, random weights, {dtype}, {torch.cuda.get_device_name()}"
            bench_eval_model(label, model, processor, items, data / "pancake", repeats, True, len(items))
            del model
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- merv ask


def bench_ask(repeats: int) -> None:
    questions = [f"What is the color of object {index + 1}?" for index in range(ASK_QUESTIONS)]
    command = [sys.executable, "-m", "transformers_merv.cli", "ask", str(EXAMPLE_VIDEO)]
    flags = ["--max-new-tokens", str(NEW_TOKENS), "--device", "cpu", "--dtype", "float32"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    answers = {}

    def ask(label: str, *question_lists: list[str]) -> None:
        answers[label] = []
        for chosen in question_lists:
            done = subprocess.run([*command, *chosen, *flags], capture_output=True, text=True, env=environment)
            done.check_returncode()
            answers[label] += done.stdout.splitlines()

    timings = measure(
        {
            "one call": lambda: ask("one call", questions),
            "separate calls": lambda: ask("separate calls", *[[question] for question in questions]),
        },
        repeats,
        warmup=False,
    )
    one, separate = timings["one call"].wall, timings["separate calls"].wall  # the work is in child processes
    report(
        f"merv ask, default model, {ASK_QUESTIONS} questions ({NEW_TOKENS} new tokens; whole processes, wall clock)",
        {
            f"one call with {ASK_QUESTIONS} questions": f"{one:.1f} s",
            f"{ASK_QUESTIONS} separate calls": f"{separate:.1f} s",
            "speed-up": f"{separate / one:.2f}x",
            "same answers": answers["one call"] == answers["separate calls"],
        },
    )


# ---------------------------------------------------------------- merv chat


def bench_chat(label: str, model, processor, video: Path) -> None:
    """Each turn after the first: `VideoChat.ask` vs `generate` over the whole conversation with the video
    (alternating, turn by turn)."""
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    pixels = processor.video_processor([str(video)])["pixel_values_videos"]
    start = time.perf_counter()
    chat = VideoChat(model, processor, prefill_video(model, processor, video))
    chat.ask("What is shown?", **settings)
    first = time.perf_counter() - start
    cached, scratch = [], []
    for turn in range(2, CHAT_TURNS + 1):
        question = f"And what happens in part {turn}?"
        conversation = [*chat.messages, {"role": "user", "content": [{"type": "text", "text": question}]}]
        input_ids = torch.tensor([prompt_ids(processor, conversation)])
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=input_ids, pixel_values_videos=pixels, **settings)
        scratch.append(time.perf_counter() - start)
        start = time.perf_counter()
        chat.ask(question, **settings)
        cached.append(time.perf_counter() - start)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    report(
        f"merv chat turn latency, {label} ({NEW_TOKENS} new tokens per answer)",
        {
            "first turn (encode + prefix + answer)": f"{first * 1000:.0f} ms",
            f"turns 2-{CHAT_TURNS}, reusing the cache (median)": f"{median(cached) * 1000:.0f} ms",
            f"turns 2-{CHAT_TURNS}, whole conversation from scratch (median)": f"{median(scratch) * 1000:.0f} ms",
            "speed-up": f"{median(scratch) / median(cached):.1f}x",
            "prompt tokens at the last turn": len(prompt_ids(processor, chat.messages)),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--small-only", action="store_true", help="skip the merv-full-shaped model")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sections = args.sections.split(",")
    if "ask" in sections:
        bench_ask(args.repeats)
    if "chat" in sections:
        bench_chat("default model", *small_model(), EXAMPLE_VIDEO)
        if not args.small_only:
            bench_chat("merv-full-shaped", *merv_full_shaped_model(), PANCAKE)
    if "eval" in sections:
        bench_eval(args.repeats, args.small_only)
    if "gpu" in sections:
        bench_eval_gpu(args.repeats)


if __name__ == "__main__":
    main()
