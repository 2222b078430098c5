"""The encoders' early stop (`TOWER_LAYOUTS`) against each tower's own forward, on the installed transformers, and
the towers' hidden states and attentions `get_video_features` reports.

The layouts run transformers' DINOv2, ViViT and SigLIP (and our LanguageBind) module by module, which depends on
their internal layout. If a transformers release changes it, these tests fail, naming the tower and the layer."""

import copy

import pytest
import torch
from conftest import random_pixels, random_pixels_by_encoder, tiny_config

from transformers_merv import MervModel
from transformers_merv.modeling_merv import TOWER_LAYOUTS, VIDEO_INPUT_TOWERS


ENCODERS = ("languagebind", "dinov2", "vivit", "siglip")


@pytest.fixture(scope="module")
def model() -> MervModel:
    torch.manual_seed(0)
    return MervModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def eager_model(model) -> MervModel:
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return eager


def tower_inputs(model: MervModel, name: str, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the layout takes, what the tower's own forward takes) for one batch of videos."""
    videos = random_pixels_by_encoder(model.config, batch_size=batch_size)[name]
    layout_input = videos if name in VIDEO_INPUT_TOWERS else videos.flatten(0, 1)
    forward_input = videos if name in VIDEO_INPUT_TOWERS + ("languagebind",) else videos.flatten(0, 1)
    return layout_input, forward_input


def feature_depth(model: MervModel, name: str) -> int:
    """How many of the tower's layers run: its feature layer's index among them."""
    tower = model.vision_towers[name]
    return model.config.vision_feature_layer[name] % (TOWER_LAYOUTS[name].num_layers(tower) + 1)


@pytest.mark.parametrize("name", ENCODERS)
def test_every_early_stopped_hidden_state_is_the_towers_own(model, name):
    tower, layout = model.vision_towers[name], TOWER_LAYOUTS[name]
    layout_input, forward_input = tower_inputs(model, name)
    with torch.no_grad():
        reference = tower(forward_input, output_hidden_states=True).hidden_states
        for depth in range(layout.num_layers(tower) + 1):
            ours = list(layout.hidden_states(tower, layout_input, depth))
            assert len(ours) == depth + 1, f"{name}: the layout ran {len(ours) - 1} layers, asked for {depth}"
            for index, hidden in enumerate(ours):
                torch.testing.assert_close(
                    hidden, reference[index], rtol=0, atol=0, msg=lambda m: f"{name}, hidden state {index}: {m}"
                )
    assert len(reference) == layout.num_layers(tower) + 1


@pytest.mark.parametrize("name", ENCODERS)
def test_recorded_attentions_are_the_ones_the_tower_reports(eager_model, name):
    """With eager attention, the weights recorded while the first `depth` layers run are the tower's own
    `output_attentions` (LanguageBind's: its spatial attention, one per layer, as its `_can_record_outputs` says)."""
    tower, layout = eager_model.vision_towers[name], TOWER_LAYOUTS[name]
    layout_input, forward_input = tower_inputs(eager_model, name, batch_size=1)
    with torch.no_grad():
        reference = tower(forward_input, output_attentions=True).attentions
        assert len(reference) == layout.num_layers(tower)
        for depth in range(layout.num_layers(tower) + 1):
            with layout.recording_attentions(tower, depth) as recorded:
                list(layout.hidden_states(tower, layout_input, layout.num_layers(tower)))
            assert len(recorded) == depth, f"{name}: recorded {len(recorded)} layers' attentions, asked for {depth}"
            for index, weights in enumerate(recorded):
                torch.testing.assert_close(
                    weights, reference[index], rtol=0, atol=0, msg=lambda m: f"{name}, attentions {index}: {m}"
                )
        list(layout.hidden_states(tower, layout_input, 1))
    assert len(recorded) == depth  # leaving the block removed the hooks: nothing more was recorded


@pytest.mark.parametrize("name", ["dinov2", "vivit", "siglip"])
def test_final_norm_is_the_one_the_tower_applies(model, name):
    tower, layout = model.vision_towers[name], TOWER_LAYOUTS[name]
    layout_input, forward_input = tower_inputs(model, name)
    with torch.no_grad():
        *_, last = layout.hidden_states(tower, layout_input, layout.num_layers(tower))
        torch.testing.assert_close(
            layout.normalize(tower, last), tower(forward_input).last_hidden_state, rtol=0, atol=0
        )


def test_languagebind_final_norm_is_the_one_its_pooler_applies(model):
    tower, layout = model.vision_towers["languagebind"], TOWER_LAYOUTS["languagebind"]
    layout_input, forward_input = tower_inputs(model, "languagebind")
    with torch.no_grad():
        *_, last = layout.hidden_states(tower, layout_input, layout.num_layers(tower))
        class_tokens = layout.normalize(tower, last)[:, 0].view(*forward_input.shape[:2], -1)
        torch.testing.assert_close(class_tokens.mean(1), tower(forward_input).pooler_output, rtol=0, atol=0)


# --- get_video_features: hidden states and attentions ----------------------------------------------------------------


def test_get_video_features_returns_the_hidden_states_up_to_each_feature_layer(model):
    config = model.config
    pixels = random_pixels(config, batch_size=2)
    with torch.no_grad():
        outputs = model.get_video_features(pixels, output_hidden_states=True)
        plain = model.get_video_features(pixels)
    assert plain.hidden_states is None and plain.encoder_hidden_states is None
    torch.testing.assert_close(outputs.pooler_output, plain.pooler_output, rtol=0, atol=0)
    assert list(outputs.encoder_hidden_states) == config.vision_encoders
    by_encoder = model.split_pixel_values_videos(pixels)
    for name in config.vision_encoders:
        layout_input = by_encoder[name] if name in VIDEO_INPUT_TOWERS else by_encoder[name].flatten(0, 1)
        with torch.no_grad():
            expected = list(TOWER_LAYOUTS[name].hidden_states(model.vision_towers[name], layout_input, 99))
        states = outputs.encoder_hidden_states[name]
        assert len(states) == feature_depth(model, name) + 1
        for state, reference in zip(states, expected):
            torch.testing.assert_close(state, reference, rtol=0, atol=0)
    # one tuple: the towers' states one after the other, in `config.vision_encoders` order
    concatenated = [state for name in config.vision_encoders for state in outputs.encoder_hidden_states[name]]
    assert len(outputs.hidden_states) == len(concatenated) == sum(feature_depth(model, n) + 1 for n in ENCODERS)
    assert all(ours is theirs for ours, theirs in zip(outputs.hidden_states, concatenated, strict=True))


def test_get_video_features_returns_the_attentions_of_the_layers_that_run(eager_model):
    config = eager_model.config
    with torch.no_grad():
        outputs = eager_model.get_video_features(random_pixels(config, batch_size=2), output_attentions=True)
    assert outputs.hidden_states is None
    assert list(outputs.encoder_attentions) == config.vision_encoders
    for name in config.vision_encoders:
        weights = outputs.encoder_attentions[name]
        assert len(weights) == feature_depth(eager_model, name)
        rows = 2 if name in VIDEO_INPUT_TOWERS else 2 * config.num_frames[name]
        heads = config.encoder_config(name).num_attention_heads
        assert all(w.shape[:2] == (rows, heads) and w.shape[2] == w.shape[3] for w in weights)
        torch.testing.assert_close(weights[0].sum(-1), torch.ones(weights[0].shape[:-1]))  # softmax rows
    concatenated = [w for name in config.vision_encoders for w in outputs.encoder_attentions[name]]
    assert all(ours is theirs for ours, theirs in zip(outputs.attentions, concatenated, strict=True))
    assert len(outputs.attentions) == sum(feature_depth(eager_model, name) for name in ENCODERS)


def test_attentions_need_eager_attention_and_are_refused_before_any_encoder_runs(model):
    runs = []
    hooks = [
        tower.embeddings.register_forward_pre_hook(lambda *args: runs.append(args))
        for tower in model.vision_towers.values()
    ]
    try:
        with pytest.raises(ValueError) as raised:
            model.get_video_features(random_pixels(model.config), output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert str(raised.value) == (
        "`output_attentions` needs the eager attention implementation, but these encoders use another: "
        "{'languagebind': 'sdpa', 'dinov2': 'sdpa', 'vivit': 'sdpa', 'siglip': 'sdpa'}; load the model with "
        "`attn_implementation='eager'` or call `model.set_attn_implementation('eager')`"
    )
    assert runs == []


@pytest.mark.parametrize("output", ["hidden_states", "attentions"])
def test_config_flags_are_honoured_as_in_tree_models_do(output):
    """Unset arguments fall back on the MERV config's flag, or on the flag of each tower's own sub-config (which then
    reports alone); an explicit argument wins over both."""
    config = tiny_config(vision_encoders=["siglip", "dinov2"])  # two quick towers
    model = MervModel(config).eval()
    model.set_attn_implementation("eager")
    pixels = random_pixels(config)
    flag = f"output_{output}"
    per_encoder = f"encoder_{output}"
    with torch.no_grad():
        setattr(model.config, flag, True)
        assert list(getattr(model.get_video_features(pixels), per_encoder)) == config.vision_encoders
        assert getattr(model.get_video_features(pixels, **{flag: False}), output) is None
        setattr(model.config, flag, False)
        setattr(model.config.dinov2_config, flag, True)
        outputs = model.get_video_features(pixels)
        assert list(getattr(outputs, per_encoder)) == ["dinov2"]
        assert len(getattr(outputs, output)) == len(getattr(outputs, per_encoder)["dinov2"])
        assert list(getattr(model.get_video_features(pixels, **{flag: True}), per_encoder)) == config.vision_encoders


def test_get_video_features_returns_a_tuple_when_asked(model):
    pixels = random_pixels(model.config)
    with torch.no_grad():
        outputs = model.get_video_features(pixels, output_hidden_states=True)
        as_tuple = model.get_video_features(pixels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert as_tuple[0] is not None and torch.equal(as_tuple[0], outputs.last_hidden_state)
    assert len(as_tuple[2]) == len(outputs.hidden_states)


def test_get_video_features_rejects_arguments_it_does_not_use(model):
    with pytest.raises(TypeError, match=r"unsupported arguments \['output_router_logits'\].*`output_attentions`"):
        model.get_video_features(random_pixels(model.config), output_router_logits=True)
