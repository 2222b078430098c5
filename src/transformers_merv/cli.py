"""The `merv` command: ask a question about a video, evaluate on the authors' files, explain the encoder fusion,
convert the authors' checkpoints.

    merv ask VIDEO "QUESTION" ["QUESTION" ...]
    merv chat VIDEO
    merv eval --questions Q.json --answers A.json --video-dir DIR --mode {open-ended,mcq} --output results.json
    merv explain VIDEO "QUESTION" --plot fusion.png
    merv convert --run-dir RUN --llm LLM_DIR [--languagebind DIR ...] --output-dir OUT
    merv serve MODEL [--host HOST] [--port PORT] [extra vLLM flags...]

Every command but `convert` uses the shipped default model unless `--model PATH_OR_HUB_ID` names another.
Errors are one line on stderr (`error: ...`) with exit status 1 (`--debug` or MERV_DEBUG=1: the traceback); bad
flags exit with status 2.
"""

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from .configuration_merv import ENCODER_CONFIG_KEYS
from .conversion import DTYPES, MERV_IMAGE_SIZE, ConversionError, EncoderSources, convert
from .evaluation import (
    DEFAULT_BATCH_SIZE,
    MODES,
    NAIVE_CHECK_MAX_NEW_TOKENS,
    OPEN_ENDED,
    EvaluationInputError,
    default_max_new_tokens,
    load_items,
    load_judge,
    question_answerer,
    question_inputs,
)
from .evaluation_runs import EvaluationRun, EvaluationRunError, Processes, output_lock, summary_table
from .hub import HubUnreachableError, hub_download_kwargs
from .media_limits import is_url
from .model_files import diagnose_model_folder
from .precision import auto_dtype, cpu_has_native
from .video_prefix import VideoChat, answer_questions, encode_pixels, process_video
from .serving import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    server_command,
    server_environment,
    serving_chat_template,
    vllm_is_installed,
)


PROG = "merv"
EXIT_ERROR = 1
DEBUG_ENVIRONMENT_VARIABLE = "MERV_DEBUG"
"""Set to 1 for the full traceback of a failure instead of the one `error:` line (as `--debug` does)."""
AUTO = "auto"
DTYPE_CHOICES = (AUTO, *DTYPES)
MAX_NEW_TOKENS_DEFAULT_HELP = "the model's generation config, else 512 as the authors evaluate"
BAR_WIDTH = 40
"""Characters of the longest text bar in `merv explain`."""
CHAT_PROMPT = "> "
CHAT_EXIT_WORDS = ("exit", "quit")
"""A `merv chat` line that is one of these (any case) ends the chat."""

# Fusion chart (PNG).
CHART_WIDTH = 720
CHART_ROW_HEIGHT = 44
CHART_MARGIN = 20
CHART_LABEL_WIDTH = 150
CHART_VALUE_WIDTH = 70
CHART_TITLE_HEIGHT = 56
CHART_FONT_SIZE = 18
CHART_TITLE_CHARS = 70
CHART_BACKGROUND = (255, 255, 255)
CHART_TEXT = (20, 20, 20)
CHART_AXIS = (160, 160, 160)
CHART_COLORS = ((66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193))


class CliError(Exception):
    """A problem with the user's input, reported as one line."""


# --- model and inputs ------------------------------------------------------------------------------------------------


def default_model() -> str:
    """The folder of the shipped default model (`transformers_merv.default_model_path()`)."""
    try:
        from . import default_model_path
    except ImportError:
        raise CliError("this installation ships no default model; pass --model PATH_OR_HUB_ID") from None
    path = Path(default_model_path())
    if not path.is_dir():
        raise CliError(f"the default model folder {path} is missing; reinstall, or pass --model PATH_OR_HUB_ID")
    return str(path)


