"""MervConfig: merv-full defaults, round trips, derived sizes, and clear errors for invalid settings: out-of-range
values are refused when the config is built or loaded, and `merv` reports them in one line naming the field."""

import json
import shutil

import pytest
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoConfig, CLIPVisionConfig, Dinov2WithRegistersConfig, SiglipVisionConfig, VivitConfig

from transformers_merv import MervConfig, MervLanguageBindVideoConfig, default_model_path
from transformers_merv.cli import main

from conftest import EXAMPLE_VIDEO, ask_argv, error_line, tiny_config


def test_defaults_are_merv_full():
    config = MervConfig()
    assert config.vision_encoders == ["languagebind", "dinov2", "vivit", "siglip"]
    assert config.num_frames == {"languagebind": 16, "dinov2": 16, "vivit": 32, "siglip": 16}
    assert (config.alignment_pooling, config.alignment_projector, config.fusion_type) == (
        "3davg",
        "linear",
        "cross_attention",
    )
    assert config.alignment_tokens_per_frame == 64 and config.fusion_hidden_size == 3072
    assert config.num_video_tokens == 1024  # 16 frames x 8 x 8
    assert config.text_config.vocab_size == 32064 and config.text_config.hidden_size == 4096
    assert config.video_token_id == 32001
    assert isinstance(config.languagebind_config, MervLanguageBindVideoConfig)
    assert config.languagebind_config.hidden_size == 1024 and config.languagebind_config.temporal_group_size == 8
    assert (
        isinstance(config.dinov2_config, Dinov2WithRegistersConfig) and config.dinov2_config.num_register_tokens == 4
    )
    assert isinstance(config.vivit_config, VivitConfig)
    assert isinstance(config.siglip_config, SiglipVisionConfig) and not config.siglip_config.vision_use_head
    # the sizes the authors hard-code are derived from the sub-configs
    assert config.encoder_token_grid("vivit") == (16, 14, 14)
    assert config.encoder_token_grid("languagebind") == (16, 16, 16)
    assert config.encoder_num_prefix_tokens("dinov2") == 5
    assert isinstance(config.languagebind_config, CLIPVisionConfig)


def test_round_trip_through_save_pretrained_and_auto_config(tmp_path):
    config = tiny_config(vision_encoders=["siglip", "dinov2"], fusion_type="concat_channel_ln")
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is MervConfig
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(reloaded) == without_path(config)
    assert reloaded.vision_encoders == ["siglip", "dinov2"]
    assert MervConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert type(reloaded.languagebind_config) is MervLanguageBindVideoConfig


@pytest.mark.parametrize("encoders", [["siglip"], ["languagebind"], ["vivit", "dinov2"]])
def test_encoder_subsets(encoders):
    config = tiny_config(vision_encoders=encoders)
    assert config.num_video_tokens == 64


def test_video_pixel_shapes_follow_the_encoder_order_frames_and_input_sizes():
    config = tiny_config(
        vision_encoders=["siglip", "languagebind"],
        num_frames={"languagebind": 8},
        siglip_config={"image_size": 64, "num_channels": 1},
        languagebind_config={"image_size": [32, 48]},
        alignment_pooling="none",  # a non-square input gives a non-square token grid
        fusion_type="concat_tokens",
    )
    assert config.video_pixel_shapes() == {"siglip": (16, 1, 64, 64), "languagebind": (8, 3, 32, 48)}
    assert list(MervConfig().video_pixel_shapes().items()) == [
        ("languagebind", (16, 3, 224, 224)),
        ("dinov2", (16, 3, 224, 224)),
        ("vivit", (32, 3, 224, 224)),
        ("siglip", (16, 3, 224, 224)),
    ]


def test_token_count_can_be_confirmed_but_not_set(tmp_path):
    """`from_pretrained` sets every keyword argument naming an attribute, the derived token count included (a
    processor loading from a model folder passes its own)."""
    config = tiny_config()
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path, num_video_tokens=64).num_video_tokens == 64
    with pytest.raises(ValueError, match="`num_video_tokens` = 65 disagrees with the config.*give 64"):
        AutoConfig.from_pretrained(tmp_path, num_video_tokens=65)
    with pytest.raises(ValueError, match="`num_video_tokens` = 1"):
        config.num_video_tokens = 1


