"""Synthetic video QA generator and its tokenizer: determinism, splits, balance, file formats, and that every answer
can be read off its decoded video."""

import json
import math
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from transformers import AutoTokenizer

from conftest import EXAMPLES
from transformers_merv.synthetic.video_qa import (
    ANSWER_VOCABULARY,
    ANSWERS,
    COLORS,
    EVALUATION_SPLITS,
    EXAMPLE_SCENE,
    FPS,
    FRAME_SIZE,
    MCQ_OPTIONS,
    NUM_FRAMES,
    QUESTION_TYPES,
    SCENE_KINDS,
    SPEED_THRESHOLD,
    SPLITS,
    generate_dataset,
    make_scenes,
    render_example,
    render_frames,
    scene_questions,
    split_of,
)
from transformers_merv.synthetic.tokenizer import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    PROMPT_FORMAT,
    UNK_TOKEN_ID,
    VIDEO_TOKEN,
    VIDEO_TOKEN_ID,
    WORD_START,
    build_tokenizer,
    conversation_texts,
)


SMALL = {"train": 24, "validation": 8, "test": 16}
BALANCE_SCENES = 400
FOREGROUND_LEVEL = 100
"""A decoded pixel whose brightest channel exceeds this belongs to a shape (the background is black)."""
MIN_SHAPE_PIXELS = 20
FILL_RATIO_SHAPES = ((0.64, "triangle"), (0.89, "circle"), (float("inf"), "square"))
"""A shape's area over its bounding box's: about 0.5 for the triangle, 0.79 for the circle, 1 for the square."""
MAX_MEAN_CODING_ERROR = 2.0
TRAINING_KEYS = {"id", "video", "conversations", "question_type"}
QUESTION_KEYS = {"video_name", "question_id", "question", "question_type"}
ANSWER_KEYS = {"question_id", "answer"}
MCQ_QUESTION_KEYS = QUESTION_KEYS | {"options", "num_option"}
MCQ_ANSWER_KEYS = {"video_name", "question_id", "answer_id", "answer"}


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def load(directory: Path, name: str) -> list[dict]:
    return json.loads((directory / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("synthetic") / "seed0"
    generate_dataset(directory, SMALL, seed=0)
    return directory


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return build_tokenizer(conversation_texts(load(dataset, "train") + load(dataset, "align")))


# ---------------------------------------------------------------------------------------------------------------------
# Determinism and splits


def test_same_seed_gives_identical_files_and_frames(dataset, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, SMALL, seed=0)
    files = sorted(path.relative_to(dataset) for path in dataset.glob("*.json"))
    assert files == sorted(path.relative_to(again) for path in again.glob("*.json"))
    for name in files:
        assert (dataset / name).read_bytes() == (again / name).read_bytes(), name
    videos = sorted(path.name for path in (dataset / "videos").iterdir())
    assert len(videos) == sum(SMALL.values())
    assert videos == sorted(path.name for path in (again / "videos").iterdir())
    for name in videos:
        assert np.array_equal(decode(dataset / "videos" / name), decode(again / "videos" / name)), name


def test_different_seed_gives_different_data(dataset, tmp_path):
    other = tmp_path / "other"
    generate_dataset(other, SMALL, seed=1)
    assert (other / "train.json").read_bytes() != (dataset / "train.json").read_bytes()
    for split in SPLITS:
        name = f"videos/{split}_00000.mp4"
        assert not np.array_equal(decode(other / name), decode(dataset / name))


def test_splits_are_disjoint_and_stable():
    scenes = {split: make_scenes(split, BALANCE_SCENES) for split in SPLITS}
    for split, drawn in scenes.items():
        assert all(split_of(scene) == split for scene in drawn)
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert not set(scenes[SPLITS[first]]) & set(scenes[SPLITS[second]])
    assert make_scenes("test", BALANCE_SCENES) == scenes["test"]


def test_video_names_and_question_ids_are_unique(dataset):
    records = [record for split in SPLITS for record in load(dataset, split)]
    assert len({record["id"] for record in records}) == len(records)
    for split in SPLITS:
        assert {Path(record["video"]).stem.split("_")[0] for record in load(dataset, split)} == {split}


# ---------------------------------------------------------------------------------------------------------------------
# Questions and answers


@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_balanced_within_each_type(split):
    rng = np.random.default_rng(0)
    answers = defaultdict(Counter)
    for scene in make_scenes(split, BALANCE_SCENES):
        for question in scene_questions(scene, rng):
            answers[question.question_type][question.answer] += 1
    assert set(answers) == set(QUESTION_TYPES)
    for question_type, counter in answers.items():
        assert set(counter) == set(ANSWERS[question_type]), question_type
        # each scene kind balances its answers to within one, so the totals differ by at most one per kind
        assert max(counter.values()) - min(counter.values()) <= len(SCENE_KINDS), (question_type, counter)


def test_dataset_info_reports_near_chance_majority_baselines(dataset):
    info = json.loads((dataset / "dataset_info.json").read_text())
    for split, count in SMALL.items():
        assert info["splits"][split]["num_videos"] == count
        assert set(info["splits"][split]["num_questions"]) == set(QUESTION_TYPES)
    per_kind = SMALL["train"] // len(SCENE_KINDS)
    for question_type, baseline in info["splits"]["train"]["majority_baseline"].items():
        # every scene kind asking this type gives each answer at most ceil(per_kind / num_answers) times
        most_per_kind = math.ceil(per_kind / len(ANSWERS[question_type]))
        assert baseline <= most_per_kind / per_kind + 1e-9, (question_type, baseline)


def _foreground(frame: np.ndarray) -> np.ndarray:
    return frame.max(axis=-1) > FOREGROUND_LEVEL


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(_foreground(frame))
    return xs.mean(), ys.mean()


def _shape_of(frame: np.ndarray) -> str:
    ys, xs = np.nonzero(_foreground(frame))
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return next(shape for limit, shape in FILL_RATIO_SHAPES if fill < limit)


def _color_of(frame: np.ndarray) -> str:
    mean = frame[_foreground(frame)].mean(axis=0)
    return min(COLORS, key=lambda name: np.linalg.norm(mean - np.array(COLORS[name])))


def _visible(frames: np.ndarray) -> np.ndarray:
    return _foreground(frames).sum(axis=(1, 2)) >= MIN_SHAPE_PIXELS


def _side(x: float, y: float, horizontal: tuple[str, str], vertical: tuple[str, str]) -> str:
    dx, dy = x - FRAME_SIZE / 2, y - FRAME_SIZE / 2
    if abs(dx) > abs(dy):
        return horizontal[int(dx > 0)]
    return vertical[int(dy > 0)]


def read_answer(question_type: str, frames: np.ndarray) -> str:
    """The answer as seen in the decoded frames, independently of the generator's code."""
    visible = _visible(frames)
    shown = frames[np.argmax(visible)]
    if question_type == "color":
        return _color_of(shown)
    if question_type in ("shape", "order"):
        return _shape_of(shown)
    if question_type == "position":
        return _side(*_centroid(shown), ("left", "right"), ("top", "bottom"))
    if question_type == "count":
        return str(int(np.sum(visible[1:] & ~visible[:-1]) + visible[0]))
    (x0, y0), (x1, y1) = _centroid(frames[0]), _centroid(frames[-1])
    if question_type == "direction":
        return _side(FRAME_SIZE / 2 + x1 - x0, FRAME_SIZE / 2 + y1 - y0, ("left", "right"), ("up", "down"))
    if question_type == "speed":
        return "fast" if np.hypot(x1 - x0, y1 - y0) / (len(frames) - 1) > SPEED_THRESHOLD else "slow"
    raise AssertionError(question_type)


def test_every_answer_can_be_read_off_the_decoded_video(dataset):
    records = [record for split in SPLITS for record in load(dataset, split)]
    by_video = defaultdict(dict)
    for record in records:
        by_video[record["video"]][record["question_type"]] = record["conversations"][1]["value"]
    checked = Counter()
    for video, answers in by_video.items():
        frames = decode(dataset / video)
        # two-shape videos: only the first appearance is unambiguous in a single frame
        for question_type in ["order"] if "order" in answers else answers:
            assert read_answer(question_type, frames) == answers[question_type], (video, question_type, answers)
            checked[question_type] += 1
    assert set(checked) == set(QUESTION_TYPES)


def test_videos_are_h264_at_the_stated_size_and_close_to_the_rendering(dataset):
    scene = make_scenes("test", SMALL["test"])[0]
    path = dataset / "videos" / "test_00000.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.width, stream.height, stream.average_rate) == (FRAME_SIZE, FRAME_SIZE, FPS)
    frames = decode(path)
    assert frames.shape == (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3)
    error = np.abs(frames.astype(np.int16) - render_frames(scene).astype(np.int16)).mean()
    assert error < MAX_MEAN_CODING_ERROR


def test_example_video_answers(tmp_path):
    questions = {question.question_type: question for question in render_example(tmp_path / "example.mp4")}
    assert {kind: question.answer for kind, question in questions.items()} == {
        "color": "red",
        "shape": "circle",
        "direction": "right",
        "speed": "fast",
    }
    assert questions["color"].text == "What color is the circle?"
    frames = decode(tmp_path / "example.mp4")
    assert all(read_answer(kind, frames) == question.answer for kind, question in questions.items())
    assert split_of(EXAMPLE_SCENE) == "test"


# ---------------------------------------------------------------------------------------------------------------------
# File formats


def test_training_files_follow_the_video_llava_format(dataset):
    for split in SPLITS:
        records = load(dataset, split)
        assert {record["question_type"] for record in records} == set(QUESTION_TYPES)
        for record in records:
            assert set(record) == TRAINING_KEYS and isinstance(record["id"], str)
            assert (dataset / record["video"]).is_file() and record["video"].startswith("videos/")
            human, gpt = record["conversations"]
            assert set(human) == set(gpt) == {"from", "value"}
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            assert human["value"].startswith("<video>\n") and human["value"].endswith("?")
            assert gpt["value"] in ANSWERS[record["question_type"]]
    captions = load(dataset, "align")
    assert len(captions) == SMALL["train"]
    assert all(set(record) == TRAINING_KEYS and len(record["conversations"]) == 2 for record in captions)


@pytest.mark.parametrize("split", EVALUATION_SPLITS)
def test_evaluation_files_follow_the_authors_format(dataset, split):
    questions, answers = load(dataset, f"{split}_q"), load(dataset, f"{split}_a")
    assert [question["question_id"] for question in questions] == [answer["question_id"] for answer in answers]
    training = {record["id"]: record for record in load(dataset, split)}
    for question, answer in zip(questions, answers):
        assert set(question) == QUESTION_KEYS and set(answer) == ANSWER_KEYS
        assert all(isinstance(value, str) for value in (*question.values(), *answer.values()))
        assert (dataset / "videos" / f"{question['video_name']}.mp4").is_file()
        record = training[question["question_id"]]
        assert record["conversations"][0]["value"] == f"<video>\n{question['question']}"
        assert record["conversations"][1]["value"] == answer["answer"]


@pytest.mark.parametrize("split", EVALUATION_SPLITS)
def test_mcq_files_follow_the_authors_format(dataset, split):
    open_answers = {answer["question_id"]: answer["answer"] for answer in load(dataset, f"{split}_a")}
    questions, answers = load(dataset, f"{split}_mcq_q"), load(dataset, f"{split}_mcq_a")
    assert [question["question_id"] for question in questions] == list(open_answers)
    for question, answer in zip(questions, answers):
        assert set(question) == MCQ_QUESTION_KEYS and set(answer) == MCQ_ANSWER_KEYS
        options = question["options"]
        assert 3 <= question["num_option"] == len(options) <= 5
        assert sorted(options) == sorted(MCQ_OPTIONS[question["question_type"]])
        assert isinstance(answer["answer_id"], int) and options[answer["answer_id"]] == answer["answer"]
        assert answer["answer"] == open_answers[question["question_id"]]
        assert answer["question_id"] == question["question_id"] and answer["video_name"] == question["video_name"]


def test_mcq_answer_positions_are_balanced_within_each_type(dataset):
    positions = defaultdict(Counter)
    for question, answer in zip(load(dataset, "test_mcq_q"), load(dataset, "test_mcq_a")):
        positions[question["question_type"]][answer["answer_id"]] += 1
    for question_type, counter in positions.items():
        counts = [counter[position] for position in range(len(MCQ_OPTIONS[question_type]))]
        assert max(counts) - min(counts) <= 1, (question_type, counter)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _generate_with_the_example(*arguments: str) -> subprocess.CompletedProcess:
    script = EXAMPLES / "synthetic_video_qa.py"
    return subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True)


def test_cli_generates_a_dataset(tmp_path):
    output = tmp_path / "cli"
    result = _generate_with_the_example("--output-dir", str(output), "--train", "4", "--validation", "0", "--test", "4")
    assert result.returncode == 0, result.stderr
    assert len(list((output / "videos").iterdir())) == 8 and load(output, "validation_q") == []
    assert "train: 4 videos" in result.stdout


def test_cli_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "something").write_text("keep me")
    result = _generate_with_the_example("--output-dir", str(tmp_path))
    assert result.returncode == 1
    assert "not an empty directory" in result.stderr and "Traceback" not in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["something"]


