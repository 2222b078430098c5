r"""Convert an authors' MERV run (princetonvisualai/merv) to a transformers directory.

    python conversion/convert_merv_to_hf.py --run-dir RUN --llm LLM_DIR \
        [--languagebind DIR] [--dinov2 DIR] [--vivit DIR] [--siglip DIR] --output-dir OUT \
        [--dtype {float32,bfloat16,float16}] [--verify] [--push-to-hub REPO_ID [--private]]

RUN holds `config.json` and `checkpoints/latest-checkpoint.pt`; LLM_DIR the base LLM's config and tokenizer (its
weights come from the checkpoint); each encoder directory holds that encoder's public weights (LanguageBind: its own
directory; DINOv2 / SigLIP: timm `model.safetensors` or `pytorch_model.bin` + `config.json`; ViViT: a transformers
directory). The output loads with `AutoModel.from_pretrained(OUT)` after `import transformers_merv`, or with
`trust_remote_code=True` without it. `merv convert` takes the same flags (both are defined in `transformers_merv.cli`).
"""

import argparse
import sys

from transformers_merv.cli import add_convert_arguments, run_convert, run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser)
    parser.set_defaults(run=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Errors as `merv convert` reports them: one `error:` line naming the file (`--debug`: the traceback)."""
    return run_reporting_errors(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
