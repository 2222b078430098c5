"""Numerical parity with the authors' implementation on every shared fixture (converted with our converter)."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, LlamaForCausalLM

import transformers_merv  # noqa: F401  (registers MERV with the Auto classes)
from transformers_merv.conversion import EncoderSources, convert

from conftest import (
    FIXTURE_IMAGE_SIZES,
    FIXTURES,
    PARITY_ATOL,
    TINY_FULL,
    VARIANTS,
    convert_fixture,
    fixture_pixels,
    with_placeholders,
)


LOSS_RTOL = 1e-5
VARIANTS_WITH_OUTPUTS = sorted(path.name for path in VARIANTS.iterdir() if (path / "run").is_dir())


def _outputs(fixture: str) -> dict[str, torch.Tensor]:
    own = VARIANTS / fixture / "outputs.safetensors"
    # merv-base-no-align builds the same modules as tiny-merv-full; its build.json points at A's outputs
    return load_file(own if own.is_file() else TINY_FULL / "outputs.safetensors")


def _run_dir(fixture: str):
    return TINY_FULL / "run" if fixture == "tiny-merv-full" else VARIANTS / fixture / "run"


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual.float() - expected.float()).abs().max().item()
    assert difference <= PARITY_ATOL, f"{name}: max abs diff {difference:.3g} > {PARITY_ATOL}"


def _labelled_logits_without_merv(
    model, expected: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Logits of the labelled example computed without MERV's code (variant fixtures do not store them): a plain
    `LlamaForCausalLM` holding the converted LLM weights, fed the authors' splice [embed(BOS), the fixture's fused
    visual tokens, embed(rest of the example)]."""
    llm = LlamaForCausalLM(model.config.text_config).eval()
    llm.model.load_state_dict(model.model.language_model.state_dict())
    llm.lm_head.load_state_dict(model.lm_head.state_dict())
    ids = inputs["labelled.input_ids"]
    embed = llm.get_input_embeddings()
    embeds = torch.cat([embed(ids[:, :1]), expected["fused_visual_tokens"], embed(ids[:, 1:])], dim=1)
    return llm(inputs_embeds=embeds, attention_mask=expected["labelled.llm_attention_mask"].long()).logits


@pytest.mark.parametrize("fixture", ["tiny-merv-full", *[v for v in VARIANTS_WITH_OUTPUTS if v != "fusion-scalar"]])
def test_converted_model_reproduces_every_intermediate(fixture, tmp_path):
    model = AutoModel.from_pretrained(convert_fixture(_run_dir(fixture), tmp_path)).eval()
    expected = _outputs(fixture)
    inputs = load_file(TINY_FULL / "inputs.safetensors")
    pixels = fixture_pixels(model.config)
    num_tokens, video_id = model.config.num_video_tokens, model.config.video_token_id
    assert num_tokens == int(expected["num_visual_tokens"])

    with torch.no_grad():
        features = model.get_video_features(pixels, output_encoder_features=True)
        for name in model.config.vision_encoders:
            if f"encoder_features.{name}" in expected:
                _assert_close(
                    f"encoder_features.{name}", features.encoder_features[name], expected[f"encoder_features.{name}"]
                )
            _assert_close(
                f"projector_outputs.{name}", features.projected_features[name], expected[f"projector_outputs.{name}"]
            )
        if model.config.fusion_type == "cross_attention":  # every such fixture stores the weights
            _assert_close("fusion weights", features.fusion_weights, expected["fusion.attention_weights"])
        else:
            assert features.fusion_weights is None
        _assert_close("fused tokens", features.pooler_output, expected["fused_visual_tokens"])

        input_ids = with_placeholders(inputs["input_ids"], num_tokens, video_id)
        output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels)
        _assert_close("logits", output.logits, expected["logits"])

        labelled_ids = with_placeholders(inputs["labelled.input_ids"], num_tokens, video_id)
        labels = with_placeholders(inputs["labelled.labels"], num_tokens, -100)
        mask = with_placeholders(inputs["labelled.attention_mask"], num_tokens, 1)
        labelled = model(input_ids=labelled_ids, attention_mask=mask, labels=labels, pixel_values_videos=pixels)
        assert torch.equal(labels, expected["labelled.llm_labels"])
        if "labelled.logits" in expected:
            _assert_close("labelled logits", labelled.logits, expected["labelled.logits"])
        _assert_close("labelled logits", labelled.logits, _labelled_logits_without_merv(model, expected, inputs))
        loss, expected_loss = labelled.loss.item(), expected["labelled.loss"].item()
        assert abs(loss - expected_loss) <= LOSS_RTOL * abs(expected_loss), f"loss {loss} vs {expected_loss}"

        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values_videos=pixels,
            max_new_tokens=expected["generate.0.new_tokens"].shape[1],
            do_sample=False,
        )
    assert generated[:, input_ids.shape[1] :].tolist() == expected["generate.0.new_tokens"].tolist()


