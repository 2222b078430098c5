"""Evaluation: the authors' file formats and prompts (malformed files reported before any model work, nothing read
outside the video folder), answer normalisation, the judge hook, multiple choice by option likelihood, per-type
summaries, how many tokens each mode generates, skipped videos, and batched runs that match one-by-one runs."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervVideoProcessor
from transformers_merv.cli import main
from transformers_merv.synthetic import generate_dataset
from transformers_merv.evaluation import (
    DEFAULT_MAX_NEW_TOKENS,
    MCQ,
    NAIVE_CHECK_MAX_NEW_TOKENS,
    OPEN_ENDED,
    UNPARSABLE_JUDGE_REPLY,
    EvalItem,
    EvaluationInputError,
    chat_judge,
    default_max_new_tokens,
    evaluate,
    find_video,
    gpt_judge_messages,
    judge_verdict,
    letter_token_ids,
    load_items,
    load_judge,
    mcq_prompt,
    naive_mcq_correct,
    normalize_answer,
    parse_judge_reply,
    pick_letter,
    question_answerer,
    summarize,
)
from transformers_merv.evaluation import answering
from transformers_merv.evaluation.scoring import mcq_entry, open_ended_entry, skipped_entry

from conftest import EXAMPLE_VIDEO, MEDIA, NOT_REGULAR_FILES, error_line, write_eval_files

MAX_NEW_TOKENS = 3
PANCAKE = MEDIA / "flipping_a_pancake.mkv"


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One synthetic test video (three questions of three types), a corrupt video and a question about a missing
    one."""
    root = tmp_path_factory.mktemp("eval-data")
    generate_dataset(root, {"test": 1})
    shutil.copy(MEDIA / "corrupted.mp4", root / "videos" / "broken.mp4")
    for kind in ("", "mcq_"):
        questions = json.loads((root / f"test_{kind}q.json").read_text())
        answers = json.loads((root / f"test_{kind}a.json").read_text())
        for name in ("broken", "absent"):
            questions.append({**questions[0], "video_name": name, "question_id": f"{name}_{kind}q"})
            answers.append({**answers[0], "question_id": f"{name}_{kind}q"})
        _write(root / f"with_bad_videos_{kind}q.json", questions)
        _write(root / f"with_bad_videos_{kind}a.json", answers)
    return root


@pytest.fixture(scope="module")
def tiny(converted_full):
    return AutoModel.from_pretrained(converted_full).eval(), AutoProcessor.from_pretrained(converted_full)


# --- the authors' formats --------------------------------------------------------------------------------------------


def test_mcq_prompt_is_the_authors_text():
    assert mcq_prompt("Is the camera moving?", ["static", "I don't know", "moving"]) == (
        "Is the camera moving? Select the correct answer from the following options. Write your answer as only one "
        "of A, B, C and nothing else.\n\n    A. static\nB. I don't know\nC. moving"
    )


def test_items_join_answers_by_question_id_and_keep_the_sampling_window(tmp_path):
    questions = _write(
        tmp_path / "q.json",
        [
            {
                "question_id": 7,
                "video_name": "v",
                "question": "Q?",
                "options": ["x", "y", "z"],
                "num_option": 2,
                "end_frame": 595,
                "question_type": "motion",
            },
            {"question_id": "8", "video_name": "w", "question": "R?", "options": ["x", "y"], "time": [1.5, 4.0]},
        ],
    )
    answers = _write(tmp_path / "a.json", [{"question_id": "8", "answer_id": 0}, {"question_id": 7, "answer_id": 1}])
    first, second = load_items(questions, answers, MCQ)
    assert (first.question_id, first.answer, first.letters, first.question_type) == ("7", "B", "AB", "motion")
    assert first.sampling == {"end_frame": 595}
    assert second.sampling == {"clip_start_sec": 1.5, "clip_end_sec": 4.0}
    assert second.prompt.endswith("\n\n    A. x\nB. y")
    assert load_items(questions, answers, MCQ, limit=1) == [first]


