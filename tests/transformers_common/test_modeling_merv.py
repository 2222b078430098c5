"""transformers' `ModelTesterMixin` and `ConfigTester` on `MervModel` and `MervForConditionalGeneration`, written as
transformers' own video-LLM tests are (tests/models/llava_next_video, llava_onevision in its repository)."""

import tempfile
import unittest
from unittest import mock

import pytest
import torch
from parameterized import parameterized
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import require_torch, torch_device

from transformers_merv import MervConfig, MervForConditionalGeneration, MervModel

from transformers_tests import test_modeling_common
from transformers_tests.generation.test_utils import GenerationTesterMixin
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


pytestmark = pytest.mark.transformers_common


class MervVisionText2TextModelTester:
    """A MERV of four two-layer encoders on 8x8 frames and a two-layer Llama; every encoder yields 2 frames of 2x2
    tokens after alignment, so each video takes 8 placeholder tokens. The feature layers are merv-full's (-2, -2, -1,
    -2) on two-layer towers. A batch holds 7 prompts of one video each: `test_eager_matches_sdpa_inference` tops
    smaller batches up to 7 with random ids and pixels, whose placeholders and videos would not match."""

    def __init__(
        self,
        parent,
        batch_size=7,
        seq_length=7,
        is_training=True,
        video_token_id=3,
        num_frames={"languagebind": 2, "dinov2": 2, "vivit": 4, "siglip": 2},
        vision_feature_layer={"languagebind": 1, "dinov2": 1, "vivit": 2, "siglip": 1},
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
        self.vision_feature_layer = vision_feature_layer
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
            vision_feature_layer=self.vision_feature_layer,
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
    additional_model_inputs = ["pixel_values_videos"]
    _is_composite = True
    # the towers' layers after their feature layer, their unused final norms and DINOv2's mask token (kept so that
    # checkpoints stay complete) never run, so they get no gradient
    test_all_params_have_gradient = False
    # the fused tokens are `text_config.hidden_size` wide; the mixin reads the width from a `vision_config` or
    # `video_config` or `config.hidden_size`, none of which MERV's config of four encoders has
    skip_test_video_features_output_shape = True
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

    def _video_features_get_expected_num_attentions(self, model_tester=None):
        # one tuple, tower after tower, each tower's layers up to its feature layer (the later ones do not run)
        model_tester = model_tester or self.model_tester
        return sum(model_tester.vision_feature_layer.values())

    def _video_features_get_expected_num_hidden_states(self, model_tester=None):
        # one tuple, tower after tower, each tower's embeddings' output and its layers' up to its feature layer
        model_tester = model_tester or self.model_tester
        return sum(layer + 1 for layer in model_tester.vision_feature_layer.values())

    # the mixin's random prompts hold `<video>` placeholders but no video, which MERV refuses: drawn without them here
    @parameterized.expand([("linear",), ("dynamic",), ("yarn",)])
    def test_model_rope_scaling_from_config(self, scaling_type):
        with mock.patch.object(test_modeling_common, "ids_tensor", self._ids_without_placeholder):
            getattr(ModelTesterMixin, self._testMethodName)(self)

    def _ids_without_placeholder(self, shape: list[int], vocab_size: int) -> torch.Tensor:
        """`ids_tensor`'s uniform random ids from the vocabulary less the `<video>` placeholder."""
        ids = ids_tensor(shape, vocab_size - 1)
        return ids + (ids >= self.model_tester.video_token_id).long()

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
