"""MervModel / MervForConditionalGeneration on tiny random configs: shapes, subsets, errors, loss, no-grad towers,
save/load and generation."""

import pytest
import torch
from transformers import AutoModel, LlamaModel

from transformers_merv import MervForConditionalGeneration, MervModel

from conftest import random_pixels, tiny_config, with_placeholders


@pytest.fixture(scope="module")
def model() -> MervForConditionalGeneration:
    torch.manual_seed(0)
    return MervForConditionalGeneration(tiny_config()).eval()


def _prompt(config, text_ids=(5, 6, 7), batch_size=1) -> torch.Tensor:
    ids = torch.tensor([[1, *text_ids]] * batch_size)
    return with_placeholders(ids, config.num_video_tokens, config.video_token_id)


def test_module_layout_follows_transformers_vlms(model):
    assert isinstance(model.model, MervModel)
    assert isinstance(model.model.language_model, LlamaModel)
    assert model.get_output_embeddings() is model.lm_head
    assert set(model.model.vision_towers) == set(model.model.projectors) == set(model.config.vision_encoders)
    assert model.get_input_embeddings() is model.model.language_model.embed_tokens


def test_tensor_parallel_plan_splits_the_language_model_like_llava(model):
    """`tp_plan="auto"` applies `model._tp_plan`: the LLM's own plan (from `config.text_config`) under
    `model.language_model.` plus the head, as for the Llava family; the encoders, projectors and fusion stay whole."""
    plan = model._tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    text_plan = model.config.text_config.base_model_tp_plan
    assert {f"model.language_model.{key}": value for key, value in text_plan.items()}.items() <= plan.items()
    assert all(key == "lm_head" or key.startswith("model.language_model.") for key in plan)
    assert model._pp_plan["lm_head"] == (["hidden_states"], ["logits"])


def test_forward_shapes_and_fusion_weights(model):
    config = model.config
    input_ids = _prompt(config, batch_size=2)
    with torch.no_grad():
        output = model(input_ids=input_ids, pixel_values_videos=random_pixels(config, batch_size=2))
    assert output.logits.shape == (2, input_ids.shape[1], config.text_config.vocab_size)
    video = output.video_outputs
    assert video.pooler_output.shape == (2, config.num_video_tokens, config.text_config.hidden_size)
    assert video.fusion_weights.shape == (2, 4)
    torch.testing.assert_close(video.fusion_weights.sum(-1), torch.ones(2))


def test_encoder_and_projected_features_on_request(model):
    config = model.config
    with torch.no_grad():
        features = model.get_video_features(random_pixels(config), output_encoder_features=True)
    expected_tokens = {"languagebind": 16 * 256, "dinov2": 16 * 16, "vivit": 16 * 14 * 14, "siglip": 16 * 16}
    for name, tokens in expected_tokens.items():
        assert features.encoder_features[name].shape == (1, tokens, config.encoder_config(name).hidden_size)
        assert features.projected_features[name].shape == (1, 64, config.text_config.hidden_size)
    assert model.get_video_features(random_pixels(config)).encoder_features is None


def test_batch_equals_single_runs(model):
    config = model.config
    pixels = random_pixels(config, batch_size=2, seed=3)
    input_ids = _prompt(config, batch_size=2)
    with torch.no_grad():
        batched = model(input_ids=input_ids, pixel_values_videos=pixels).logits
        for row in range(2):
            single = model(
                input_ids=input_ids[row : row + 1],
                pixel_values_videos={name: value[row : row + 1] for name, value in pixels.items()},
            ).logits
            torch.testing.assert_close(batched[row : row + 1], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "encoders", [["siglip"], ["languagebind"], ["vivit", "dinov2"], ["dinov2", "siglip", "vivit"]]
)
def test_encoder_subsets_run(encoders):
    config = tiny_config(vision_encoders=encoders)
    model = MervForConditionalGeneration(config).eval()
    assert set(model.model.vision_towers) == set(encoders)
    with torch.no_grad():
        output = model(input_ids=_prompt(config), pixel_values_videos=random_pixels(config))
    assert output.video_outputs.fusion_weights.shape == (1, len(encoders))


