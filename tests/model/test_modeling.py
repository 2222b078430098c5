"""MervModel / MervForConditionalGeneration on tiny random configs: shapes, subsets, errors, loss, no-grad towers,
save/load and generation."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModel, LlamaModel

from transformers_merv import MervForConditionalGeneration, MervModel
from transformers_merv.configuration_merv import MervLanguageBindVideoConfig
from transformers_merv.modeling_languagebind import MervLanguageBindEncoderLayer, MervLanguageBindVideoModel
from transformers_merv.modeling_merv import MervProjectorMLP, MervVisualProjector

from conftest import (
    half_precision_atol,
    pack_pixels,
    random_pixels,
    random_pixels_by_encoder,
    tiny_config,
    with_placeholders,
)


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
                pixel_values_videos=pixels[row : row + 1],
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


@pytest.mark.parametrize(("pooling", "stride"), [("3davg", 2), ("3dconv", 2), ("avg", 1), ("conv", 1)])
def test_resamplers_pool_to_the_configured_token_grid(pooling, stride):
    """Each pooled frame is a sqrt(alignment_tokens_per_frame)-sided square (9 tokens: 3x3), and the 3D poolings keep
    one frame in `alignment_temporal_stride`."""
    config = tiny_config(
        alignment_pooling=pooling,
        alignment_tokens_per_frame=9,
        alignment_temporal_stride=stride,
        vision_encoders=["siglip"],
    )
    frames, height, width = config.encoder_token_grid("siglip")
    features = torch.randn(1, frames, height * width, config.siglip_config.hidden_size)
    with torch.no_grad():
        pooled = MervVisualProjector(config, "siglip")(features)
    assert pooled.shape == (1, frames // stride * 9, config.text_config.hidden_size)


@pytest.mark.parametrize(
    ("kind", "widths"),
    [("linear", [(8, 6)]), ("gelu-mlp", [(8, 6), (6, 6)]), ("fused-gelu-mlp", [(8, 32), (32, 6), (6, 6)])],
)
def test_projector_mlp_layer_widths_follow_the_authors(kind, widths):
    """`FusedMLPProjector` widens to 4x its input first: Linear(in, 4 in), GELU, Linear(4 in, out), GELU, Linear."""
    mlp = MervProjectorMLP(8, 6, kind)
    assert [(layer.in_features, layer.out_features) for layer in mlp.layers] == widths


def test_placeholder_count_mismatch_names_both_numbers(model):
    config = model.config
    input_ids = with_placeholders(torch.tensor([[1, 5, 6, 7]]), 54, config.video_token_id)
    with pytest.raises(
        ValueError,
        match=r"holds 54 video placeholder.*give 64 visual tokens.*; each `<video>` must be expanded to "
        r"`config.num_video_tokens` placeholders \(MervProcessor does this\)$",
    ):
        model(input_ids=input_ids, pixel_values_videos=random_pixels(config))


def test_placeholders_without_video_are_rejected(model):
    with pytest.raises(ValueError, match="holds 64 video placeholder"):
        model(input_ids=_prompt(model.config))


def test_inputs_embeds_without_ids_mark_the_placeholders_by_their_embedding(model):
    """Without `input_ids`, the placeholders are the positions holding the `<video>` token's embedding."""
    config = model.config
    input_ids = _prompt(config, batch_size=2)
    pixels = random_pixels(config, batch_size=2)
    with torch.no_grad():
        by_ids = model(input_ids=input_ids, pixel_values_videos=pixels).logits
        inputs_embeds = model.get_input_embeddings()(input_ids)
        by_embeddings = model(inputs_embeds=inputs_embeds, pixel_values_videos=pixels).logits
    torch.testing.assert_close(by_embeddings, by_ids, atol=0, rtol=0)


def test_encoders_in_half_precision_feed_projectors_in_float32(model):
    """Frozen towers loaded in bfloat16 beside float32 projectors (a memory saving while training the projectors):
    each tower's features are cast to its projector's dtype."""
    config = model.config
    pixels = random_pixels(config)
    with torch.no_grad():
        reference = model.get_video_features(pixels).pooler_output
        model.model.vision_towers.to(torch.bfloat16)
        try:
            mixed = model.get_video_features(pixels).pooler_output
        finally:
            model.model.vision_towers.to(torch.float32)
    assert mixed.dtype == torch.float32
    atol = half_precision_atol(torch.bfloat16, reference)
    torch.testing.assert_close(mixed, reference, atol=atol, rtol=0)


