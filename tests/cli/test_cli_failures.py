"""Every failure of `merv` is one `error: ...` line naming the file and what is wrong, with exit status 1; `--debug`
or MERV_DEBUG=1 shows the traceback. An unknown Hub id fails at once when the Hub cannot be reached."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from transformers_merv import default_model_path
from transformers_merv import cli
from transformers_merv.conversion import command as conversion_command
from transformers_merv.cli import main
from transformers_merv.utils.console import first_line
from transformers_merv.inference.hub_reachability import hub_reachable

from conftest import (
    CONVERTER_SCRIPT,
    EXAMPLE_VIDEO,
    FIXTURE_IMAGE_SIZES,
    FIXTURES,
    MEDIA,
    NOT_REGULAR_FILES,
    TINY_FULL,
    ask_argv,
    error_line,
    explain_argv,
    load_script,
)

VIDEO = EXAMPLE_VIDEO
PANCAKE = MEDIA / "flipping_a_pancake.mkv"
QUESTION = "What color is the circle?"
SUBPROCESS_TIMEOUT_S = 120
"""Far below the ~145 s of download retries an unreachable Hub used to cost; a guard, not a timing test."""


def _run(*args: object, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **environment}
    return subprocess.run(
        [sys.executable, "-m", "transformers_merv.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


class PickledCode:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def _truncate(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return f"{weights} is not a readable safetensors file: Error while deserializing header: incomplete metadata"


def _mismatch(folder: Path) -> str:
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return f"{folder / 'model.safetensors'} does not match {folder / 'config.json'}: lm_head.weight has shape [3, 3]"


def _pickled(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    torch.save({"weight": PickledCode()}, folder / "pytorch_model.bin")
    return f"{folder / 'pytorch_model.bin'} needs pickled code to load, which is refused (weights_only=True)"


def _bad_json(name: str):
    def corrupt(folder: Path) -> str:
        (folder / name).write_text('{"model_type": "merv",')
        return f"{folder / name}' is not a valid JSON file"

    return corrupt


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _mismatch, _pickled, _bad_json("config.json"), _bad_json("processor_config.json")],
    ids=["truncated-safetensors", "mismatched-safetensors", "pickled-code", "config-json", "processor-json"],
)
def test_broken_model_folders_are_one_line_naming_the_file(corrupt, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    expected = corrupt(folder)
    assert main(["ask", str(VIDEO), QUESTION, "--model", str(folder)]) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot load model {str(folder)!r}: ") and expected in line


@pytest.mark.parametrize(("extra_key", "shown"), [(False, False), (True, True)], ids=["failed-load", "loaded"])
def test_the_loaders_report_is_shown_only_when_the_model_loads(tmp_path, extra_key, shown):
    """A failed load is one `error:` line, without transformers' load report before it; a load that succeeds with a
    report (an unexpected tensor here) still shows it."""
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    weights = load_file(folder / "model.safetensors")
    if extra_key:
        weights["extra.weight"] = torch.zeros(2)
    else:
        weights["lm_head.weight"] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    result = _run("ask", VIDEO, QUESTION, "--model", folder)  # a process of its own: transformers' log handler
    assert result.returncode == (0 if extra_key else 1), result.stderr
    assert ("LOAD REPORT" in result.stderr) is shown and ("extra.weight | UNEXPECTED" in result.stderr) is shown
    if not extra_key:
        assert error_line(result.stderr).startswith("error: cannot load model")


def _converter_script_main(argv: list[str]) -> int:
    """conversion/convert_merv_to_hf.py's `main`, given `merv convert`'s arguments."""
    return load_script(CONVERTER_SCRIPT, "convert_merv_to_hf").main(argv[1:])


@pytest.mark.parametrize("entry", [main, _converter_script_main], ids=["merv convert", "convert_merv_to_hf.py"])
def test_truncated_encoder_weights_in_convert_name_the_file(tmp_path, capsys, entry):
    encoders = tmp_path / "encoders"
    shutil.copytree(FIXTURES / "encoders", encoders)
    weights = encoders / "dinov2" / "model.safetensors"  # the file the converter reads (not the extra table)
    weights.write_bytes(weights.read_bytes()[:100])
    flags = [arg for name in FIXTURE_IMAGE_SIZES for arg in (f"--{name}", str(encoders / name))]
    sizes = [f"{name}={size}" for name, size in FIXTURE_IMAGE_SIZES.items()]
    argv = ["convert", "--run-dir", str(TINY_FULL / "run"), "--llm", str(FIXTURES / "llm"), *flags,
            "--image-size", *sizes, "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert entry(argv) == 1
    assert f"error: {weights} is not a readable safetensors file: " in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("entry", [main, _converter_script_main], ids=["merv convert", "convert_merv_to_hf.py"])
def test_unexpected_convert_failures_are_one_line_unless_debugging(monkeypatch, capsys, entry):
    failure = RuntimeError("the shard writer broke\nsecond line")
    monkeypatch.setattr(conversion_command, "convert", mock.Mock(side_effect=failure))
    argv = ["convert", "--run-dir", str(TINY_FULL / "run"), "--llm", str(FIXTURES / "llm"), "--output-dir", "out"]
    assert entry(argv) == 1
    assert error_line(capsys.readouterr().err) == (
        "error: RuntimeError: the shard writer broke (--debug or MERV_DEBUG=1 shows the traceback)"
    )
    with pytest.raises(RuntimeError, match="the shard writer broke"):
        entry([*argv, "--debug"])


def test_malformed_evaluation_json_names_the_file(tmp_path, capsys):
    (tmp_path / "q.json").write_text("[{")
    (tmp_path / "a.json").write_text("[]")
    argv = ["eval", "--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "a.json"), "--video-dir",
            str(tmp_path), "--mode", "open-ended", "--output", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 1
    assert error_line(capsys.readouterr().err).startswith(f"error: cannot read {tmp_path / 'q.json'}: ")


def test_unexpected_failures_are_one_line_unless_debugging(monkeypatch, capsys):
    failure = RuntimeError("the decoder ran out of luck\nsecond line")
    monkeypatch.setattr(cli.ask, "run", mock.Mock(side_effect=failure))
    monkeypatch.delenv("MERV_DEBUG", raising=False)
    assert main(["ask", str(VIDEO), QUESTION]) == 1
    assert error_line(capsys.readouterr().err) == (
        "error: RuntimeError: the decoder ran out of luck (--debug or MERV_DEBUG=1 shows the traceback)"
    )
    for argv in (["--debug", "ask", str(VIDEO), QUESTION], ["ask", str(VIDEO), QUESTION, "--debug"]):
        with pytest.raises(RuntimeError, match="out of luck"):
            main(argv)
    monkeypatch.setenv("MERV_DEBUG", "1")
    with pytest.raises(RuntimeError, match="out of luck"):
        main(["ask", str(VIDEO), QUESTION])


def test_debug_shows_the_traceback_in_a_real_run(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    _truncate(folder)
    quiet = _run("ask", VIDEO, QUESTION, "--model", folder)
    assert quiet.returncode == 1 and "is not a readable safetensors file" in error_line(quiet.stderr)
    loud = _run("ask", VIDEO, QUESTION, "--model", folder, MERV_DEBUG="1")
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr


# --- video paths and arguments the commands refuse -------------------------------------------------------------------


@NOT_REGULAR_FILES
@pytest.mark.parametrize("command", [ask_argv, explain_argv], ids=["ask", "explain"])
def test_ask_and_explain_refuse_paths_that_are_not_regular_files(make, command, tmp_path, capsys):
    path, kind = make(tmp_path)
    assert main(command(path)) == 1
    assert f"'{path}' is {kind}, not a regular file" in error_line(capsys.readouterr().err)


def test_cli_clip_window_ending_before_it_starts(capsys):
    for command in (ask_argv, explain_argv):
        assert main(command(PANCAKE, "--clip-start-sec", "5", "--clip-end-sec", "2")) == 1
        assert "the clip window ends before it starts" in error_line(capsys.readouterr().err)


# --- an unreachable Hub ----------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cache_with(model_id: str, cache: Path) -> None:
    """A Hugging Face cache holding `model_id` (the default model's files), as a download leaves it."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(default_model_path(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_unknown_hub_id_fails_at_once_when_the_hub_is_unreachable(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    assert not hub_reachable(endpoint)
    completed = _run("ask", VIDEO, QUESTION, "--model", "nobody/no-such-model", HF_HUB_OFFLINE="0",
                     HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "cache"))  # fmt: skip
    assert completed.returncode == 1
    line = error_line(completed.stderr)
    assert line.startswith(
        f"error: cannot load model 'nobody/no-such-model': the Hugging Face Hub ({endpoint}) "
        "cannot be reached, and 'nobody/no-such-model' is neither a local folder nor in the local"
    )
    assert "HF_HUB_OFFLINE=1" in line


def test_cached_hub_model_loads_while_the_hub_is_unreachable(tmp_path):
    _cache_with("someone/cached-merv", tmp_path / "cache")
    completed = _run("ask", VIDEO, QUESTION, "--model", "someone/cached-merv", HF_HUB_OFFLINE="0",
                     HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HUB_CACHE=str(tmp_path / "cache"))  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "red"


def test_reachable_hub_is_detected(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}")


def test_a_proxy_is_probed_instead_of_the_hub(monkeypatch):
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert hub_reachable("https://hub.invalid")
    hub_reachable.cache_clear()
    monkeypatch.setenv("NO_PROXY", "hub.invalid")  # now the connection goes to the (unresolvable) host itself
    assert not hub_reachable("https://hub.invalid")


@pytest.mark.parametrize(
    "message, line",
    [
        ("first\nsecond", "first"),
        ("\n  first  \n", "first"),
        ("Validation error for 'x':\n    TypeError: expected int", "Validation error for 'x': TypeError: expected int"),
        ("ends with a colon:", "ends with a colon:"),
        ("", "RuntimeError"),
    ],
)
def test_an_error_is_reported_by_its_first_line_and_the_cause_it_introduces(message, line):
    assert first_line(RuntimeError(message)) == line
