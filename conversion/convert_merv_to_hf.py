"""Convert an authors' MERV run (princetonvisualai/merv) to a transformers directory.

    python conversion/convert_merv_to_hf.py --run-dir RUN --llm LLM_DIR \
        [--languagebind DIR] [--dinov2 DIR] [--vivit DIR] [--siglip DIR] --output-dir OUT

RUN holds `config.json` and `checkpoints/latest-checkpoint.pt`; LLM_DIR the base LLM's config and tokenizer (its
weights come from the checkpoint); each encoder directory holds that encoder's public weights (LanguageBind: its own
directory; DINOv2 / SigLIP: timm `model.safetensors` + `config.json`; ViViT: a transformers directory). The output
loads with `AutoModel.from_pretrained(OUT)` after `import transformers_merv`.
"""

import argparse
import sys
from pathlib import Path

from transformers_merv.configuration_merv import ENCODER_CONFIG_KEYS
from transformers_merv.conversion import MERV_IMAGE_SIZE, ConversionError, EncoderSources, convert


def parse_image_sizes(values: list[str]) -> dict[str, int]:
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in ENCODER_CONFIG_KEYS or not size.isdigit():
            raise ConversionError(f"--image-size expects NAME=PIXELS with NAME in {list(ENCODER_CONFIG_KEYS)}, got {value!r}")
        sizes[name] = int(size)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="authors' run directory")
    parser.add_argument("--llm", type=Path, required=True, help="LLM directory (config + tokenizer)")
    for name in ENCODER_CONFIG_KEYS:
        parser.add_argument(f"--{name}", type=Path, help=f"{name} weights directory (needed if the run uses it)")
    parser.add_argument(
        "--image-size", nargs="*", default=[], metavar="NAME=PIXELS",
        help=f"input resolution per encoder (default {MERV_IMAGE_SIZE}, the authors' value)",
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        encoders = EncoderSources(
            directories={name: getattr(args, name) for name in ENCODER_CONFIG_KEYS},
            image_sizes=parse_image_sizes(args.image_size),
        )
        convert(args.run_dir, args.llm, encoders, args.output_dir)
    except (ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"converted {args.run_dir} -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