def _input_devices(model: MervForConditionalGeneration) -> dict[str, set[str]]:
    """Device types of the inputs each tower (its patch embeddings) and projector receives in `get_video_features`."""
    devices = {}
    for name in model.config.vision_encoders:
        for part, module in (
            ("tower", model.model.vision_towers[name].embeddings),
            ("projector", model.model.projectors[name]),
        ):
            module.register_forward_pre_hook(
                lambda module, args, key=f"{part} {name}": devices.setdefault(key, set()).add(args[0].device.type)
            )
    model.model.get_video_features(random_pixels(model.config))  # pixels on the CPU
    return devices


def test_inputs_move_to_each_modules_device():
    """Towers, projectors and the placeholder mask get their inputs on the device each runs on. The meta device
    stands in for a second device: CPU tensors mix with meta ones without error, so only these moves put the inputs
    there."""
    config = tiny_config()
    on_meta = MervForConditionalGeneration(config).to("meta")
    assert _input_devices(on_meta) == {
        f"{part} {name}": {"meta"} for name in config.vision_encoders for part in ("tower", "projector")
    }
    split = MervForConditionalGeneration(config)  # towers on the CPU, projectors and fusion on the meta device
    split.model.projectors.to("meta")
    split.model.fusion.to("meta")
    assert {key: devices for key, devices in _input_devices(split).items() if key.startswith("projector")} == {
        f"projector {name}": {"meta"} for name in config.vision_encoders
    }
    input_ids = _prompt(config)  # on the CPU, the embeddings on the meta device
    inputs_embeds = on_meta.get_input_embeddings()(input_ids.to("meta"))
    features = torch.zeros(1, config.num_video_tokens, config.text_config.hidden_size, device="meta")
    assert on_meta.model.get_placeholder_mask(input_ids, inputs_embeds, features).device.type == "meta"


def test_text_only_prompt(model):
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert output.logits.shape == (1, 4, model.config.text_config.vocab_size)
    assert output.video_outputs is None


def test_text_only_forward_is_the_language_models_own(model):
    """Without a video (and without placeholders) the forward is the language model's and the head's, as in-tree
    VLMs': eager and SDPA attention agree (transformers' float32 CPU tolerances), and the language model's hidden
    states and attentions come back."""
    config = model.config
    input_ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        sdpa_output = model(input_ids=input_ids, output_hidden_states=True)
        eager_output = eager(input_ids=input_ids, output_hidden_states=True, output_attentions=True)
        alone = model.model.language_model(input_ids=input_ids)
    assert torch.equal(sdpa_output.logits, model.lm_head(alone.last_hidden_state))
    layers = config.text_config.num_hidden_layers
    assert len(sdpa_output.hidden_states) == len(eager_output.hidden_states) == layers + 1
    assert len(eager_output.attentions) == layers
    assert eager_output.attentions[0].shape == (2, config.text_config.num_attention_heads, 5, 5)
    torch.testing.assert_close(eager_output.hidden_states[-1], sdpa_output.hidden_states[-1], atol=1e-6, rtol=1e-4)


def test_missing_or_misshaped_per_encoder_pixels_are_rejected(model):
    pixels = random_pixels_by_encoder(model.config)
    del pixels["vivit"]
    with pytest.raises(ValueError, match=r"lacks encoders \['vivit'\]"):
        model.get_video_features(pixels)
    pixels = random_pixels_by_encoder(model.config)
    pixels["dinov2"] = pixels["dinov2"][:, :8]
    with pytest.raises(ValueError, match=r"pixel_values_videos\['dinov2'\].*\(videos, 16, 3, 56, 56\)"):
        model.get_video_features(pixels)
    pixels = random_pixels_by_encoder(model.config, batch_size=2)
    pixels["siglip"] = pixels["siglip"][:1]
    with pytest.raises(ValueError, match=r"same number of videos, got \[1, 2\]"):
        model.get_video_features(pixels)


def test_packed_pixels_split_into_views_of_each_encoders_block(model):
    by_encoder = random_pixels_by_encoder(model.config, batch_size=2, seed=4)
    packed = pack_pixels(by_encoder)
    split = model.split_pixel_values_videos(packed)
    assert list(split) == model.config.vision_encoders
    for name, pixels in split.items():
        assert torch.equal(pixels, by_encoder[name])
        assert pixels.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()  # a view, not a copy
    assert model.model.split_pixel_values_videos(packed).keys() == split.keys()  # the headless model's too