def test_scalar_fusion_fixture_weighs_encoders_by_the_softmax_of_its_scalars(tmp_path):
    """The authors' code cannot run `scalar` fusion, so its fixture has no outputs: the converted model's weights are
    the softmax of the checkpoint's scalars in the run's encoder order, its fused tokens their weighted sum."""
    run = _run_dir("fusion-scalar")
    model = AutoModel.from_pretrained(convert_fixture(run, tmp_path)).eval()
    checkpoint = torch.load(run / "checkpoints" / "latest-checkpoint.pt", weights_only=True)
    weights = torch.softmax(checkpoint["model"]["feature_fusion"]["scalar"], dim=0)
    with torch.no_grad():
        features = model.get_video_features(fixture_pixels(model.config), output_encoder_features=True)
    _assert_close("fusion weights", features.fusion_weights, weights[None])
    projected = [features.projected_features[name] for name in model.config.vision_encoders]
    _assert_close("fused tokens", features.pooler_output, sum(w * tokens for w, tokens in zip(weights, projected)))


def test_llm_embeddings_match_the_authors_spliced_inputs(converted_full):
    """Scattering into placeholders reproduces the authors' [BOS, visual tokens, prompt] LLM input exactly."""
    model = AutoModel.from_pretrained(converted_full).eval()
    expected = _outputs("tiny-merv-full")
    inputs = load_file(TINY_FULL / "inputs.safetensors")
    input_ids = with_placeholders(inputs["input_ids"], model.config.num_video_tokens, model.config.video_token_id)
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        pixels = fixture_pixels(model.config)
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels)
    hook.remove()
    _assert_close("llm inputs_embeds", captured["inputs_embeds"], expected["llm_inputs_embeds"])
    assert torch.equal(captured["attention_mask"].bool(), expected["llm_attention_mask"])


def test_dinov2_position_embeddings_are_resampled_as_timm_does(tmp_path):
    """The stored 126 px (9x9) table becomes the 56 px (4x4) table the authors' model used; CLS gets no position.
    The DINOv2 folder converted here holds only `config.json` and `model.safetensors`, so the expected table
    (`pos_embed_as_used_56px.safetensors`) cannot reach the converted model except through the resampling."""
    source = FIXTURES / "encoders" / "dinov2"
    dinov2 = tmp_path / "dinov2"
    dinov2.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, dinov2)
    directories = {name: FIXTURES / "encoders" / name for name in FIXTURE_IMAGE_SIZES} | {"dinov2": dinov2}
    output = tmp_path / "out"
    convert(
        TINY_FULL / "run", FIXTURES / "llm", EncoderSources(directories, FIXTURE_IMAGE_SIZES), output, progress=False
    )
    table = load_file(output / "model.safetensors")["model.vision_towers.dinov2.embeddings.position_embeddings"]
    stored = load_file(dinov2 / "model.safetensors")["pos_embed"]
    expected = load_file(source / "pos_embed_as_used_56px.safetensors")["pos_embed"]
    assert stored.shape == (1, 81, 40) and table.shape == (1, 17, 40)
    assert torch.equal(table[:, 1:], expected)  # bit-exact: same interpolation, same float32 arithmetic
    assert torch.count_nonzero(table[:, 0]) == 0


def test_video_token_sits_in_an_unused_padded_vocabulary_row(converted_full):
    from transformers import AutoTokenizer

    model = AutoModel.from_pretrained(converted_full)
    tokenizer = AutoTokenizer.from_pretrained(converted_full)
    assert model.config.text_config.vocab_size == 1024  # the authors' 1000 + <PAD>, padded to a multiple of 64
    assert tokenizer.pad_token == "<PAD>" and tokenizer.pad_token_id == 1000
    assert tokenizer.convert_tokens_to_ids("<video>") == model.config.video_token_id == 1001
