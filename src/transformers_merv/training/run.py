"""The training run behind `examples/train.py`: transformers' `Trainer` with the authors' recipe for each stage as the
defaults of its command line (see that script for usage)."""

import argparse
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import transformers
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import AutoProcessor, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.hf_argparser import string_to_bool
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from ..compat import activation_checkpointing_argument
from ..modeling_merv import MervForConditionalGeneration
from ..inference.devices import default_device, native_bf16
from ..inference.feature_store import FeatureStore, feature_fingerprint
from .data import BadExamplePolicy, DataFormat, MervDataCollator, VideoLlavaDataset
from .lora import LORA_DEFAULTS, check_qlora_available, lora_config, qlora_quantization_config
from .stages import TRAINING_STAGES, set_trainable


logger = logging.getLogger(__name__)

ALIGN_STAGES = ("align", "full-align")
AUTHORS_MAX_LENGTH = 3072

COMMON_RECIPE = {
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "max_grad_norm": 1.0,
    activation_checkpointing_argument(): True,
    "save_steps": 512,
    "logging_steps": 1,
    "seed": 7,
    "dataloader_num_workers": 2,
    "remove_unused_columns": False,
}
"""The authors' settings shared by every stage (`merv/conf/models.py`, `scripts/pretrain_video.py`). They train in bf16
on GPUs; here the device and precision come from the machine unless given (`machine_defaults`)."""
STAGE_RECIPES = {
    stage: {
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "per_device_train_batch_size": per_device,
        "global_batch_size": global_batch,
    }
    for stage, learning_rate, weight_decay, per_device, global_batch in (
        ("align", 1e-3, 0.0, 16, 256),
        ("full-align", 1e-4, 0.0, 16, 256),
        ("finetune", 2e-5, 0.1, 8, 128),
        ("lora", 2e-4, 0.0, 8, 128),
    )
}
"""Per stage: the authors' `align_*` / `finetune_*` values (merv-full's stage 1 for `full-align`); LLaVA-1.5's LoRA
recipe for `lora`."""