@pytest.mark.parametrize("shape", [(1, 5), (1, 1, 5), "one too wide"])
def test_packed_pixels_of_another_shape_are_rejected_before_any_encoder_runs(model, shape):
    config = model.config
    width = sum(torch.Size(shape).numel() for shape in config.video_pixel_shapes().values())
    pixels = torch.zeros((1, width + 1) if shape == "one too wide" else shape)
    runs = []
    hooks = [
        tower.embeddings.register_forward_pre_hook(lambda *args: runs.append(args))
        for tower in model.model.vision_towers.values()
    ]
    try:
        with pytest.raises(ValueError) as raised:
            model(input_ids=_prompt(config), pixel_values_videos=pixels)
    finally:
        for hook in hooks:
            hook.remove()
    assert str(raised.value) == (
        f"`pixel_values_videos` must have shape (num_videos, {width}): the (frames, channels, height, width) pixels "
        "of each encoder (languagebind (16, 3, 32, 32), dinov2 (16, 3, 56, 56), vivit (32, 3, 28, 28), siglip "
        f"(16, 3, 64, 64)) flattened and concatenated in that order; got {tuple(pixels.shape)}"
    )
    assert runs == []


def test_pixels_of_another_type_are_rejected(model):
    with pytest.raises(TypeError, match=r"must be a tensor \(num_videos, D\) or a dict .* got list"):
        model.get_video_features([torch.zeros(1, 5)])


def test_per_encoder_pixels_give_exactly_the_packed_results(model):
    """The per-encoder dict of earlier releases still works everywhere pixels go in, with the same numbers."""
    config = model.config
    by_encoder = random_pixels_by_encoder(config, batch_size=2, seed=8)
    input_ids = _prompt(config, batch_size=2)
    results = {}
    with torch.no_grad():
        for form, pixels in (("dict", by_encoder), ("packed", pack_pixels(by_encoder))):
            results[form] = (
                model.get_video_features(pixels).pooler_output,
                model(input_ids=input_ids, pixel_values_videos=pixels).logits,
                model.generate(
                    input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=3, num_beams=2, do_sample=False
                ),
            )
    for from_dict, from_packed in zip(results["dict"], results["packed"], strict=True):
        assert torch.equal(from_dict, from_packed)


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


