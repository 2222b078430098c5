"""Converter behaviour beyond parity: CLI (list-like flags add up when repeated; resolution errors name the flag that
fixes them), older key names, strict key accounting, safe loading, clear errors."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from huggingface_hub import HfApi
from torch import nn
from transformers import AutoModel
from unittest import mock

import transformers_merv  # noqa: F401
from transformers_merv.conversion import (
    ConversionError,
    EncoderSources,
    convert,
    load_checkpoint,
    parse_arch_specifier,
)
from transformers_merv.conversion.command import build_parser as build_converter_parser
from transformers_merv.conversion.command import parse_image_sizes
from transformers_merv.conversion.key_maps import FUSION_KEYS, map_tensors, projector_keys, resample_grid
from transformers_merv.conversion.sources import _timm_config, load_weights
from transformers_merv.cli import build_parser as build_merv_parser
from transformers_merv.cli import main as merv_main
from transformers_merv.modeling_merv import MervVisualProjector

from conftest import (
    CONVERTER_SCRIPT,
    FIXTURE_IMAGE_SIZES,
    FIXTURES,
    MEDIA,
    TINY_FULL,
    convert_fixture,
    fixture_pixels,
    load_script,
    tiny_config,
)


def _copy_run(tmp_path: Path, edit_config=None, edit_weights=None) -> Path:
    """A copy of tiny-merv-full's run dir with its model config and/or checkpoint edited."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = json.loads((TINY_FULL / "run" / "config.json").read_text())
    if edit_config:
        edit_config(config["model"])
    (run / "config.json").write_text(json.dumps(config))
    source = TINY_FULL / "run" / "checkpoints" / "latest-checkpoint.pt"
    if edit_weights:
        checkpoint = torch.load(source, weights_only=True)
        edit_weights(checkpoint["model"])
        torch.save(checkpoint, run / "checkpoints" / "latest-checkpoint.pt")
    else:
        shutil.copy(source, run / "checkpoints" / "latest-checkpoint.pt")
    return run


@pytest.fixture(scope="module")
def cli():
    """conversion/convert_merv_to_hf.py as a module."""
    return load_script(CONVERTER_SCRIPT, "convert_merv_to_hf")


def test_cli_converts_and_the_output_loads_with_auto_model(cli, tmp_path):
    encoders = [arg for name in FIXTURE_IMAGE_SIZES for arg in (f"--{name}", str(FIXTURES / "encoders" / name))]
    sizes = [f"{name}={size}" for name, size in FIXTURE_IMAGE_SIZES.items()]
    status = cli.main(
        [
            "--run-dir",
            str(TINY_FULL / "run"),
            "--llm",
            str(FIXTURES / "llm"),
            *encoders,
            "--image-size",
            *sizes,
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert status == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        path.name for path in (tmp_path / "out").iterdir()
    }
    assert type(AutoModel.from_pretrained(tmp_path / "out")).__name__ == "MervForConditionalGeneration"


def test_cli_reports_a_missing_encoder_directory(cli, tmp_path, capsys):
    status = cli.main(
        ["--run-dir", str(TINY_FULL / "run"), "--llm", str(FIXTURES / "llm"), "--output-dir", str(tmp_path)]
    )
    assert status == 1
    assert "pass its weights with --languagebind" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"model": {"model_id": "merv-full', "is not valid JSON: Unterminated string"),
        ("[1, 2]", "must hold a JSON object, got a JSON list"),
    ],
)
@pytest.mark.parametrize("entry", ["converter script", "merv convert"])
def test_a_malformed_run_config_is_one_error_line_naming_the_file(entry, text, message, cli, tmp_path, capsys):
    run = _copy_run(tmp_path)
    (run / "config.json").write_text(text)
    arguments = ["--run-dir", str(run), "--llm", str(FIXTURES / "llm"), "--output-dir", str(tmp_path / "out")]
    status = cli.main(arguments) if entry == "converter script" else merv_main(["convert", *arguments])
    assert status == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error
    assert f"{run / 'config.json'} {message}" in error


