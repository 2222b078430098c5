"""transformers integration: Auto classes, remote code, Hub push, dtypes, attention implementations, device maps,
activation checkpointing and embedding accessors."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM
from transformers.integrations.accelerate import infer_auto_device_map
from transformers.modeling_layers import GradientCheckpointingLayer

from transformers_merv import MervConfig, MervForConditionalGeneration, MervModel
from transformers_merv.compat import enable_activation_checkpointing
from transformers_merv.modeling_merv import MervVideoModel

from conftest import half_precision_atol, random_pixels, tiny_config, with_placeholders


@pytest.fixture(scope="module")
def model() -> MervForConditionalGeneration:
    torch.manual_seed(0)
    return MervForConditionalGeneration(tiny_config()).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    return directory


def _inputs(config, batch_size=1):
    input_ids = with_placeholders(
        torch.tensor([[1, 5, 6, 7]] * batch_size), config.num_video_tokens, config.video_token_id
    )
    return {"input_ids": input_ids, "pixel_values_videos": random_pixels(config, batch_size)}


@pytest.fixture(scope="module")
def reference_logits(model):
    with torch.no_grad():
        return model(**_inputs(model.config)).logits


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM])
def test_auto_classes_load_the_generation_model(saved, auto_class):
    assert type(auto_class.from_pretrained(saved)) is MervForConditionalGeneration
    assert type(AutoConfig.from_pretrained(saved)) is MervConfig


def test_saved_directory_carries_remote_code(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_merv.MervConfig",
        "AutoModel": "modeling_merv.MervForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_merv.MervForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_merv.MervForConditionalGeneration",
    }
    assert {"configuration_merv.py", "modeling_merv.py", "modeling_languagebind.py"} <= {
        p.name for p in saved.iterdir()
    }


def test_remote_code_loads_where_the_package_is_not_importable(saved, reference_logits, tmp_path):
    """A fresh interpreter in which `import transformers_merv` fails loads the directory with trust_remote_code and
    reproduces the logits."""
    inputs_path = tmp_path / "inputs.pt"
    torch.save(_inputs(MervConfig.from_pretrained(saved)), inputs_path)
    script = f"""
import sys, torch
sys.modules["transformers_merv"] = None  # not installed
from transformers import AutoModel
model = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(**torch.load({str(inputs_path)!r}, weights_only=True)).logits
torch.save(logits, {str(tmp_path / "logits.pt")!r})
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt", weights_only=True), reference_logits)


def test_save_pretrained_shards_at_5gb_by_default(model, tmp_path):
    with mock.patch("transformers.modeling_utils.PreTrainedModel.save_pretrained") as save:
        model.save_pretrained(tmp_path)
    assert save.call_args.kwargs["max_shard_size"] == "5GB"
    model.save_pretrained(tmp_path / "small", max_shard_size="1MB")
    index = json.loads((tmp_path / "small" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


def test_push_to_hub_uploads_weights_code_and_card(model, fake_hub):
    model.push_to_hub("user/merv-tiny")
    files = {path.name for path in fake_hub.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "modeling_merv.py",
        "configuration_merv.py",
        "modeling_languagebind.py",
    } <= files
    assert "library_name: transformers" in (fake_hub / "README.md").read_text()
    assert type(AutoModel.from_pretrained(fake_hub)) is MervForConditionalGeneration


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading_and_forward(saved, reference_logits, dtype):
    model = AutoModel.from_pretrained(saved, dtype=dtype).eval()
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}
    with torch.no_grad():
        logits = model(**_inputs(model.config)).logits  # float32 pixels are cast to each tower's dtype
    assert logits.dtype == dtype
    atol = half_precision_atol(dtype, reference_logits)
    torch.testing.assert_close(logits.float(), reference_logits, atol=atol, rtol=0)


def test_dtype_auto_keeps_the_saved_dtype(model, tmp_path):
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.to(torch.float32)
    assert AutoModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert handle.get_tensor("lm_head.weight").dtype == torch.bfloat16


def test_mixed_dtypes_between_encoders_and_llm(saved, reference_logits):
    model = AutoModel.from_pretrained(saved).eval()
    model.model.language_model.to(torch.bfloat16)
    model.lm_head.to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**_inputs(model.config)).logits
    assert logits.dtype == torch.bfloat16
    atol = half_precision_atol(torch.bfloat16, reference_logits)
    torch.testing.assert_close(logits.float(), reference_logits, atol=atol, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementation_reaches_every_tower(saved, reference_logits, implementation):
    model = AutoModel.from_pretrained(saved, attn_implementation=implementation).eval()
    for tower in model.model.vision_towers.values():
        assert tower.config._attn_implementation == implementation
    assert model.model.language_model.config._attn_implementation == implementation
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs(model.config)).logits, reference_logits, atol=1e-4, rtol=1e-4)


