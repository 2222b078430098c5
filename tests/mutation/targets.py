"""What the mutation run covers: per source module, the functions whose mutants are run (globs over mutmut's mutant
names) and the fast test files a mutant of that module may run (mutmut narrows these further to the tests that
executed the mutated function). Printing the module runs nothing: `python tests/mutation/targets.py` lists the
globs `run.sh` passes to `mutmut run`."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    functions: tuple[str, ...]
    tests: tuple[str, ...]


MODELING_TESTS = ("tests/model/test_modeling.py", "tests/model/test_parity.py", "tests/model/test_tower_layouts.py")

TARGETS = {
    "transformers_merv.modeling_merv": Target(
        functions=(
            # token-grid reshapes, resamplers, projectors, fusions
            "x__grid_side",
            "x__frames_as_images",
            "x__video_as_volume",
            "x__volume_as_tokens",
            "x__images_as_tokens",
            "xǁMervNoPoolingǁ*",
            "xǁMervAveragePool3dǁ*",
            "xǁMervAveragePool2dǁ*",
            "xǁMervConv3dPoolǁ*",
            "xǁMervAttentivePoolerǁ*",
            "xǁMervLayerNorm2dǁ*",
            "xǁMervRegNetBlockǁ*",
            "xǁMervConvAbstractorǁ*",
            "xǁMervProjectorMLPǁ*",
            "xǁMervVisualProjectorǁ*",
            "xǁMervCrossAttentionFusionǁ*",
            "xǁMervScalarFusionǁ*",
            "xǁMervChannelFusionǁ*",
            "xǁMervTokenConcatFusionǁ*",
            "xǁMervFirstEncoderFusionǁ*",
            "x_build_fusion",
            # encoding, alignment and the placeholder scatter
            "xǁMervModelǁ_encode",
            "xǁMervModelǁ_tower_hidden_state",
            # packed pixels and the towers' recorded outputs
            "xǁMervPreTrainedModelǁsplit_pixel_values_videos",
            "xǁMervModelǁ_pixels_by_encoder",
            "xǁMervVideoModelǁ_check_per_encoder",
            "xǁMervModelǁ_tower_recordings",
            "xǁMervModelǁ_output_flag",
            "xǁTowerLayoutǁrecording_attentions",
            "x__recorded",
            "x__concatenated",
            "xǁMervModelǁ_align",
            "xǁMervModelǁ_encoder_branch",
            "xǁMervModelǁget_placeholder_mask",
        ),
        tests=MODELING_TESTS,
    ),
    "transformers_merv.modeling_languagebind": Target(functions=("*",), tests=MODELING_TESTS),
    "transformers_merv.video_io": Target(
        functions=(
            "x_sample_frame_indices",
            "x_sample_frame_indices_at_rate",
            "x__clean_clip_window",
            "x__check_indices_in_range",
        ),
        tests=("tests/processor/test_video_io.py", "tests/processor/test_video_processing.py"),
    ),
    "transformers_merv.video_processing_merv": Target(
        functions=(
            "xǁEncoderTransformǁresized_size",
            "xǁEncoderTransformǁcentre_crop",
            "xǁEncoderTransformǁoutput_size",
            "xǁEncoderTransformǁcrop_box",
            "xǁMervVideoProcessorǁvideo_pixel_shapes",
            "x__pack_video",
            "xǁMervVideoProcessorǁpreprocess",
            "xǁMervVideoProcessorǁ_process_one",
            "xǁMervVideoProcessorǁframe_plan",
            "x__pil_transform",
            "x__to_float",
            "x__normalize",
            "x__torch_transform",
            "x__merge_settings",
            "x__value_for",
        ),
        tests=("tests/processor/test_video_processing.py",),
    ),
    "transformers_merv.training.data": Target(
        functions=(
            "x__turns_of",
            "xǁVideoLlavaDatasetǁ_encode_chat",
            "xǁVideoLlavaDatasetǁ_encode_caption",
            "xǁMervDataCollatorǁ__call__",
        ),
        tests=("tests/training/test_training.py",),
    ),
    "transformers_merv.training.lora": Target(
        functions=(
            "x_llm_linear_layer_names",
            "x_llm_lora_target_modules",
            "x_projector_and_fusion_module_names",
            "x_lora_config",
        ),
        tests=("tests/training/test_training.py",),
    ),
    "transformers_merv.conversion.key_maps": Target(
        functions=("*",), tests=("tests/conversion/test_conversion.py", "tests/model/test_parity.py")
    ),
    "transformers_merv.evaluation.scoring": Target(
        functions=(
            "x_normalize_answer",
            "x_letter_token_ids",
            "x_pick_letter",
            "x_naive_mcq_correct",
            "x_open_ended_entry",
            "x_mcq_entry",
            "x_summarize",
            "x__rates",
        ),
        tests=("tests/evaluation/test_evaluation.py",),
    ),
    "transformers_merv.evaluation.judges": Target(
        functions=("x_judge_verdict", "x_parse_judge_reply"),
        tests=("tests/evaluation/test_evaluation.py",),
    ),
}


def module_of(mutant_name: str) -> str | None:
    """The source module of a mutant name (`transformers_merv.video_io.x_sample_frame_indices__mutmut_3`)."""
    return next((module for module in TARGETS if mutant_name.startswith(f"{module}.x")), None)


def mutant_globs(modules: list[str] | None = None, exact: bool = False) -> list[str]:
    """Globs selecting the mutants of `modules` (all targets by default). For `mutmut run` (`exact=False`) they also
    match the functions' own names, so that mutmut's clean run before the mutants takes only those functions' tests
    (they may then match a few more functions sharing a prefix); `exact=True` selects the targets' mutants only."""
    suffix = "__mutmut_*" if exact else "*"
    return [
        f"{module}.*" if function == "*" else f"{module}.{function}{suffix}"
        for module, target in TARGETS.items()
        if not modules or module in modules
        for function in target.functions
    ]


if __name__ == "__main__":
    import sys

    print("\n".join(mutant_globs(sys.argv[1:])))