def resolve_device(device: str | None) -> torch.device:
    """`device`, or CUDA when available and the CPU otherwise."""
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def check_model_id(model_id: str) -> dict[str, bool]:
    """Fail early on a name that is neither an existing folder nor a valid Hub model id, or a Hub id while the Hub
    is unreachable and the model is not cached. Returns the `from_pretrained` kwargs for where the model is."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(model_id).exists():
        return {}
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise CliError(f"no model folder at {model_id} (and it is not a Hub model id)") from None
    try:
        return hub_download_kwargs(model_id)
    except HubUnreachableError as err:
        raise CliError(f"cannot load model {model_id!r}: {err}") from err


def load_processor(model_id: str):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id, **check_model_id(model_id))
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one line naming the file
        raise _load_error(model_id, err) from err


def load_model(model_id: str, device: torch.device, dtype: str):
    from transformers import AutoModel

    try:
        dtype = auto_dtype(device) if dtype == AUTO else DTYPES[dtype]
        with transformers_logs_shown_on_success():
            model = AutoModel.from_pretrained(model_id, dtype=dtype, **check_model_id(model_id))
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one line naming the file
        raise _load_error(model_id, err) from err
    if device.type == "cpu" and not cpu_has_native(model.dtype):
        print(
            f"note: {model.dtype} on this CPU is slow: it has no native half-precision matmuls (AVX512-BF16/AMX); "
            "--dtype float32 is usually much faster here (benchmarks/README.md)",
            file=sys.stderr,
        )
    return model.to(device).eval()


@contextmanager
def transformers_logs_shown_on_success() -> Iterator[None]:
    """Hold back what transformers logs inside the block (a load report, say) and show it only if the block succeeds:
    a failed load is reported by one `error:` line, not by the loader's report followed by that line."""
    from transformers.utils import logging as transformers_logging

    library_logger = transformers_logging.get_logger("transformers")
    shown_by = list(library_logger.handlers), library_logger.propagate
    held = MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
    library_logger.handlers, library_logger.propagate = [held], False
    try:
        yield
    except BaseException:
        held.buffer.clear()
        raise
    finally:
        library_logger.handlers, library_logger.propagate = shown_by
        for record in held.buffer:
            library_logger.handle(record)


def _load_error(model_id: str, err: Exception) -> CliError:
    """A loading failure as one line: the weight file at fault and what is wrong with it when the folder shows it,
    else the loader's first line."""
    if isinstance(err, CliError):
        return err
    return CliError(f"cannot load model {model_id!r}: {diagnose_model_folder(model_id) or _first_line(err)}")


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def prepare_inputs(processor, video: Path | str, question: str, window: Mapping[str, float | int]):
    """Prompt ids (the model's chat template) and pixels for one video (a file or an http(s) URL) and question."""
    with reading(video):
        return question_inputs(processor, question, video, window)


def read_pixels(processor, video: Path | str, window: Mapping[str, float | int]) -> dict[str, torch.Tensor]:
    """One video's pixels for every encoder, before any model is loaded (a bad video fails fast)."""
    with reading(video):
        return process_video(processor, video, window)


@contextmanager
def reading(video: Path | str) -> Iterator[None]:
    """Reads `video` inside the block: a missing file or a decoding error is one line naming the file."""
    if not is_url(str(video)) and not Path(video).exists():
        raise CliError(f"no video file at {video}")
    try:
        yield
    except ValueError as err:  # VideoDecodingError and sampling windows outside the video
        message = _first_line(err)
        raise CliError(message if str(video) in message else f"{video}: {message}") from err


def answer_question(model, processor, inputs, generation: Mapping[str, Any]) -> tuple[str, Any]:
    """The answer to one prepared question, and the video features it was generated from (`fusion_weights`...)."""
    inputs = inputs.to(model.device, model.dtype)  # casts the pixels only
    with torch.inference_mode():
        features = model.get_video_features(inputs["pixel_values_videos"])
        output = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_encoder_outputs={"video": features},
            **generation,
        )
    return processor.batch_decode(output, prompt_ids=inputs["input_ids"], skip_special_tokens=True)[0], features


def generation_kwargs(args: argparse.Namespace, model) -> dict[str, Any]:
    """The generation flags the user gave (`max_new_tokens` always: the flag, else the model's default)."""
    names = ("do_sample", "temperature", "top_p", "top_k", "num_beams")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name) not in (None, False)}
    return {"max_new_tokens": args.max_new_tokens or default_max_new_tokens(model), **kwargs}


def sampling_window(args: argparse.Namespace) -> dict[str, float | int]:
    names = ("clip_start_sec", "clip_end_sec", "end_frame")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