@pytest.mark.parametrize(
    ("questions", "answers", "message"),
    [
        ([{"question_id": 1, "video_name": "v", "question": "Q?"}], [], r"no answer .*\['1'\]"),
        ([{"question_id": 1, "question": "Q?"}], [{"question_id": 1, "answer": "x"}], "has no 'video_name'"),
        ({"question_id": 1}, [], "must be a JSON list"),
        (
            [{"question_id": 1, "video_name": "v", "question": "Q?"}] * 2,
            [{"question_id": 1, "answer": "x"}],
            r"repeats question_id \['1'\]",
        ),
    ],
)
def test_bad_evaluation_files_are_clear_errors(tmp_path, questions, answers, message):
    with pytest.raises(EvaluationInputError, match=message):
        load_items(_write(tmp_path / "q.json", questions), _write(tmp_path / "a.json", answers), OPEN_ENDED)


@pytest.mark.parametrize("limit", [0, -2])
def test_a_limit_below_one_is_an_error(tmp_path, limit):
    questions = _write(tmp_path / "q.json", [{"question_id": 1, "video_name": "v", "question": "Q?"}])
    answers = _write(tmp_path / "a.json", [{"question_id": 1, "answer": "x"}])
    with pytest.raises(EvaluationInputError, match=f"limit must be >= 1, got {limit}"):
        load_items(questions, answers, OPEN_ENDED, limit=limit)


def test_videos_are_found_by_name_with_any_extension(tmp_path):
    (tmp_path / "clip.txt").write_text("notes")
    (tmp_path / "clip.webm").write_bytes(b"")
    (tmp_path / "other.weird").write_bytes(b"")
    assert find_video(tmp_path, "clip") == tmp_path / "clip.webm"
    assert find_video(tmp_path, "other") == tmp_path / "other.weird"
    with pytest.raises(FileNotFoundError, match=r"no video file missing\.\*"):
        find_video(tmp_path, "missing")


GOOD_QUESTION = {"question_id": 1, "video_name": "v", "question": "Q?", "options": ["a", "b", "c"]}
GOOD_ANSWER = {"question_id": 1, "answer": "a", "answer_id": 0}


