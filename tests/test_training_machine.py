"""Finetuning as the README shows it works on the machine at hand: device and precision come from the machine unless
given, and LoRA's default rank is scaled to the LLM's width with a logged note."""

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from transformers.testing_utils import CaptureLogger

from transformers_merv import default_model_path
from transformers_merv.synthetic import generate_dataset
from transformers_merv.inference.devices import default_device, native_bf16
from transformers_merv.training import LORA_DEFAULTS, lora_defaults
from transformers_merv.training.lora import logger as lora_logger


def _with_cpu_bf16(native: bool):
    """This CPU as one with (or without) AVX512-BF16, and without any other half-precision feature."""
    return mock.patch("transformers_merv.inference.devices.cpu_capabilities", return_value={"avx512_bf16": native})


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_follows_the_cpus_instructions(native):
    with _with_cpu_bf16(native):
        assert native_bf16(torch.device("cpu")) is native
    assert native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("native", [True, False])
def test_machine_defaults_pick_device_and_precision(train_script, native):
    with _with_cpu_bf16(native):
        assert train_script.machine_defaults(use_cpu=True, fp16=None) == {"use_cpu": True, "bf16": native}
        assert train_script.machine_defaults(use_cpu=True, fp16=True) == {"use_cpu": True, "bf16": False}
        on_this_machine = train_script.machine_defaults(use_cpu=None, fp16=None)
    assert on_this_machine["use_cpu"] == (default_device().type == "cpu")


def test_explicit_precision_flags_win(train_script, tmp_path):
    base = ["--model_name_or_path", "m", "--data_path", "d.json", "--media_root", str(tmp_path),
            "--output_dir", str(tmp_path), "--use_cpu", "--global_batch_size", "0"]  # fmt: skip
    with _with_cpu_bf16(True):
        assert train_script.parse_args(base)[2].bf16
        assert not train_script.parse_args(base + ["--bf16", "false"])[2].bf16
    with _with_cpu_bf16(False):
        assert not train_script.parse_args(base)[2].bf16
        _, _, args = train_script.parse_args(base + ["--fp16", "false", "--bf16"])
        assert args.bf16 and not args.fp16


@pytest.mark.parametrize(("width", "rank", "alpha"), [(4096, 128, 256), (8192, 128, 256), (128, 4, 8), (16, 1, 2)])
def test_lora_rank_keeps_its_fraction_of_the_llm_width(width, rank, alpha):
    model = SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(hidden_size=width)))
    with CaptureLogger(lora_logger) as captured:
        defaults = lora_defaults(model)
    assert (defaults["r"], defaults["lora_alpha"], defaults["lora_dropout"]) == (rank, alpha, 0.05)
    noted = f"using r={rank}, lora_alpha={alpha}" in captured.out
    assert noted == (rank != LORA_DEFAULTS["r"])


def test_readme_lora_command_trains_on_this_machine(train_script, tmp_path):
    """`examples/train.py --stage lora ...` without device or precision flags (a step's worth of examples)."""
    generate_dataset(tmp_path / "data", {"train": 1})
    argv = ["--model_name_or_path", str(default_model_path()), "--stage", "lora",
            "--data_path", str(tmp_path / "data" / "train.json"), "--media_root", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "lora"), "--max_steps", "1", "--per_device_train_batch_size", "1",
            "--global_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
    with CaptureLogger(lora_logger) as captured:
        trainer = train_script.main(argv)
    device = default_device()
    assert trainer.state.global_step == 1
    assert trainer.args.use_cpu == (device.type == "cpu") and trainer.args.bf16 == native_bf16(device)
    assert trainer.model.peft_config["default"].r == 4  # the shipped LLM is 128 wide
    assert "using r=4, lora_alpha=8" in captured.out
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