def _convert_args(output: Path, sizes: dict[str, int]) -> list[str]:
    encoders = [arg for name in FIXTURE_IMAGE_SIZES for arg in (f"--{name}", str(FIXTURES / "encoders" / name))]
    repeated = [arg for name, size in sizes.items() for arg in ("--image-size", f"{name}={size}")]
    return ["--run-dir", str(TINY_FULL / "run"), "--llm", str(FIXTURES / "llm"), *encoders, *repeated,
            "--output-dir", str(output)]  # fmt: skip


@pytest.mark.parametrize("parser", ["merv convert", "convert_merv_to_hf.py"])
def test_repeated_image_size_flags_add_up(parser, tmp_path):
    args = _convert_args(tmp_path, {"dinov2": 56, "siglip": 64}) + ["--image-size", "vivit=28", "languagebind=32"]
    if parser == "merv convert":
        parsed = build_merv_parser().parse_args(["convert", *args])
    else:
        parsed = build_converter_parser().parse_args(args)
    assert parse_image_sizes(parsed.image_size) == {"dinov2": 56, "siglip": 64, "vivit": 28, "languagebind": 32}


def test_one_encoder_given_two_sizes_is_an_error():
    with pytest.raises(ConversionError, match="gives dinov2 two sizes: 56 and 64"):
        parse_image_sizes(["dinov2=56", "dinov2=64"])
    assert parse_image_sizes(["dinov2=56", "dinov2=56"]) == {"dinov2": 56}


def test_convert_with_one_flag_per_encoder(tmp_path):
    assert merv_main(["convert", *_convert_args(tmp_path / "out", FIXTURE_IMAGE_SIZES)]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {name: config[f"{name}_config"]["image_size"] for name in FIXTURE_IMAGE_SIZES} == FIXTURE_IMAGE_SIZES


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("languagebind", "is built for 32 px but MERV runs it at 224 px; pass --image-size languagebind=32"),
        ("vivit", "MERV runs it on 32 frames at 224 px (its position table cannot be resampled); "
                  "pass --image-size vivit=28"),
    ],
)  # fmt: skip
def test_resolution_errors_name_the_flag_that_fixes_them(tmp_path, capsys, missing, message):
    sizes = {name: size for name, size in FIXTURE_IMAGE_SIZES.items() if name != missing}
    assert merv_main(["convert", *_convert_args(tmp_path / "out", sizes)]) == 1
    assert message in capsys.readouterr().err