@pytest.mark.parametrize(
    ("questions", "answers", "mode", "message"),
    [
        ([], [], OPEN_ENDED, "the question file holds no questions"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "question_id": 2}], OPEN_ENDED,
         r"1 question\(s\) have no answer \(question_id \['1'\]\); 1 answer\(s\) have no question"),
        ([GOOD_QUESTION], [GOOD_ANSWER, {**GOOD_ANSWER, "answer": "b"}], OPEN_ENDED,
         r"gives different answers for question_id \['1'\]"),
        ([GOOD_QUESTION, {**GOOD_QUESTION, "question_id": [1]}], [GOOD_ANSWER], OPEN_ENDED,
         r"question ids must be strings or integers, got \[\[1\]\]"),
        ([{**GOOD_QUESTION, "question": 7}], [GOOD_ANSWER], OPEN_ENDED, "'question' must be a non-empty string, got 7"),
        ([{**GOOD_QUESTION, "question": " "}], [GOOD_ANSWER], OPEN_ENDED, "'question' must be a non-empty string"),
        ([{"question_id": 1, "video_name": "v"}], [GOOD_ANSWER], OPEN_ENDED, "question_id 1: has no 'question'"),
        ([GOOD_QUESTION], [{"question_id": 1, "answer": ["a"]}], OPEN_ENDED, "'answer' must be a non-empty string"),
        ([{**GOOD_QUESTION, "time": "0-5"}], [GOOD_ANSWER], OPEN_ENDED, r"'time' must be \[start, end\] in seconds"),
        ([{**GOOD_QUESTION, "time": [5, 2]}], [GOOD_ANSWER], OPEN_ENDED, r"'time' \[5, 2\] must satisfy 0 <= start"),
        ([{**GOOD_QUESTION, "time": [1]}], [GOOD_ANSWER], OPEN_ENDED, r"'time' must be \[start, end\]"),
        ([{**GOOD_QUESTION, "end_frame": "595"}], [GOOD_ANSWER], OPEN_ENDED, "'end_frame' must be an integer"),
        ([{**GOOD_QUESTION, "end_frame": 5.5}], [GOOD_ANSWER], OPEN_ENDED, "'end_frame' must be an integer"),
        ([{**GOOD_QUESTION, "options": []}], [GOOD_ANSWER], MCQ, "'options' must be a non-empty list of strings"),
        ([{**GOOD_QUESTION, "options": "abc"}], [GOOD_ANSWER], MCQ, "'options' must be a non-empty list"),
        ([{**GOOD_QUESTION, "options": ["a", 2]}], [GOOD_ANSWER], MCQ, "'options' must hold strings"),
        ([{k: v for k, v in GOOD_QUESTION.items() if k != "options"}], [GOOD_ANSWER], MCQ, "has no 'options'"),
        ([{**GOOD_QUESTION, "num_option": 4}], [GOOD_ANSWER], MCQ, "'num_option' must be an integer from 1 to 3"),
        ([{**GOOD_QUESTION, "num_option": "2"}], [GOOD_ANSWER], MCQ, "'num_option' must be an integer"),
        ([{**GOOD_QUESTION, "options": list("abcdef")}], [GOOD_ANSWER], MCQ, "6 options; 1 to 5 are allowed"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "answer_id": 3}], MCQ, "'answer_id' must be an integer from 0 to 2"),
        ([GOOD_QUESTION], [{**GOOD_ANSWER, "answer_id": True}], MCQ, "'answer_id' must be an integer"),
        ([{**GOOD_QUESTION, "video_name": "../outside"}], [GOOD_ANSWER], OPEN_ENDED, "climbs out of --video-dir"),
        ([{**GOOD_QUESTION, "video_name": "a/../../outside"}], [GOOD_ANSWER], OPEN_ENDED, "climbs out of"),
        ([{**GOOD_QUESTION, "video_name": "/etc/passwd"}], [GOOD_ANSWER], OPEN_ENDED, "is an absolute path"),
        ([{**GOOD_QUESTION, "video_name": "C:\\videos\\v"}], [GOOD_ANSWER], OPEN_ENDED, "is an absolute path"),
        ([{**GOOD_QUESTION, "video_name": 12}], [GOOD_ANSWER], OPEN_ENDED, "'video_name' must be a non-empty string"),
    ],
)  # fmt: skip
def test_malformed_evaluation_files_are_reported_before_model_work(tmp_path, questions, answers, mode, message):
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(answers))
    with pytest.raises(EvaluationInputError, match=message):
        load_items(tmp_path / "q.json", tmp_path / "a.json", mode)
    argv = ["eval", "--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "a.json"), "--video-dir",
            str(tmp_path), "--mode", mode, "--output", str(tmp_path / "r.json")]  # fmt: skip
    runs = "transformers_merv.evaluation.runs"
    with mock.patch(f"{runs}.load_model") as load_model, mock.patch(f"{runs}.load_processor") as default_processor:
        assert main(argv) == 1
    load_model.assert_not_called()
    default_processor.assert_not_called()


def test_every_problem_is_listed_in_one_error(tmp_path):
    questions = [{**GOOD_QUESTION, "question_id": i, "question": None} for i in range(12)]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps([{**GOOD_ANSWER, "question_id": i} for i in range(12)]))
    with pytest.raises(EvaluationInputError, match=r"12 problem\(s\): question_id 0: .*; and 2 more$"):
        load_items(tmp_path / "q.json", tmp_path / "a.json", OPEN_ENDED)


