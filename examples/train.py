"""Train MERV with transformers' `Trainer`: the authors' alignment and finetuning stages, or LoRA / QLoRA with PEFT.

Data: a Video-LLaVA / MERV JSON (`--data_path`) whose video and image paths are relative to `--media_root` (see
`transformers_merv.training.VideoLlavaDataset`). Every `TrainingArguments` flag works; those the authors set have
their values per stage as defaults (below), so a bare command reproduces their recipe:

    python examples/train.py --model_name_or_path merv-full-hf --stage finetune \
        --data_path data/videochatgpt_llavaimage_tune.json --media_root data/ --output_dir runs/merv-finetune

Global batch = per-device batch x gradient accumulation x GPUs. `--global_batch_size` (default: the authors' 256 for
alignment, 128 for finetuning) sets the accumulation from the other two, as the authors do: 8 GPUs x 16 x 2 = 256
(align), 8 x 8 x 2 = 128 (finetune); on one GPU the same command accumulates 16 steps.

Stages (`transformers_merv.training.set_trainable`):
  align       projectors + fusion; caption data (`[BOS][video] caption</s>`); lr 1e-3, wd 0, batch 256
  full-align  + the LLM: stage 1 of merv-full; caption data; lr 1e-4, wd 0, batch 256
  finetune    projectors + fusion + LLM; conversations; lr 2e-5, wd 0.1, batch 128
  lora        LoRA on the LLM (r 128, alpha 256, dropout 0.05), projectors + fusion in full; lr 2e-4, wd 0, batch 128
              (LLaVA-1.5's LoRA recipe; the authors train no LoRA). `--qlora` loads the LLM in 4 bits (CUDA +
              bitsandbytes). The output directory holds the adapter (`PeftModel.from_pretrained`).
All stages: 1 epoch, cosine schedule with 3% warmup, max grad norm 1, gradient checkpointing of the LLM layers,
AdamW with weight decay on >=2-D weights only (Trainer's default groups; the authors' rule gives the same groups).
Device and precision come from the machine unless `--use_cpu` / `--bf16` / `--fp16` say otherwise: the accelerator
if there is one, else the CPU; bf16 (the authors' precision) where the device computes it natively, else float32.

For merv-full's two stages run `full-align` on caption data, then `finetune` from its output directory. Several GPUs:
`accelerate launch --config_file examples/accelerate_fsdp.yaml examples/train.py ...` (or
`examples/accelerate_deepspeed.yaml`).
"""

from transformers_merv.training.run import main


if __name__ == "__main__":
    main()