def test_rejects_unknown_splits_and_negative_counts(tmp_path):
    with pytest.raises(ValueError, match="num_videos"):
        generate_dataset(tmp_path / "a", {"training": 3})
    with pytest.raises(ValueError, match="num_videos"):
        generate_dataset(tmp_path / "b", {"train": -1})


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_special_tokens(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        UNK_TOKEN_ID,
        BOS_TOKEN_ID,
        EOS_TOKEN_ID,
        PAD_TOKEN_ID,
    )
    assert tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) == VIDEO_TOKEN_ID
    assert VIDEO_TOKEN in tokenizer.all_special_tokens
    ids = tokenizer(f"{VIDEO_TOKEN}In: hi</s>").input_ids
    assert ids[:2] == [BOS_TOKEN_ID, VIDEO_TOKEN_ID] and ids[-1] == EOS_TOKEN_ID
    assert tokenizer("In")["input_ids"][1:] == ids[2:3]  # text after <video> tokenizes as at the start
    assert tokenizer("red").input_ids[0] == BOS_TOKEN_ID and EOS_TOKEN_ID not in tokenizer("red").input_ids
    assert len(tokenizer) <= 512


def test_tokenizer_round_trips_seen_and_unseen_text(tokenizer, dataset):
    texts = [PROMPT_FORMAT.format(question=question["question"]) for question in load(dataset, "test_q")]
    texts += [answer["answer"] for answer in load(dataset, "test_a")] + ["In: Où est le cercle 🟥?\nOut: à gauche"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert UNK_TOKEN_ID not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_prompts_need_no_byte_fallback_and_evaluation_prompts_keep_words_whole(tokenizer, dataset):
    for text in conversation_texts(load(dataset, "test")):
        assert not any(token.startswith("<0x") for token in tokenizer.tokenize(text)), text
    for question in load(dataset, "test_q"):
        tokens = tokenizer.tokenize(PROMPT_FORMAT.format(question=question["question"]))
        assert WORD_START not in tokens, tokens  # a lone "▁" would mean a word learnt only after "<video>\n"


def test_every_answer_is_a_single_token_alone_and_after_the_prompt(tokenizer):
    prompt = PROMPT_FORMAT.format(question="What color is the circle?")
    prompt_ids = tokenizer(prompt).input_ids
    for answer in ANSWER_VOCABULARY:
        alone = tokenizer(answer, add_special_tokens=False).input_ids
        assert len(alone) == 1, answer
        assert tokenizer(f"{prompt} {answer}").input_ids == prompt_ids + alone, answer


def test_tokenizer_saves_and_reloads(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = f"{VIDEO_TOKEN}In: Which way does the blue square move?\nOut: left</s>"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.pad_token_id == PAD_TOKEN_ID and reloaded.convert_tokens_to_ids(VIDEO_TOKEN) == VIDEO_TOKEN_ID


def test_tokenizer_rejects_vocabularies_that_split_answers():
    with pytest.raises(ValueError, match="single tokens"):
        build_tokenizer(["In: What color is it?\nOut: red"], vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["red"], vocab_size=100)