def test_identical_repeated_answers_and_nan_times_are_accepted(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{**GOOD_QUESTION, "time": [float("nan"), float("nan")]}]))
    (tmp_path / "a.json").write_text(json.dumps([GOOD_ANSWER, GOOD_ANSWER]))
    (item,) = load_items(tmp_path / "q.json", tmp_path / "a.json", OPEN_ENDED)
    assert item.answer == "a"


@NOT_REGULAR_FILES
def test_eval_refuses_question_files_that_are_not_regular_files(make, tmp_path, capsys):
    path, kind = make(tmp_path)
    argv = ["eval", "--questions", str(path), "--answers", str(path), "--video-dir", str(tmp_path),
            "--mode", "open-ended", "--output", str(tmp_path / "r.json")]  # fmt: skip
    with mock.patch("transformers_merv.evaluation.runs.load_model") as load_model:
        assert main(argv) == 1
    assert f"error: cannot read {path}: {path} is {kind}, not a regular file" in error_line(capsys.readouterr().err)
    load_model.assert_not_called()


def test_nothing_outside_the_video_dir_is_read(tmp_path, default_processor):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(EXAMPLE_VIDEO, tmp_path / "outside.mp4")
    for name in ("../outside", str(tmp_path / "outside")):
        with pytest.raises(ValueError, match="--video-dir"):
            find_video(videos, name)
    items = [EvalItem("q0", "../outside", "Q?", "Q?", "red"), EvalItem("q1", str(tmp_path / "outside"), "Q", "Q", "r")]
    with mock.patch("transformers_merv.video_processing_merv.open_video") as open_video:
        results = evaluate(mock.Mock(), default_processor, items, videos, OPEN_ENDED, progress=False)
    open_video.assert_not_called()
    assert [entry["skipped"] for entry in results["results"]] == [
        "'video_name' '../outside' climbs out of --video-dir with '..'",
        f"'video_name' '{tmp_path / 'outside'}' is an absolute path; it must name a file inside --video-dir",
    ]


# --- open-ended scoring ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [("Red.", "red"), ("The circle", "circle"), ("three", "3"), ("an apple, ", "Apple"), ("1,000", "one thousand")],
)
def test_normalisation(prediction, answer):
    expected = answer != "one thousand"
    assert (normalize_answer(prediction) == normalize_answer(answer)) is expected


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Left-hand", "left hand"),
        ("red/blue", "red blue"),
        ("it's", "it s"),
        ("3.5 m", "3.5 m"),
        ("end.", "end"),
        ("12,345,678 km", "12345678 km"),  # a thousands separator is dropped
        ("red,blue", "red blue"),
    ],
)
def test_punctuation_separates_words(text, normalised):
    """Punctuation becomes a space (so `left-hand` matches `left hand`, never `lefthand`); a decimal point stays."""
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "exact", "normalized"), [("red", True, True), (" The red. ", False, True), ("blue", False, False)]
)
def test_open_ended_entry_scores_by_normalised_match_without_a_judge(prediction, exact, normalized):
    item = EvalItem("7", "clip", "What color?", "What color?", "red", question_type="color")
    assert open_ended_entry(item, prediction, None) == {
        "question_id": "7",
        "question": "What color?",
        "question_type": "color",
        "prediction": prediction,
        "answer": "red",
        "exact_match": exact,
        "normalized_match": normalized,
        "correct": normalized,
    }


def test_mcq_entry_records_the_option_likelihood_pick_and_the_authors_naive_check():
    item = EvalItem("3", "clip", "Which animal?", "Which animal? ...", "B", options=("cat", "dog", "cow"))
    letter_ids = {letter: [10 + index, 20 + index] for index, letter in enumerate("ABCDE")}
    logits = torch.zeros(30)
    logits[[10, 21, 12]] = torch.tensor([1.0, 3.0, 2.0])  # A's, B's second and C's tokens
    assert mcq_entry(item, " A. cat", logits, letter_ids) == {
        "question_id": "3",
        "question": "Which animal?",
        "options": ["cat", "dog", "cow"],
        "prediction": "B",
        "answer": "B",
        "answer_text": "dog",
        "correct": True,
        "letter_logits": {"A": 1.0, "B": 3.0, "C": 2.0},
        "generation": " A. cat",
        "naive_correct": False,
    }


