r"""Convert an authors' MERV run (princetonvisualai/merv) to a transformers directory.

    python conversion/convert_merv_to_hf.py --run-dir RUN --llm LLM_DIR \
        [--languagebind DIR] [--dinov2 DIR] [--vivit DIR] [--siglip DIR] --output-dir OUT \
        [--dtype {float32,bfloat16,float16}] [--verify] [--push-to-hub REPO_ID [--private]]

RUN holds `config.json` and `checkpoints/latest-checkpoint.pt`; LLM_DIR the base LLM's config and tokenizer (its
weights come from the checkpoint); each encoder directory holds that encoder's public weights (LanguageBind: its own
directory; DINOv2 / SigLIP: timm `model.safetensors` or `pytorch_model.bin` + `config.json`; ViViT: a transformers
directory). The output loads with `AutoModel.from_pretrained(OUT)` after `import transformers_merv`, or with
`trust_remote_code=True` without it. `merv convert` takes the same flags (`transformers_merv.conversion.command`).
"""

import sys

from transformers_merv.conversion.command import main as convert_main


def main(argv: list[str] | None = None) -> int:
    """Errors as `merv convert` reports them: one `error:` line naming the file (`--debug`: the traceback)."""
    return convert_main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
