"""`merv eval`: evaluate on the authors' question and answer files, in one process or in each of those a launcher
(`torchrun`, `accelerate launch`) started."""

import argparse
from pathlib import Path

from ..evaluation import DEFAULT_BATCH_SIZE, MODES, NAIVE_CHECK_MAX_NEW_TOKENS, run_evaluation, summary_table
from .arguments import MAX_NEW_TOKENS_DEFAULT_HELP, add_model_arguments, positive_int
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
    store = parser.add_argument_group("feature store")
    store.add_argument(
        "--features",
        metavar="STORE",
        type=Path,
        help="read each video's frozen features from this feature store (built by `merv encode`, with this model, "
        "processor and dtype) instead of decoding and encoding it; videos it lacks are encoded live",
    )
    store.add_argument(
        "--add-to-store",
        action="store_true",
        help="with --features: add the videos the store lacks to it (each process writes its own shard files)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    results = run_evaluation(
        args.questions,
        args.answers,
        args.video_dir,
        args.mode,
        args.output,
        model_id(args),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        limit=args.limit,
        per_question=args.per_question,
        max_new_tokens=args.max_new_tokens,
        judge=args.judge,
        features=args.features,
        add_to_store=args.add_to_store,
    )
    if results is not None:
        print(summary_table(results["summary"]))
        print(f"wrote {args.output}")
    return 0
