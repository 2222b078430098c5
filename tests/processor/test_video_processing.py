"""`MervVideoProcessor` against what the authors' code feeds each encoder (../shared/fixtures/reference/preprocess)."""

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from transformers.video_utils import VideoMetadata

from transformers_merv import MERV_FULL_ENCODER_SETTINGS, MervVideoProcessor, VideoDecodingError
from transformers_merv.video_io import open_video, sample_frame_indices_at_rate
from transformers_merv.video_processing_merv import EncoderTransform

from conftest import FIXTURES, MEDIA, unpack_pixels


PREPROCESS = FIXTURES / "preprocess"
PANCAKE = MEDIA / "flipping_a_pancake.mkv"
VIDEO_0 = MEDIA / "video_0.mov"
PANCAKE_FRAME0 = PREPROCESS / "pancake-frame0.png"
ENCODERS = ("languagebind", "dinov2", "vivit", "siglip")
ONE_LEVEL = 1 / 255
FLIP_SEED, NO_FLIP_SEED = 1, 0  # first `random.random()` draw: 0.134 (< 0.5: flip) and 0.844 (no flip)


@pytest.fixture(scope="module")
def processor() -> MervVideoProcessor:
    return MervVideoProcessor()


@pytest.fixture(scope="module")
def pancake(processor):
    return processor(str(PANCAKE), return_metadata=True)


def _by_encoder(processor: MervVideoProcessor, outputs) -> dict[str, torch.Tensor]:
    """The per-encoder blocks of `outputs["pixel_values_videos"]`, unpacked by the processor's shapes."""
    return unpack_pixels(outputs["pixel_values_videos"], processor.video_pixel_shapes())