@pytest.mark.parametrize(
    "overrides",
    [
        {"alignment_pooling": "3dconv", "alignment_projector": "gelu-mlp"},
        {"alignment_pooling": "attntv", "alignment_attention_heads": 4},
        {"alignment_pooling": "conv", "alignment_conv_depth": 1},
        {"alignment_pooling": "avg", "alignment_projector": "fused-gelu-mlp"},
        {"alignment_pooling": "none", "vision_encoders": ["siglip"]},
        {"fusion_type": "scalar"},
        {"fusion_type": "first"},
        {"fusion_type": "concat_tokens"},
        {"fusion_type": "concat_channel_ln"},
    ],
)
def test_every_alignment_and_fusion_variant_runs(overrides):
    config = tiny_config(**overrides)
    model = MervForConditionalGeneration(config).eval()
    with torch.no_grad():
        output = model(input_ids=_prompt(config), pixel_values_videos=random_pixels(config))
    assert output.video_outputs.pooler_output.shape[1] == config.num_video_tokens


def test_placeholder_count_mismatch_names_both_numbers(model):
    config = model.config
    input_ids = with_placeholders(torch.tensor([[1, 5, 6, 7]]), 54, config.video_token_id)
    with pytest.raises(ValueError, match=r"holds 54 video placeholder.*give 64 visual tokens"):
        model(input_ids=input_ids, pixel_values_videos=random_pixels(config))


def test_placeholders_without_video_are_rejected(model):
    with pytest.raises(ValueError, match="holds 64 video placeholder"):
        model(input_ids=_prompt(model.config))


def test_text_only_prompt(model):
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert output.logits.shape == (1, 4, model.config.text_config.vocab_size)
    assert output.video_outputs is None


def test_missing_or_misshaped_pixels_are_rejected(model):
    pixels = random_pixels(model.config)
    del pixels["vivit"]
    with pytest.raises(ValueError, match=r"lacks encoders \['vivit'\]"):
        model.get_video_features(pixels)
    pixels = random_pixels(model.config)
    pixels["dinov2"] = pixels["dinov2"][:, :8]
    with pytest.raises(ValueError, match=r"pixel_values_videos\['dinov2'\].*\(videos, 16, 3, 56, 56\)"):
        model.get_video_features(pixels)
    with pytest.raises(TypeError, match="must be a dict"):
        model.get_video_features(torch.zeros(1, 16, 3, 32, 32))


def test_loss_never_scores_video_placeholders(model):
    config = model.config
    input_ids = _prompt(config, text_ids=(5, 6, 7, 8))
    pixels = random_pixels(config)
    masked = input_ids.masked_fill(input_ids == config.video_token_id, -100)
    with torch.no_grad():
        loss_masked = model(input_ids=input_ids, labels=masked, pixel_values_videos=pixels).loss
        loss_raw = model(input_ids=input_ids, labels=input_ids.clone(), pixel_values_videos=pixels).loss
    torch.testing.assert_close(loss_raw, loss_masked)


def test_frozen_encoders_get_no_gradient_and_keep_no_graph():
    config = tiny_config()
    model = MervForConditionalGeneration(config).train()
    model.model.vision_towers.requires_grad_(False)
    input_ids = _prompt(config)
    output = model(input_ids=input_ids, labels=input_ids, pixel_values_videos=random_pixels(config))
    output.loss.backward()
    assert all(p.grad is None for p in model.model.vision_towers.parameters())
    assert all(p.grad is not None for p in model.model.projectors.parameters())
    assert model.model.fusion.query.grad is not None
    features = model.get_video_features(random_pixels(config), output_encoder_features=True)
    assert not any(feature.requires_grad for feature in features.encoder_features.values())
    assert all(feature.requires_grad for feature in features.projected_features.values())


def test_frozen_encoders_stay_in_eval_mode_when_training():
    model = MervForConditionalGeneration(tiny_config())
    model.model.vision_towers["dinov2"].requires_grad_(False)
    model.train()
    assert not model.model.vision_towers["dinov2"].training
    assert model.model.vision_towers["siglip"].training and model.model.language_model.training
    model.eval()
    assert not any(module.training for module in model.modules())


def test_save_and_reload_are_identical(model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MervForConditionalGeneration
    # non-persistent buffers are rebuilt when loading on the meta device
    embeddings = reloaded.model.vision_towers["languagebind"].embeddings
    assert torch.equal(embeddings.position_ids, torch.arange(257).unsqueeze(0))
    input_ids, pixels = _prompt(model.config), random_pixels(model.config)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=input_ids, pixel_values_videos=pixels).logits,
            model(input_ids=input_ids, pixel_values_videos=pixels).logits,
        )


def test_headless_model_loads_from_a_generation_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path)
    base = MervModel.from_pretrained(tmp_path)
    with torch.no_grad():
        hidden = base(input_ids=_prompt(model.config), pixel_values_videos=random_pixels(model.config))
    assert hidden.last_hidden_state.shape[-1] == model.config.text_config.hidden_size


