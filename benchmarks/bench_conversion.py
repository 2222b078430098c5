"""Peak memory of the converter on a synthetic checkpoint of a few GB.

Builds an authors'-format run whose LLM is a scaled Llama (default ~1.1B parameters, ~4.5 GB in fp32) with the tiny
fixture encoders, then converts it in fresh processes and reports peak RSS relative to the total size of the
inputs: the streaming converter (fp32 and bf16 output) against a naive conversion that loads everything and
calls `save_pretrained`.

    python benchmarks/bench_conversion.py [--layers 22] [--hidden 2048] [--workdir /tmp/merv-bench]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "reference"
IMAGE_SIZES = {"languagebind": 32, "dinov2": 56, "vivit": 28, "siglip": 64}
ENCODER_WIDTHS = (32, 40, 48, 24)  # the tiny fixture encoders, in run order
FUSION_WIDTH = 24
VOCAB_ROWS = 1024  # fixture tokenizer (1000) + <PAD>, padded to a multiple of 64
GIGABYTE = 2**30


def make_run(workdir: Path, layers: int, hidden: int) -> tuple[Path, Path]:
    """An authors'-format run dir (config + checkpoint) and an LLM dir (config + tokenizer) for a scaled Llama."""
    run, llm = workdir / "run", workdir / "llm"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    llm.mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "tiny-merv-full" / "run" / "config.json", run / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        shutil.copy(FIXTURES / "llm" / name, llm / name)
    intermediate = int(hidden * 2.6875)
    llm_config = json.loads((FIXTURES / "llm" / "config.json").read_text())
    llm_config.update(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
    )
    (llm / "config.json").write_text(json.dumps(llm_config))
    generator = torch.Generator().manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    llm_weights = {
        "llm.model.embed_tokens.weight": random(VOCAB_ROWS, hidden),
        "llm.model.norm.weight": random(hidden),
        "llm.lm_head.weight": random(VOCAB_ROWS, hidden),
    }
    for index in range(layers):
        prefix = f"llm.model.layers.{index}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            llm_weights[f"{prefix}self_attn.{name}.weight"] = random(hidden, hidden)
        for name, shape in (
            ("gate_proj", (intermediate, hidden)),
            ("up_proj", (intermediate, hidden)),
            ("down_proj", (hidden, intermediate)),
        ):
            llm_weights[f"{prefix}mlp.{name}.weight"] = random(*shape)
        llm_weights[f"{prefix}input_layernorm.weight"] = random(hidden)
        llm_weights[f"{prefix}post_attention_layernorm.weight"] = random(hidden)
    projectors = {}
    for index, width in enumerate(ENCODER_WIDTHS):
        projectors[f"{index}.projector.projector.weight"] = random(hidden, width)
        projectors[f"{index}.projector.projector.bias"] = random(hidden)
    fusion = {
        "Q": random(1, FUSION_WIDTH),
        "attention.q_proj_weight": random(FUSION_WIDTH, FUSION_WIDTH),
        "attention.k_proj_weight": random(FUSION_WIDTH, hidden),
        "attention.v_proj_weight": random(FUSION_WIDTH, hidden),
        "attention.in_proj_bias": random(3 * FUSION_WIDTH),
        "attention.out_proj.weight": random(FUSION_WIDTH, FUSION_WIDTH),
        "attention.out_proj.bias": random(FUSION_WIDTH),
    }
    torch.save(
        {"model": {"projectors": projectors, "llm_backbone": llm_weights, "feature_fusion": fusion}},
        run / "checkpoints" / "latest-checkpoint.pt",
    )
    return run, llm


STREAMING = """
import resource, sys
from pathlib import Path
from transformers_merv.conversion import EncoderSources, convert
encoders = EncoderSources({{n: Path({encoders!r}) / n for n in {sizes!r}}}, {sizes!r})
convert(Path({run!r}), Path({llm!r}), encoders, Path({out!r}), dtype={dtype!r}, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

NAIVE = """
import resource, torch
from pathlib import Path
from transformers_merv import MervForConditionalGeneration
from transformers_merv.conversion import EncoderSources
from transformers_merv.conversion.key_maps import mapped_tensors
from transformers_merv.conversion.sources import RunDirectory, build_config, build_tokenizer, load_weights
encoders = EncoderSources({{n: Path({encoders!r}) / n for n in {sizes!r}}}, {sizes!r})
run = RunDirectory(Path({run!r}))
checkpoint = torch.load(run.checkpoint_path, weights_only=True)["model"]  # everything read into RAM
weights = {{n: dict(load_weights(encoders.directory(n), n)) for n in {sizes!r}}}
tokenizer = build_tokenizer(Path({llm!r}), {rows})
config = build_config(run.model_config, encoders, weights, Path({llm!r}), checkpoint, tokenizer)
model = MervForConditionalGeneration(config)
model.load_state_dict(dict(mapped_tensors(config, weights, checkpoint, "ckpt")))
model.save_pretrained({out!r})  # MERV shards at 5 GB by default
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_gigabytes(script: str) -> tuple[float, float]:
    """Run `script` in a fresh interpreter; its peak RSS (GB) and wall time (s)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) * 1024 / GIGABYTE, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/merv-bench-conversion"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    run, llm = make_run(args.workdir, args.layers, args.hidden)
    inputs = [run / "checkpoints" / "latest-checkpoint.pt", *(FIXTURES / "encoders").rglob("*.safetensors")]
    total = sum(path.stat().st_size for path in inputs) / GIGABYTE
    largest = max(path.stat().st_size for path in inputs) / GIGABYTE
    print(f"inputs: {total:.2f} GB in total, largest file {largest:.2f} GB")
    settings = dict(
        encoders=str(FIXTURES / "encoders"), sizes=IMAGE_SIZES, run=str(run), llm=str(llm), rows=VOCAB_ROWS
    )
    rows = []
    for label, script in (
        ("streaming converter, fp32 output", STREAMING.format(**settings, out=str(args.workdir / "fp32"), dtype=None)),
        (
            "streaming converter, bf16 output",
            STREAMING.format(**settings, out=str(args.workdir / "bf16"), dtype="bfloat16"),
        ),
        ("naive: load all + save_pretrained", NAIVE.format(**settings, out=str(args.workdir / "naive"))),
    ):
        peak, seconds = peak_rss_gigabytes(script)
        rows.append((label, peak, seconds))
        print(f"| {label} | {peak:.2f} GB | {peak / total:.2f} | {seconds:.0f} s |")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