def test_older_key_names_adapter_and_single_projector(tmp_path):
    """Older checkpoints call the fusion `adapter`, and single-encoder ones store one `projector` without index."""

    def siglip_only(model_config):
        model_config["video_backbone_ids"] = ["siglip-vit-b16-224px-all-no-cls"]
        model_config["num_frames"] = 16

    def old_names(weights):
        weights["projector"] = {key[2:]: value for key, value in weights.pop("projectors").items() if key[0] == "3"}
        weights["adapter"] = weights.pop("feature_fusion")

    model = AutoModel.from_pretrained(convert_fixture(_copy_run(tmp_path, siglip_only, old_names), tmp_path / "out"))
    assert model.config.vision_encoders == ["siglip"]
    with torch.no_grad():
        features = model.get_video_features(fixture_pixels(model.config))
    expected = load_file(TINY_FULL / "outputs.safetensors")["projector_outputs.siglip"]
    assert torch.equal(features.fusion_weights, torch.ones(1, 1))  # one encoder: the fusion weight is 1
    torch.testing.assert_close(features.pooler_output, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("part", ["projectors", "llm_backbone", "feature_fusion", "siglip"])
def test_unmapped_source_keys_are_listed_with_the_part_they_came_from(tmp_path, part):
    """The error names the checkpoint and its group, or the flag of the encoder folder, that holds the key."""
    extra = torch.zeros(2)
    if part in FIXTURE_IMAGE_SIZES:
        folder = shutil.copytree(FIXTURES / "encoders" / part, tmp_path / part)
        save_file(load_file(folder / "model.safetensors") | {"extra.weight": extra}, folder / "model.safetensors")
        run, origin, encoders = TINY_FULL / "run", f"--{part}", _encoder_sources({part: folder})
    else:
        prefix = "0." if part == "projectors" else ""  # projector keys start with their encoder's index
        run = _copy_run(tmp_path, edit_weights=lambda weights: weights[part].update({prefix + "extra.weight": extra}))
        origin, encoders = f"{run / 'checkpoints' / 'latest-checkpoint.pt'} {part}", _encoder_sources()
    with pytest.raises(ConversionError) as error:
        convert(run, FIXTURES / "llm", encoders, tmp_path / "out", progress=False)
    assert str(error.value) == f"{origin}: no mapping for source keys ['extra.weight']"


@pytest.mark.parametrize("index", ["4", "siglip", ""])
def test_a_projector_key_without_an_encoder_index_is_an_error_naming_it(tmp_path, index):
    """Projector keys start with the position of their encoder (0 to 3 in tiny-merv-full's four encoders)."""
    key = f"{index}.projector.projector.weight"
    run = _copy_run(tmp_path, edit_weights=lambda weights: weights["projectors"].update({key: torch.zeros(2)}))
    with pytest.raises(ConversionError) as error:
        convert_fixture(run, tmp_path / "out")
    checkpoint = run / "checkpoints" / "latest-checkpoint.pt"
    assert str(error.value) == f"{checkpoint}: projector key {key!r} does not belong to one of 4 encoders"


@pytest.mark.parametrize("kind", ["linear", "gelu-mlp", "fused-gelu-mlp"])
def test_projectors_without_a_resampler_are_one_level_deep(kind):
    """Without a resampler the authors' projector is `get_mlp_projector(...)` itself, so its Linear or Sequential is
    `projector` (`projectors.{i}.projector.weight`), not the resampler's `projector.projector`."""
    config = tiny_config(alignment_pooling="none", alignment_projector=kind, vision_encoders=["siglip"])
    in_dim, out_dim = config.siglip_config.hidden_size, config.text_config.hidden_size
    torch.manual_seed(0)
    authors = {
        "linear": lambda: nn.Linear(in_dim, out_dim),
        "gelu-mlp": lambda: nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)),
        "fused-gelu-mlp": lambda: nn.Sequential(
            nn.Linear(in_dim, 4 * in_dim),
            nn.GELU(),
            nn.Linear(4 * in_dim, out_dim),
            nn.GELU(),
            nn.Linear(out_dim, out_dim),
        ),
    }[kind]()
    source = {f"projector.{key}": value for key, value in authors.state_dict().items()}
    projector = MervVisualProjector(config, "siglip")
    projector.load_state_dict(dict(map_tensors(source, projector_keys("none", kind), "", "projectors")))
    features = torch.randn(1, 2, 16, in_dim)  # (batch, frames, tokens, dim)
    with torch.no_grad():
        torch.testing.assert_close(projector(features), authors(features.flatten(1, 2)))


def test_a_resampled_position_table_keeps_its_dtype():
    """The table is resampled in float32 (as timm does) and cast back: bfloat16 in, bfloat16 out."""
    table = torch.randn(1, 16, 8).to(torch.bfloat16)
    resampled = resample_grid(table, (3, 3))
    assert resampled.dtype == torch.bfloat16
    assert torch.equal(resampled, resample_grid(table.float(), (3, 3)).to(torch.bfloat16))


def test_missing_target_parameters_are_listed(tmp_path):
    def drop(weights):
        del weights["llm_backbone"]["llm.model.norm.weight"]

    with pytest.raises(
        ConversionError, match=r"no source tensor for model weights \[.model.language_model.norm.weight.\]"
    ):
        convert_fixture(_copy_run(tmp_path, edit_weights=drop), tmp_path / "out")