def _reference(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    info = json.loads((PREPROCESS / f"{name}.json").read_text())
    tensors = load_file(PREPROCESS / f"{name}.safetensors")
    # The authors' LanguageBind input is [C, T, H, W]; ours is [T, C, H, W] like the other encoders.
    if tensors["languagebind"].ndim == 4:
        tensors["languagebind"] = tensors["languagebind"].transpose(0, 1)
    return info, tensors


def _assert_matches_reference(ours: torch.Tensor, reference: torch.Tensor, encoder: str, rounding: float) -> None:
    """Same pixels to float16 storage rounding; after un-normalising, within one uint8 level."""
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    reference = reference.float()
    torch.testing.assert_close(ours, reference, atol=rounding, rtol=0)
    std = torch.tensor(MERV_FULL_ENCODER_SETTINGS[encoder]["image_std"]).view(3, 1, 1)
    assert ((ours - reference) * std).abs().max() <= ONE_LEVEL


def test_pancake_matches_the_authors_per_encoder(processor, pancake):
    info, reference = _reference("pancake-merv-full")
    pixels = _by_encoder(processor, pancake)
    assert list(pixels) == list(ENCODERS)
    assert pancake["video_metadata"][0].frames_indices == info["shared_decode_frame_indices"]
    for encoder in ENCODERS:
        assert pixels[encoder].shape[0] == 1
        rounding = info["encoders"][encoder]["float16_max_abs_rounding_error"]
        _assert_matches_reference(pixels[encoder][0], reference[encoder], encoder, rounding)
        # float32 results identical to the authors' up to float16 storage: rounding them gives the stored values
        assert torch.equal(pixels[encoder][0].half(), reference[encoder])


@pytest.fixture(params=[1, 2], ids=lambda threads: f"{threads}-threads")
def torch_threads(request):
    """Runs the test with torch on this many CPU threads (kernels may take other paths on one thread)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def test_languagebind_is_bit_exact_with_the_authors_clip_layout_ops(torch_threads):
    """The authors interpolate the [C, T, H, W] clip at once; we go frame by frame. Same float32 values, on one
    thread too (where interpolating a frame as a (1, C, H, W) batch was off by one bit)."""
    _, reference = _reference("pancake-merv-full")
    frames = reference["decoded_frames_uint8"][::2]
    clip = frames.permute(3, 0, 1, 2) / 255.0
    settings = MERV_FULL_ENCODER_SETTINGS["languagebind"]
    mean, std = torch.tensor(settings["image_mean"]), torch.tensor(settings["image_std"])
    clip = (clip - mean[:, None, None, None]) / std[:, None, None, None]
    clip = torch.nn.functional.interpolate(clip, size=(224, 397), mode="bilinear", align_corners=False)
    clip = clip[..., :, 86 : 86 + 224]  # (397 - 224) / 2 = 86.5 rounds half to even
    ours = MervVideoProcessor(vision_encoders=("languagebind",))(frames.numpy())["pixel_values_videos"]
    assert torch.equal(ours, clip.transpose(0, 1).reshape(1, -1))  # one encoder: its block is the whole row


def test_decoded_frames_give_the_same_inputs_as_the_file(processor, pancake):
    _, reference = _reference("pancake-merv-full")
    from_array = processor(reference["decoded_frames_uint8"].numpy())["pixel_values_videos"]
    assert torch.equal(from_array, pancake["pixel_values_videos"])


def test_three_frame_video_repeats_frames_like_the_authors(processor):
    info, reference = _reference("video_0-merv-full")
    outputs = processor(VIDEO_0, return_metadata=True)
    assert outputs["video_metadata"][0].frames_indices == info["shared_decode_frame_indices"]
    pixels = _by_encoder(processor, outputs)
    for encoder in ENCODERS:
        stored = info["encoders"][encoder]["stored"]
        full = reference[encoder].index_select(0, torch.tensor(stored["frame_map"]))
        _assert_matches_reference(
            pixels[encoder][0],
            full,
            encoder,
            info["encoders"][encoder]["float16_max_abs_rounding_error"],
        )


@pytest.mark.parametrize("as_input", ["pil", "array", "path"])
def test_single_image_is_repeated_per_encoder(processor, as_input):
    info, reference = _reference("image-pancake-frame0-merv-full")
    image = Image.open(PANCAKE_FRAME0)
    video = {"pil": image, "array": np.asarray(image.convert("RGB"))[None], "path": PANCAKE_FRAME0}[as_input]
    pixels = _by_encoder(processor, processor(video))
    for encoder in ENCODERS:
        frames = MERV_FULL_ENCODER_SETTINGS[encoder]["num_frames"]
        expected = reference[encoder].unsqueeze(0).repeat_interleave(frames, 0)
        rounding = info["encoders"][encoder]["float16_max_abs_rounding_error"]
        _assert_matches_reference(pixels[encoder][0], expected, encoder, rounding)


def test_languagebind_flip_is_off_by_default_and_optional(processor, pancake):
    _, reference = _reference("pancake-merv-full")
    frames = reference["decoded_frames_uint8"].numpy()
    random.seed(FLIP_SEED)
    assert torch.equal(MervVideoProcessor()(frames)["pixel_values_videos"], pancake["pixel_values_videos"])
    flipping = MervVideoProcessor(languagebind_random_flip=True)
    random.seed(FLIP_SEED)
    flipped, unflipped = _by_encoder(flipping, flipping(frames)), _by_encoder(processor, pancake)
    assert torch.equal(flipped["languagebind"], unflipped["languagebind"].flip(-1))
    for encoder in ("dinov2", "vivit", "siglip"):
        assert torch.equal(flipped[encoder], unflipped[encoder])
    random.seed(NO_FLIP_SEED)
    assert torch.equal(flipping(frames)["pixel_values_videos"], pancake["pixel_values_videos"])


def test_frames_are_resized_once_per_distinct_target(processor, monkeypatch):
    calls = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    processor(VIDEO_0)
    # DINOv2 and SigLIP share their bicubic 224x224 frames (2 distinct source frames); ViViT is bilinear (3).
    assert len(calls) == 2 + 3


def test_batch_with_per_video_clip_windows(processor):
    outputs = processor(
        [PANCAKE, VIDEO_0.read_bytes()], clip_start_sec=[2.0, None], clip_end_sec=[4.0, None], return_metadata=True
    )
    pixels = _by_encoder(processor, outputs)
    assert pixels["vivit"].shape == (2, 32, 3, 224, 224) and pixels["dinov2"].shape == (2, 16, 3, 224, 224)
    first, second = outputs["video_metadata"]
    assert (first.frames_indices[0], first.frames_indices[-1]) == (60, 119)
    assert second.frames_indices == processor(VIDEO_0, return_metadata=True)["video_metadata"][0].frames_indices
    single = processor(PANCAKE, clip_start_sec=2.0, clip_end_sec=4.0)["pixel_values_videos"]
    assert torch.equal(outputs["pixel_values_videos"][:1], single)
    with pytest.raises(ValueError, match="`end_frame` has 1 values for 2 videos"):
        processor([PANCAKE, VIDEO_0], end_frame=[10])


def test_fps_sampling_keeps_encoder_shapes(processor):
    outputs = processor(PANCAKE, fps=1.0, return_metadata=True)
    grid = list(range(0, 310, 31))  # int(310 / 30 * 1) = 10 frames at arange(10) * 310 // 10
    indices = outputs["video_metadata"][0].frames_indices
    assert set(indices) <= set(grid) and indices == sorted(indices)
    assert outputs["pixel_values_videos"].shape == processor(PANCAKE)["pixel_values_videos"].shape


@pytest.mark.parametrize(
    ("fps", "sixteen", "thirty_two"),
    [
        (
            1.0,  # 10 frames at arange(10) * 310 // 10: fewer than the encoders take, so frames repeat
            [0, 0, 31, 31, 62, 93, 93, 124, 124, 155, 186, 186, 217, 217, 248, 279],
            [0, 0, 0, 0, 31, 31, 31, 62, 62, 62, 62, 93, 93, 93, 124, 124, 124, 124, 155, 155, 155, 186, 186, 186]
            + [186, 217, 217, 217, 248, 248, 248, 279],
        ),
        (
            4.0,  # int(310 / 30 * 4) = 41 frames at arange(41) * 310 // 41, thinned to each encoder's count
            [0, 15, 37, 60, 75, 98, 120, 136, 158, 181, 196, 219, 241, 257, 279, 302],
            [0, 7, 15, 22, 37, 45, 52, 68, 75, 83, 90, 105, 113, 120, 136, 143, 151, 158, 173, 181, 189, 204, 211]
            + [219, 226, 241, 249, 257, 272, 279, 287, 302],
        ),
    ],
)
def test_fps_sampling_gives_each_encoder_evenly_spaced_sampled_frames(processor, fps, sixteen, thirty_two):
    """Each encoder takes `np.linspace(0, n - 1, num_frames, dtype=int)` of the n frames sampled at `fps`."""
    plan = processor.frame_plan(VideoMetadata(total_num_frames=310, fps=30.0), fps=fps)
    source_frames = {encoder: plan.indices[rows].tolist() for encoder, rows in plan.rows.items()}
    assert source_frames == {"languagebind": sixteen, "dinov2": sixteen, "vivit": thirty_two, "siglip": sixteen}
    assert plan.indices.tolist() == sorted(set(sixteen) | set(thirty_two))  # each source frame decoded once


def test_fps_sampling_plans_frames_inside_the_clip_window(processor):
    window = {"clip_start_sec": 2.0, "clip_end_sec": 4.0}
    plan = processor.frame_plan(VideoMetadata(total_num_frames=310, fps=30.0), fps=4.0, **window)
    # 8 frames at 4 fps in the window, fewer than every encoder takes: all of them are used
    assert plan.indices.tolist() == sample_frame_indices_at_rate(310, 30.0, 4.0, **window).tolist()


def test_fps_sampled_frames_reach_each_encoder(processor):
    """The pixels of each encoder are those of the planned source frames, in order."""
    outputs = processor(PANCAKE, fps=4.0, return_metadata=True)
    plan = processor.frame_plan(outputs["video_metadata"][0], fps=4.0)
    with open_video(PANCAKE) as reader:
        frames = reader.get_frames(plan.indices)
    pixels = _by_encoder(processor, outputs)
    for encoder in ("dinov2", "vivit"):
        rows = plan.rows[encoder]
        single = MervVideoProcessor(vision_encoders=(encoder,), encoder_settings={encoder: {"num_frames": len(rows)}})
        expected = _by_encoder(single, single(frames[rows]))[encoder]  # decoded frames: every one of them, in order
        assert torch.equal(pixels[encoder], expected)


@pytest.mark.parametrize(
    ("height", "width", "box"),
    [
        (399, 224, (88, 0, 224, 224)),  # half-offset 87.5 rounds up, as Python's `round` (torchvision) does
        (224, 397, (0, 86, 224, 224)),  # 86.5 rounds to the even 86
        (224, 225, (0, 0, 224, 224)),  # 0.5 rounds to 0
        (300, 224, (38, 0, 224, 224)),
    ],
)
def test_centre_crop_offsets_round_like_torchvision(height, width, box):
    assert _transform().crop_box(height, width) == box


def _transform(**settings) -> EncoderTransform:
    return EncoderTransform.from_settings("languagebind", {**MERV_FULL_ENCODER_SETTINGS["languagebind"], **settings})


@pytest.mark.parametrize(
    ("height", "width", "resized"),
    [(240, 426, (224, 397)), (426, 240, (397, 224)), (300, 300, (224, 224)), (225, 1000, (224, 995))],
)
def test_short_side_scaling_floors_the_long_side(height, width, resized):
    """pytorchvideo's `short_side_scale`: the short side becomes 224, the long one `floor(long / short * 224)`."""
    assert _transform().resized_size(height, width) == resized


@pytest.mark.parametrize(
    ("settings", "size"),
    [
        ({}, (224, 224)),  # the short side scaled to 224, then the square crop
        ({"size": {"height": 100, "width": 60}}, (100, 60)),
        ({"size": {"height": 100, "width": 60}, "crop_size": {"height": 50, "width": 40}}, (50, 40)),
        ({"crop_size": {"height": 200, "width": 210}}, (200, 210)),
    ],
)
def test_output_size_is_the_crop_else_the_fixed_size(settings, size):
    assert _transform(**settings).output_size() == size


def test_fixed_size_and_explicit_crop():
    transform = _transform(size={"height": 100, "width": 60}, crop_size={"height": 50, "width": 40})
    assert transform.resized_size(240, 426) == (100, 60)
    assert transform.crop_box(100, 60) == (25, 10, 50, 40)
    assert transform.crop_box(50, 40) is None  # already the crop size
    with pytest.raises(ValueError, match="larger than the resized frames"):
        transform.crop_box(49, 60)
    with pytest.raises(ValueError, match="larger than the resized frames"):
        transform.crop_box(100, 39)


@pytest.mark.parametrize("encoder", ["languagebind", "dinov2"])
def test_centre_crop_takes_the_middle_pixels(encoder):
    """A frame already at the target size is only cropped: columns 4..7 of an 11-wide frame (offset round(3.5) = 4),
    through the torch (LanguageBind) and the PIL (DINOv2) paths."""
    columns = np.arange(11, dtype=np.uint8) * 20
    frame = np.broadcast_to(columns[None, :, None], (1, 4, 11, 3)).copy()
    settings = {"num_frames": 1, "size": {"shortest_edge": 4}, "image_mean": [0, 0, 0], "image_std": [1, 1, 1]}
    processor = MervVideoProcessor(vision_encoders=(encoder,), encoder_settings={encoder: settings})
    pixels = _by_encoder(processor, processor(frame))[encoder][0, 0]
    expected = torch.from_numpy(columns[4:8].astype(np.float32) / np.float32(255)).expand(3, 4, 4)
    assert torch.equal(pixels, expected)


def test_normalising_after_the_torch_resize_equals_normalising_before():
    """A bilinear resize is a weighted mean (weights summing to 1), so it commutes with the per-channel affine
    normalisation: LanguageBind's two orders differ by float32 rounding only."""
    pixels = {}
    for before in (True, False):
        settings = {"languagebind": {"normalize_before_resize": before}}
        processor = MervVideoProcessor(vision_encoders=("languagebind",), encoder_settings=settings)
        pixels[before] = processor(VIDEO_0)["pixel_values_videos"]
    torch.testing.assert_close(pixels[False], pixels[True], atol=1e-5, rtol=0)


def test_a_batch_is_one_float32_tensor_packing_each_videos_encoder_blocks():
    """`(num_videos, D)`: per video, every encoder's `(frames, 3, height, width)` block (`video_pixel_shapes()`, a
    cropped size included) flattened, in encoder order; each row holds the pixels the video gives on its own."""
    settings = {"siglip": {"size": {"height": 40, "width": 36}, "crop_size": {"height": 32, "width": 24}}}
    processor = MervVideoProcessor(vision_encoders=("siglip", "vivit"), encoder_settings=settings)
    assert processor.video_pixel_shapes() == {"siglip": (16, 3, 32, 24), "vivit": (32, 3, 224, 224)}
    pixels = processor([VIDEO_0, PANCAKE])["pixel_values_videos"]
    assert pixels.shape == (2, 16 * 3 * 32 * 24 + 32 * 3 * 224 * 224) and pixels.dtype == torch.float32
    assert pixels.is_contiguous()
    for row, video in enumerate((VIDEO_0, PANCAKE)):
        assert torch.equal(pixels[row : row + 1], processor(video)["pixel_values_videos"])
    swapped = MervVideoProcessor(vision_encoders=("vivit", "siglip"), encoder_settings=settings)(VIDEO_0)
    siglip_size = 16 * 3 * 32 * 24  # the encoder order swaps the blocks
    swapped = swapped["pixel_values_videos"]
    assert torch.equal(pixels[:1], torch.cat([swapped[:, -siglip_size:], swapped[:, :-siglip_size]], dim=1))


def test_metadata_is_returned_only_when_asked(processor):
    assert list(processor(VIDEO_0)) == ["pixel_values_videos"]


def test_encoder_subset_and_partial_settings():
    processor = MervVideoProcessor(
        vision_encoders=("dinov2", "languagebind"),
        encoder_settings={
            "dinov2": {"size": {"height": 56, "width": 56}},
            "languagebind": {"size": {"shortest_edge": 32}},
        },
    )
    outputs = processor(PANCAKE, return_metadata=True)
    assert processor.video_pixel_shapes() == {"dinov2": (16, 3, 56, 56), "languagebind": (16, 3, 32, 32)}
    assert outputs["pixel_values_videos"].shape == (1, 16 * 3 * 56 * 56 + 16 * 3 * 32 * 32)
    assert len(outputs["video_metadata"][0].frames_indices) == 16  # decode count is max(num_frames) of these two
    assert processor.encoder_settings["dinov2"]["interpolation"] == "bicubic"


def test_from_encoder_sizes_keeps_each_resize_strategy():
    sizes = {"languagebind": 32, "dinov2": 56, "vivit": 28, "siglip": 64}  # the tiny fixture model's inputs
    processor = MervVideoProcessor.from_encoder_sizes(
        {"languagebind": 16, "dinov2": 16, "vivit": 32, "siglip": 16}, sizes
    )
    assert processor.encoder_settings["languagebind"]["size"] == {"shortest_edge": 32}
    assert processor.encoder_settings["dinov2"]["size"] == {"height": 56, "width": 56}
    assert processor.video_pixel_shapes() == {
        "languagebind": (16, 3, 32, 32),
        "dinov2": (16, 3, 56, 56),
        "vivit": (32, 3, 28, 28),
        "siglip": (16, 3, 64, 64),
    }
    width = sum(math.prod(shape) for shape in processor.video_pixel_shapes().values())
    assert processor(VIDEO_0)["pixel_values_videos"].shape == (1, width)


def test_settings_round_trip(tmp_path):
    processor = MervVideoProcessor(
        vision_encoders=("siglip", "vivit"),
        encoder_settings={"siglip": {"size": {"height": 64, "width": 64}, "image_mean": (0.1, 0.2, 0.3)}},
        languagebind_random_flip=True,
    )
    processor.save_pretrained(tmp_path)
    loaded = MervVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.vision_encoders == ["siglip", "vivit"] and loaded.languagebind_random_flip is True
    assert loaded.encoder_settings["siglip"]["image_mean"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder_settings": {"dinov2": {"resample": 3}}}, "unknown keys.*resample"),
        ({"vision_encoders": ("dinov2", "mystery")}, "mystery.*missing keys"),
        ({"encoder_settings": {"dinov2": {"num_frames": 12}}}, "must divide"),
        ({"encoder_settings": {"dinov2": {"normalize_before_resize": True}}}, "resize_backend='torch'"),
        ({"encoder_settings": {"vivit": {"interpolation": "area"}}}, "interpolation"),
        ({"vision_encoders": ("dinov2", "dinov2")}, "distinct"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MervVideoProcessor(**kwargs)


def test_processors_share_no_settings():
    first = MervVideoProcessor()
    first.encoder_settings["dinov2"]["size"]["height"] = 1
    first.encoder_settings["dinov2"]["image_mean"][0] = -1.0
    assert MervVideoProcessor().encoder_settings["dinov2"] == MERV_FULL_ENCODER_SETTINGS["dinov2"]
    assert MERV_FULL_ENCODER_SETTINGS["dinov2"]["size"]["height"] == 224


OVERRIDES = {
    "num_frames": 4,
    "size": {"shortest_edge": 10},
    "crop_size": {"height": 8, "width": 6},
    "resample": int(Image.Resampling.NEAREST),
    "image_mean": 0.5,
    "image_std": [0.25, 0.5, 1.0],
}
"""transformers' per-encoder options, and the `encoder_settings` entry each amounts to."""
OVERRIDES_AS_SETTINGS = {
    "num_frames": 4,
    "size": {"shortest_edge": 10},
    "crop_size": {"height": 8, "width": 6},
    "interpolation": "nearest",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.5, 1.0],
}


@pytest.mark.parametrize("given", ["per_call", "at_construction"])
def test_transformers_options_replace_every_encoders_setting(processor, given):
    expected = MervVideoProcessor(encoder_settings=dict.fromkeys(ENCODERS, OVERRIDES_AS_SETTINGS))(VIDEO_0)
    if given == "per_call":
        outputs = processor(VIDEO_0, **OVERRIDES)
    else:
        outputs = MervVideoProcessor(**OVERRIDES)(VIDEO_0)
    assert outputs["pixel_values_videos"].shape == (1, len(ENCODERS) * 4 * 3 * 8 * 6)
    assert torch.equal(outputs["pixel_values_videos"], expected["pixel_values_videos"])


def test_steps_can_be_turned_off(processor):
    frames = np.random.default_rng(0).integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    as_floats = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    no_steps = {"num_frames": 2, "do_resize": False, "do_center_crop": False, "do_normalize": False}
    shapes = dict.fromkeys(ENCODERS, (2, 3, 12, 10))
    raw = unpack_pixels(processor(frames, do_rescale=False, **no_steps)["pixel_values_videos"], shapes)
    negated = unpack_pixels(processor(frames, rescale_factor=-1.0, **no_steps)["pixel_values_videos"], shapes)
    for encoder in ENCODERS:
        assert torch.equal(raw[encoder][0], as_floats)
        assert torch.equal(negated[encoder][0], -as_floats)


def test_without_frame_sampling_every_frame_reaches_every_encoder(processor):
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    outputs = processor(frames, do_sample_frames=False, num_frames=2, return_metadata=True)
    assert outputs["video_metadata"][0].frames_indices == [0, 1, 2, 3, 4]
    five_frames = {name: (5, *shape[1:]) for name, shape in processor.video_pixel_shapes().items()}
    assert outputs["pixel_values_videos"].shape == (1, sum(math.prod(shape) for shape in five_frames.values()))
    with pytest.raises(ValueError, match="'languagebind' frames of different counts or sizes"):
        processor([frames, frames[:3]], do_sample_frames=False)


def test_video_metadata_gives_decoded_frames_their_frame_rate(processor):
    frames = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="`video_metadata`"):
        processor(frames, fps=2)
    metadata = {"total_num_frames": 8, "fps": 4}
    outputs = processor(frames, fps=2, video_metadata=metadata, return_metadata=True)
    # 2 seconds at 4 fps, sampled at 2 fps: int(8 / 4 * 2) = 4 frames at arange(4) * 8 // 4
    assert outputs["video_metadata"][0].frames_indices == [0, 2, 4, 6]
    nested = processor([frames, frames], fps=2, video_metadata=[[metadata], [VideoMetadata(8, fps=4)]])
    assert torch.equal(nested["pixel_values_videos"][1], outputs["pixel_values_videos"][0])
    with pytest.raises(ValueError, match="2 entries for 1 videos"):
        processor(frames, fps=2, video_metadata=[metadata, metadata])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"return_tensors": "np"}, "`return_tensors` = 'pt' only"),
        ({"do_convert_rgb": False}, "`do_convert_rgb` = True only"),
        ({"do_pad": True}, "`do_pad` = False only"),
        ({"data_format": "channels_last"}, "`data_format` = 'channels_first' only"),
        ({"resample": int(Image.Resampling.HAMMING)}, "`resample` = 5 .hamming."),
        ({"num_frames": 0}, "num_frames must be a positive integer"),
        ({"sharpen": True}, "Unsupported arguments.*sharpen"),
    ],
)
def test_options_merv_cannot_honour_are_refused(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(VIDEO_0, **kwargs)


def test_options_set_at_construction_round_trip(tmp_path):
    processor = MervVideoProcessor.from_dict({}, size=42, crop_size=40, image_mean=0.5, do_normalize=False)
    assert processor.size == {"shortest_edge": 42} and processor.crop_size == {"height": 40, "width": 40}
    assert processor.image_mean == [0.5, 0.5, 0.5] and processor.do_normalize is False
    processor.save_pretrained(tmp_path)
    loaded = MervVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert torch.equal(loaded(VIDEO_0)["pixel_values_videos"], processor(VIDEO_0)["pixel_values_videos"])


def test_bad_media_fails_before_any_output(processor):
    with pytest.raises(FileNotFoundError):
        processor(MEDIA / "missing.mp4")
    with pytest.raises(VideoDecodingError, match="corrupted.mp4"):
        processor([VIDEO_0, MEDIA / "corrupted.mp4"])
    with pytest.raises(ValueError, match=r"`videos\[1\]` must have dtype uint8"):
        processor([VIDEO_0, np.zeros((2, 4, 4, 3), dtype=np.float32)])
