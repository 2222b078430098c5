"""`MervProcessor`: prompt ids exactly as the authors build them, chat templates, batching, saving; video inputs it
refuses naming the input; and transformers' image-text-to-text pipeline, which answers through its post-processing
exactly as `generate` + `batch_decode(prompt_ids=...)` do (no leading space)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from transformers_merv import (
    MervBatchFeature,
    MervProcessor,
    MervVideoProcessor,
    default_model_path,
    processing_merv,
    read_video,
)
from transformers_merv.media_limits import MediaLimitError
from transformers_merv.processing_merv import PROMPT_FORMATS

from conftest import EXAMPLE_VIDEO, NOT_REGULAR_FILES, SHARED, unpack_pixels


MEDIA = SHARED / "media"
PANCAKE = MEDIA / "flipping_a_pancake.mkv"
VIDEO_0 = MEDIA / "video_0.mov"
LLM = SHARED / "fixtures" / "reference" / "llm"
TINY_INPUTS = SHARED / "fixtures" / "reference" / "tiny-merv-full" / "inputs.safetensors"
NUM_VIDEO_TOKENS = 64  # the tiny fixture model's visual token count
PAD_ID, VIDEO_ID = 1000, 1001
QUESTION = "What is happening in this video?"
IGNORE_INDEX = -100
# the authors' system prompts (`merv/models/backbones/llm/prompting/`), which the chat templates must reproduce
MERV_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)


def _tokenizer(with_video_token: bool = True):
    tokenizer = AutoTokenizer.from_pretrained(LLM)
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    if with_video_token:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    return tokenizer


@pytest.fixture(scope="module")
def processor() -> MervProcessor:
    # Small encoder outputs keep these tests fast; the token logic does not depend on them.
    settings = {name: {"size": {"height": 32, "width": 32}} for name in ("dinov2", "vivit", "siglip")}
    settings["languagebind"] = {"size": {"shortest_edge": 32}}
    return MervProcessor(
        MervVideoProcessor(encoder_settings=settings), _tokenizer(), num_video_tokens=NUM_VIDEO_TOKENS
    )


def _user(text: str, video=None) -> dict:
    content = [{"type": "text", "text": text}]
    return {"role": "user", "content": ([{"type": "video", "path": str(video)}] if video else []) + content}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# --- the authors' prompt builders (merv/models/backbones/llm/prompting/), restated for comparison --------------------


def _authors_turns(prompt_format: str, turns: list[str]) -> list[str]:
    """The wrapped message `add_turn` returns for each alternating human/gpt turn."""
    wrapped = []
    for index, message in enumerate(turns):
        human = index % 2 == 0
        if prompt_format in ("pure", "vicuna", "llama2-chat"):
            message = message.replace("<image>", "").strip()
        if prompt_format == "pure":
            wrapped.append(f"In: {message}\nOut: " if human else f"{message or ' '}</s>")
        elif prompt_format == "vicuna":
            system = VICUNA_SYSTEM_PROMPT.strip() + " " if index == 0 else ""
            wrapped.append(f"{system}USER: {message} ASSISTANT: " if human else f"{message or ' '}</s>")
        elif prompt_format == "llama2-chat":
            system = f"<<SYS>\n{MERV_SYSTEM_PROMPT.strip()}\n<</SYS>>\n\n" if index == 0 else ""
            wrapped.append(f"<s>[INST] {system}{message} [/INST] " if human else f"{message or ' '}</s>")
        elif prompt_format == "llama3.1-chat":
            user = f"<|start_header_id|>user<|end_header_id|>\n\n{message}<|eot_id|>"
            assistant = "<|start_header_id|>assistant<|end_header_id|>\n\n"
            wrapped.append(user + assistant if human else f"{message}<|eot_id|>")
        else:
            wrapped.append(
                f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n" if human else f"{message}<|im_end|>"
            )
    return wrapped


def _authors_prompt(prompt_format: str, turns: list[str]) -> str:
    """`get_prompt()`: the whole conversation as the authors hand it to the tokenizer at inference."""
    prompt = "".join(_authors_turns(prompt_format, turns))
    if prompt_format == "llama3.1-chat":
        return f"<|start_header_id|>system<|end_header_id|>\n\n{MERV_SYSTEM_PROMPT}<|eot_id|>" + prompt
    if prompt_format == "qwen2":
        return f"<|im_start|>system\n{MERV_SYSTEM_PROMPT}<|im_end|>\n" + prompt
    return prompt.removeprefix("<s>").rstrip()


def _authors_training_ids(tokenizer, turns: list[str]) -> tuple[list[int], list[int]]:
    """`FinetuneVideoDataset.__getitem__` with the pure format: each turn rstripped and tokenized on its own."""
    input_ids, labels = [], []
    for index, message in enumerate(_authors_turns("pure", turns)):
        ids = tokenizer(message.rstrip(), add_special_tokens=index == 0)["input_ids"]
        input_ids += ids
        labels += [IGNORE_INDEX] * len(ids) if index % 2 == 0 else ids
    labels[0] = IGNORE_INDEX
    return input_ids, labels


# --- exact ids -------------------------------------------------------------------------------------------------------


def test_chat_template_gives_the_authors_ids_with_video_tokens_after_bos(processor):
    reference = load_file(TINY_INPUTS)["input_ids"]
    expected = torch.cat([reference[:, :1], torch.full((1, NUM_VIDEO_TOKENS), VIDEO_ID), reference[:, 1:]], dim=1)
    conversation = [_user(QUESTION, video=PANCAKE)]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == f"<video>In: {QUESTION}\nOut:"
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(inputs["input_ids"], expected)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(expected))
    vivit = unpack_pixels(inputs["pixel_values_videos"], processor.video_processor.video_pixel_shapes())["vivit"]
    assert vivit.shape == (1, 32, 3, 32, 32)
    direct = processor(text=f"<video>In: {QUESTION}\nOut:", videos=PANCAKE, return_tensors="pt")
    assert torch.equal(direct["input_ids"], expected)


def test_multi_turn_pure_tokenizes_like_the_authors_per_turn_tokenization(processor):
    turns = ["<video>\nWhat is the man doing in the video?", "The man is playing with a red ball.", "Why?", "For fun."]
    plain = _tokenizer(with_video_token=False)  # the authors' tokenizer: "<video>" is plain text to them
    conversation = [(_user if index % 2 == 0 else _assistant)(text) for index, text in enumerate(turns)]
    rendered = processor.apply_chat_template(conversation)
    assert rendered == _authors_prompt("pure", turns)
    expected_ids, _ = _authors_training_ids(plain, turns)
    assert plain(rendered)["input_ids"] == expected_ids
    fixture = load_file(TINY_INPUTS)
    assert expected_ids[: fixture["labelled.input_ids"].shape[1]] == fixture["labelled.input_ids"][0].tolist()


def test_assistant_mask_marks_the_tokens_the_authors_train_on(processor):
    turns = ["What is the man doing?", "Playing with a ball.", "Why?", "For fun."]
    conversation = [_user(turns[0], video=VIDEO_0)] + [
        (_user if index % 2 == 0 else _assistant)(text) for index, text in enumerate(turns) if index
    ]
    inputs = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    expected_ids, labels = _authors_training_ids(processor.tokenizer, turns)
    ids = inputs["input_ids"][0].tolist()
    assert ids == expected_ids[:1] + [VIDEO_ID] * NUM_VIDEO_TOKENS + expected_ids[1:]
    mask = inputs["assistant_masks"][0].tolist()
    assert mask == [0] * (1 + NUM_VIDEO_TOKENS) + [int(label != IGNORE_INDEX) for label in labels[1:]]


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_every_prompt_format_renders_like_the_authors_builder(processor, prompt_format):
    turns = ["  Describe <image>the clip. ", "A pancake flips.", "Then?"]
    conversation = [_user(turns[0], video=PANCAKE), _assistant(turns[1]), _user(turns[2])]
    template = "default" if prompt_format == "pure" else prompt_format
    rendered = processor.apply_chat_template(conversation, chat_template=template, add_generation_prompt=True)
    assert rendered == "<video>" + _authors_prompt(prompt_format, turns)


def test_system_prompt_override_and_pure_puts_it_on_its_own_line(processor):
    conversation = [{"role": "system", "content": "Be brief."}, _user("Hi")]
    assert processor.apply_chat_template(conversation, chat_template="vicuna") == "Be brief. USER: Hi ASSISTANT:"
    # the authors' pure builder has no system prompt: a leading system turn is a line of its own
    assert processor.apply_chat_template(conversation) == "Be brief.\nIn: Hi\nOut:"
    with pytest.raises(Exception, match="role.*system"):
        processor.apply_chat_template([_user("Hi"), *conversation])


# --- batching, padding, markers, decoding ----------------------------------------------------------------------------


def test_batch_pads_left_by_default_and_right_on_request(processor):
    texts = ["<video>In: Hi\nOut:", "<video>In: What is happening here, in detail?\nOut:"]
    left = processor(text=texts, videos=[VIDEO_0, PANCAKE], return_tensors="pt")
    lengths = left["attention_mask"].sum(1)
    assert left["input_ids"].shape[1] == lengths.max() and lengths[0] < lengths[1]
    padding = int(lengths[1] - lengths[0])
    assert (
        left["input_ids"][0, :padding].tolist() == [PAD_ID] * padding
        and left["attention_mask"][0, :padding].sum() == 0
    )
    assert (left["input_ids"] == VIDEO_ID).sum(1).tolist() == [NUM_VIDEO_TOKENS] * 2
    right = processor(text=texts, videos=[VIDEO_0, PANCAKE], return_tensors="pt", padding_side="right")
    assert right["input_ids"][0, -padding:].tolist() == [PAD_ID] * padding
    assert right["pixel_values_videos"].shape[0] == 2


@pytest.mark.parametrize("padding_kwargs", [{"padding": True}, {"text_kwargs": {"padding": True}}])
def test_padding_as_users_pass_it_prints_no_warning(processor, padding_kwargs, capsys, recwarn):
    texts = ["<video>In: Hi\nOut:", "<video>In: What is happening here?\nOut:"]
    with CaptureLogger(logging.get_logger("transformers")) as captured:
        inputs = processor(text=texts, videos=[VIDEO_0, VIDEO_0], return_tensors="pt", **padding_kwargs)
    assert inputs["input_ids"][0, 0] == PAD_ID  # padded, on the left (the default side)
    assert captured.out == "" and capsys.readouterr().err == ""
    assert [str(warning.message) for warning in recwarn] == []


def test_post_process_image_text_to_text_decodes_like_batch_decode(processor):
    prompt = processor(text=["<video>In: Hi\nOut:"], videos=[VIDEO_0], return_tensors="pt")["input_ids"]
    answer = processor.tokenizer(" a red circle</s>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    generated = torch.cat([prompt, answer], dim=1)
    assert processor.post_process_image_text_to_text(generated, prompt_ids=prompt) == ["a red circle"]
    # without prompt ids (the pipeline's call), prompt + answer lose only the space the format puts after "Out:", so
    # that the pipeline, which cuts the decoded prompt off, answers as batch_decode(..., prompt_ids=...) does
    full = processor.post_process_image_text_to_text(generated)
    decoded = processor.batch_decode(generated, skip_special_tokens=True)
    assert decoded[0].endswith("\nOut: a red circle") and full == [decoded[0].replace("Out: a", "Out:a")]


def test_sampling_kwargs_reach_the_video_processor(processor):
    inputs = processor(
        text=["<video>In: a\nOut:", "<video>In: b\nOut:"],
        videos=[PANCAKE, PANCAKE],
        clip_start_sec=[2.0, None],
        clip_end_sec=[4.0, None],
        return_metadata=True,
    )
    assert [metadata.frames_indices[0] for metadata in inputs["video_metadata"]] == [60, 0]


@pytest.mark.parametrize(
    ("text", "videos", "counts"),
    [
        ("<video><video>In: two?\nOut:", [VIDEO_0], "found 2 <video> marker.*and 1 video"),
        ("<video>In: none?\nOut:", None, "found 1 <video> marker.*and 0 video"),
        ("In: where is it?\nOut:", VIDEO_0, "found 0 <video> marker.*and 1 video"),
        (["<video>In: a\nOut:", "In: b\nOut:"], [VIDEO_0, VIDEO_0], "found 1 <video> marker.*and 2 video"),
    ],
)
def test_marker_count_mismatch_states_both_counts(processor, text, videos, counts):
    with pytest.raises(ValueError, match=counts):
        processor(text=text, videos=videos)


def test_returns_a_plain_batch_feature_whose_to_casts_the_pixels(processor):
    inputs = processor(text="<video>In: Hi\nOut:", videos=VIDEO_0, return_tensors="pt")
    assert type(inputs) is BatchFeature
    inputs = inputs.to(torch.bfloat16)
    assert inputs["pixel_values_videos"].dtype == torch.bfloat16
    assert inputs["input_ids"].dtype == torch.long


def test_merv_batch_feature_is_a_deprecated_batch_feature():
    with pytest.warns(FutureWarning, match="`MervBatchFeature` is deprecated.*plain `transformers.BatchFeature`"):
        feature = MervBatchFeature({"pixel_values_videos": torch.zeros(1, 4)})
    assert isinstance(feature, BatchFeature)
    assert feature.to(torch.bfloat16)["pixel_values_videos"].dtype == torch.bfloat16


def test_batch_decode_strips_the_prompt_when_given(processor):
    prompt = processor(
        text=["<video>In: Hi\nOut:", "<video>In: Hello there\nOut:"], videos=[VIDEO_0, VIDEO_0], return_tensors="pt"
    )
    answers = processor.tokenizer(
        [" A pancake.", " Yes."], add_special_tokens=False, padding=True, padding_side="right"
    )
    generated = torch.cat([prompt["input_ids"], torch.tensor(answers["input_ids"])], dim=1)
    assert processor.batch_decode(generated, prompt_ids=prompt["input_ids"], skip_special_tokens=True) == [
        "A pancake.",
        "Yes.",
    ]
    assert "In: Hi" in processor.batch_decode(generated, skip_special_tokens=True)[0]
    with pytest.raises(ValueError, match="do not start with"):
        processor.batch_decode(generated[:, 1:], prompt_ids=prompt["input_ids"])


# --- construction, saving --------------------------------------------------------------------------------------------


def test_tokenizer_without_the_video_token_is_rejected():
    with pytest.raises(ValueError, match="no '<video>' token"):
        MervProcessor(MervVideoProcessor(), _tokenizer(with_video_token=False))


def test_warns_when_the_tokenizer_drops_sentencepiece_prefix_after_special_tokens(monkeypatch):
    warnings = []
    monkeypatch.setattr(processing_merv.logger, "warning", warnings.append)
    MervProcessor(MervVideoProcessor(), _tokenizer())
    assert warnings == []
    tokenizer = AutoTokenizer.from_pretrained(LLM, legacy=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    MervProcessor(MervVideoProcessor(), tokenizer)
    assert len(warnings) == 1 and "legacy=True" in warnings[0]


def test_save_and_load_with_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MervProcessor and type(loaded.video_processor) is MervVideoProcessor
    assert loaded.num_video_tokens == NUM_VIDEO_TOKENS and loaded.video_token_id == VIDEO_ID
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert loaded.chat_template == processor.chat_template
    conversation = [_user(QUESTION, video=VIDEO_0)]
    kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    before, after = (
        processor.apply_chat_template(conversation, **kwargs),
        loaded.apply_chat_template(conversation, **kwargs),
    )
    assert torch.equal(before["input_ids"], after["input_ids"])
    assert torch.equal(before["pixel_values_videos"], after["pixel_values_videos"])


def test_saving_leaves_the_processor_equal_to_the_one_loaded(processor, tmp_path):
    before = processor.to_dict()
    processor.save_pretrained(tmp_path)
    assert "auto_map" in json.loads((tmp_path / "processor_config.json").read_text())  # for trust_remote_code
    assert processor.to_dict() == before == MervProcessor.from_pretrained(tmp_path).to_dict()


def test_saved_chat_templates_are_the_processors(processor, tmp_path):
    """The tokenizer writes its own chat templates into the same folder: a single template set on the processor must
    not be saved beside the tokenizer's named ones."""
    processor = MervProcessor(processor.video_processor, _tokenizer(), num_video_tokens=NUM_VIDEO_TOKENS)
    processor.tokenizer.chat_template = processor.chat_template
    processor.chat_template = "{{ messages[0]['content'] }}"
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "additional_chat_templates").exists()
    loaded = MervProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == loaded.tokenizer.chat_template == processor.chat_template
    assert isinstance(processor.tokenizer.chat_template, dict)  # the processor's tokenizer is left as it was


