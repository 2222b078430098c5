"""Video processor for MERV: each video is decoded once, then every encoder gets its own frames, resize and
normalisation, exactly as the authors' code prepares them (princetonvisualai/merv,
`merv/models/vidlms/merv.py::MERV.generate`)."""

import math
import random
import warnings
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_utils import VideoMetadata

from .compat import VideoProcessorMixin
from .configuration_merv import MERV_FULL_IMAGE_SIZE, MERV_FULL_NUM_FRAMES, check_frame_counts
from .video_io import (
    RGB_CHANNELS,
    decode_in_background,
    make_batched_video_inputs,
    open_video,
    sample_frame_indices,
    sample_frame_indices_at_rate,
)


UINT8_MAX = 255
LANGUAGEBIND_FLIP_PROBABILITY = 0.5
PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
TORCH_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
RESIZE_BACKENDS = ("pil", "torch")

MERV_FULL_ENCODER_SETTINGS = {
    # LanguageBind: /255, normalise at full resolution, short side -> 224 (torch bilinear, no antialias), crop
    "languagebind": {
        "num_frames": MERV_FULL_NUM_FRAMES["languagebind"],
        "size": {"shortest_edge": MERV_FULL_IMAGE_SIZE},
        "crop_size": None,
        "resize_backend": "torch",
        "interpolation": "bilinear",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "normalize_before_resize": True,
    },
    # DINOv2, ViViT, SigLIP: per-frame PIL resize to 224x224 ("resize-naive": aspect ratio not kept), /255, normalise
    "dinov2": {
        "num_frames": MERV_FULL_NUM_FRAMES["dinov2"],
        "size": {"height": MERV_FULL_IMAGE_SIZE, "width": MERV_FULL_IMAGE_SIZE},
        "crop_size": None,
        "resize_backend": "pil",
        "interpolation": "bicubic",
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
        "normalize_before_resize": False,
    },
    "vivit": {
        "num_frames": MERV_FULL_NUM_FRAMES["vivit"],
        "size": {"height": MERV_FULL_IMAGE_SIZE, "width": MERV_FULL_IMAGE_SIZE},
        "crop_size": None,
        "resize_backend": "pil",
        "interpolation": "bilinear",
        "image_mean": list(IMAGENET_STANDARD_MEAN),
        "image_std": list(IMAGENET_STANDARD_STD),
        "normalize_before_resize": False,
    },
    "siglip": {
        "num_frames": MERV_FULL_NUM_FRAMES["siglip"],
        "size": {"height": MERV_FULL_IMAGE_SIZE, "width": MERV_FULL_IMAGE_SIZE},
        "crop_size": None,
        "resize_backend": "pil",
        "interpolation": "bicubic",
        "image_mean": list(IMAGENET_STANDARD_MEAN),
        "image_std": list(IMAGENET_STANDARD_STD),
        "normalize_before_resize": False,
    },
}
"""Per-encoder preprocessing of the released `merv-full` / `merv-frozen` models, as the authors' transforms do it;
frame counts and sizes are the config's (`configuration_merv.MERV_FULL_*`)."""


class MervVideosKwargs(VideosKwargs, total=False):
    """Sampling controls of the authors' `load_video`; a list gives one value per video of the batch.

    clip_start_sec (`float` or `list[float]`, *optional*, defaults to 0):
        Start of the clip window in seconds.
    clip_end_sec (`float` or `list[float]`, *optional*):
        End of the clip window in seconds (default: the end of the video).
    end_frame (`int` or `list[int]`, *optional*):
        Sample over frames `0..end_frame` instead (the authors' multiple-choice evaluation files carry it).
    """

    clip_start_sec: float | list[float | None] | None
    clip_end_sec: float | list[float | None] | None
    end_frame: int | list[int | None] | None


