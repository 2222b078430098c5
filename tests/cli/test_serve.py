"""`merv serve`'s command line and settings (no vLLM needed; the server itself: tests/integrations/test_vllm_serving.py)."""

import importlib.util

import pytest

from transformers_merv import default_model_path
from transformers_merv.cli import main
from transformers_merv.integrations.vllm.server import (
    BOS_TEMPLATE_PREFIX,
    cpu_serving_choice,
    server_command,
    serving_chat_template,
)

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


# --- CPU defaults (`cpu_serving_choice`) ------------------------------------------------------------------------------

AVAILABLE = 16 * 2**30
TOKEN_BYTES_FLOAT32 = 2 * 4 * 4 * 32 * 4
"""Keys and values of the default model's 4 layers of 4 heads of 32 dimensions, float32, per token."""


def default_config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(default_model_path())


def test_cpu_choice_sizes_the_kv_cache_from_the_model_and_vllms_limits():
    choice = cpu_serving_choice(default_config(), ["--max_num_seqs", "4", "--max-model-len=256"], AVAILABLE, "float32")
    assert choice.flags == ["--dtype", "float32", "--kv-cache-memory-bytes", str(TOKEN_BYTES_FLOAT32 * 256 * 4)]
    assert "4 sequences (--max-num-seqs) of 256 tokens (--max-model-len)" in choice.reasons[1]
    defaults = cpu_serving_choice(default_config(), ["--dtype", "bfloat16", "-tp", "2"], AVAILABLE, "float32")
    per_process = TOKEN_BYTES_FLOAT32 // 2 * 512 * 128 * 2 // 2  # bf16; 128 sequences per process, heads split in 2
    assert defaults.flags == ["--kv-cache-memory-bytes", str(per_process)]


def test_cpu_choice_caps_the_kv_cache_at_half_the_available_memory():
    available = TOKEN_BYTES_FLOAT32 * 512 * 10
    choice = cpu_serving_choice(default_config(), [], available, "float32")
    assert choice.flags[-1] == str(available // 2)
    assert "capped at 50% of the memory available" in choice.reasons[1]
    with pytest.raises(ValueError, match="one sequence of 512 tokens .* lower --max-model-len"):
        cpu_serving_choice(default_config(), [], TOKEN_BYTES_FLOAT32 * 512, "float32")


@pytest.mark.parametrize(
    "flags",
    [["--kv-cache-memory-bytes", "1000"], ["--gpu-memory-utilization=0.5"], ["--gpu_memory_utilization", "0.5"]],
)
def test_users_kv_cache_and_dtype_flags_win(flags):
    assert cpu_serving_choice(default_config(), [*flags, "--dtype", "float16"], AVAILABLE, "float32").flags == []