@pytest.mark.parametrize(("verdict", "correct"), [({"pred": "yes", "score": 4}, True), (False, False)])
def test_open_ended_entry_takes_the_judges_verdict(verdict, correct):
    item = EvalItem("7", "clip", "What color?", "What color?", "red")
    calls = []

    def judge(question, answer, prediction):
        calls.append((question, answer, prediction))
        return verdict

    entry = open_ended_entry(item, "blue", judge)  # neither match: only the judge can make it correct
    assert calls == [("What color?", "red", "blue")]
    assert entry["judge"] == verdict and entry["correct"] is correct and entry["normalized_match"] is False
    if isinstance(verdict, dict):
        assert entry["judge"] is not verdict  # a copy: later changes to the judge's dict do not reach the results


def test_judge_results_and_the_authors_gpt_protocol():
    assert judge_verdict(True) and not judge_verdict(False)
    assert judge_verdict({"pred": "yes", "score": 4}) and not judge_verdict({"pred": "no", "score": 5})
    assert judge_verdict({"correct": True})
    assert parse_judge_reply(" {'pred': 'yes', 'score': 4}") == {"pred": "yes", "score": 4}
    assert parse_judge_reply("{'pred': 'no', 'score': 1}") == {"pred": "no", "score": 1}
    assert parse_judge_reply("Sure! yes") == UNPARSABLE_JUDGE_REPLY
    assert parse_judge_reply("{'pred': 'maybe', 'score': 3}") == UNPARSABLE_JUDGE_REPLY
    system, user = gpt_judge_messages("What color?", "red", "crimson")
    assert system["role"] == "system" and "Consider synonyms or paraphrases" in system["content"]
    assert "Question: What color?\nCorrect Answer: red\nPredicted Answer: crimson\n\n" in user["content"]
    assert user["content"].endswith("{'pred': 'yes', 'score': 4}.")
    seen = []
    judge = chat_judge(lambda messages: seen.append(messages) or "{'pred': 'yes', 'score': 5}")
    assert judge("What color?", "red", "crimson") == {"pred": "yes", "score": 5} and seen[0][1] == user


def test_judges_load_from_module_paths():
    assert load_judge("transformers_merv.evaluation:judge_verdict") is judge_verdict
    with pytest.raises(EvaluationInputError, match="MODULE:CALLABLE"):
        load_judge("judge_verdict")
    with pytest.raises(EvaluationInputError, match="cannot load judge"):
        load_judge("transformers_merv.evaluation:nothing")


# --- multiple choice -------------------------------------------------------------------------------------------------


def test_option_likelihood_picks_the_highest_logit_among_the_valid_letters():
    logits = torch.zeros(10)
    logits[[1, 2, 3, 4, 5]] = torch.tensor([1.0, 0.5, 3.0, 2.0, 9.0])  # token 5 is the invalid letter "D"
    letter, scores = pick_letter(logits, {"A": [1], "B": [2, 4], "C": [3]})
    assert letter == "C" and scores == {"A": 1.0, "B": 2.0, "C": 3.0}


def test_every_option_letter_has_tokens_in_the_tiny_tokenizer(tiny):
    model, processor = tiny
    ids = letter_token_ids(processor.tokenizer, "ABCDE", model.config.text_config.vocab_size)
    word_start_a = processor.tokenizer("A", add_special_tokens=False)["input_ids"]
    assert len(word_start_a) == 1 and word_start_a[0] in ids["A"]
    assert all(processor.tokenizer.decode([index]).strip() == letter for letter in ids for index in ids[letter])