@dataclass(frozen=True)
class EncoderTransform:
    """One encoder's preprocessing, built from its `encoder_settings` entry."""

    num_frames: int
    size: dict[str, int]
    crop_size: dict[str, int] | None
    resize_backend: str
    interpolation: str
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    normalize_before_resize: bool

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> "EncoderTransform":
        unknown = set(settings) - set(cls.__dataclass_fields__)
        missing = set(cls.__dataclass_fields__) - set(settings)
        if unknown or missing:
            raise ValueError(
                f"encoder_settings[{name!r}]: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                f"expected {sorted(cls.__dataclass_fields__)}"
            )
        transform = cls(
            **{**settings, "image_mean": tuple(settings["image_mean"]), "image_std": tuple(settings["image_std"])}
        )
        transform.validate(name)
        return transform

    def validate(self, name: str) -> None:
        interpolations = tuple(PIL_RESAMPLING) if self.resize_backend == "pil" else TORCH_INTERPOLATIONS
        if self.num_frames < 1:
            problem = f"num_frames must be positive, got {self.num_frames}"
        elif set(self.size) not in ({"height", "width"}, {"shortest_edge"}):
            problem = f"size must have keys 'height' and 'width', or 'shortest_edge'; got {self.size}"
        elif self.crop_size is not None and set(self.crop_size) != {"height", "width"}:
            problem = f"crop_size must be None or have keys 'height' and 'width'; got {self.crop_size}"
        elif self.resize_backend not in RESIZE_BACKENDS:
            problem = f"resize_backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}"
        elif self.interpolation not in interpolations:
            problem = f"interpolation must be one of {interpolations} with {self.resize_backend!r}"
        elif len(self.image_mean) != RGB_CHANNELS or len(self.image_std) != RGB_CHANNELS:
            problem = f"image_mean and image_std need {RGB_CHANNELS} values (RGB)"
        elif self.normalize_before_resize and self.resize_backend != "torch":
            problem = "normalize_before_resize needs resize_backend='torch'"
        else:
            return
        raise ValueError(f"encoder_settings[{name!r}]: {problem}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Output of the resize step: fixed `(height, width)`, or the short side scaled as pytorchvideo's
        `short_side_scale` does (long side `floor(long / short * size)`)."""
        if "shortest_edge" not in self.size:
            return self.size["height"], self.size["width"]
        short = self.size["shortest_edge"]
        if width < height:
            return int(math.floor((float(height) / width) * short)), short
        return short, int(math.floor((float(width) / height) * short))

    def centre_crop(self) -> dict[str, int] | None:
        """The centre crop: `crop_size`, else a square of the short side's target when the short side is scaled."""
        if self.crop_size is None and "shortest_edge" in self.size:
            return {"height": self.size["shortest_edge"], "width": self.size["shortest_edge"]}
        return self.crop_size

    def output_size(self) -> tuple[int, int]:
        """(height, width) of the frames this transform gives, whatever the source frames' size."""
        size = self.centre_crop() or self.size  # without a crop, the size is fixed: a short side is always cropped
        return size["height"], size["width"]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, crop height, crop width) of the centre crop (Python `round`, as torchvision), or None."""
        crop = self.centre_crop()
        if crop is None or (crop["height"], crop["width"]) == (height, width):
            return None
        if crop["height"] > height or crop["width"] > width:
            raise ValueError(f"crop_size {crop} is larger than the resized frames ({height}x{width})")
        top, left = int(round((height - crop["height"]) / 2.0)), int(round((width - crop["width"]) / 2.0))
        return top, left, crop["height"], crop["width"]


@dataclass(frozen=True)
class FramePlan:
    """Which source frames one video needs: `indices` (decoded once) and each encoder's rows into them."""

    indices: np.ndarray
    rows: dict[str, np.ndarray]