def test_a_fused_tensor_that_does_not_split_into_its_targets_is_refused():
    """A fused q/k/v bias splits into one piece per target; `chunk(3)` of 4 entries gives two pieces, and the rule must
    not map q and k and drop v."""
    fusion_keys = FUSION_KEYS["cross_attention"]
    fused = torch.arange(6.0)
    mapped = dict(map_tensors({"attention.in_proj_bias": fused}, fusion_keys, "", "fusion"))
    assert [mapped[f"model.fusion.{part}_proj.bias"].tolist() for part in ("query", "key", "value")] == [
        fused[:2].tolist(),
        fused[2:4].tolist(),
        fused[4:].tolist(),
    ]
    with pytest.raises(ConversionError, match=r"attention.in_proj_bias of shape \(4,\) does not split into its 3"):
        dict(map_tensors({"attention.in_proj_bias": torch.arange(4.0)}, fusion_keys, "", "fusion"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "feature_fusion",
            "query_mlp",
            "feature_fusion 'query_mlp' is not supported; supported: .*cross_attention_avg_lq",
        ),
        ("video_backbone_ids", ["hiera-base-video"], "video backbone 'hiera-base-video' is not supported"),
        ("arch_specifier", "3davg+mlp", "unsupported projector; it must end with one of"),
    ],
)
def test_unsupported_variants_are_clear_errors(tmp_path, field, value, message):
    run = _copy_run(tmp_path, edit_config=lambda model_config: model_config.__setitem__(field, value))
    with pytest.raises(ConversionError, match=message):
        convert_fixture(run, tmp_path / "out")


def test_align_stage_checkpoint_is_refused(tmp_path):
    run = _copy_run(tmp_path, edit_weights=lambda weights: weights.pop("llm_backbone"))
    with pytest.raises(ConversionError, match="lacks `llm_backbone`"):
        convert_fixture(run, tmp_path / "out")


class _WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "latest-checkpoint.pt"
    torch.save({"model": _WritesAFile(marker)}, path)
    with pytest.raises(ConversionError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("3davg+linear", ("3davg", "linear", 1)),
        ("no-align+3davg+linear", ("3davg", "linear", 1)),
        ("3davg+frame4+gelu-mlp", ("3davg", "gelu-mlp", 4)),
        ("attntv+fused-gelu-mlp", ("attntv", "fused-gelu-mlp", 1)),
        ("gelu-mlp", ("none", "gelu-mlp", 1)),
    ],
)
def test_arch_specifier_parsing(spec, expected):
    fields = parse_arch_specifier(spec)
    assert (
        fields["alignment_pooling"],
        fields["alignment_projector"],
        fields["alignment_temporal_stride"],
    ) == expected


def _encoder_sources(directories: dict[str, Path] | None = None) -> EncoderSources:
    return EncoderSources(
        directories={name: FIXTURES / "encoders" / name for name in FIXTURE_IMAGE_SIZES} | (directories or {}),
        image_sizes=FIXTURE_IMAGE_SIZES,
    )


def test_encoder_weights_as_torch_files_and_open_clip_checkpoints(tmp_path, converted_full):
    """DINOv2 as a timm `pytorch_model.bin`; SigLIP in the open_clip layout users download from timm/ViT-B-16-SigLIP
    (the timm tower under `visual.trunk.`, plus a text tower that is dropped)."""
    dinov2 = tmp_path / "dinov2"
    dinov2.mkdir()
    torch.save(load_file(FIXTURES / "encoders" / "dinov2" / "model.safetensors"), dinov2 / "pytorch_model.bin")
    shutil.copy(FIXTURES / "encoders" / "dinov2" / "config.json", dinov2)
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    trunk = load_file(FIXTURES / "encoders" / "siglip" / "model.safetensors")
    open_clip = {f"visual.trunk.{key}": value for key, value in trunk.items()}
    open_clip |= {
        "text.token_embedding.weight": torch.zeros(8, 4),
        "logit_scale": torch.ones(()),
        "logit_bias": torch.zeros(()),
    }
    torch.save(open_clip, siglip / "open_clip_pytorch_model.bin")
    # the tiny tower's head count is not the registry's, so it keeps timm's config.json with `model_args`
    shutil.copy(FIXTURES / "encoders" / "siglip" / "config.json", siglip)
    output = tmp_path / "out"
    convert(
        TINY_FULL / "run",
        FIXTURES / "llm",
        _encoder_sources({"dinov2": dinov2, "siglip": siglip}),
        output,
        progress=False,
    )
    reference, converted = load_file(converted_full / "model.safetensors"), load_file(output / "model.safetensors")
    assert reference.keys() == converted.keys()
    assert all(torch.equal(reference[key], converted[key]) for key in reference)


