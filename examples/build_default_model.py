"""Build the small MERV shipped as the package's default model, from scratch, on 2 CPU cores.

    python examples/build_default_model.py --output-dir src/transformers_merv/default_model  # ~20 min; the shipped one
    python examples/build_default_model.py --encoders siglip --output-dir runs/siglip-only   # an ablation

Steps, all seeded: generate the synthetic video-QA data (`transformers_merv.synthetic`), build a small
tokenizer on its text, build a small MERV (all four encoder types, random frozen encoders, a 4-layer Llama) whose
projectors are initialised to standardise the encoders' features on 256 training videos, then run the authors'
two-stage recipe with `examples/train.py` (stage 1 `full-align` on captions, stage 2 `finetune` on the questions),
and evaluate the result on the held-out test split per question type (`merv eval`'s code). The final model,
processor, evaluation results and a model card go to `--output-dir`.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoProcessor, GenerationConfig

from transformers_merv import MervConfig, MervForConditionalGeneration, MervProcessor, MervVideoProcessor
from transformers_merv.compat import activation_checkpointing_argument
from transformers_merv.evaluation import OPEN_ENDED, evaluate, load_items
from transformers_merv.processing_merv import merv_chat_templates
from transformers_merv.synthetic import build_tokenizer, conversation_texts, generate_dataset, longest_answer_tokens
from transformers_merv.training.run import main as run_training


SHIPPED_MODEL = "src/transformers_merv/default_model"
ENCODERS = ("languagebind", "dinov2", "vivit", "siglip")
IMAGE_SIZE = 32
VOCAB_MULTIPLE = 64
ENCODER_WIDTH = 64
ENCODER_LAYERS = 2
ENCODER_HEADS = 4
ENCODER_PATCH = {"languagebind": 8, "dinov2": 4, "vivit": 8, "siglip": 8}
"""Patch size per encoder: DINOv2, the spatial specialist, sees finer patches; the video encoders see time."""
TEXT_WIDTH = 128
TEXT_LAYERS = 4
TEXT_HEADS = 4
TOKENS_PER_FRAME = 4
FUSION_WIDTH = 64
STANDARDIZATION_VIDEOS = 256
"""Training videos whose encoder features set the projectors' initial scale (`standardize_projector_inputs`)."""
TRAINING = {
    "full-align": {"data": "align.json", "learning_rate": 1e-3},
    "finetune": {"data": "train.json", "learning_rate": 5e-4},
}
"""Stage 1 trains projectors, fusion and LLM on captions (merv-full's stage 1), stage 2 on questions. The authors'
learning rates are for a pretrained 7B LLM; this LLM starts from scratch, so it takes larger ones."""


def small_config(tokenizer, encoders: list[str]) -> MervConfig:
    """A MERV with all of the authors' structure at toy size: 32 px inputs, 2-layer encoders, 2x2 tokens per frame
    (16 frames -> 64 visual tokens), a 4-layer Llama on the tokenizer's vocabulary. (Not `tiny_config`: this is the
    shipped model's architecture, sized for what it has to learn, not a test fixture's.)"""
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    vision = {
        "hidden_size": ENCODER_WIDTH,
        "num_hidden_layers": ENCODER_LAYERS,
        "num_attention_heads": ENCODER_HEADS,
        "image_size": IMAGE_SIZE,
    }
    return MervConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": TEXT_HEADS,
            "num_key_value_heads": TEXT_HEADS,
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        languagebind_config={
            **vision,
            "intermediate_size": 2 * ENCODER_WIDTH,
            "patch_size": ENCODER_PATCH["languagebind"],
            "temporal_group_size": 8,
        },
        dinov2_config={**vision, "mlp_ratio": 2, "patch_size": ENCODER_PATCH["dinov2"]},
        vivit_config={
            **vision,
            "intermediate_size": 2 * ENCODER_WIDTH,
            "num_frames": 32,
            "tubelet_size": [2, ENCODER_PATCH["vivit"], ENCODER_PATCH["vivit"]],
        },
        siglip_config={
            **vision,
            "intermediate_size": 2 * ENCODER_WIDTH,
            "patch_size": ENCODER_PATCH["siglip"],
            "hidden_act": "gelu",
            "vision_use_head": False,
        },
        vision_encoders=encoders,
        # two-layer random encoders: read their last layer
        vision_feature_layer=dict.fromkeys(ENCODERS, -1),
        alignment_tokens_per_frame=TOKENS_PER_FRAME,
        fusion_hidden_size=FUSION_WIDTH,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )


def build_initial_model(data_dir: Path, encoders: list[str], seed: int, output_dir: Path) -> None:
    """Tokenizer, processor and randomly initialised model (projectors standardised on training videos), saved to
    `output_dir`. Its generation config stops after the longest trained answer and its `</s>`: on videos unlike its
    training data the model may not predict `</s>`, and would otherwise repeat its vocabulary until 512 tokens."""
    train = json.loads((data_dir / "train.json").read_text())
    tokenizer = build_tokenizer(conversation_texts([*train, *json.loads((data_dir / "align.json").read_text())]))
    config = small_config(tokenizer, encoders)
    video_processor = MervVideoProcessor.from_encoder_sizes(
        {name: config.num_frames[name] for name in encoders}, dict.fromkeys(encoders, IMAGE_SIZE)
    )
    torch.manual_seed(seed)
    model = MervForConditionalGeneration(config)
    videos = sorted({str(data_dir / record["video"]) for record in train})
    sample = random.Random(seed).sample(videos, min(STANDARDIZATION_VIDEOS, len(videos)))
    pixels = video_processor(sample, return_tensors="pt")["pixel_values_videos"]
    model.model.standardize_projector_inputs(pixels, generator=torch.Generator().manual_seed(seed))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=longest_answer_tokens(tokenizer, train),
    )
    model.save_pretrained(output_dir)
    processor = MervProcessor(
        video_processor, tokenizer, chat_template=merv_chat_templates("pure"), num_video_tokens=config.num_video_tokens
    )
    processor.save_pretrained(output_dir)


def train_stage(
    stage: str,
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    epochs: float,
    batch_size: int,
    seed: int,
) -> None:
    """One stage with `examples/train.py`'s run (CPU settings: fp32, no checkpointing, examples cached in memory)."""
    recipe = TRAINING[stage]
    run_training(
        [
            "--model_name_or_path",
            str(model_dir),
            "--stage",
            stage,
            "--data_path",
            str(data_dir / recipe["data"]),
            "--media_root",
            str(data_dir),
            "--output_dir",
            str(output_dir),
            "--num_train_epochs",
            str(epochs),
            "--learning_rate",
            str(recipe["learning_rate"]),
            "--per_device_train_batch_size",
            str(batch_size),
            "--global_batch_size",
            "0",
            "--bf16",
            "false",
            f"--{activation_checkpointing_argument()}",
            "false",
            "--dataloader_num_workers",
            "0",
            "--cache_examples",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--logging_steps",
            "25",
            "--seed",
            str(seed),
            "--use_cpu",
        ]
    )


def evaluate_test_split(model_dir: Path, data_dir: Path) -> dict:
    """Open-ended accuracy on the held-out test split, overall and per question type."""
    model = MervForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    items = load_items(data_dir / "test_q.json", data_dir / "test_a.json", OPEN_ENDED)
    with torch.no_grad():
        return evaluate(
            model,
            processor,
            items,
            data_dir / "videos",
            OPEN_ENDED,
            batch_size=32,
            generation_kwargs={"max_new_tokens": 4},
        )