def test_attention_implementation_set_after_loading_reaches_every_config(saved):
    """`set_attn_implementation` switches MERV's own config too, not only the towers' and the language model's
    (transformers' source heuristic alone would take the query fusion for an attention layer it cannot switch)."""
    model = AutoModel.from_pretrained(saved, attn_implementation="sdpa")
    model.set_attn_implementation("eager")
    towers = model.model.vision_towers.values()
    configs = [model.config, *(tower.config for tower in towers), model.model.language_model.config]
    assert [config._attn_implementation for config in configs] == ["eager"] * len(configs)


def test_device_map_plan_keeps_towers_and_layers_whole():
    """merv-full (bf16) on the meta device, spread over six fake 0.8 GB GPUs + CPU: every tower lands whole on one
    device, towers spread over several GPUs, and no projector, fusion or decoder layer is split."""
    with init_empty_weights():
        model = MervForConditionalGeneration(MervConfig()).to(torch.bfloat16)
    budget = int(0.8 * 2**30)
    plan = infer_auto_device_map(
        model,
        max_memory={**dict.fromkeys(range(6), budget), "cpu": 80 * 2**30},
        no_split_module_classes=model._no_split_modules,
    )
    tower_devices = {plan[f"model.vision_towers.{name}"] for name in model.config.vision_encoders}
    assert all(isinstance(device, int) for device in tower_devices) and len(tower_devices) >= 2
    whole = ("model.vision_towers.", "model.projectors.", "model.fusion.")
    assert not any(key.startswith(whole) and key.count(".") > 2 for key in plan), plan
    assert not any(key.startswith("model.language_model.layers.") and key.count(".") > 3 for key in plan), plan
    assert len(set(plan.values())) >= 4


def test_cpu_and_disk_offload_reproduce_the_logits(saved, reference_logits, tmp_path):
    device_map = {
        "model.vision_towers.languagebind": "cpu",
        "model.vision_towers.dinov2": "disk",
        "model.vision_towers.vivit": "cpu",
        "model.vision_towers.siglip": "disk",
        "model.projectors": "disk",
        "model.fusion": "disk",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "disk",
        "model.language_model.layers.1": "cpu",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    model = AutoModel.from_pretrained(saved, device_map=device_map, offload_folder=tmp_path).eval()
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs(model.config)).logits, reference_logits)
        generated = model.generate(**_inputs(model.config), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == _inputs(model.config)["input_ids"].shape[1] + 3


def test_activation_checkpointing_with_frozen_encoders_trains_the_rest(saved):
    model = AutoModel.from_pretrained(saved).train()
    model.model.vision_towers.requires_grad_(False)
    enable_activation_checkpointing(model)
    inputs = _inputs(model.config)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert all(parameter.grad is None for parameter in model.model.vision_towers.parameters())
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.model.fusion.query.grad is not None
    assert all(parameter.grad is not None for parameter in model.model.projectors.parameters())


@pytest.mark.parametrize("model_class", [MervVideoModel, MervModel, MervForConditionalGeneration])
def test_gradient_checkpointing_in_the_config_reaches_every_layer(model_class):
    """transformers' legacy switch `config.gradient_checkpointing=True` takes effect once the whole model is built:
    the language model's layers are checkpointed too, and the video model alone (no input embeddings) builds."""
    config = tiny_config()
    config.gradient_checkpointing = True
    model = model_class(config)
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    assert not hasattr(model.config, "gradient_checkpointing")


def test_input_require_grads_hooks_only_the_llm_embeddings(saved):
    model = AutoModel.from_pretrained(saved)
    model.requires_grad_(False)
    model.enable_input_require_grads()
    inputs = _inputs(model.config)
    features = model.get_video_features(inputs["pixel_values_videos"], output_encoder_features=True)
    assert not any(feature.requires_grad for feature in features.encoder_features.values())
    assert model.get_input_embeddings()(inputs["input_ids"]).requires_grad


def test_embedding_accessors_and_resizing(saved):
    model = AutoModel.from_pretrained(saved).eval()
    embeddings = model.get_input_embeddings()
    assert embeddings is model.model.language_model.embed_tokens
    replacement = torch.nn.Embedding(*embeddings.weight.shape)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    model.set_input_embeddings(embeddings)
    model.resize_token_embeddings(1088)
    assert model.get_input_embeddings().weight.shape[0] == 1088 and model.lm_head.weight.shape[0] == 1088
    assert model.config.text_config.vocab_size == 1088
    with torch.no_grad():
        assert model(**_inputs(model.config)).logits.shape[-1] == 1088
