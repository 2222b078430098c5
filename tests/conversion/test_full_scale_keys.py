"""The converter against the key list of the real merv-full checkpoint and encoders: every source key is mapped or
deliberately dropped, every parameter of the full-size model is filled, with matching shapes (on the meta device)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from transformers_merv import MervConfig, MervForConditionalGeneration
from transformers_merv.conversion.key_maps import encoder_keys, mapped_tensors
from transformers_merv.conversion.sources import EncoderSources, build_config

from conftest import FIXTURES

KEYS = json.loads((FIXTURES / "full-scale-keys.json").read_text())
DROPPED = {
    "languagebind": r"(text_model\..*|text_projection\.weight|visual_projection\.weight|logit_scale)",
    "dinov2": r"$^",
    "vivit": r"classifier\.(weight|bias)",
    "siglip": r"attn_pool\..*",
}
"""Source keys MERV does not use: LanguageBind's text tower and projections, ViViT's Kinetics classifier, SigLIP's
pooling head."""


def _meta(spec: dict) -> dict[str, torch.Tensor]:
    return {
        key: torch.empty(entry["shape"], dtype=getattr(torch, entry["dtype"]), device="meta")
        for key, entry in spec.items()
    }


@pytest.fixture(scope="module")
def full_scale(tmp_path_factory):
    """merv-full's MervConfig derived by the converter from the real configs, and meta tensors for every source."""
    root = tmp_path_factory.mktemp("full-scale")
    constructed = KEYS["encoders_as_constructed_in_merv"]
    configs = {
        "languagebind": {"vision_config": constructed["languagebind"]["construction"]["vision_config"]},
        "dinov2": {"architecture": "vit_large_patch14_reg4_dinov2"},
        "vivit": constructed["vivit"]["construction"]["config"],
        "siglip": {"architecture": "vit_base_patch16_siglip_224"},
        "llm": KEYS["llm_config"],
    }
    for name, config in configs.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    weights = {name: _meta(spec["state_dict"]) for name, spec in KEYS["encoders_original_checkpoints"].items()}
    trainable = {
        group: _meta(spec)
        for group, spec in KEYS["checkpoint_model_dict"].items()
        if group in ("projectors", "llm_backbone", "feature_fusion")
    }
    tokenizer = SimpleNamespace(  # the real Llama-2 tokenizer after <PAD> (32000) and <video> (32001) are added
        pad_token_id=KEYS["tokenizer"]["pad_token_id"], convert_tokens_to_ids={"<video>": 32001}.__getitem__
    )
    encoders = EncoderSources(directories={name: root / name for name in DROPPED})
    config = build_config(KEYS["model_config"], encoders, weights, root / "llm", trainable, tokenizer)
    return config, weights, trainable


def test_converter_derives_the_merv_full_config(full_scale):
    config, _, _ = full_scale
    default = MervConfig()
    assert config.num_video_tokens == default.num_video_tokens == 1024
    assert config.fusion_hidden_size == 3072 and config.text_config.vocab_size == 32064
    assert config.num_frames == default.num_frames
    for name in config.vision_encoders:
        ours, reference = config.encoder_config(name).to_dict(), default.encoder_config(name).to_dict()
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"):
            assert ours.get(field) == reference.get(field), (name, field)


def test_every_key_maps_in_both_directions_with_matching_shapes(full_scale):
    config, weights, trainable = full_scale
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in MervForConditionalGeneration(config).state_dict().items()}
    mapped = {}
    for key, tensor in mapped_tensors(config, weights, trainable, "latest-checkpoint.pt"):
        assert key not in mapped, f"{key} filled twice"
        mapped[key] = tuple(tensor.shape)
    assert set(mapped) == set(expected), (sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected)))
    assert {key for key in mapped if mapped[key] != expected[key]} == set()
    # the 7B LLM, the four encoders, the projectors and the fusion are all there
    assert sum(torch.Size(shape).numel() for shape in expected.values()) > 7.3e9


@pytest.mark.parametrize("name", list(DROPPED))
def test_only_the_documented_encoder_keys_are_dropped(full_scale, name):
    config, weights, _ = full_scale
    rules = encoder_keys(config, name).rules
    unused = {key for key in weights[name] if not any(re.fullmatch(rule.pattern, key) for rule in rules)}
    assert unused == {key for key in weights[name] if re.fullmatch(DROPPED[name], key)}


def test_every_checkpoint_key_is_used(full_scale):
    """The authors' checkpoint (projectors, LLM, fusion incl. the unused-by-them v_proj/out_proj) is used entirely:
    the number of target tensors it fills equals its key count plus the two extra biases of the split in_proj_bias."""
    config, _, trainable = full_scale
    only_checkpoint = {name: {} for name in config.vision_encoders}
    produced = [
        key
        for key, _ in mapped_tensors(config, only_checkpoint, trainable, "latest-checkpoint.pt")
        if not key.startswith("model.vision_towers.")
    ]
    counts = KEYS["checkpoint_model_dict"]["counts"]
    assert len(produced) == counts["projectors"] + counts["llm_backbone"] + counts["feature_fusion"] + 2
