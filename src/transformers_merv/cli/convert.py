"""`merv convert`: the converter (`transformers_merv.conversion.command`, which `conversion/convert_merv_to_hf.py`
runs too)."""

import argparse

from ..conversion.command import add_arguments


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert an authors' MERV run to a transformers folder",
        description="Convert an authors' MERV run (princetonvisualai/merv) to a transformers folder.",
    )
    add_arguments(parser)