def test_open_clip_config_names_the_timm_architecture(tmp_path):
    vision_cfg = {"timm_model_name": "vit_base_patch16_siglip_224", "image_size": 224}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision_cfg}}))
    assert _timm_config(tmp_path) == {"architecture": "vit_base_patch16_siglip_224"}


def test_dtype_sharding_verify_and_model_card(tmp_path):
    report = convert(
        TINY_FULL / "run",
        FIXTURES / "llm",
        _encoder_sources(),
        tmp_path,
        dtype="bfloat16",
        max_shard_size="1MB",
        verify=True,
        progress=False,
    )
    assert len(report.shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert report.verified_tensors == report.num_tensors == 295
    model = AutoModel.from_pretrained(tmp_path, dtype="auto")
    assert model.dtype == torch.bfloat16
    card = (tmp_path / "README.md").read_text()
    assert "merv-full" in card and "license: llama2" in card and "base_model: meta-llama/Llama-2-7b-hf" in card
    assert "all 295 tensors equal their sources" in card
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}


def test_push_to_hub_uploads_the_output_folder(tmp_path):
    uploaded = {}

    def upload_folder(self, folder_path, repo_id, **kwargs):
        uploaded.update(repo_id=repo_id, files={path.name for path in Path(folder_path).iterdir()})
        return mock.Mock(commit_url=f"https://hub/{repo_id}/commit/1")

    with (
        mock.patch.object(HfApi, "create_repo", return_value=mock.Mock(repo_id="me/merv-full")) as create,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
    ):
        report = convert(
            TINY_FULL / "run",
            FIXTURES / "llm",
            _encoder_sources(),
            tmp_path,
            push_to_hub="me/merv-full",
            private=True,
            progress=False,
        )
    assert create.call_args.kwargs["private"] is True
    assert report.commit_url == "https://hub/me/merv-full/commit/1"
    assert uploaded["repo_id"] == "me/merv-full"
    assert {"README.md", "config.json", "model.safetensors", "modeling_merv.py", "processor_config.json"} <= uploaded[
        "files"
    ]


def test_unknown_model_id_lists_the_authors_models(tmp_path):
    run = _copy_run(tmp_path, edit_config=lambda model_config: model_config.__setitem__("model_id", "my-model"))
    with pytest.raises(ConversionError, match="model_id 'my-model' is not one of the authors' models: .*merv-full"):
        convert_fixture(run, tmp_path / "out")


def test_converted_processor_matches_the_model(converted_full):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted_full)
    model = AutoModel.from_pretrained(converted_full)
    config = model.config
    assert processor.num_video_tokens == config.num_video_tokens
    assert processor.video_token_id == config.video_token_id
    transforms = processor.video_processor.transforms
    assert {name: transform.num_frames for name, transform in transforms.items()} == config.num_frames
    settings = processor.video_processor.encoder_settings
    assert settings["languagebind"]["size"] == {"shortest_edge": 32}  # short side + centre crop, as the authors
    assert settings["dinov2"]["size"] == {"height": 56, "width": 56}  # squashed to the square (resize-naive)
    assert processor.video_processor.video_pixel_shapes() == config.video_pixel_shapes()
    assert config.video_pixel_shapes() == {
        name: (config.num_frames[name], 3, FIXTURE_IMAGE_SIZES[name], FIXTURE_IMAGE_SIZES[name])
        for name in config.vision_encoders
    }
    pixels = processor.video_processor(str(MEDIA / "flipping_a_pancake.mkv"), return_tensors="pt")
    assert list(model.split_pixel_values_videos(pixels["pixel_values_videos"])) == config.vision_encoders  # fits