# --- commands --------------------------------------------------------------------------------------------------------


def _answer_from_args(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """Load the processor, read the video (failing fast), load the model, answer: (model, answer, features)."""
    model_id = args.model or default_model()
    processor = load_processor(model_id)
    inputs = prepare_inputs(processor, args.video, args.question, sampling_window(args))
    model = load_model(model_id, resolve_device(args.device), args.dtype)
    return model, *answer_question(model, processor, inputs, generation_kwargs(args, model))


def _encode_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Load the processor, read the video (failing fast), load the model, encode the video and its prompt prefix:
    (model, processor, `VideoPrefix`)."""
    model_id = args.model or default_model()
    processor = load_processor(model_id)
    pixels = read_pixels(processor, args.video, sampling_window(args))
    model = load_model(model_id, resolve_device(args.device), args.dtype)
    return model, processor, encode_pixels(model, processor, pixels)


def run_ask(args: argparse.Namespace) -> int:
    """Answer every question from one encoding of the video, one answer per line, in order."""
    model, processor, prefix = _encode_from_args(args)
    generation = generation_kwargs(args, model)
    for answer in answer_questions(
        model, processor, prefix, args.questions, batch_size=DEFAULT_BATCH_SIZE, **generation
    ):
        print(one_line(answer))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Answer questions read from stdin, one per line, each in the context of the conversation so far; an empty
    line is skipped, `exit`, `quit` or end of input ends."""
    model, processor, prefix = _encode_from_args(args)
    chat, generation = VideoChat(model, processor, prefix), generation_kwargs(args, model)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chat about {args.video}; {' or '.join(CHAT_EXIT_WORDS)} or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            question = input(CHAT_PROMPT if interactive else "").strip()
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print(file=sys.stderr)
            return 0
        if question.lower() in CHAT_EXIT_WORDS:
            return 0
        if question:
            print(one_line(chat.ask(question, **generation)), flush=True)


def run_explain(args: argparse.Namespace) -> int:
    model, answer, features = _answer_from_args(args)
    print(f"answer: {answer}")
    if features.fusion_weights is None:
        raise CliError(
            f"this model's fusion ({model.config.fusion_type!r}) has no per-encoder weights, so there is no "
            "contribution to show; fusion_type 'cross_attention' (MERV's) or 'scalar' has them"
        )
    weights = dict(zip(model.config.vision_encoders, features.fusion_weights[0].float().tolist()))
    print("encoder contributions (fusion weights):")
    print(format_weights(weights))
    if args.plot is not None:
        draw_fusion_chart(weights, args.question, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`merv eval`, in one process or in each of those a launcher started (`evaluation_runs`)."""
    if args.judge is not None and args.mode != OPEN_ENDED:
        raise CliError("--judge scores open-ended answers only")
    items = load_items(args.questions, args.answers, args.mode, args.limit)
    if not args.video_dir.is_dir():
        raise CliError(f"--video-dir {args.video_dir} is not a directory")
    judge = load_judge(args.judge) if args.judge else None
    model_id = args.model or default_model()
    processes = Processes.from_environment()
    device = resolve_device(processes.device(args.device))
    processes.start(device)
    try:
        with output_lock(args.output) if processes.is_main else nullcontext():
            return _run_eval(args, items, judge, model_id, processes, device)
    finally:
        processes.stop()


def _run_eval(args, items, judge, model_id: str, processes: Processes, device: torch.device) -> int:
    sources = {
        "model": model_id,
        "questions_file": str(args.questions),
        "answers_file": str(args.answers),
        "video_dir": str(args.video_dir),
    }
    settings = {
        "mode": args.mode,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "per_question": args.per_question,
        "dtype": str(auto_dtype(device)) if args.dtype == AUTO else args.dtype,
        "judge": args.judge,
    }
    run = EvaluationRun(
        items, args.mode, args.output, sources, settings, processes, args.batch_size, args.per_question
    )
    run.prepare()
    processor = load_processor(model_id)
    model = load_model(model_id, device, args.dtype)
    answer = question_answerer(
        model,
        processor,
        items,
        args.video_dir,
        args.mode,
        batch_size=args.batch_size,
        generation_kwargs={"max_new_tokens": args.max_new_tokens},
        judge=judge,
        per_question=args.per_question,
    )
    results = run.run(answer)
    if results is not None:
        print(summary_table(results["summary"]))
        print(f"wrote {args.output}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert an authors' run; flags of `add_convert_arguments` (shared with conversion/convert_merv_to_hf.py)."""
    encoders = EncoderSources(
        directories={name: getattr(args, name) for name in ENCODER_CONFIG_KEYS},
        image_sizes=parse_image_sizes(args.image_size),
    )
    report = convert(
        args.run_dir,
        args.llm,
        encoders,
        args.output_dir,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(
        f"converted {args.run_dir} -> {report.output_dir} ({report.num_tensors} tensors, {len(report.shards)} shards)"
    )
    if report.verified_tensors is not None:
        print(f"verified: {report.verified_tensors} tensors equal their sources; forward pass ran")
    if report.commit_url:
        print(f"pushed: {report.commit_url}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Replace this process by vLLM's OpenAI-compatible server on the model (MERV's settings, then the user's)."""
    if not vllm_is_installed():
        raise CliError(
            "merv serve needs vLLM: pip install 'transformers-merv[serve]' (GPU), or the CPU build as the README's "
            "Serving section shows"
        )
    chat_template = serving_chat_template(load_processor(args.model))
    command = server_command(args.model, args.host, args.port, chat_template, args.vllm_args)
    os.execve(command[0], command, server_environment())


# --- output ----------------------------------------------------------------------------------------------------------


def one_line(answer: str) -> str:
    """An answer on one line (its line breaks as spaces), so that answers are one per line."""
    return " ".join(answer.splitlines())


def format_weights(weights: Mapping[str, float]) -> str:
    """One line per encoder: name, weight and a bar scaled to the largest weight."""
    width = max(len(name) for name in weights)
    largest = max(weights.values()) or 1.0
    return "\n".join(
        f"  {name:<{width}}  {weight:.3f}  {'█' * round(BAR_WIDTH * weight / largest)}"
        for name, weight in weights.items()
    )


def draw_fusion_chart(weights: Mapping[str, float], question: str, path: str | Path) -> None:
    """A horizontal bar chart of the fusion weights (PNG, Pillow only). Bars are labelled by the keys of `weights`
    and coloured by encoder: the key itself, or what follows its last ": " (as in "count: dinov2")."""
    height = CHART_TITLE_HEIGHT + CHART_ROW_HEIGHT * len(weights) + CHART_MARGIN
    image = Image.new("RGB", (CHART_WIDTH, height), CHART_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=CHART_FONT_SIZE)
    title = question if len(question) <= CHART_TITLE_CHARS else question[: CHART_TITLE_CHARS - 1] + "…"
    draw.text((CHART_MARGIN, CHART_MARGIN), f"Fusion weights: {title}", fill=CHART_TEXT, font=font)
    left = CHART_MARGIN + max(CHART_LABEL_WIDTH, round(max(font.getlength(name) for name in weights)) + CHART_MARGIN)
    span = CHART_WIDTH - left - CHART_VALUE_WIDTH - CHART_MARGIN
    encoders = list(dict.fromkeys(map(_chart_encoder, weights)))
    for row, (name, weight) in enumerate(weights.items()):
        top = CHART_TITLE_HEIGHT + row * CHART_ROW_HEIGHT
        middle = top + CHART_ROW_HEIGHT // 2
        draw.text((CHART_MARGIN, middle), name, fill=CHART_TEXT, font=font, anchor="lm")
        bar_end = left + max(1, round(span * weight))
        color = CHART_COLORS[encoders.index(_chart_encoder(name)) % len(CHART_COLORS)]
        draw.rectangle((left, top + 8, bar_end, top + CHART_ROW_HEIGHT - 8), fill=color)
        draw.text((bar_end + 8, middle), f"{weight:.3f}", fill=CHART_TEXT, font=font, anchor="lm")
    draw.line((left, CHART_TITLE_HEIGHT, left, height - CHART_MARGIN), fill=CHART_AXIS, width=1)
    try:
        image.save(path, format="PNG")
    except OSError as err:
        raise CliError(f"cannot write {path}: {err}") from err


def _chart_encoder(label: str) -> str:
    """The encoder a chart bar belongs to: its label, or what follows the label's last ": "."""
    return label.rsplit(": ", 1)[-1]


# --- argument parsing ------------------------------------------------------------------------------------------------


def _video_argument(text: str) -> Path | str:
    """A video path, or an http(s) URL kept as it is (a `Path` would merge its `//`)."""
    return text if is_url(text) else Path(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _device(text: str) -> str:
    try:
        torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(_first_line(err)) from None
    return text


def parse_image_sizes(values: Sequence[str]) -> dict[str, int]:
    """`NAME=PIXELS` values of `--image-size` as `{encoder: pixels}`."""
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in ENCODER_CONFIG_KEYS or not size.isdigit():
            raise ConversionError(
                f"--image-size expects NAME=PIXELS with NAME in {list(ENCODER_CONFIG_KEYS)}, got {value!r}"
            )
        if sizes.setdefault(name, int(size)) != int(size):
            raise ConversionError(f"--image-size gives {name} two sizes: {sizes[name]} and {size}")
    return sizes


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's flags (`merv convert` and conversion/convert_merv_to_hf.py)."""
    parser.add_argument("--run-dir", type=Path, required=True, help="authors' run directory")
    parser.add_argument("--llm", type=Path, required=True, help="LLM directory (config + tokenizer)")
    for name in ENCODER_CONFIG_KEYS:
        parser.add_argument(f"--{name}", type=Path, help=f"{name} weights directory (needed if the run uses it)")
    parser.add_argument(
        "--image-size",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=PIXELS",
        help=f"input resolution per encoder (default {MERV_IMAGE_SIZE}, the authors' value); repeated flags add up",
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="store the weights in this dtype (default: as the source)"
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--verify", action="store_true", help="reload the output, compare every tensor, run a forward")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the output to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    _add_debug_argument(parser)


def _add_debug_argument(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """`--debug`, before or after the command (a command's parser leaves the top-level value alone unless given)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help=f"show the full traceback of a failure (also: {DEBUG_ENVIRONMENT_VARIABLE}=1)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    _add_debug_argument(parser)
    parser.add_argument(
        "--model", metavar="PATH_OR_HUB_ID", help="model folder or Hub id (default: the shipped model)"
    )
    parser.add_argument(
        "--device", type=_device, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=AUTO,
        help="weights dtype (default auto: on a CPU bfloat16 where it has native bf16, else float32; on a GPU as saved)",
    )


def _add_question_arguments(parser: argparse.ArgumentParser, questions: str | None = "?") -> None:
    """The video, `questions` (None: no question, "?": one, "+": several) and the model, generation and frame
    sampling flags."""
    parser.add_argument("video", type=_video_argument, help="video file or http(s) URL")
    if questions == "?":
        parser.add_argument("question", help="question about the video")
    elif questions == "+":
        parser.add_argument("questions", nargs="+", metavar="QUESTION", help="questions about the video")
    _add_model_arguments(parser)
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max-new-tokens", type=_positive_int, help=f"longest answer (default: {MAX_NEW_TOKENS_DEFAULT_HELP})"
    )
    generation.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    generation.add_argument("--temperature", type=float)
    generation.add_argument("--top-p", type=float)
    generation.add_argument("--top-k", type=int)
    generation.add_argument("--num-beams", type=_positive_int)
    window = parser.add_argument_group("frame sampling window (the authors' load_video)")
    window.add_argument("--clip-start-sec", type=float, help="sample from this time (seconds)")
    window.add_argument("--clip-end-sec", type=float, help="sample up to this time (seconds)")
    window.add_argument("--end-frame", type=int, help="sample frames 0..END_FRAME instead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_debug_argument(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser(
        "ask",
        help="answer questions about a video",
        description="Answer one or more questions about a video (encoded once): one answer per line, in order.",
    )
    _add_question_arguments(ask, "+")
    ask.set_defaults(run=run_ask)

    chat = commands.add_parser(
        "chat",
        help="chat about a video",
        description="Chat about a video: questions from stdin, one per line; each answer (one line) takes the "
        "conversation so far into account, and reuses its cached prompt. An empty line is skipped; "
        f"{' or '.join(CHAT_EXIT_WORDS)} or end of input ends.",
    )
    _add_question_arguments(chat, None)
    chat.set_defaults(run=run_chat)

    evaluation = commands.add_parser(
        "eval",
        help="evaluate on the authors' question/answer files",
        description="Evaluate on the authors' evaluation files (question and answer lists joined by question_id).",
    )
    evaluation.add_argument("--questions", type=Path, required=True, help="question file (e.g. test_q.json)")
    evaluation.add_argument("--answers", type=Path, required=True, help="answer file (e.g. test_a.json)")
    evaluation.add_argument("--video-dir", type=Path, required=True, help="folder of <video_name>.<extension> files")
    evaluation.add_argument("--mode", choices=MODES, required=True)
    evaluation.add_argument("--output", type=Path, required=True, help="results JSON to write")
    _add_model_arguments(evaluation)
    evaluation.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="questions per batch (default %(default)s)",
    )
    evaluation.add_argument("--limit", type=_positive_int, help="evaluate only the first LIMIT questions")
    evaluation.add_argument(
        "--per-question",
        action="store_true",
        help="encode the video again for every question, as the authors do (same predictions, slower); by default "
        "each video is encoded once and its questions reuse the cached prompt prefix",
    )
    evaluation.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        help=f"longest answer (default: {MAX_NEW_TOKENS_DEFAULT_HELP}; {NAIVE_CHECK_MAX_NEW_TOKENS} for --mode mcq, "
        "whose generation only feeds the naive first-letter check); decoding is greedy",
    )
    evaluation.add_argument(
        "--judge",
        metavar="MODULE:CALLABLE",
        help="open-ended only: judge(question, answer, prediction) -> bool or {'pred': 'yes'|'no', 'score': n}",
    )
    evaluation.set_defaults(run=run_eval)

    explain = commands.add_parser(
        "explain",
        help="answer and show how much each encoder contributes",
        description="Answer a question and show the fusion weights: how much each encoder contributes.",
    )
    _add_question_arguments(explain)
    explain.add_argument("--plot", type=Path, metavar="PNG", help="also draw the weights as a bar chart")
    explain.set_defaults(run=run_explain)

    conversion = commands.add_parser(
        "convert",
        help="convert an authors' MERV run to a transformers folder",
        description="Convert an authors' MERV run (princetonvisualai/merv) to a transformers folder.",
    )
    add_convert_arguments(conversion)
    conversion.set_defaults(run=run_convert)

    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP with vLLM (OpenAI-compatible API)",
        description="Start vLLM's OpenAI-compatible server on MODEL; flags merv does not know go to vLLM.",
    )
    serve.add_argument("model", metavar="MODEL", help="model folder or Hub id")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=_positive_int, default=DEFAULT_PORT, help="port (default %(default)s)")
    serve.set_defaults(run=run_serve, takes_vllm_args=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, vllm_args = parser.parse_known_args(argv)
    if vllm_args and not getattr(args, "takes_vllm_args", False):
        parser.error(f"unrecognized arguments: {' '.join(vllm_args)}")
    args.vllm_args = vllm_args
    return run_reporting_errors(args)


def run_reporting_errors(args: argparse.Namespace) -> int:
    """`args.run(args)`, a failure reported as one `error:` line with exit status 1 (`--debug` or MERV_DEBUG=1:
    the traceback); also the entry of conversion/convert_merv_to_hf.py."""
    try:
        return args.run(args)
    except Exception as err:  # noqa: BLE001 - every failure is one line unless debugging
        if getattr(args, "debug", False) or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "0") not in ("", "0"):
            raise
        print(f"error: {_error_message(err)}", file=sys.stderr)
        return EXIT_ERROR


def _error_message(err: Exception) -> str:
    """The one-line report of a failure: our own errors as they are, anything else with its type and a pointer to
    the traceback."""
    if isinstance(err, (CliError, EvaluationInputError, EvaluationRunError, ConversionError, OSError, ValueError)):
        return _first_line(err)
    return f"{type(err).__name__}: {_first_line(err)} (--debug or {DEBUG_ENVIRONMENT_VARIABLE}=1 shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
