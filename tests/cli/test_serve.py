"""`merv serve`'s command line and settings (no vLLM needed; the server itself: tests/integrations/test_vllm_serving.py)."""

import importlib.util

import pytest

from transformers_merv import default_model_path
from transformers_merv.cli import main
from transformers_merv.integrations.vllm.server import BOS_TEMPLATE_PREFIX, server_command, serving_chat_template

from conftest import EXAMPLE_VIDEO


def test_chat_template_is_the_default_one_with_bos_written_by_it(default_processor):
    processor = default_processor
    template = serving_chat_template(processor)
    assert template == BOS_TEMPLATE_PREFIX + processor.chat_template["default"]
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What color?"}]}]
    rendered = processor.apply_chat_template(conversation, chat_template=template, tokenize=False)
    without_special_tokens = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    text = processor.apply_chat_template(conversation, tokenize=False)
    expected = processor(text=text, videos=[EXAMPLE_VIDEO])["input_ids"][0]
    # vLLM tokenizes the rendered chat without special tokens, then expands the <video> token to the visual tokens
    video = processor.video_token_id
    expanded = [i for t in without_special_tokens for i in [t] * (processor.num_video_tokens if t == video else 1)]
    assert expanded == list(expected)


def test_users_flags_come_after_merv_defaults():
    command = server_command("model", "127.0.0.1", 8000, "TEMPLATE", ["--allowed-local-media-path", "/data"])
    assert command[command.index("--model") + 1] == "model"
    assert command[-2:] == ["--allowed-local-media-path", "/data"]  # vLLM keeps the last value of a flag
    assert command.index("--chat-template") < len(command) - 2


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the message shown without vLLM")
def test_serve_without_vllm_says_how_to_install_it(capsys):
    assert main(["serve", str(default_model_path()), "--tensor-parallel-size", "2"]) == 1
    assert "transformers-merv[serve]" in capsys.readouterr().err


def test_other_commands_still_reject_unknown_flags(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["ask", "video.mp4", "question", "--tensor-parallel-size", "2"])
    assert raised.value.code == 2
    assert "--tensor-parallel-size" in capsys.readouterr().err
