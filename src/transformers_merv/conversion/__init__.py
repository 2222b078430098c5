"""Conversion of the authors' MERV checkpoints to a `MervForConditionalGeneration` directory.

Inputs are the authors' run directory (`config.json` + `checkpoints/latest-checkpoint.pt`: projectors, fine-tuned
LLM and fusion), each encoder's public weights in the format its users have (LanguageBind's own directory, timm
state dicts for DINOv2 and SigLIP, a transformers directory for ViViT) and the LLM directory (config + tokenizer).
Every source tensor is mapped or listed as deliberately unused and every target tensor is filled, or the conversion
fails naming the keys. Weights are streamed into shards, so memory stays near one input file plus one shard."""

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save

from ..inference.devices import DTYPES
from ..modeling_merv import MAX_SHARD_SIZE, MervForConditionalGeneration
from ..processing_merv import MervProcessor, merv_chat_templates
from ..video_processing_merv import MervVideoProcessor
from .errors import ConversionError
from .key_maps import mapped_tensors
from .sources import (
    MERV_IMAGE_SIZE,
    EncoderSources,
    RunDirectory,
    build_config,
    build_tokenizer,
    authors_model_id,
    encoder_names,
    load_checkpoint,
    load_weights,
    parse_arch_specifier,
    llm_backbone,
)
from .writer import push_folder, verify_tensors, write_model_card, write_weights


@dataclass
class ConversionReport:
    output_dir: Path
    num_tensors: int
    shards: list[Path]
    verified_tensors: int | None = None
    commit_url: str | None = None


def convert(
    run_dir: Path,
    llm_dir: Path,
    encoders: EncoderSources,
    output_dir: Path,
    dtype: str | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
    verify: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert the run in `run_dir` into a `save_pretrained`-style directory `output_dir` (weights, config,
    generation config, processor + tokenizer with `<video>` and the chat template, model card)."""
    run, llm_dir, output_dir = RunDirectory(Path(run_dir)), Path(llm_dir), Path(output_dir)
    torch_dtype = _torch_dtype(dtype)
    model_config = run.model_config
    model_id, (template, base_model) = authors_model_id(model_config), llm_backbone(model_config)
    if not llm_dir.is_dir():
        raise FileNotFoundError(f"--llm: {llm_dir} is not a directory")
    encoder_weights = {
        name: load_weights(encoders.directory(name), f"--{name}") for name in encoder_names(model_config)
    }
    trainable = run.trainable_weights()
    tokenizer = build_tokenizer(llm_dir, trainable["llm_backbone"]["llm.model.embed_tokens.weight"].shape[0])
    config = build_config(model_config, encoders, encoder_weights, llm_dir, trainable, tokenizer)
    config.dtype = torch_dtype or trainable["llm_backbone"]["llm.model.embed_tokens.weight"].dtype

    def tensors():
        return mapped_tensors(config, encoder_weights, trainable, str(run.checkpoint_path))

    with torch.device("meta"):
        model = MervForConditionalGeneration(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    shards = write_weights(tensors(), model.state_dict(), output_dir, torch_dtype, max_shard_size, progress)
    _save_model_files(model, output_dir, tokenizer)
    build_processor(config, tokenizer, template).save_pretrained(output_dir)
    report = ConversionReport(output_dir, len(model.state_dict()), shards)
    if verify:
        report.verified_tensors = verify_output(output_dir, tensors(), torch_dtype)
    write_model_card(
        output_dir,
        model_id=model_id,
        run_id=run.path.name,
        repo=push_to_hub or str(output_dir),
        base_model=base_model,
        encoders=", ".join(config.vision_encoders),
        alignment=model_config["arch_specifier"],
        fusion=model_config["feature_fusion"],
        num_video_tokens=str(config.num_video_tokens),
        prompt_format=template,
        dtype=str(config.dtype).removeprefix("torch."),
        command=" ".join(shlex.quote(arg) for arg in sys.argv) or "convert(...)",
        verification=(
            f"`--verify` reloaded the output; all {report.verified_tensors} tensors equal their sources and a forward "
            "pass ran."
            if verify
            else "not run (`--verify` was not given)."
        ),
    )
    if push_to_hub:
        report.commit_url = push_folder(output_dir, push_to_hub, private)
    return report


def _torch_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES.get(dtype)


def _save_model_files(model: MervForConditionalGeneration, output_dir: Path, tokenizer) -> None:
    """Config (with `architectures`, as `save_pretrained` writes it, and `auto_map`), the code files for
    `trust_remote_code`, and the generation config."""
    model.config.architectures = [type(model).__name__]
    model._set_remote_code_auto_map()
    custom_object_save(model, output_dir, config=model.config)
    model.config.save_pretrained(output_dir)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(output_dir)


def build_processor(config, tokenizer, template: str) -> MervProcessor:
    """The processor matching `config`: each encoder's frames and resolution (with the authors' resize strategy for
    that encoder), `<video>` expanded to `config.num_video_tokens` placeholders, the authors' prompt format as the
    default chat template."""
    video_processor = MervVideoProcessor.from_encoder_sizes(
        {name: config.num_frames[name] for name in config.vision_encoders},
        {name: config.encoder_config(name).image_size for name in config.vision_encoders},
    )
    return MervProcessor(
        video_processor,
        tokenizer,
        chat_template=merv_chat_templates(template),
        num_video_tokens=config.num_video_tokens,
    )


def verify_output(output_dir: Path, tensors, dtype: torch.dtype | None) -> int:
    """Reload `output_dir`, compare every tensor with its source and run one forward pass."""
    model = MervForConditionalGeneration.from_pretrained(output_dir, dtype=dtype or "auto").eval()
    checked = verify_tensors(model, tensors, dtype)
    config = model.config
    input_ids = torch.tensor([[config.text_config.bos_token_id] + [config.video_token_id] * config.num_video_tokens])
    pixels = torch.zeros(1, sum(math.prod(shape) for shape in config.video_pixel_shapes().values()))
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values_videos=pixels, logits_to_keep=1).logits
    if not torch.isfinite(logits).all():
        raise ConversionError("--verify: the forward pass of the converted model produced non-finite logits")
    return checked


__all__ = [
    "DTYPES",
    "ConversionError",
    "ConversionReport",
    "EncoderSources",
    "MERV_IMAGE_SIZE",
    "convert",
    "load_checkpoint",
    "parse_arch_specifier",
]