def test_tokenizer_prefixes_text_after_the_video_placeholder_even_if_saved_non_legacy(tmp_path):
    """The authors tokenize "In: ..." on its own (a leading "▁"); after `<video>` ours must do the same."""
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURES / "llm", llm)
    tokenizer_config = json.loads((llm / "tokenizer_config.json").read_text())
    (llm / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | {"legacy": False}))
    output = tmp_path / "out"
    convert(TINY_FULL / "run", llm, _encoder_sources(), output, progress=False)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(output)
    alone = processor.tokenizer("In: What?", add_special_tokens=False)["input_ids"]
    after_video = processor.tokenizer("<video>In: What?", add_special_tokens=False)["input_ids"]
    assert after_video == [processor.video_token_id, *alone]


# --- which files of an encoder folder are read ------------------------------------------------------------------------


def _dinov2_weights_only(tmp_path: Path) -> Path:
    """The fixture's DINOv2 folder without the expected resampled table (`pos_embed_as_used_56px.safetensors`)."""
    dinov2 = tmp_path / "dinov2"
    dinov2.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / "encoders" / "dinov2" / name, dinov2)
    return dinov2


def test_only_the_formats_weight_files_are_read(tmp_path):
    """A stray safetensors file next to `model.safetensors` (here one holding `pos_embed` too) is not read."""
    dinov2 = _dinov2_weights_only(tmp_path)
    stored = load_file(dinov2 / "model.safetensors")
    save_file({"pos_embed": torch.zeros(1, 16, 40), "extra": torch.ones(2)}, dinov2 / "notes.safetensors")
    weights = load_weights(dinov2, "--dinov2")
    assert set(weights) == set(stored)
    assert torch.equal(weights["pos_embed"], stored["pos_embed"])
    assert tuple(weights["pos_embed"].shape) == (1, 81, 40)  # the stored 9x9 table, not the 56 px one


def test_sharded_safetensors_are_read_through_their_index(tmp_path):
    dinov2 = _dinov2_weights_only(tmp_path)
    stored = load_file(dinov2 / "model.safetensors")
    (dinov2 / "model.safetensors").unlink()
    keys = sorted(stored)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, shard_keys in shards.items():
        save_file({key: stored[key] for key in shard_keys}, dinov2 / shard)
    weight_map = {key: shard for shard, shard_keys in shards.items() for key in shard_keys}
    (dinov2 / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    weights = load_weights(dinov2, "--dinov2")
    assert set(weights) == set(stored)
    assert all(torch.equal(weights[key], stored[key]) for key in keys)


def test_a_tensor_stored_in_two_weight_files_is_an_error_naming_both(tmp_path):
    dinov2 = _dinov2_weights_only(tmp_path)
    save_file({"pos_embed": torch.zeros(1, 16, 40)}, dinov2 / "model-00002-of-00002.safetensors")
    weight_map = {"pos_embed": "model-00002-of-00002.safetensors"}
    (dinov2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConversionError) as error:
        load_weights(dinov2, "--dinov2")
    message = str(error.value)
    assert "'pos_embed'" in message
    assert str(dinov2 / "model.safetensors") in message and str(dinov2 / "model-00002-of-00002.safetensors") in message


def test_a_shard_index_with_missing_shards_or_no_weight_map_is_an_error(tmp_path):
    dinov2 = _dinov2_weights_only(tmp_path)
    (dinov2 / "model.safetensors").unlink()
    (dinov2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"pos_embed": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"--dinov2: .*lists shards that are missing: .*gone\.safetensors"):
        load_weights(dinov2, "--dinov2")
    (dinov2 / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ConversionError, match=r"--dinov2: .*index\.json has no `weight_map`"):
        load_weights(dinov2, "--dinov2")


def test_open_clip_safetensors_expose_the_timm_tower(tmp_path):
    trunk = load_file(FIXTURES / "encoders" / "siglip" / "model.safetensors")
    save_file({f"visual.trunk.{key}": value for key, value in trunk.items()}, tmp_path / "open_clip_model.safetensors")
    weights = load_weights(tmp_path, "--siglip")
    assert set(weights) == set(trunk)
    assert torch.equal(weights["pos_embed"], trunk["pos_embed"])


def test_a_folder_without_a_format_weight_file_is_an_error(tmp_path):
    save_file({"pos_embed": torch.zeros(1, 16, 40)}, tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match=r"--dinov2: no weights in .*model\.safetensors"):
        load_weights(tmp_path, "--dinov2")
