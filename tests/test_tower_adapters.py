"""The encoders' early stop (`TOWER_ADAPTERS`) against each tower's own forward, on the installed transformers.

The adapters run transformers' DINOv2, ViViT and SigLIP (and our LanguageBind) module by module, which depends on
their internal layout. If a transformers release changes it, these tests fail, naming the tower and the layer."""

import pytest
import torch
from conftest import random_pixels, tiny_config

from transformers_merv import MervModel
from transformers_merv.modeling_merv import TOWER_ADAPTERS, VIDEO_INPUT_TOWERS


ENCODERS = ("languagebind", "dinov2", "vivit", "siglip")


@pytest.fixture(scope="module")
def model() -> MervModel:
    torch.manual_seed(0)
    return MervModel(tiny_config()).eval()


def tower_inputs(model: MervModel, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the adapter takes, what the tower's own forward takes) for one batch of two videos."""
    videos = random_pixels(model.config, batch_size=2)[name]
    adapter_input = videos if name in VIDEO_INPUT_TOWERS else videos.flatten(0, 1)
    forward_input = videos if name in VIDEO_INPUT_TOWERS + ("languagebind",) else videos.flatten(0, 1)
    return adapter_input, forward_input


@pytest.mark.parametrize("name", ENCODERS)
def test_every_early_stopped_hidden_state_is_the_towers_own(model, name):
    tower, adapter = model.vision_towers[name], TOWER_ADAPTERS[name]
    adapter_input, forward_input = tower_inputs(model, name)
    with torch.no_grad():
        reference = tower(forward_input, output_hidden_states=True).hidden_states
        for depth in range(adapter.num_layers(tower) + 1):
            ours = list(adapter.hidden_states(tower, adapter_input, depth))
            assert len(ours) == depth + 1, f"{name}: the adapter ran {len(ours) - 1} layers, asked for {depth}"
            for index, hidden in enumerate(ours):
                torch.testing.assert_close(
                    hidden, reference[index], rtol=0, atol=0, msg=lambda m: f"{name}, hidden state {index}: {m}"
                )
    assert len(reference) == adapter.num_layers(tower) + 1


@pytest.mark.parametrize("name", ["dinov2", "vivit", "siglip"])
def test_final_norm_is_the_one_the_tower_applies(model, name):
    tower, adapter = model.vision_towers[name], TOWER_ADAPTERS[name]
    adapter_input, forward_input = tower_inputs(model, name)
    with torch.no_grad():
        *_, last = adapter.hidden_states(tower, adapter_input, adapter.num_layers(tower))
        torch.testing.assert_close(
            adapter.normalize(tower, last), tower(forward_input).last_hidden_state, rtol=0, atol=0
        )


def test_languagebind_final_norm_is_the_one_its_pooler_applies(model):
    tower, adapter = model.vision_towers["languagebind"], TOWER_ADAPTERS["languagebind"]
    adapter_input, forward_input = tower_inputs(model, "languagebind")
    with torch.no_grad():
        *_, last = adapter.hidden_states(tower, adapter_input, adapter.num_layers(tower))
        class_tokens = adapter.normalize(tower, last)[:, 0].view(*forward_input.shape[:2], -1)
        torch.testing.assert_close(class_tokens.mean(1), tower(forward_input).pooler_output, rtol=0, atol=0)


def test_get_video_features_returns_the_hidden_states_up_to_each_feature_layer(model):
    config = model.config
    with torch.no_grad():
        outputs = model.get_video_features(random_pixels(config, batch_size=2), output_hidden_states=True)
        plain = model.get_video_features(random_pixels(config, batch_size=2))
    assert plain.encoder_hidden_states is None
    torch.testing.assert_close(outputs.pooler_output, plain.pooler_output, rtol=0, atol=0)
    for name in config.vision_encoders:
        tower = model.vision_towers[name]
        depth = config.vision_feature_layer[name] % (TOWER_ADAPTERS[name].num_layers(tower) + 1)
        assert len(outputs.encoder_hidden_states[name]) == depth + 1


def test_get_video_features_rejects_arguments_it_does_not_use(model):
    with pytest.raises(TypeError, match="output_attentions"):
        model.get_video_features(random_pixels(model.config), output_attentions=True)
