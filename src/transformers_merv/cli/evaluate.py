"""`merv eval`: evaluate on the authors' question and answer files, in one process or in each of those a launcher
(`torchrun`, `accelerate launch`) started."""

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from ..evaluation import (
    DEFAULT_BATCH_SIZE,
    MODES,
    NAIVE_CHECK_MAX_NEW_TOKENS,
    OPEN_ENDED,
    load_items,
    load_judge,
    question_answerer,
)
from ..evaluation_runs import EvaluationRun, Processes, output_lock, summary_table
from ..inference.devices import auto_dtype, resolve_device
from ..inference.loading import AUTO, load_model, load_processor
from .arguments import MAX_NEW_TOKENS_DEFAULT_HELP, add_model_arguments, positive_int
from .errors import CliError
from .video_questions import model_id


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate on the authors' question/answer files",
        description="Evaluate on the authors' evaluation files (question and answer lists joined by question_id).",
    )
    parser.add_argument("--questions", type=Path, required=True, help="question file (e.g. test_q.json)")
    parser.add_argument("--answers", type=Path, required=True, help="answer file (e.g. test_a.json)")
    parser.add_argument("--video-dir", type=Path, required=True, help="folder of <video_name>.<extension> files")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--output", type=Path, required=True, help="results JSON to write")
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="questions per batch (default %(default)s)"
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first LIMIT questions")
    parser.add_argument(
        "--per-question",
        action="store_true",
        help="encode the video again for every question, as the authors do (same predictions, slower); by default "
        "each video is encoded once and its questions reuse the cached prompt prefix",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help=f"longest answer (default: {MAX_NEW_TOKENS_DEFAULT_HELP}; {NAIVE_CHECK_MAX_NEW_TOKENS} for --mode mcq, "
        "whose generation only feeds the naive first-letter check); decoding is greedy",
    )
    parser.add_argument(
        "--judge",
        metavar="MODULE:CALLABLE",
        help="open-ended only: judge(question, answer, prediction) -> bool or {'pred': 'yes'|'no', 'score': n}",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.judge is not None and args.mode != OPEN_ENDED:
        raise CliError("--judge scores open-ended answers only")
    items = load_items(args.questions, args.answers, args.mode, args.limit)
    if not args.video_dir.is_dir():
        raise CliError(f"--video-dir {args.video_dir} is not a directory")
    judge = load_judge(args.judge) if args.judge else None
    processes = Processes.from_environment()
    device = resolve_device(processes.device(args.device))
    processes.start(device)
    try:
        with output_lock(args.output) if processes.is_main else nullcontext():
            return _run(args, items, judge, processes, device)
    finally:
        processes.stop()


def _run(args, items, judge, processes: Processes, device: torch.device) -> int:
    sources = {
        "model": model_id(args),
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
    processor = load_processor(model_id(args))
    model = load_model(model_id(args), device, args.dtype)
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
