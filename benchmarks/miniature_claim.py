"""The paper's central claim in miniature: does fusing the four encoders beat every single encoder?

Trains, with the same synthetic data, recipe and step budget (`examples/build_default_model.py`, only `--encoders`
differs), the four-encoder MERV and each single-encoder model; evaluates each on the held-out test split per
question type; and measures the four-encoder model's fusion weights averaged per question type.

    python benchmarks/miniature_claim.py [--work-dir runs/claim]     # 5 trainings, ~70 minutes on 2 CPU cores

Writes `<work-dir>/claim.json`, the markdown table (printed), and `benchmarks/fusion_weights_by_question_type.png`.
A configuration whose `<work-dir>/<encoders>/model/evaluation.json` exists is not trained again (resuming after an
interruption, or reusing the default model's build, which is the four-encoder run of the same command).
"""

import argparse
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoProcessor

from transformers_merv import MervForConditionalGeneration
from transformers_merv.inference.fusion_weights import draw_fusion_chart
from transformers_merv.evaluation import OPEN_ENDED, find_video, load_items
from transformers_merv.synthetic import generate_dataset


REPOSITORY = Path(__file__).resolve().parents[1]
CONFIGURATIONS = {
    "all four (MERV)": "languagebind,dinov2,vivit,siglip",
    "LanguageBind only": "languagebind",
    "DINOv2 only": "dinov2",
    "ViViT only": "vivit",
    "SigLIP only": "siglip",
}
PLOT = REPOSITORY / "benchmarks" / "fusion_weights_by_question_type.png"


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_default_model", REPOSITORY / "examples" / "build_default_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def fusion_weights_by_type(model_dir: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    """The fusion weights of each test video, averaged over the test questions of each type."""
    model = MervForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    items = load_items(data_dir / "test_q.json", data_dir / "test_a.json", OPEN_ENDED)
    by_video = {}
    for item in items:
        if item.video_name not in by_video:
            pixels = processor.video_processor(
                str(find_video(data_dir / "videos", item.video_name)), return_tensors="pt"
            )
            with torch.no_grad():
                weights = model.get_video_features(pixels["pixel_values_videos"]).fusion_weights[0]
            by_video[item.video_name] = dict(zip(model.config.vision_encoders, weights.tolist()))
    sums, counts = defaultdict(lambda: defaultdict(float)), defaultdict(int)
    for item in items:
        counts[item.question_type] += 1
        for name, weight in by_video[item.video_name].items():
            sums[item.question_type][name] += weight
    return {kind: {name: total / counts[kind] for name, total in sums[kind].items()} for kind in sorted(sums)}


def table(results: dict[str, dict]) -> str:
    kinds = sorted(next(iter(results.values()))["per_question_type"])
    lines = ["| model | overall | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
    for label, summary in results.items():
        per_type = summary["per_question_type"]
        cells = [f"{summary['accuracy']:.3f}", *(f"{per_type[kind]['accuracy']:.2f}" for kind in kinds)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/claim"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = args.work_dir / "data"
    if not (data_dir / "train.json").is_file():
        generate_dataset(data_dir, seed=args.seed, progress=True)
    build = load_builder()
    results = {}
    for label, encoders in CONFIGURATIONS.items():
        run_dir = args.work_dir / encoders.replace(",", "+")
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "data").exists():
            (run_dir / "data").symlink_to(data_dir.resolve())
        if (run_dir / "model" / "evaluation.json").is_file():
            print(f"{label}: already trained in {run_dir / 'model'}")
        else:
            build(
                [
                    "--work-dir",
                    str(run_dir),
                    "--output-dir",
                    str(run_dir / "model"),
                    "--encoders",
                    encoders,
                    "--seed",
                    str(args.seed),
                ]
            )
        results[label] = json.loads((run_dir / "model" / "evaluation.json").read_text())
    weights = fusion_weights_by_type(
        args.work_dir / CONFIGURATIONS["all four (MERV)"].replace(",", "+") / "model", data_dir
    )
    draw_fusion_chart(
        {f"{kind}: {name}": weight for kind, per_encoder in weights.items() for name, weight in per_encoder.items()},
        "mean per question type (test split)",
        PLOT,
    )
    (args.work_dir / "claim.json").write_text(json.dumps({"accuracy": results, "fusion_weights": weights}, indent=2))
    print(table(results))
    print(json.dumps(weights, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