def test_option_letters_without_tokens_are_an_error(tiny):
    _, processor = tiny
    with pytest.raises(EvaluationInputError, match=r"no token for the option letters \['A', 'B'\]"):
        letter_token_ids(processor.tokenizer, "AB", vocab_size=3)  # only <unk>, <s>, </s>


def test_naive_check_reads_the_first_character():
    assert naive_mcq_correct(" b. a cat", "B") and not naive_mcq_correct("The answer is B", "B")


# --- summaries -------------------------------------------------------------------------------------------------------


def test_summary_per_question_type_and_skipped_videos():
    results = [
        {"question_id": "1", "question_type": "color", "correct": True, "naive_correct": False},
        {"question_id": "2", "question_type": "color", "correct": False, "naive_correct": False},
        {"question_id": "3", "question_type": "count", "correct": True, "naive_correct": True},
        {"question_id": "4", "question_type": "count", "video_name": "v", "correct": None, "skipped": "no video"},
    ]
    summary = summarize(results, MCQ)
    assert (summary["total"], summary["evaluated"], summary["skipped"], summary["correct"]) == (4, 3, 1, 2)
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["naive_accuracy"] == pytest.approx(1 / 3)
    assert summary["per_question_type"]["color"] == {
        "evaluated": 2,
        "correct": 1,
        "accuracy": 0.5,
        "naive_accuracy": 0.0,
    }
    assert summary["per_question_type"]["count"]["evaluated"] == 1
    assert summary["skipped_questions"] == [{"question_id": "4", "video_name": "v", "reason": "no video"}]


def test_summary_without_evaluated_questions_has_no_accuracies():
    results = [
        {"question_id": "1", "question_type": "color", "video_name": "v", "correct": None, "skipped": "no video"},
        {"question_id": "2", "question_type": "count", "video_name": "w", "correct": None, "skipped": "no video"},
    ]
    summary = summarize(results, MCQ)
    no_rates = {"evaluated": 0, "correct": 0, "accuracy": None, "naive_accuracy": None}
    assert {name: summary[name] for name in no_rates} == no_rates
    assert summary["per_question_type"] == {"color": no_rates, "count": no_rates}


def test_open_ended_summary_with_judge_scores():
    results = [
        {
            "question_id": "1",
            "correct": True,
            "exact_match": False,
            "normalized_match": True,
            "judge": {"pred": "yes", "score": 5},
        },
        {
            "question_id": "2",
            "correct": False,
            "exact_match": False,
            "normalized_match": False,
            "judge": {"pred": "no", "score": 2},
        },
    ]
    summary = summarize(results, OPEN_ENDED)
    assert summary["mode"] == OPEN_ENDED and summary["total"] == 2 and summary["skipped"] == 0
    assert summary["accuracy"] == 0.5 and summary["exact_match_accuracy"] == 0.0
    assert summary["judge_average_score"] == 3.5 and "per_question_type" not in summary


# --- answering ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "judge", "batch_size", "message"),
    [
        ("yes-no", None, 1, r"mode must be one of \('open-ended', 'mcq'\), got 'yes-no'"),
        (MCQ, judge_verdict, 1, "--judge scores open-ended answers only, not mode 'mcq'"),
        (OPEN_ENDED, None, 0, "batch size must be >= 1, got 0"),
    ],
)
def test_the_answerer_refuses_bad_settings_before_using_the_model(mode, judge, batch_size, message):
    with pytest.raises(EvaluationInputError, match=message):
        question_answerer(None, None, [], ".", mode, batch_size=batch_size, judge=judge)


