"""transformers' `VideoProcessingTestMixin` on `MervVideoProcessor`, written as transformers' own video processor tests
are (tests/models/llava_next_video, qwen2_vl in its repository)."""

import unittest

import pytest
from transformers.testing_utils import require_torch, require_torchvision, require_vision
from transformers.video_utils import VideoMetadata

from transformers_merv import MERV_FULL_ENCODER_SETTINGS, MervVideoProcessor

from transformers_tests.test_video_processing_common import VideoProcessingTestMixin, prepare_video_inputs


pytestmark = pytest.mark.transformers_common


class MervVideoProcessingTester:
    """Four encoders with their own frame counts; `size` and `crop_size` set for all of them."""

    def __init__(
        self,
        parent,
        batch_size=5,
        num_frames=8,
        num_channels=3,
        min_resolution=30,
        max_resolution=80,
        encoder_frames={"languagebind": 2, "dinov2": 2, "vivit": 4, "siglip": 2},
        size={"shortest_edge": 20},
        crop_size={"height": 18, "width": 18},
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        self.encoder_frames = encoder_frames
        self.size = size
        self.crop_size = crop_size

    def prepare_video_processor_dict(self):
        settings = {
            name: {**MERV_FULL_ENCODER_SETTINGS[name], "num_frames": count}
            for name, count in self.encoder_frames.items()
        }
        return {
            "vision_encoders": list(self.encoder_frames),
            "encoder_settings": settings,
            "size": self.size,
            "crop_size": self.crop_size,
        }

    def expected_output_video_shape(self, videos, num_frames=None):
        """`(D,)` of one video: every encoder's `(frames, channels, height, width)` pixels flattened, concatenated."""
        frame_size = 3 * self.crop_size["height"] * self.crop_size["width"]
        return [sum((num_frames or count) * frame_size for count in self.encoder_frames.values())]

    def prepare_video_inputs(self, equal_resolution=False, return_tensors="pil"):
        return prepare_video_inputs(
            batch_size=self.batch_size,
            num_frames=self.num_frames,
            num_channels=self.num_channels,
            min_resolution=self.min_resolution,
            max_resolution=self.max_resolution,
            equal_resolution=equal_resolution,
            return_tensors=return_tensors,
        )


@require_torch
@require_vision
class MervVideoProcessingTest(VideoProcessingTestMixin, unittest.TestCase):
    fast_video_processing_class = MervVideoProcessor
    input_name = "pixel_values_videos"

    def setUp(self):
        super().setUp()
        self.video_processor_tester = MervVideoProcessingTester(self)

    @property
    def video_processor_dict(self):
        return self.video_processor_tester.prepare_video_processor_dict()

    def test_video_processor_properties(self):
        video_processing = self.fast_video_processing_class(**self.video_processor_dict)
        for attribute in ("do_resize", "size", "do_center_crop", "crop_size", "do_normalize", "image_mean"):
            self.assertTrue(hasattr(video_processing, attribute), attribute)
        self.assertTrue(hasattr(video_processing, "image_std"))
        self.assertTrue(hasattr(video_processing, "do_convert_rgb"))

    def test_call_numpy_4_channels(self):
        # the mixin's test sets the channel count at index 1 of one video's shape; MERV's packed `(D,)` counts the
        # three RGB channels (`do_convert_rgb`) already
        tester = self.video_processor_tester
        video_processor = self.fast_video_processing_class(**self.video_processor_dict)
        tester.num_channels = 4
        video_inputs = tester.prepare_video_inputs(equal_resolution=False, return_tensors="pil")
        for videos, num_videos in (([video_inputs[0]], 1), (video_inputs, tester.batch_size)):
            encoded_videos = video_processor(
                videos, return_tensors="pt", input_data_format="channels_last", image_mean=0.0, image_std=1.0
            )[self.input_name]
            # RGB frames (`do_convert_rgb`), as the mixin expects of such processors
            self.assertTrue(video_processor.do_convert_rgb)
            self.assert_expected_videos_shape(encoded_videos, tester.expected_output_video_shape(videos), num_videos)

    def test_call_sample_frames(self):
        # the mixin's test with MERV's sampling: `fps` keeps each encoder's frame count (the model's inputs have fixed
        # shapes), and `num_frames` beyond a video's length repeats frames as the authors' sampler does
        tester = self.video_processor_tester
        video_processing = self.fast_video_processing_class(**self.video_processor_dict)
        video_inputs = tester.prepare_video_inputs(equal_resolution=False, return_tensors="torch")
        batches = ((video_inputs[0], 1), (video_inputs, tester.batch_size))

        # no sampling, even when `num_frames` is given: every frame for every encoder
        video_processing.do_sample_frames = False
        for videos, num_videos in batches:
            encoded_videos = video_processing(videos, return_tensors="pt", num_frames=3)[self.input_name]
            expected = tester.expected_output_video_shape(videos, num_frames=tester.num_frames)
            self.assert_expected_videos_shape(encoded_videos, expected, num_videos)

        video_processing.do_sample_frames = True
        for num_frames in (3, tester.num_frames + 2):
            for videos, num_videos in batches:
                encoded_videos = video_processing(videos, return_tensors="pt", num_frames=num_frames)[self.input_name]
                expected = tester.expected_output_video_shape(videos, num_frames=num_frames)
                self.assert_expected_videos_shape(encoded_videos, expected, num_videos)

        # sampling at a frame rate needs the video's, which decoded frames carry only in `video_metadata`
        with self.assertRaises(ValueError):
            video_processing(video_inputs[0], return_tensors="pt", fps=3)
        for entry in ({"duration": 2.0, "total_num_frames": 8, "fps": 4}, VideoMetadata(8, fps=4, duration=2.0)):
            for videos, num_videos in batches:
                metadata = [[entry]] * num_videos
                encoded_videos = video_processing(videos, return_tensors="pt", fps=3, video_metadata=metadata)
                expected = tester.expected_output_video_shape(videos)
                self.assert_expected_videos_shape(encoded_videos[self.input_name], expected, num_videos)

    @require_torchvision
    def test_video_processor_save_load_with_autovideoprocessor(self):
        # `AutoVideoProcessor` works only with torchvision (MervVideoProcessor itself does not need it)
        super().test_video_processor_save_load_with_autovideoprocessor()
