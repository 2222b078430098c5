"""transformers' `ModelTesterMixin` and `ConfigTester` on `MervModel` and `MervForConditionalGeneration`, written as
transformers' own video-LLM tests are (tests/models/llava_next_video, llava_onevision in its repository)."""

import tempfile
import unittest
from unittest import mock

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import require_torch, torch_device

from transformers_merv import MervConfig, MervForConditionalGeneration, MervModel

from transformers_tests.generation.test_utils import GenerationTesterMixin
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


pytestmark = pytest.mark.transformers_common


class MervVisionText2TextModelTester:
    """A MERV of four two-layer encoders on 8x8 frames and a two-layer Llama; every encoder yields 2 frames of 2x2
    tokens after alignment, so each video takes 8 placeholder tokens."""

    def __init__(
        self,
        parent,
        batch_size=3,
        seq_length=7,
        is_training=True,
        video_token_id=3,
        num_frames={"languagebind": 2, "dinov2": 2, "vivit": 4, "siglip": 2},
        alignment_tokens_per_frame=4,
        fusion_hidden_size=16,
        text_config={
            "model_type": "llama",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "max_position_embeddings": 512,
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        languagebind_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 8,
            "patch_size": 4,
            "temporal_group_size": 2,
        },
        dinov2_config={
            "hidden_size": 32,
            "mlp_ratio": 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 8,
            "patch_size": 4,
        },
        vivit_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 8,
            "tubelet_size": [2, 4, 4],
            "num_frames": 4,
        },
        siglip_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 8,
            "patch_size": 4,
            "vision_use_head": False,
        },
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.video_token_id = video_token_id
        self.num_frames = num_frames
        self.alignment_tokens_per_frame = alignment_tokens_per_frame
        self.fusion_hidden_size = fusion_hidden_size
        self.text_config = text_config
        self.encoder_configs = {
            "languagebind_config": languagebind_config,
            "dinov2_config": dinov2_config,
            "vivit_config": vivit_config,
            "siglip_config": siglip_config,
        }
        self.pad_token_id = text_config["pad_token_id"]
        self.vocab_size = text_config["vocab_size"]
        self.hidden_size = text_config["hidden_size"]
        self.num_hidden_layers = text_config["num_hidden_layers"]
        self.num_attention_heads = text_config["num_attention_heads"]
        self.num_video_tokens = self.get_config().num_video_tokens
        self.seq_length = seq_length + self.num_video_tokens

    def get_config(self):
        return MervConfig(
            text_config=self.text_config,
            **self.encoder_configs,
            num_frames=self.num_frames,
            alignment_tokens_per_frame=self.alignment_tokens_per_frame,
            fusion_hidden_size=self.fusion_hidden_size,
            video_token_id=self.video_token_id,
        )

    def prepare_pixel_values_videos(self, config):
        """The packed model input: per encoder of `config.vision_encoders`, its `(frames, 3, H, W)` pixels flattened,
        concatenated into one `(batch_size, D)` tensor."""
        per_encoder = []
        for name in config.vision_encoders:
            side = config.encoder_config(name).image_size
            per_encoder.append(floats_tensor([self.batch_size, config.num_frames[name], 3, side, side]))
        return torch.cat([pixels.flatten(1) for pixels in per_encoder], dim=1)

    def prepare_config_and_inputs(self):
        config = self.get_config()
        return config, self.prepare_pixel_values_videos(config)

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values_videos = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 1) + 1
        input_ids[input_ids == config.video_token_id] = self.pad_token_id
        input_ids[:, : self.num_video_tokens] = config.video_token_id
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=torch_device)
        inputs_dict = {
            "pixel_values_videos": pixel_values_videos,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        return config, inputs_dict


@require_torch
class MervForConditionalGenerationModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """Model tester for `MervModel` and `MervForConditionalGeneration`."""

    all_model_classes = (MervModel, MervForConditionalGeneration)
    all_generative_model_classes = (MervForConditionalGeneration,)
    _is_composite = True
    # `test_can_init_all_missing_weights` dates models by a copyright line; MERV's files carry none
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        # An in-tree model is listed in transformers' class-name tables, which the mixin reads to decide which class is
        # the base model and which one takes labels; list MERV there for the duration of these tests.
        cls._name_tables = [
            mock.patch.dict(MODEL_MAPPING_NAMES, {MervConfig.model_type: MervModel.__name__}),
            mock.patch.dict(
                MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                {MervConfig.model_type: MervForConditionalGeneration.__name__},
            ),
        ]
        for table in cls._name_tables:
            table.start()

    @classmethod
    def tearDownClass(cls):
        for table in cls._name_tables:
            table.stop()

    def setUp(self):
        self.model_tester = MervVisionText2TextModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=MervConfig,
            has_text_modality=False,
            common_properties=["video_token_id", "vision_encoders", "num_frames", "num_video_tokens"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    # as in transformers' video-LLM testers, the embeddings path runs on the text alone (without the pixels)
    def test_inputs_embeds(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            input_ids = inputs.pop("input_ids")
            del inputs["pixel_values_videos"]
            inputs["inputs_embeds"] = model.get_input_embeddings()(input_ids)
            with torch.no_grad():
                model(**inputs)

    # as in transformers' video-LLM testers, both paths run on the text alone (without the pixels)
    def test_inputs_embeds_matches_input_ids(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            input_ids = inputs.pop("input_ids")
            del inputs["pixel_values_videos"]
            inputs_embeds = model.get_input_embeddings()(input_ids)
            with torch.no_grad():
                out_ids = model(input_ids=input_ids, **inputs)[0]
                out_embeds = model(inputs_embeds=inputs_embeds, **inputs)[0]
            torch.testing.assert_close(out_embeds, out_ids)

    def test_mismatching_num_video_tokens(self):
        """A clear `ValueError` when the prompts' placeholders do not match the videos given, also when one prompt
        holds the placeholders of two videos."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            with torch.no_grad():
                model(**input_dict)  # succeeds unchanged

                one_video_less = {**input_dict, "pixel_values_videos": input_dict["pixel_values_videos"][1:]}
                with self.assertRaisesRegex(ValueError, "placeholder"):
                    model(**one_video_less)

                # one prompt holding the placeholders of two videos, then two prompts of two videos each
                input_ids = input_dict["input_ids"][:1]
                input_ids = torch.cat([input_ids[:, : self.model_tester.num_video_tokens], input_ids], dim=1)
                pixel_values_videos = input_dict["pixel_values_videos"][:1]
                with self.assertRaisesRegex(ValueError, "placeholder"):
                    model(input_ids=input_ids, pixel_values_videos=pixel_values_videos)
                model(input_ids=input_ids, pixel_values_videos=pixel_values_videos.repeat(2, 1))
                model(input_ids=input_ids.repeat(2, 1), pixel_values_videos=pixel_values_videos.repeat(4, 1))

    def test_sdpa_can_dispatch_composite_models(self):
        # the mixin's test looks for one modality tower; MERV has one per encoder (`vision_towers`), each with its own
        # sub-config, and each of them and the language model must get the requested attention implementation
        for model_class in self.all_model_classes:
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            with tempfile.TemporaryDirectory() as tmpdirname:
                model_class(config).save_pretrained(tmpdirname)
                model_sdpa = model_class.from_pretrained(tmpdirname).base_model
                for name, submodel in _attention_submodels(model_sdpa).items():
                    expected = "sdpa" if submodel._supports_sdpa else "eager"
                    self.assertEqual(submodel.config._attn_implementation, expected, name)

                model_eager = model_class.from_pretrained(tmpdirname, attn_implementation="eager").base_model
                for name, submodel in _attention_submodels(model_eager).items():
                    self.assertEqual(submodel.config._attn_implementation, "eager", name)
                for name, submodule in model_eager.named_modules():
                    if type(submodule).__name__.endswith("Attention") and hasattr(submodule, "config"):
                        self.assertNotEqual(submodule.config._attn_implementation, "sdpa", name)


def _attention_submodels(model: MervModel) -> dict:
    """The sub-models whose attention implementation their sub-config names: every encoder and the language model."""
    return {**model.vision_towers, "language_model": model.language_model}