def test_processor_options_given_when_loading_from_a_model_folder():
    # AutoTokenizer reads the model's config.json with the same keyword arguments (test_configuration.py)
    processor = MervProcessor.from_pretrained(default_model_path(), num_video_tokens=64, video_token="<video>")
    assert processor.num_video_tokens == 64


def test_push_to_hub_uploads_the_processor_and_its_code(processor, fake_hub):
    processor.push_to_hub("user/merv-processor")
    assert {
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "processing_merv.py",
        "video_processing_merv.py",
        "video_io.py",
    } <= {path.name for path in fake_hub.iterdir()}
    loaded = AutoProcessor.from_pretrained(fake_hub)
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert loaded.chat_template == processor.chat_template


def test_saved_processor_loads_as_remote_code_without_the_package(processor, tmp_path):
    processor.save_pretrained(tmp_path / "saved")
    assert {"processing_merv.py", "video_processing_merv.py", "video_io.py"} <= {
        p.name for p in (tmp_path / "saved").iterdir()
    }
    script = f"""
import sys
sys.modules["transformers_merv"] = None  # not installed
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
video, text = {{"type": "video", "path": {str(VIDEO_0)!r}}}, {{"type": "text", "text": "Hi"}}
conversation = [{{"role": "user", "content": [video, text]}}]
inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
print(inputs["input_ids"].tolist(), list(inputs["pixel_values_videos"].shape))
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    conversation = [_user("Hi", video=VIDEO_0)]
    expected = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    assert result.stdout.strip() == f"{expected['input_ids'].tolist()} {list(expected['pixel_values_videos'].shape)}"


# --- video inputs refused naming the input ---------------------------------------------------------------------------


@NOT_REGULAR_FILES
def test_processor_refuses_paths_that_are_not_regular_files(make, default_processor, tmp_path):
    path, kind = make(tmp_path)
    with pytest.raises(MediaLimitError, match=re.escape(f"'{path}' is {kind}, not a regular file")):
        default_processor(text="<video>Q", videos=[str(path)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_start_sec": 5.0, "clip_end_sec": 2.0}, r"`clip_end_sec` = 2.0 must be finite and after `clip_start_sec`"),
        ({"clip_start_sec": 3.0, "clip_end_sec": 3.0}, "the clip window ends before it starts"),
        ({"clip_end_sec": -1.0}, "`clip_end_sec` = -1.0 must be finite and after"),
        ({"clip_start_sec": float("inf")}, "`clip_start_sec` must be a finite number >= 0"),
        ({"fps": 1e6}, r"`fps` must be positive and at most the video's 30 fps"),
        ({"fps": 0}, "`fps` must be positive"),
        ({"fps": float("nan")}, "`fps` must be positive"),
    ],
)  # fmt: skip
def test_out_of_range_sampling_arguments(kwargs, message, default_processor):
    with pytest.raises(ValueError, match=message):
        default_processor(text="<video>Q", videos=[str(PANCAKE)], **kwargs)


@pytest.mark.parametrize(
    "video",
    [np.zeros((16, 64, 3), np.uint8), torch.zeros(16, 64, 3, dtype=torch.uint8), np.zeros((64, 64, 3), np.uint8)],
    ids=["grey-frames-numpy", "grey-frames-torch", "square"],
)
def test_three_dimensional_arrays_are_ambiguous(video, default_processor):
    with pytest.raises(ValueError, match=r"is a 3-D array \[\d+, 64, 3\]: one RGB image .* or grey frames"):
        default_processor(text="<video>Q", videos=video)
    default_processor(text="<video>Q", videos=video[None])  # [1, H, W, 3]: one image, said explicitly


def test_a_text_mode_file_object_is_refused_naming_the_input(default_processor):
    for read in (lambda video: default_processor(text="<video>In: what?\nOut:", videos=video), read_video):
        with open(EXAMPLE_VIDEO, encoding="latin-1") as text_file:
            with pytest.raises(TypeError, match=r"\(.*example\.mp4\) is a file object opened in text mode.*'rb'"):
                read(text_file)


# --- post-processing in transformers' image-text-to-text pipeline ----------------------------------------------------

PIPELINE_QUESTIONS = ["What color is the circle?", "How fast does the red circle move?", "What is happening?"]


@pytest.fixture(scope="module")
def answerer():
    return pipeline("image-text-to-text", model=str(default_model_path()))


def _conversation(question: str) -> list[dict]:
    video = {"type": "video", "path": str(EXAMPLE_VIDEO)}
    return [{"role": "user", "content": [video, {"type": "text", "text": question}]}]


def _generate_and_decode(answerer, conversation: list[dict]) -> str:
    processor = answerer.processor
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = answerer.model.generate(**inputs, do_sample=False)
    return processor.batch_decode(output, prompt_ids=inputs["input_ids"], skip_special_tokens=True)[0]


@pytest.mark.parametrize("question", PIPELINE_QUESTIONS)
def test_pipeline_answer_equals_generate_and_batch_decode(answerer, question):
    conversation = _conversation(question)
    expected = _generate_and_decode(answerer, conversation)
    new_text = answerer(text=conversation, return_full_text=False)[0]["generated_text"]
    chat = answerer(text=conversation)[0]["generated_text"]
    assert new_text == expected == chat[-1]["content"] and expected == expected.strip() != ""
    assert chat[-1]["role"] == "assistant"


def test_post_processing_leaves_prompts_and_answers_alone_but_the_cue_space(answerer):
    processor = answerer.processor
    assert processor.answer_cue() == "\nOut:"
    prompt = processor.tokenizer("In: Q?\nOut:", return_tensors="pt")["input_ids"]
    answered = processor.tokenizer("In: Q?\nOut: red  circle", return_tensors="pt")["input_ids"]
    assert processor.post_process_image_text_to_text(prompt) == ["In: Q?\nOut:"]
    assert processor.post_process_image_text_to_text(answered) == ["In: Q?\nOut:red  circle"]


def test_prompt_ids_are_the_processors_ids_without_decoding_the_video(processor):
    text = "<video>In: What is shown?\nOut:"
    ids = processor.prompt_ids(text)
    assert ids == processor(text=text, videos=EXAMPLE_VIDEO, return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(processor.video_token_id) == processor.num_video_tokens
    assert processor.video_placeholders == processor.video_token * processor.num_video_tokens