@dataclass
class MervArguments:
    model_name_or_path: str = field(metadata={"help": "A converted MERV checkpoint (directory or Hub id)."})
    stage: str = field(default="finetune", metadata={"choices": TRAINING_STAGES, "help": "What to train."})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples per optimizer step over all GPUs; sets --gradient_accumulation_steps (default: the "
            "stage's recipe, 256 or 128). 0 keeps --gradient_accumulation_steps as given."
        },
    )
    lora_r: int | None = field(
        default=None,
        metadata={"help": f"LoRA rank (default {LORA_DEFAULTS['r']}, scaled down for LLMs narrower than Llama-2-7B)."},
    )
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: twice the rank)."})
    lora_dropout: float = field(default=LORA_DEFAULTS["lora_dropout"], metadata={"help": "LoRA dropout."})
    qlora: bool = field(default=False, metadata={"help": "Load the LLM in 4 bits (QLoRA; needs CUDA + bitsandbytes)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "The Video-LLaVA / MERV training JSON."})
    media_root: str = field(metadata={"help": "Folder the JSON's video and image paths are relative to."})
    data_format: DataFormat | None = field(
        default=None, metadata={"help": "Default: caption for the align stages, chat otherwise."}
    )
    on_bad_example: BadExamplePolicy = field(
        default="skip",
        metadata={"help": "Malformed entries, missing or unreadable videos: skip them (logged, counted) or stop."},
    )
    check_media: bool = field(
        default=False, metadata={"help": "Decode every video once before training to find unreadable ones."}
    )
    max_length: int | None = field(
        default=AUTHORS_MAX_LENGTH,
        metadata={"help": "Truncate sequences, visual tokens included (the authors: 2048 text + 1024 visual)."},
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "Named chat template of the processor (default: its default)."}
    )
    cache_examples: bool = field(
        default=False,
        metadata={"help": "Keep encoded examples in memory so later epochs skip decoding (small datasets only)."},
    )
    features: str | None = field(
        default=None,
        metadata={
            "help": "A feature store of the model's frozen encoders (`merv encode DATA --video-dir MEDIA_ROOT --output "
            "STORE`): videos are read from it instead of being decoded and encoded."
        },
    )


def parse_args(argv: list[str] | None = None) -> tuple[MervArguments, DataArguments, TrainingArguments]:
    """Parse the command line with the chosen stage's recipe as defaults."""
    stage_parser = argparse.ArgumentParser(add_help=False)
    stage_parser.add_argument("--stage", default="finetune", choices=TRAINING_STAGES)
    for flag in ("--use_cpu", "--bf16", "--fp16"):
        stage_parser.add_argument(flag, nargs="?", const=True, type=string_to_bool)
    early = stage_parser.parse_known_args(argv)[0]
    parser = HfArgumentParser((MervArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**COMMON_RECIPE, **STAGE_RECIPES[early.stage], **machine_defaults(early.use_cpu, early.fp16))
    merv_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if merv_args.qlora:
        if merv_args.stage != "lora":
            raise ValueError("--qlora trains LoRA adapters on a 4-bit LLM; use it with --stage lora")
        check_qlora_available()
    if data_args.data_format is None:
        data_args.data_format = "caption" if merv_args.stage in ALIGN_STAGES else "chat"
    set_gradient_accumulation(training_args, merv_args.global_batch_size)
    return merv_args, data_args, training_args


def machine_defaults(use_cpu: bool | None, fp16: bool | None) -> dict[str, bool]:
    """`use_cpu` and `bf16` defaults from the machine: the CPU when it has no accelerator (or `--use_cpu`), bf16 where
    that device computes it natively (`transformers_merv.inference.devices.native_bf16`), else float32."""
    device = torch.device("cpu") if use_cpu else default_device()
    return {"use_cpu": device.type == "cpu", "bf16": not fp16 and native_bf16(device)}


def set_gradient_accumulation(training_args: TrainingArguments, global_batch_size: int | None) -> None:
    """Accumulate gradients so that per-device batch x accumulation x processes = `global_batch_size`."""
    if not global_batch_size:
        return
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"--global_batch_size {global_batch_size} is not a multiple of per-device batch x processes = {per_step}"
        )
    steps = global_batch_size // per_step
    if training_args.gradient_accumulation_steps not in (1, steps):
        raise ValueError(
            f"--gradient_accumulation_steps {training_args.gradient_accumulation_steps} contradicts "
            f"--global_batch_size {global_batch_size} (which needs {steps}); pass --global_batch_size 0 to keep it"
        )
    training_args.gradient_accumulation_steps = steps


def setup_logging(training_args: TrainingArguments) -> None:
    """Log as transformers' example scripts do: one format, the process's level for transformers too."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def load_model(merv_args: MervArguments, training_args: TrainingArguments) -> MervForConditionalGeneration:
    """The model with its stage's trainable parameters; for LoRA, wrapped by PEFT. Fully trained stages keep fp32
    weights (bf16 autocast computes); LoRA keeps the frozen weights in bf16 (4 bits for the QLoRA LLM) and the
    trained ones in fp32."""
    lora = merv_args.stage == "lora"
    kwargs = {"dtype": torch.bfloat16 if lora and training_args.bf16 else torch.float32}
    if merv_args.attn_implementation:
        kwargs["attn_implementation"] = merv_args.attn_implementation
    if merv_args.qlora:
        kwargs["quantization_config"] = qlora_quantization_config()
    model = MervForConditionalGeneration.from_pretrained(merv_args.model_name_or_path, **kwargs)
    if merv_args.qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=getattr(training_args, activation_checkpointing_argument())
        )
    set_trainable(model, merv_args.stage)
    if not lora:
        return model
    overrides = {"r": merv_args.lora_r, "lora_alpha": merv_args.lora_alpha, "lora_dropout": merv_args.lora_dropout}
    config = lora_config(model, **{name: value for name, value in overrides.items() if value is not None})
    model = get_peft_model(model, config)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    model.print_trainable_parameters()
    return model


@contextmanager
def whole_encoder_weights(model):
    """The encoders' whole weights in every process for the time of the block. Under DeepSpeed ZeRO-3 each process
    holds a partition of each parameter (`from_pretrained` partitions them as it loads), and reading a parameter
    outside its forward gives an empty placeholder; the encoders' parameters are gathered (once, about as much
    memory as the encoders' weights) and partitioned again after."""
    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed  # ZeRO-3 runs only with DeepSpeed installed

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    with deepspeed.zero.GatheredParameters(list(base.model.vision_towers.parameters()), modifier_rank=None):
        yield


def open_feature_store(path: str, model, processor) -> FeatureStore:
    """The feature store at `path`, checked against the model's encoders and the processor (`FeatureStoreError`
    naming what differs). The stages train what follows the frozen features only, so the store stands in for
    decoding and the encoders in every stage."""
    with whole_encoder_weights(model):
        fingerprint = feature_fingerprint(model, processor)
    store = FeatureStore.open(path, fingerprint)
    logger.info(f"Videos from the feature store {path} ({len(store)} videos, {store.dtype}): no decoding, no encoders")
    return store


def main(argv: list[str] | None = None) -> Trainer:
    merv_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "float32"
    logger.info(
        f"Stage {merv_args.stage!r}, {training_args.gradient_accumulation_steps} accumulation steps, "
        f"{training_args.device.type}, {precision}"
    )
    set_seed(training_args.seed)

    processor = AutoProcessor.from_pretrained(merv_args.model_name_or_path)
    model = load_model(merv_args, training_args)
    store = open_feature_store(data_args.features, model, processor) if data_args.features else None
    dataset = VideoLlavaDataset(
        data_args.data_path,
        data_args.media_root,
        processor,
        data_format=data_args.data_format,
        on_bad_example=data_args.on_bad_example,
        max_length=data_args.max_length,
        chat_template=data_args.chat_template,
        cache=data_args.cache_examples,
        feature_store=store,
    )
    if data_args.check_media and store is None:  # a store records the videos it could not read
        dataset.check_media(num_workers=training_args.dataloader_num_workers)
    frozen_shapes = model.config.frozen_feature_shapes() if store is not None else None
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=MervDataCollator.from_processor(processor, frozen_feature_shapes=frozen_shapes),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if dataset.skipped:
        logger.warning(f"{len(dataset.skipped)} examples were skipped in the main process (see the log for why)")
    return trainer