def test_per_question_batches_never_mix_videos():
    items = [EvalItem(f"q{index}", video, "Q?", "Q?", "a") for index, video in enumerate("abaab")]
    model = SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(vocab_size=1)))
    asked = []

    def answer_batch(model, processor, batch, **settings):
        asked.append([item.question_id for item in batch])
        return {item.question_id: skipped_entry(item, "not asked") for item in batch}

    with mock.patch.object(answering, "_evaluate_batch", answer_batch):
        evaluate(model, None, items, ".", OPEN_ENDED, batch_size=2, generation_kwargs={"max_new_tokens": 1},
                 progress=False, per_question=True)  # fmt: skip
    assert asked == [["q0", "q2"], ["q3"], ["q1", "q4"]]


def test_models_without_a_generation_limit_get_the_authors_512(converted_full):
    model = AutoModel.from_pretrained(converted_full)
    assert model.generation_config.max_new_tokens is None
    assert default_max_new_tokens(model) == DEFAULT_MAX_NEW_TOKENS == 512


@pytest.mark.parametrize(
    ("mode", "prefix", "expected"), [(MCQ, "test_mcq", NAIVE_CHECK_MAX_NEW_TOKENS), (OPEN_ENDED, "test", 2)]
)
def test_evaluate_generates_only_what_the_mode_needs(shipped, tmp_path, mode, prefix, expected):
    model, processor = shipped
    generate_dataset(tmp_path, {"test": 1})
    items = load_items(tmp_path / f"{prefix}_q.json", tmp_path / f"{prefix}_a.json", mode)
    with mock.patch.object(model, "generate", wraps=model.generate) as generate, torch.no_grad():
        results = evaluate(model, processor, items, tmp_path / "videos", mode, progress=False)["results"]
    assert {call.kwargs["max_new_tokens"] for call in generate.call_args_list} == {expected}
    assert all(entry["prediction"] is not None for entry in results)


# --- runs with the tiny model ----------------------------------------------------------------------------------------


def test_open_ended_run_scores_with_a_judge_and_skips_unreadable_videos(tiny, dataset):
    model, processor = tiny
    items = load_items(dataset / "with_bad_videos_q.json", dataset / "with_bad_videos_a.json", OPEN_ENDED)
    calls = []

    def judge(question, answer, prediction):
        calls.append((question, answer, prediction))
        return {"pred": "yes" if question.startswith("Which color") else "no", "score": 3}

    output = evaluate(
        model,
        processor,
        items,
        dataset / "videos",
        OPEN_ENDED,
        batch_size=4,
        generation_kwargs={"max_new_tokens": MAX_NEW_TOKENS},
        judge=judge,
        progress=False,
    )
    results, summary = output["results"], output["summary"]
    assert [entry["question_id"] for entry in results] == [item.question_id for item in items]
    evaluated = [entry for entry in results if "skipped" not in entry]
    assert len(calls) == len(evaluated) == len(items) - 2
    assert all(entry["correct"] == entry["question"].startswith("Which color") for entry in evaluated)
    assert all(entry["prediction"] and entry["judge"]["score"] == 3 for entry in evaluated)
    assert summary["skipped"] == 2 and summary["judge_average_score"] == 3
    reasons = {entry["question_id"]: entry["reason"] for entry in summary["skipped_questions"]}
    assert "corrupt" in reasons["broken_q"] and "no video file absent.*" in reasons["absent_q"]
    assert summary["per_question_type"]["color"]["accuracy"] == 1.0


def test_mcq_batches_match_single_questions(tiny, dataset):
    model, processor = tiny
    items = load_items(dataset / "test_mcq_q.json", dataset / "test_mcq_a.json", MCQ)
    runs = [
        evaluate(
            model,
            processor,
            items,
            dataset / "videos",
            MCQ,
            batch_size=size,
            generation_kwargs={"max_new_tokens": MAX_NEW_TOKENS},
            progress=False,
        )["results"]
        for size in (len(items), 1)
    ]
    for batched, alone in zip(*runs):
        assert batched["prediction"] == alone["prediction"] and batched["generation"] == alone["generation"]
        assert batched["letter_logits"] == pytest.approx(alone["letter_logits"], abs=1e-4)
    for entry, item in zip(runs[0], items):
        assert set(entry["letter_logits"]) == set(item.letters)
        assert entry["prediction"] == max(entry["letter_logits"], key=entry["letter_logits"].get)
        assert entry["correct"] == (entry["prediction"] == item.answer)
        assert entry["naive_correct"] == naive_mcq_correct(entry["generation"], item.answer)
        assert entry["answer_text"] == item.options[item.letters.index(item.answer)]