class MervBatchFeature(BatchFeature):
    """Deprecated: MERV's processors return a plain `BatchFeature`, since `pixel_values_videos` is one tensor."""

    def __init__(self, *args, **kwargs):
        warnings.warn(
            "`MervBatchFeature` is deprecated and will be removed in a future release: `pixel_values_videos` is one "
            "tensor, so MERV's processors return a plain `transformers.BatchFeature`; use that instead",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


class MervVideoProcessor(VideoProcessorMixin):
    r"""
    Turns videos into MERV's `pixel_values_videos`, reproducing the authors' preprocessing.

    `pixel_values_videos` is one float32 tensor `(num_videos, D)`: for each encoder of `vision_encoders`, in order,
    its `(frames, 3, height, width)` pixels (`video_pixel_shapes()`) flattened, concatenated; `D` is the sum of their
    sizes. `MervModel.split_pixel_values_videos` gives the per-encoder view of it.

    Each video is decoded once, at `max(num_frames)` frames sampled the authors' way (`video_io`); encoder `e` takes
    every `max(num_frames) // num_frames[e]`-th of them (rows 0, 2, ..., 30 for the 16-frame encoders of merv-full),
    then resizes and normalises them with its own settings. Frames are resized once per distinct source frame and
    target (DINOv2 and SigLIP share their bicubic 224x224 frames).

    With `fps=...`, frames are instead sampled at that rate over the clip window (transformers' sampler) and each
    encoder takes its `num_frames` evenly spaced ones from them (`np.linspace(0, n - 1, num_frames, dtype=int)`,
    repeating frames when fewer than `num_frames` were sampled), so encoder inputs keep their fixed shapes.

    Args:
        vision_encoders (`Sequence[str]`, *optional*, defaults to `("languagebind", "dinov2", "vivit", "siglip")`):
            Encoders to produce inputs for, in order.
        encoder_settings (`dict[str, dict]`, *optional*):
            Per-encoder overrides merged over the merv-full defaults (`MERV_FULL_ENCODER_SETTINGS`), e.g.
            `{"dinov2": {"size": {"height": 56, "width": 56}}}`. Keys: `num_frames`; `size` (`{"height", "width"}`
            for a fixed resize, or `{"shortest_edge"}` to scale the short side, which then also centre-crops to a
            square of that side unless `crop_size` says otherwise); `crop_size`; `resize_backend` (`"pil"`,
            antialiased like the authors' torchvision-on-PIL transforms, or `"torch"`, `F.interpolate` without
            antialias); `interpolation`; `image_mean`; `image_std`; `normalize_before_resize` (LanguageBind
            normalises at full resolution, before resizing). An encoder not in the defaults needs every key.
        languagebind_random_flip (`bool`, *optional*, defaults to `False`):
            The authors' LanguageBind transform flips the clip horizontally with probability 0.5 (Python `random`),
            at inference too. Off by default so that outputs are deterministic; turn it on for training.
    """

    model_input_names = ["pixel_values_videos"]
    valid_kwargs = MervVideosKwargs

    def __init__(
        self,
        vision_encoders: Sequence[str] = ("languagebind", "dinov2", "vivit", "siglip"),
        encoder_settings: dict[str, dict] | None = None,
        languagebind_random_flip: bool = False,
        **kwargs,
    ):
        kwargs.pop("video_processor_type", None)
        super().__init__(**kwargs)
        self.vision_encoders = list(vision_encoders)
        self.encoder_settings = _merge_settings(self.vision_encoders, encoder_settings or {})
        self.languagebind_random_flip = languagebind_random_flip
        self._check_encoders()

    @classmethod
    def from_encoder_sizes(
        cls, num_frames: dict[str, int], image_sizes: dict[str, int], **kwargs
    ) -> "MervVideoProcessor":
        """The merv-full preprocessing at other frame counts and square input sizes (a `MervConfig`'s `num_frames`
        and its encoders' `image_size`), each encoder keeping its resize strategy: LanguageBind scales the short side
        and centre-crops, the others squash to the square. Encoders in the order of `num_frames`."""
        settings = {}
        for name, count in num_frames.items():
            default_size = MERV_FULL_ENCODER_SETTINGS.get(name, {}).get("size", {})
            side = image_sizes[name]
            size = {"shortest_edge": side} if "shortest_edge" in default_size else {"height": side, "width": side}
            settings[name] = {"num_frames": count, "size": size}
        return cls(vision_encoders=list(num_frames), encoder_settings=settings, **kwargs)

    def _check_encoders(self) -> None:
        if not self.vision_encoders or len(set(self.vision_encoders)) != len(self.vision_encoders):
            raise ValueError(f"`vision_encoders` must list distinct encoders, got {self.vision_encoders}")
        counts = {name: transform.num_frames for name, transform in self.transforms.items()}
        check_frame_counts(counts, "encoder_settings[...]['num_frames']")

    @property
    def transforms(self) -> dict[str, EncoderTransform]:
        return {
            name: EncoderTransform.from_settings(name, self.encoder_settings[name]) for name in self.vision_encoders
        }

    @property
    def num_frames(self) -> dict[str, int]:
        """Frames fed to each encoder."""
        return {name: self.encoder_settings[name]["num_frames"] for name in self.vision_encoders}

    def video_pixel_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """Per encoder, in order, the `(frames, channels, height, width)` pixels of one video; a model takes this
        processor's output if its `config.video_pixel_shapes()` is the same."""
        return {
            name: (transform.num_frames, RGB_CHANNELS, *transform.output_size())
            for name, transform in self.transforms.items()
        }

    def preprocess(
        self,
        videos: object,
        return_tensors: str | None = "pt",
        return_metadata: bool = False,
        **kwargs: Unpack[MervVideosKwargs],
    ) -> BatchFeature:
        """Decode and transform `videos` (see `video_io` for accepted inputs) into `pixel_values_videos`, a
        `(num_videos, D)` float32 tensor packing every encoder's pixels (see the class docstring), and
        `video_metadata` if asked."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"MervVideoProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}")
        sampling = self._sampling_kwargs(kwargs)
        videos = make_batched_video_inputs(videos)
        per_video = [
            {key: _value_for(key, value, i, len(videos)) for key, value in sampling.items()}
            for i in range(len(videos))
        ]
        transforms = self.transforms
        shapes = self.video_pixel_shapes()
        packed = np.empty((len(videos), sum(math.prod(shape) for shape in shapes.values())), dtype=np.float32)
        metadata = []
        for i, (video, video_sampling) in enumerate(zip(videos, per_video, strict=True)):
            video_frames, video_metadata = self._process_one(video, f"videos[{i}]", transforms, **video_sampling)
            _pack_video(video_frames, shapes, packed[i])
            metadata.append(video_metadata)
        data = {"pixel_values_videos": torch.from_numpy(packed)}
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data)

    def _sampling_kwargs(self, kwargs: dict) -> dict:
        """Keep the sampling kwargs; reject per-call resize/normalise options, which live in `encoder_settings`."""
        if kwargs.get("num_frames") is not None:
            raise ValueError("Set each encoder's frame count in `encoder_settings[...]['num_frames']`, not per call")
        ignored = {
            "do_sample_frames",
            "device",
            "video_metadata",
            "input_data_format",
            "data_format",
            "do_convert_rgb",
        }
        sampling_keys = ("clip_start_sec", "clip_end_sec", "end_frame", "fps")
        unsupported = set(kwargs) - ignored - set(sampling_keys) - {"num_frames"}
        if unsupported:
            raise ValueError(
                f"Unsupported arguments {sorted(unsupported)}: MervVideoProcessor takes {list(sampling_keys)}; "
                "resize and normalisation are per-encoder `encoder_settings`"
            )
        return {key: kwargs.get(key) for key in sampling_keys}

    def _process_one(
        self, video: object, name: str, transforms: dict[str, EncoderTransform], **sampling
    ) -> tuple[dict[str, list[np.ndarray]], VideoMetadata]:
        """One video as float32 `[3, H, W]` frames per encoder (a repeated frame is the same array).

        Its distinct sampled frames are decoded one at a time in a background thread while each is PIL-resized for
        every encoder that uses it (one resize per distinct target: DINOv2 and SigLIP share theirs). The torch-resized
        frames (LanguageBind) are kept as uint8 and transformed once decoding is over, when torch's own threads no
        longer compete with the decoding thread.
        """
        with open_video(video, name) as reader:
            plan = self.frame_plan(reader.metadata, **sampling)
            distinct, positions = np.unique(plan.indices, return_inverse=True)
            rows = {encoder: positions[plan.rows[encoder]].tolist() for encoder in transforms}
            processed = {encoder: dict.fromkeys(rows[encoder]) for encoder in transforms}
            with closing(decode_in_background(reader.iter_frames(distinct))) as frames:
                for position, frame in enumerate(frames):
                    resized = {}
                    for encoder, transform in transforms.items():
                        if position in processed[encoder]:
                            deferred = transform.resize_backend == "torch"
                            processed[encoder][position] = (
                                frame if deferred else _pil_transform(frame, transform, resized)
                            )
            metadata = reader.metadata
        for encoder, transform in transforms.items():
            if transform.resize_backend == "torch":
                processed[encoder] = {
                    position: _torch_transform(frame, transform) for position, frame in processed[encoder].items()
                }
        metadata.frames_indices = plan.indices.tolist()
        frames = {encoder: [processed[encoder][position] for position in rows[encoder]] for encoder in transforms}
        flip = self.languagebind_random_flip and random.random() < LANGUAGEBIND_FLIP_PROBABILITY
        if flip and "languagebind" in frames:
            frames["languagebind"] = [frame[..., ::-1] for frame in frames["languagebind"]]
        return frames, metadata

    def frame_plan(
        self,
        metadata: VideoMetadata,
        clip_start_sec: float | None = None,
        clip_end_sec: float | None = None,
        end_frame: int | None = None,
        fps: float | None = None,
    ) -> FramePlan:
        """Source frame indices of one video (with repeats for short videos) and each encoder's rows into them."""
        counts = self.num_frames
        window = {"clip_start_sec": clip_start_sec, "clip_end_sec": clip_end_sec, "end_frame": end_frame}
        if fps is None:
            decode_count = max(counts.values())
            indices = sample_frame_indices(metadata.total_num_frames, metadata.fps, decode_count, **window)
            rows = {name: np.arange(0, decode_count, decode_count // count) for name, count in counts.items()}
            return FramePlan(indices, rows)
        grid = sample_frame_indices_at_rate(metadata.total_num_frames, metadata.fps, fps, **window)
        picks = {name: np.linspace(0, len(grid) - 1, count, dtype=int) for name, count in counts.items()}
        used = np.unique(np.concatenate(list(picks.values())))
        return FramePlan(grid[used], {name: np.searchsorted(used, pick) for name, pick in picks.items()})


def _pil_transform(frame: np.ndarray, transform: EncoderTransform, resized: dict) -> np.ndarray:
    """One uint8 `[H, W, 3]` frame -> float32 `[3, h, w]` through PIL resize (+ crop), /255 and normalisation.
    `resized` caches this frame's resizes by target for encoders that share one."""
    height, width = transform.resized_size(*frame.shape[:2])
    box = transform.crop_box(height, width)
    key = (height, width, transform.interpolation, box)
    if key not in resized:
        image = Image.fromarray(frame).resize((width, height), PIL_RESAMPLING[transform.interpolation])
        if box is not None:
            top, left, crop_height, crop_width = box
            image = image.crop((left, top, left + crop_width, top + crop_height))
        resized[key] = np.asarray(image)
    return _normalize(_to_float(resized[key]), transform)


def _to_float(image: np.ndarray) -> np.ndarray:
    """uint8 `[H, W, 3]` -> float32 `[3, H, W]` in [0, 1], as torchvision's `ToTensor` and the authors' `x / 255.0`
    compute it (IEEE float32 division, so numpy and torch agree bit for bit)."""
    pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    pixels /= np.float32(UINT8_MAX)
    return pixels


def _normalize(pixels: np.ndarray, transform: EncoderTransform) -> np.ndarray:
    """`(x - mean) / std` per channel in float32, in place, as torchvision's `Normalize` / `NormalizeVideo`."""
    pixels -= np.asarray(transform.image_mean, dtype=np.float32)[:, None, None]
    pixels /= np.asarray(transform.image_std, dtype=np.float32)[:, None, None]
    return pixels


def _torch_transform(frame: np.ndarray, transform: EncoderTransform) -> np.ndarray:
    """The torch path (LanguageBind): /255, [normalise], `F.interpolate` (no antialias), centre crop, [normalise].

    Frame by frame: the authors interpolate the whole `[C, T, H, W]` clip, which treats every frame plane
    independently, so the result is the same while full-resolution float copies stay one frame at a time.
    """
    pixels = _to_float(frame)
    if transform.normalize_before_resize:
        pixels = _normalize(pixels, transform)
    height, width = transform.resized_size(*frame.shape[:2])
    # (C, 1, H, W): each channel plane on its own, as in the authors' (C, T, H, W) clip; a (1, C, H, W) batch takes
    # another kernel path whose float32 results differ in the last bit on one thread
    # align_corners left unset: False for the linear modes, as the authors' call, and the only value "nearest" takes
    resized = F.interpolate(torch.from_numpy(pixels)[:, None], size=(height, width), mode=transform.interpolation)
    resized = resized[:, 0].numpy()
    box = transform.crop_box(height, width)
    if box is not None:
        top, left, crop_height, crop_width = box
        resized = resized[:, top : top + crop_height, left : left + crop_width]
    if not transform.normalize_before_resize:
        resized = _normalize(np.ascontiguousarray(resized), transform)
    return resized


def _pack_video(frames: dict[str, list[np.ndarray]], shapes: dict[str, tuple[int, ...]], row: np.ndarray) -> None:
    """Copy one video's frames into its row of the packed batch: each encoder's `(frames, 3, H, W)` block,
    C-contiguous, one after the other in the order of `shapes`."""
    start = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        np.stack(frames[name], out=row[start : start + size].reshape(shape))
        start += size


def _merge_settings(vision_encoders: list[str], overrides: dict[str, dict]) -> dict[str, dict]:
    """Defaults of each named encoder with the user's partial overrides on top (JSON-serialisable)."""
    settings = {}
    for name in vision_encoders:
        merged = {**MERV_FULL_ENCODER_SETTINGS.get(name, {}), **overrides.get(name, {})}
        settings[name] = {key: list(value) if isinstance(value, tuple) else value for key, value in merged.items()}
    return settings


def _value_for(key: str, value: object, index: int, batch_size: int) -> object:
    """A sampling value for video `index`: a scalar applies to all videos, a list gives one per video."""
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) != batch_size:
        raise ValueError(f"`{key}` has {len(value)} values for {batch_size} videos")
    return value[index]


__all__ = ["MervVideoProcessor", "MervBatchFeature", "MERV_FULL_ENCODER_SETTINGS"]