def test_greedy_generation_with_cache_matches_teacher_forcing(model):
    config = model.config
    input_ids, pixels = _prompt(config), random_pixels(config, seed=5)
    with torch.no_grad():
        generated = model.generate(input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=6, do_sample=False)
        sequence = input_ids
        for _ in range(6):
            next_token = model(input_ids=sequence, pixel_values_videos=pixels).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)


def test_encoders_stop_at_their_feature_layer(model):
    """Layers after the one MERV reads are kept (complete checkpoints) but never run, and the tokens equal that
    hidden state of a full tower forward."""
    config = model.config
    pixels = random_pixels(config, seed=11)
    ran = []
    last_layers = {
        name: model.model.vision_towers[name].get_submodule(path)[-1]
        for name, path in (
            ("languagebind", "encoder.layers"),
            ("dinov2", "encoder.layer"),
            ("siglip", "encoder.layers"),
        )
    }
    hooks = [
        layer.register_forward_hook(lambda *args, name=name: ran.append(name)) for name, layer in last_layers.items()
    ]
    with torch.no_grad():
        features = model.get_video_features(pixels, output_encoder_features=True).encoder_features
        for hook in hooks:
            hook.remove()
        assert ran == []
        assert "model.vision_towers.languagebind.encoder.layers.2.mlp.fc1.weight" in model.state_dict()
        siglip = model.model.vision_towers["siglip"]
        full = siglip(pixel_values=pixels["siglip"].flatten(0, 1), output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(features["siglip"], full.reshape(1, -1, full.shape[-1]))
        vivit = model.model.vision_towers["vivit"](pixel_values=pixels["vivit"]).last_hidden_state[:, 1:]
        torch.testing.assert_close(features["vivit"], vivit)


def test_concurrent_encoders_give_identical_outputs(model):
    config = model.config
    pixels, input_ids = random_pixels(config, batch_size=2, seed=13), _prompt(config, batch_size=2)
    with torch.no_grad():
        sequential = model(input_ids=input_ids, pixel_values_videos=pixels)
        model.config.concurrent_encoders = True
        try:
            concurrent = model(input_ids=input_ids, pixel_values_videos=pixels)
        finally:
            model.config.concurrent_encoders = False
    assert torch.equal(sequential.video_outputs.pooler_output, concurrent.video_outputs.pooler_output)
    assert torch.equal(sequential.logits, concurrent.logits)


def test_concurrent_encoders_keep_the_callers_grad_mode():
    config = tiny_config(concurrent_encoders=True)
    model = MervForConditionalGeneration(config).train()
    model.model.vision_towers.requires_grad_(False)
    features = model.get_video_features(random_pixels(config), output_encoder_features=True)
    assert all(value.requires_grad for value in features.projected_features.values())
    with torch.no_grad():
        features = model.get_video_features(random_pixels(config), output_encoder_features=True)
    assert not any(value.requires_grad for value in features.projected_features.values())


def test_concurrent_encoders_are_refused_in_distributed_runs(model, tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    model.config.concurrent_encoders = True
    try:
        with pytest.raises(ValueError, match="cannot be used in distributed training"):
            model.get_video_features(random_pixels(model.config))
    finally:
        model.config.concurrent_encoders = False
        torch.distributed.destroy_process_group()


def test_unused_fusion_projections_are_buffers_not_parameters(model):
    names = {name for name, _ in model.named_parameters()}
    assert "model.fusion.value_proj.weight" not in names and "model.fusion.out_proj.bias" not in names
    assert {"model.fusion.value_proj.weight", "model.fusion.out_proj.bias"} <= set(model.state_dict())


def test_standardized_projectors_give_zero_mean_unit_variance_tokens():
    config = tiny_config(alignment_projector="gelu-mlp")
    model = MervForConditionalGeneration(config).eval()
    pixels = random_pixels(config, batch_size=8, seed=17)
    model.model.standardize_projector_inputs(pixels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in config.vision_encoders:
            projector = model.model.projectors[name]
            features = model.model._encode(name, pixels[name])[0].unflatten(
                1, (config.encoder_token_grid(name)[0], -1)
            )
            first = projector.mlp.layers[0](projector.resampler(features)).flatten(0, 1)  # (samples, width)
            torch.testing.assert_close(first.mean(0), torch.zeros(first.shape[1]), atol=1e-4, rtol=0)
            assert 0.5 < first.std(0).mean().item() < 1.5