def test_token_count_follows_fusion_and_alignment():
    assert tiny_config(fusion_type="concat_tokens").num_video_tokens == 4 * 64
    assert tiny_config(alignment_temporal_stride=2).num_video_tokens == 32
    assert tiny_config(alignment_pooling="none", vision_encoders=["siglip"]).num_video_tokens == 16 * 16


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vision_encoders": ["clip"]}, "vision_encoders"),
        ({"fusion_type": "mean"}, "fusion_type"),
        ({"alignment_pooling": "max"}, "alignment_pooling"),
        ({"alignment_projector": "mlp"}, "alignment_projector"),
        ({"num_frames": {"languagebind": 16, "dinov2": 12}}, "num_frames"),
        ({"alignment_tokens_per_frame": 6}, "alignment_tokens_per_frame"),
        ({"alignment_pooling": "avg", "alignment_temporal_stride": 2}, "alignment_temporal_stride"),
        ({"vision_feature_select_strategy": {"dinov2": "everything"}}, "vision_feature_select_strategy"),
        ({"vision_feature_select_strategy": {"dinov2": "full"}}, "vision_feature_select_strategy"),
    ],
)
def test_invalid_settings_raise_an_error_naming_the_field(overrides, field):
    """A value outside a choice field's `Literal` is refused by the strict validation, an invalid combination of
    values by MERV's own check (a `ValueError`)."""
    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match=field):
        tiny_config(**overrides)


def test_allowed_values_are_listed():
    with pytest.raises(StrictDataclassFieldValidationError, match="expected one of .*'cross_attention'.*'scalar'"):
        tiny_config(fusion_type="mean")
    config = tiny_config()
    with pytest.raises(StrictDataclassFieldValidationError, match="fusion_type"):
        config.fusion_type = "mean"  # assignments are validated too


def test_mismatched_token_counts_need_token_concatenation():
    # ViViT keeps 16 temporal slots; with 8 SigLIP frames the encoders disagree on the number of tokens
    with pytest.raises(ValueError, match="same number of visual tokens"):
        tiny_config(num_frames={"siglip": 8})
    assert tiny_config(num_frames={"siglip": 8}, fusion_type="concat_tokens").num_video_tokens == 3 * 64 + 32


def test_vivit_frames_must_match_its_position_table():
    with pytest.raises(ValueError, match="vivit_config.num_frames"):
        tiny_config(num_frames={"vivit": 16})


def test_languagebind_frames_must_fill_temporal_groups():
    with pytest.raises(ValueError, match="temporal_group_size"):
        tiny_config(vision_encoders=["languagebind"], num_frames={"languagebind": 12})


def test_siglip_head_is_rejected():
    settings = tiny_config().siglip_config.to_dict()
    settings["vision_use_head"] = True
    with pytest.raises(ValueError, match="vision_use_head"):
        tiny_config(siglip_config=settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vision_feature_layer": {"dinov2": 4}}, r"`vision_feature_layer\['dinov2'\]` = 4 is out of range: valid "
                                                  r"values are -4 to 3 \(dinov2 has 3 layers"),
        ({"vision_feature_layer": {"siglip": -5}}, r"`vision_feature_layer\['siglip'\]` = -5 is out of range"),
        ({"video_token_id": 1024}, r"`video_token_id` = 1024 is out of range: valid values are 0 to 1023 "
                                   r"\(the vocabulary has 1024 tokens\)"),
        ({"video_token_id": -1}, "`video_token_id` = -1 is out of range"),
        ({"text_config": {"model_type": "llama", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "eos_token_id": [2, 5000]}},
         r"`text_config.eos_token_id\[1\]` = 5000 is out of range"),
        ({"vivit_config": {"num_frames": 32, "tubelet_size": [3, 2, 2], "image_size": 28, "hidden_size": 48,
                           "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96}},
         r"`num_frames\['vivit'\]` = 32 must be a multiple of ViViT's tubelet length"),
    ],
    ids=["layer-too-deep", "layer-too-negative", "video-token-past-vocab", "negative-token", "eos-past-vocab",
         "vivit-tubelets"],
)  # fmt: skip
def test_config_values_out_of_range_are_rejected_when_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_values_out_of_range_are_rejected_when_loaded(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_feature_layer"]["vivit"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`vision_feature_layer\['vivit'\]` = 7 is out of range: valid values are"):
        AutoConfig.from_pretrained(folder)
    assert main(ask_argv(EXAMPLE_VIDEO, "--model", str(folder))) == 1
    assert "`vision_feature_layer['vivit']` = 7 is out of range" in error_line(capsys.readouterr().err)
    assert MervConfig(**tiny_config().to_diff_dict()).video_token_id == 1001  # in-range values pass


def test_a_config_choice_outside_its_values_is_one_line_naming_the_field_and_the_values(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"fusion_type": "mean"}))
    assert main(ask_argv(EXAMPLE_VIDEO, "--model", str(folder))) == 1
    error = error_line(capsys.readouterr().err)
    assert "field 'fusion_type'" in error and "expected one of ('cross_attention'" in error and "got mean" in error
