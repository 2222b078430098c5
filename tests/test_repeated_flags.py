"""List-like flags add up when repeated (`merv convert` and conversion/convert_merv_to_hf.py share them), and the
converter's resolution errors name the flag that fixes them."""

import json
from pathlib import Path

import pytest

from transformers_merv.cli import build_parser, main
from transformers_merv.conversion import ConversionError
from transformers_merv.conversion.command import build_parser as build_converter_parser
from transformers_merv.conversion.command import parse_image_sizes

from conftest import FIXTURE_IMAGE_SIZES, FIXTURES, TINY_FULL


def _convert_args(output: Path, sizes: dict[str, int]) -> list[str]:
    encoders = [arg for name in FIXTURE_IMAGE_SIZES for arg in (f"--{name}", str(FIXTURES / "encoders" / name))]
    repeated = [arg for name, size in sizes.items() for arg in ("--image-size", f"{name}={size}")]
    return ["--run-dir", str(TINY_FULL / "run"), "--llm", str(FIXTURES / "llm"), *encoders, *repeated,
            "--output-dir", str(output)]  # fmt: skip


@pytest.mark.parametrize("parser", ["merv convert", "convert_merv_to_hf.py"])
def test_repeated_image_size_flags_add_up(parser, tmp_path):
    args = _convert_args(tmp_path, {"dinov2": 56, "siglip": 64}) + ["--image-size", "vivit=28", "languagebind=32"]
    if parser == "merv convert":
        parsed = build_parser().parse_args(["convert", *args])
    else:
        parsed = build_converter_parser().parse_args(args)
    assert parse_image_sizes(parsed.image_size) == {"dinov2": 56, "siglip": 64, "vivit": 28, "languagebind": 32}


def test_one_encoder_given_two_sizes_is_an_error():
    with pytest.raises(ConversionError, match="gives dinov2 two sizes: 56 and 64"):
        parse_image_sizes(["dinov2=56", "dinov2=64"])
    assert parse_image_sizes(["dinov2=56", "dinov2=56"]) == {"dinov2": 56}


def test_convert_with_one_flag_per_encoder(tmp_path):
    assert main(["convert", *_convert_args(tmp_path / "out", FIXTURE_IMAGE_SIZES)]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {name: config[f"{name}_config"]["image_size"] for name in FIXTURE_IMAGE_SIZES} == FIXTURE_IMAGE_SIZES


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("languagebind", "is built for 32 px but MERV runs it at 224 px; pass --image-size languagebind=32"),
        ("vivit", "MERV runs it on 32 frames at 224 px (its position table cannot be resampled); "
                  "pass --image-size vivit=28"),
    ],
)  # fmt: skip
def test_resolution_errors_name_the_flag_that_fixes_them(tmp_path, capsys, missing, message):
    sizes = {name: size for name, size in FIXTURE_IMAGE_SIZES.items() if name != missing}
    assert main(["convert", *_convert_args(tmp_path / "out", sizes)]) == 1
    assert message in capsys.readouterr().err