MODEL_CARD = """---
library_name: transformers
pipeline_tag: video-text-to-text
license: mit
tags:
- merv
- video-llm
- synthetic-data
---

# MERV, toy size, trained on synthetic shape videos (transformers-merv's default model)

**What this is.** A small model with MERV's architecture (ICML 2025, *Unifying Specialized Visual Encoders for Video
Language Models*): LanguageBind, DINOv2, ViViT and SigLIP encoders on 16/16/32/16 frames at {image_size} px, 3D
average pooling to 2x2 tokens per frame, a linear projector per encoder, learnable-query fusion, and a 4-layer Llama
({parameters:.1f} M parameters in all). It was trained from scratch in {minutes} minutes on {cores} CPU cores, **on
synthetic videos of moving coloured shapes only** (`transformers_merv.synthetic`). Its encoders are randomly
initialised and frozen (no pretrained weights can be downloaded where it is built), so it is **not** the authors'
7B model and knows nothing beyond the closed vocabulary of these questions: colour, shape, position, direction,
speed, order of appearance, counts. For real videos, convert the authors' `merv-full` checkpoint (see the
repository's README, "Converting the authors' checkpoints").

**Recipe.** `{command}`: seeded data generation, a {vocab}-token tokenizer, projectors initialised to standardise
the encoders' features on training videos, stage 1 `full-align` on captions ({align_epochs} epochs), stage 2
`finetune` on the questions ({finetune_epochs} epochs), batch {batch_size}, with `examples/train.py`.

**Accuracy** on the held-out test split ({evaluated} open-ended questions, greedy, normalised exact match):
overall **{accuracy:.1%}**.

| question type | accuracy |
| --- | --- |
{rows}

**Prompt.** The authors' "pure" format: `<video>In: {{question}}\\nOut:`; `merv ask VIDEO "QUESTION"` does it all.

**Generation.** Every trained answer is one word and `</s>`; `generation_config.json` stops after {max_new_tokens} new
tokens, so on videos unlike its training data, where it may not predict `</s>`, it still answers in a word or two.
"""


def write_model_card(output_dir: Path, summary: dict, args: argparse.Namespace) -> None:
    model = MervForConditionalGeneration.from_pretrained(output_dir)
    rows = "\n".join(f"| {kind} | {result['accuracy']:.1%} |" for kind, result in summary["per_question_type"].items())
    card = MODEL_CARD.format(
        image_size=IMAGE_SIZE,
        parameters=sum(p.numel() for p in model.parameters()) / 1e6,
        minutes=summary["minutes"],
        command=summary["command"],
        vocab=model.config.text_config.vocab_size,
        align_epochs=args.align_epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        evaluated=summary["evaluated"],
        accuracy=summary["accuracy"],
        rows=rows,
        cores=os.cpu_count(),
        max_new_tokens=model.generation_config.max_new_tokens,
    )
    (output_dir / "README.md").write_text(card)


def drop_remote_code_maps(folder: Path) -> None:
    """The shipped folder loads through the installed package, so it carries no copies of the package's code (they
    would go stale): remove the `auto_map` entries that point to them."""
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        settings = json.loads((folder / name).read_text())
        settings.pop("auto_map", None)
        for value in settings.values():
            if isinstance(value, dict):
                value.pop("auto_map", None)
        (folder / name).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir", type=Path, required=True, help=f"where the model goes; the shipped one is {SHIPPED_MODEL}"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/default-model"))
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated subset (ablations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align-epochs", type=float, default=2)
    parser.add_argument("--finetune-epochs", type=float, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    encoders = args.encoders.split(",")
    start = time.perf_counter()
    data_dir = args.work_dir / "data"
    if not (data_dir / "train.json").is_file():
        generate_dataset(data_dir, seed=args.seed, progress=True)
    build_initial_model(data_dir, encoders, args.seed, args.work_dir / "initial")
    train_stage(
        "full-align",
        args.work_dir / "initial",
        data_dir,
        args.work_dir / "stage1",
        args.align_epochs,
        args.batch_size,
        args.seed,
    )
    train_stage(
        "finetune",
        args.work_dir / "stage1",
        data_dir,
        args.work_dir / "stage2",
        args.finetune_epochs,
        args.batch_size,
        args.seed,
    )
    results = evaluate_test_split(args.work_dir / "stage2", data_dir)
    minutes = (time.perf_counter() - start) / 60
    shutil.rmtree(args.output_dir, ignore_errors=True)
    shutil.copytree(
        args.work_dir / "stage2",
        args.output_dir,
        ignore=shutil.ignore_patterns("checkpoint-*", "*.bin", "trainer_state.json", "*.py"),
    )
    drop_remote_code_maps(args.output_dir)
    summary = {
        **results["summary"],
        "encoders": encoders,
        "seed": args.seed,
        "minutes": round(minutes, 1),
        "command": " ".join(["python", "examples/build_default_model.py", *(argv or sys.argv[1:])]),
    }
    (args.output_dir / "evaluation.json").write_text(json.dumps(summary, indent=2))
    write_model_card(args.output_dir, summary, args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