def test_sampling_window_reaches_the_video_processor(tiny, dataset):
    model, processor = tiny
    item = EvalItem("q", "test_00000", "Q?", "Q?", "red", sampling={"end_frame": 5, "clip_start_sec": 0.25})
    with mock.patch.object(
        MervVideoProcessor, "preprocess", autospec=True, side_effect=MervVideoProcessor.preprocess
    ) as preprocess:
        evaluate(
            model,
            processor,
            [item],
            dataset / "videos",
            OPEN_ENDED,
            generation_kwargs={"max_new_tokens": 1},
            progress=False,
        )
    assert preprocess.call_args.kwargs["end_frame"] == 5
    assert preprocess.call_args.kwargs["clip_start_sec"] == 0.25


@pytest.mark.parametrize("mode", [OPEN_ENDED, MCQ])
def test_grouped_by_video_and_per_question_give_the_same_results(tiny, dataset, mode):
    model, processor = tiny
    kind = "mcq_" if mode == MCQ else ""
    items = load_items(dataset / f"with_bad_videos_{kind}q.json", dataset / f"with_bad_videos_{kind}a.json", mode)
    with mock.patch.object(model.model, "get_video_features", wraps=model.model.get_video_features) as encode:
        grouped, per_question = (
            evaluate(
                model,
                processor,
                items,
                dataset / "videos",
                mode,
                batch_size=2,
                generation_kwargs={"max_new_tokens": MAX_NEW_TOKENS},
                progress=False,
                per_question=per_question,
            )
            for per_question in (False, True)
        )
    readable = [item for item in items if item.video_name not in ("broken", "absent")]
    # grouped: one encoding for the one readable video; per question: one per generate call (batches of 2)
    assert encode.call_count == 1 + -(-len(readable) // 2)
    for entry, reference in zip(grouped["results"], per_question["results"]):
        letter_logits = entry.pop("letter_logits", {})
        assert letter_logits == pytest.approx(reference.pop("letter_logits", {}), abs=1e-4)
        assert entry == reference
    assert grouped["summary"] == per_question["summary"]


# --- skipped videos, through `merv eval` on the shipped model --------------------------------------------------------


def test_eval_skips_and_counts_videos_that_are_not_regular_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(EXAMPLE_VIDEO, videos / "good.mp4")
    os.mkfifo(videos / "pipe.mp4")
    (videos / "folder.mp4").mkdir()
    questions, answers = write_eval_files(tmp_path, ["good", "pipe", "folder"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(videos),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["evaluated"] == 1 and summary["skipped"] == 2 and summary["accuracy"] == 1.0
    reasons = {entry["question_id"]: entry["reason"] for entry in summary["skipped_questions"]}
    assert "is a FIFO (named pipe), not a regular file" in reasons["q1"]
    assert "is a directory, not a regular file" in reasons["q2"]


def test_eval_skips_videos_over_the_time_limit(no_time_to_decode, tmp_path):
    shutil.copy(PANCAKE, tmp_path / "pancake.mkv")
    questions, answers = write_eval_files(tmp_path, ["pancake"])
    assert main(["eval", "--questions", str(questions), "--answers", str(answers), "--video-dir", str(tmp_path),
                 "--mode", "open-ended", "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    skipped = json.loads((tmp_path / "r.json").read_text())["summary"]["skipped_questions"]
    assert len(skipped) == 1 and "took longer to read than the limit" in skipped[0]["reason"]