def test_weights_missing_from_a_checkpoint_get_their_towers_own_init(model):
    """A checkpoint without the SigLIP tower: its layers are initialised as SigLIP initialises them (MLP biases drawn
    with std 1e-6, where a plain linear layer's are zeros), as when the tower is built."""
    state = {key: value for key, value in model.state_dict().items() if ".vision_towers.siglip." not in key}
    loaded = MervForConditionalGeneration.from_pretrained(None, config=model.config, state_dict=state)
    for layer in loaded.model.vision_towers["siglip"].encoder.layers:
        assert 0 < layer.mlp.fc1.bias.abs().max() < 1e-4


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
        by_encoder = model.split_pixel_values_videos(pixels)
        full = siglip(pixel_values=by_encoder["siglip"].flatten(0, 1), output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(features["siglip"], full.reshape(1, -1, full.shape[-1]))
        vivit = model.model.vision_towers["vivit"](pixel_values=by_encoder["vivit"]).last_hidden_state[:, 1:]
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
    pixels = random_pixels_by_encoder(config, batch_size=8, seed=17)
    model.model.standardize_projector_inputs(pack_pixels(pixels), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in config.vision_encoders:
            projector = model.model.projectors[name]
            features = model.model._encode(name, pixels[name]).features.unflatten(
                1, (config.encoder_token_grid(name)[0], -1)
            )
            first = projector.mlp.layers[0](projector.resampler(features)).flatten(0, 1)  # (samples, width)
            torch.testing.assert_close(first.mean(0), torch.zeros(first.shape[1]), atol=1e-4, rtol=0)
            assert 0.5 < first.std(0).mean().item() < 1.5


# --- values, not only shapes -----------------------------------------------------------------------------------------


def _projected_and_fused(model, pixels):
    with torch.no_grad():
        features = model.get_video_features(pixels, output_encoder_features=True)
    projected = [features.projected_features[name] for name in model.config.vision_encoders]
    return projected, features


def test_query_fusion_weights_and_tokens_equal_the_authors_attention():
    """Weights = the attention weights of the authors' single-head `nn.MultiheadAttention` (learned query against
    each encoder's token-mean); fused tokens = the weighted sum of the projected tokens, in encoder order."""
    torch.manual_seed(1)
    model = MervForConditionalGeneration(tiny_config()).eval()
    fusion = model.model.fusion
    for parameter in (fusion.query, fusion.query_proj.weight, fusion.query_proj.bias, fusion.key_proj.weight):
        torch.nn.init.normal_(parameter, std=3.0)  # large scores, so that the weights are far from uniform
    pixels = random_pixels(model.config, batch_size=2, seed=21)
    projected, features = _projected_and_fused(model, pixels)
    width, text_dim = model.config.fusion_hidden_size, model.config.text_config.hidden_size
    attention = torch.nn.MultiheadAttention(width, 1, kdim=text_dim, vdim=text_dim, batch_first=True)
    with torch.no_grad():
        attention.q_proj_weight.copy_(fusion.query_proj.weight)
        attention.k_proj_weight.copy_(fusion.key_proj.weight)
        attention.in_proj_bias.copy_(torch.cat([fusion.query_proj.bias, fusion.key_proj.bias, torch.zeros(width)]))
        means = torch.stack([tokens.mean(1) for tokens in projected], dim=1)  # (videos, encoders, dim)
        _, expected_weights = attention(fusion.query.expand(2, 1, -1), means, means)
    expected_weights = expected_weights[:, 0]
    assert (expected_weights.max(-1).values - expected_weights.min(-1).values).min() > 0.1
    torch.testing.assert_close(features.fusion_weights, expected_weights, atol=1e-6, rtol=1e-5)
    expected_fused = sum(w[:, None, None] * tokens for w, tokens in zip(expected_weights.unbind(-1), projected))
    torch.testing.assert_close(features.pooler_output, expected_fused, atol=1e-6, rtol=1e-5)


def test_scalar_fusion_is_the_softmax_weighted_sum_in_encoder_order():
    config = tiny_config(fusion_type="scalar")
    model = MervForConditionalGeneration(config).eval()
    scalars = torch.tensor([1.0, -0.5, 0.25, 2.0])  # one per encoder of config.vision_encoders, in that order
    with torch.no_grad():
        model.model.fusion.scalar.copy_(scalars)
    projected, features = _projected_and_fused(model, random_pixels(config, batch_size=2, seed=22))
    weights = torch.exp(scalars) / torch.exp(scalars).sum()
    assert torch.equal(features.fusion_weights, features.fusion_weights[:1].expand(2, -1))
    torch.testing.assert_close(features.fusion_weights[0], weights, atol=1e-7, rtol=1e-6)
    expected = sum(weight * tokens for weight, tokens in zip(weights, projected))
    torch.testing.assert_close(features.pooler_output, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("fusion_type", "combine"),
    [
        ("concat_tokens", lambda projected: torch.cat(projected, dim=1)),
        ("first", lambda projected: projected[0]),
    ],
)
def test_unweighted_fusions_combine_the_projected_tokens(fusion_type, combine):
    config = tiny_config(fusion_type=fusion_type)
    model = MervForConditionalGeneration(config).eval()
    projected, features = _projected_and_fused(model, random_pixels(config, seed=23))
    assert features.fusion_weights is None
    assert torch.equal(features.pooler_output, combine(projected))


@pytest.mark.parametrize("with_norm", [False, True])
def test_channel_fusion_projects_the_concatenated_channels(with_norm):
    config = tiny_config(fusion_type="concat_channel_ln" if with_norm else "concat_channel")
    model = MervForConditionalGeneration(config).eval()
    fusion = model.model.fusion
    projected, features = _projected_and_fused(model, random_pixels(config, seed=24))
    concatenated = torch.cat(projected, dim=-1)
    if with_norm:
        mean, var = concatenated.mean(-1, keepdim=True), concatenated.var(-1, unbiased=False, keepdim=True)
        normalized = (concatenated - mean) / torch.sqrt(var + fusion.norm.eps)
        concatenated = normalized * fusion.norm.weight + fusion.norm.bias
    expected = concatenated @ fusion.projector.weight.T + fusion.projector.bias
    torch.testing.assert_close(features.pooler_output, expected, atol=1e-5, rtol=1e-5)


def test_visual_tokens_replace_exactly_the_placeholders_in_order(model):
    """Batch of two prompts whose placeholders start at different positions: the LLM receives video b's visual
    tokens, in order, at prompt b's placeholders, and the text embeddings everywhere else."""
    config = model.config
    num_tokens, video_id = config.num_video_tokens, config.video_token_id
    placeholders = [video_id] * num_tokens
    input_ids = torch.tensor([[1, 5, *placeholders, 6, 7], [1, 8, 9, *placeholders, 10]])
    pixels = random_pixels(config, batch_size=2, seed=25)
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(input_ids=input_ids, pixel_values_videos=pixels)
            visual = model.get_video_features(pixels).pooler_output
            text = model.get_input_embeddings()(input_ids)
    finally:
        hook.remove()
    embeds = captured["inputs_embeds"]
    for row, start in enumerate((2, 3)):
        span = slice(start, start + num_tokens)
        assert torch.equal(embeds[row, span], visual[row])
        is_text = torch.ones(input_ids.shape[1], dtype=torch.bool)
        is_text[span] = False
        assert torch.equal(embeds[row, is_text], text[row, is_text])
    assert not torch.equal(visual[0], visual[1])


def test_languagebind_tower_forward_equals_the_layer_by_layer_run(model):
    """MERV runs the towers layer by layer up to the layer it reads; the tower's own forward (used on its own) gives
    the same hidden states, and its pooled output is the frame-mean of the normalised CLS tokens."""
    config = model.config
    pixels = random_pixels_by_encoder(config, batch_size=2, seed=26)["languagebind"]
    tower = model.model.vision_towers["languagebind"]
    with torch.no_grad():
        output = tower(pixel_values=pixels, output_hidden_states=True)
        selected = model.model._encode("languagebind", pixels).features
    layer = config.vision_feature_layer["languagebind"]
    expected = output.hidden_states[layer][:, 1:].reshape(2, -1, tower.config.hidden_size)
    torch.testing.assert_close(selected, expected, atol=1e-6, rtol=1e-6)
    cls = tower.post_layernorm(output.last_hidden_state[:, 0]).view(2, config.num_frames["languagebind"], -1)
    torch.testing.assert_close(output.pooler_output, cls.mean(1))


def _authors_temporal_block(layer, hidden: torch.Tensor, group: int) -> torch.Tensor:
    """LanguageBind's temporal branch written the authors' way: `(b t) n d -> (b n) t d`, add the temporal embedding
    (for more than one frame), pre-norm attention over time with a residual, and back."""
    rows, num_tokens, dim = hidden.shape
    over_time = hidden.reshape(rows // group, group, num_tokens, dim).permute(0, 2, 1, 3).reshape(-1, group, dim)
    if group > 1:
        over_time = over_time + layer.temporal_embedding[:, :group]
    over_time = over_time + layer.temporal_attn(layer.temporal_layer_norm1(over_time))[0]
    return over_time.reshape(rows // group, num_tokens, group, dim).permute(0, 2, 1, 3).reshape(rows, num_tokens, dim)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_languagebind_temporal_attention_runs_within_groups_of_frames(group):
    torch.manual_seed(group)
    config = MervLanguageBindVideoConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, temporal_group_size=group
    )
    layer = MervLanguageBindEncoderLayer(config).eval()
    torch.nn.init.normal_(layer.temporal_embedding)
    hidden = torch.randn(2 * 4, 5, 16)  # 8 frames (of 2 videos) of 5 tokens
    mask = torch.zeros(8, 1, 5, 5)
    mask[..., -1] = torch.finfo(mask.dtype).min  # no token attends to the last one
    with torch.no_grad():
        temporal = _authors_temporal_block(layer, hidden, group)
        torch.testing.assert_close(layer._temporal_block(hidden), temporal)
        attended = temporal + layer.self_attn(layer.layer_norm1(temporal), mask)[0]
        expected = attended + layer.mlp(layer.layer_norm2(attended))
        torch.testing.assert_close(layer(hidden, mask), expected)


def test_languagebind_layer_norms_use_the_configured_epsilon():
    config = MervLanguageBindVideoConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, layer_norm_eps=1e-3
    )
    norms = [module for module in MervLanguageBindVideoModel(config).modules() if isinstance(module, nn.LayerNorm)]
    assert len(norms) == 2 + 3 * config.num_hidden_layers  # pre/post, and three per layer (temporal, attention, MLP)
    assert {norm.eps for norm in norms} == {1e-3}


# --- frozen features (what a feature store keeps) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"alignment_pooling": "avg"},
        {"alignment_pooling": "3dconv", "alignment_temporal_stride": 2},
        {"alignment_pooling": "attntv", "alignment_attention_heads": 4},
        {"alignment_pooling": "conv", "alignment_conv_depth": 1},
        {"alignment_pooling": "none", "fusion_type": "concat_tokens"},
    ],
)
def test_frozen_features_complete_to_the_video_features_for_every_pooling(overrides):
    """The frozen part ends after a resampler without parameters (pooled tokens) and before one with parameters
    (the encoders' tokens); projecting and fusing them gives `get_video_features` exactly."""
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    model = MervForConditionalGeneration(config).eval()
    pixels = random_pixels(config, batch_size=2, seed=3)
    with torch.no_grad():
        frozen = model.model.get_frozen_video_features(pixels)
        expected = model.get_video_features(pixels, output_encoder_features=True)
        found = model.model.get_video_features_from_frozen(frozen, output_encoder_features=True)
    pooled = config.alignment_pooling in ("3davg", "avg", "none")
    for name, shape in config.frozen_feature_shapes().items():
        assert frozen[name].shape == (2, *shape)
        tokens = config.encoder_num_visual_tokens(name) if pooled else config.encoder_num_selected_tokens(name)
        assert shape == (tokens, config.encoder_config(name).hidden_size)
        if not pooled:
            assert torch.equal(frozen[name], expected.encoder_features[name])
        assert torch.equal(found.projected_features[name], expected.projected_features[name])
    assert torch.equal(found.pooler_output, expected.pooler_output)
    if expected.fusion_weights is not None:
        assert torch.equal(found.fusion_weights, expected.fusion_weights)


def test_forward_from_frozen_features_equals_forward_from_pixels(model):
    config = model.config
    input_ids, pixels = _prompt(config, batch_size=2), random_pixels(config, batch_size=2, seed=7)
    labels = input_ids.clone()
    with torch.no_grad():
        frozen = model.model.get_frozen_video_features(pixels)
        expected = model(input_ids=input_ids, pixel_values_videos=pixels, labels=labels)
        found = model(input_ids=input_ids, frozen_video_features=frozen, labels=labels)
    assert torch.equal(found.logits, expected.logits) and torch.equal(found.loss, expected.loss)


def test_generate_takes_frozen_features_through_mm_encoder_outputs(model):
    config = model.config
    input_ids, pixels = _prompt(config), random_pixels(config, seed=9)
    with torch.no_grad():
        expected = model.generate(input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=4, do_sample=False)
        features = model.model.get_video_features_from_frozen(model.model.get_frozen_video_features(pixels))
        found = model.generate(
            input_ids=input_ids, mm_encoder_outputs={"video": features}, max_new_tokens=4, do_sample=False
        )
        with pytest.raises(ValueError, match=r"to generate, pass `mm_encoder_outputs="):
            model.generate(
                input_ids=input_ids,
                frozen_video_features=model.model.get_frozen_video_features(pixels),
                max_new_tokens=4,
            )
    assert torch.equal(found, expected)


def test_frozen_features_of_another_shape_or_with_pixels_are_rejected(model):
    config = model.config
    input_ids, pixels = _prompt(config), random_pixels(config)
    frozen = model.model.get_frozen_video_features(pixels)
    tokens, dim = config.frozen_feature_shapes()["dinov2"]
    with pytest.raises(
        ValueError, match=rf"`frozen_video_features\['dinov2'\]` must have shape \(videos, {tokens}, {dim}\)"
    ):
        model(input_ids=input_ids, frozen_video_features={**frozen, "dinov2": frozen["dinov2"][:, 1:]})
    with pytest.raises(ValueError, match=r"`frozen_video_features` lacks encoders \['siglip'\]"):
        model(input_ids=input_ids, frozen_video_features={k: v for k, v in frozen.items() if k != "siglip"})
    with pytest.raises(ValueError, match=r"Pass one of .* got \['pixel_values_videos', 'frozen_video_features'\]"):
        model(input_ids=input_ids, pixel_values_videos=pixels, frozen_video_features=frozen)
