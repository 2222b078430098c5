"""Video processor for MERV: each video is decoded once, then every encoder gets its own frames, resize and
normalisation, exactly as the authors' code prepares them (princetonvisualai/merv,
`merv/models/vidlms/merv.py::MERV.generate`)."""

import copy
import dataclasses
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from huggingface_hub.dataclasses import validate_typed_dict
from transformers.image_processing_utils import BatchFeature, get_size_dict
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
    VideoReader,
    check_window_lengths,
    decode_in_background,
    make_batched_video_inputs,
    open_video,
    sample_frame_indices,
    sample_frame_indices_at_rate,
    time_windows,
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


class MervVideoProcessorKwargs(VideosKwargs, total=False):
    """Call options of `MervVideoProcessor`: transformers' video options, where `num_frames`, `size`, `crop_size`,
    `resample`, `image_mean` and `image_std` apply to every encoder (overriding its `encoder_settings`), plus the
    authors' clip window; a window value may be a list with one value per video of the batch.

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


MervVideosKwargs = MervVideoProcessorKwargs
"""The earlier name of `MervVideoProcessorKwargs`."""


ENCODER_SETTING_KEYS = (
    "num_frames",
    "size",
    "crop_size",
    "resize_backend",
    "interpolation",
    "image_mean",
    "image_std",
    "normalize_before_resize",
)
"""The keys of one encoder's `encoder_settings` entry."""


@dataclass(frozen=True)
class EncoderTransform:
    """One encoder's preprocessing: its `encoder_settings` entry, and which steps run (the processor's `do_*`
    options, the same for every encoder)."""

    num_frames: int
    size: dict[str, int]
    crop_size: dict[str, int] | None
    resize_backend: str
    interpolation: str
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    normalize_before_resize: bool
    do_resize: bool = True
    do_center_crop: bool = True
    rescale_factor: float | None = 1 / UINT8_MAX
    do_normalize: bool = True

    @classmethod
    def from_settings(cls, name: str, settings: dict, **steps) -> "EncoderTransform":
        """The transform of encoder `name` from its complete `encoder_settings` entry and the `steps` options
        (`do_resize`, `do_center_crop`, `rescale_factor` (None: no rescaling), `do_normalize`)."""
        unknown = set(settings) - set(ENCODER_SETTING_KEYS)
        missing = set(ENCODER_SETTING_KEYS) - set(settings)
        if unknown or missing:
            raise ValueError(
                f"encoder_settings[{name!r}]: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                f"expected {sorted(ENCODER_SETTING_KEYS)}"
            )
        means = {"image_mean": tuple(settings["image_mean"]), "image_std": tuple(settings["image_std"])}
        transform = cls(**{**settings, **means}, **steps)
        transform.validate(name)
        return transform

    def validate(self, name: str) -> None:
        interpolations = tuple(PIL_RESAMPLING) if self.resize_backend == "pil" else TORCH_INTERPOLATIONS
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            problem = f"num_frames must be a positive integer, got {self.num_frames!r}"
        elif set(self.size) not in ({"height", "width"}, {"shortest_edge"}):
            problem = f"size must have keys 'height' and 'width', or 'shortest_edge'; got {self.size}"
        elif self.crop_size is not None and set(self.crop_size) != {"height", "width"}:
            problem = f"crop_size must be None or have keys 'height' and 'width'; got {self.crop_size}"
        elif self.resize_backend not in RESIZE_BACKENDS:
            problem = f"resize_backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}"
        elif self.interpolation not in interpolations:
            problem = f"interpolation {self.interpolation!r} is not one of {interpolations} ({self.resize_backend!r})"
        elif len(self.image_mean) != RGB_CHANNELS or len(self.image_std) != RGB_CHANNELS:
            problem = f"image_mean and image_std need {RGB_CHANNELS} values (RGB)"
        elif self.normalize_before_resize and self.resize_backend != "torch":
            problem = "normalize_before_resize needs resize_backend='torch'"
        elif self.rescale_factor == 0:
            problem = "rescale_factor must not be 0"
        else:
            return
        raise ValueError(f"encoder_settings[{name!r}]: {problem}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Output of the resize step: fixed `(height, width)`, or the short side scaled as pytorchvideo's
        `short_side_scale` does (long side `floor(long / short * size)`); the input size without `do_resize`."""
        if not self.do_resize:
            return height, width
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
        """(height, width) of the frames this transform gives, whatever the source frames' size; a `ValueError`
        when it depends on them (no resize, or a short-side resize without the centre crop)."""
        crop = self.centre_crop() if self.do_center_crop else None
        if not self.do_resize or (crop is None and "shortest_edge" in self.size):
            raise ValueError(
                "the frame size depends on each video's: resizing is off, or a short-side resize has no centre crop"
            )
        size = crop or self.size
        return size["height"], size["width"]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, crop height, crop width) of the centre crop (Python `round`, as torchvision), or None."""
        crop = self.centre_crop()
        if not self.do_center_crop or crop is None or (crop["height"], crop["width"]) == (height, width):
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


ENCODER_OPTIONS = {
    "num_frames": "num_frames",
    "size": "size",
    "crop_size": "crop_size",
    "resample": "interpolation",
    "image_mean": "image_mean",
    "image_std": "image_std",
}
"""transformers' video options that, when set, replace an `encoder_settings` key (the value) for every encoder."""
CLIP_WINDOW_OPTIONS = ("clip_start_sec", "clip_end_sec", "end_frame")
RESTRICTED_OPTIONS = {
    "do_convert_rgb": (True, None),
    "do_pad": (False, None),
    "data_format": ("channels_first", None),
    "return_tensors": ("pt", None),
}
"""Options MERV's preprocessing honours with these values only (None: unset): its encoders take RGB `(channels,
height, width)` PyTorch frames of one size, without padding."""


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
    repeating frames when fewer than `num_frames` were sampled), so encoder inputs keep their fixed shapes. With
    `do_sample_frames=False`, every encoder gets every frame of the video.

    transformers' video options (`MervVideoProcessorKwargs`) are accepted at construction and per call. `num_frames`,
    `size`, `crop_size`, `resample`, `image_mean` and `image_std` default to each encoder's own settings and, when
    set, apply to every encoder; `do_resize`, `do_center_crop`, `do_rescale` (with `rescale_factor`) and
    `do_normalize` turn a step off for every encoder. Frames may come channels last or first (`input_data_format`).

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
    valid_kwargs = MervVideoProcessorKwargs
    do_convert_rgb = True
    do_sample_frames = True
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / UINT8_MAX
    do_normalize = True
    default_to_square = False  # an int `size` scales the short side: `{"shortest_edge": size}`
    return_metadata = False
    # None: each encoder's own `encoder_settings`
    num_frames = None
    size = None
    crop_size = None
    resample = None
    image_mean = None
    image_std = None

    def __init__(
        self,
        vision_encoders: Sequence[str] = ("languagebind", "dinov2", "vivit", "siglip"),
        encoder_settings: dict[str, dict] | None = None,
        languagebind_random_flip: bool = False,
        **kwargs: Unpack[MervVideoProcessorKwargs],
    ):
        kwargs.pop("video_processor_type", None)
        super().__init__(**self._standardize(kwargs))
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
        """Each encoder's preprocessing with this processor's options (no per-call ones)."""
        return self._transforms(self._options({}))

    def _transforms(self, options: dict) -> dict[str, EncoderTransform]:
        overrides = {
            setting: options[option] for option, setting in ENCODER_OPTIONS.items() if options[option] is not None
        }
        if "interpolation" in overrides:
            overrides["interpolation"] = _interpolation_name(overrides["interpolation"])
        steps = {
            "do_resize": options["do_resize"],
            "do_center_crop": options["do_center_crop"],
            "rescale_factor": options["rescale_factor"] if options["do_rescale"] else None,
            "do_normalize": options["do_normalize"],
        }
        return {
            name: EncoderTransform.from_settings(name, {**self.encoder_settings[name], **overrides}, **steps)
            for name in self.vision_encoders
        }

    def _options(self, kwargs: dict) -> dict:
        """Every option for one call: the call's value, else this processor's, else the class default (`None` means
        unset at each level), standardised; unknown and unsupported options are refused, naming them."""
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__)
        if unknown:
            raise ValueError(
                f"Unsupported arguments {sorted(unknown)}: MervVideoProcessor takes "
                f"{sorted(self.valid_kwargs.__annotations__)}"
            )
        validate_typed_dict(self.valid_kwargs, kwargs)
        options = {}
        for name in self.valid_kwargs.__annotations__:
            values = (kwargs.get(name), getattr(self, name, None), getattr(type(self), name, None))
            options[name] = next((value for value in values if value is not None), None)
        for name, accepted in RESTRICTED_OPTIONS.items():
            if options[name] not in accepted:
                raise ValueError(f"MervVideoProcessor supports `{name}` = {accepted[0]!r} only, got {options[name]!r}")
        return self._standardize(options)

    def _standardize(self, options: dict) -> dict:
        """transformers' canonical forms: `size` and `crop_size` as dicts (an int `size` scales the short side unless
        `default_to_square`), `image_mean` and `image_std` as one value per RGB channel, `resample` as an int."""
        options = dict(options)
        default_to_square = options.get("default_to_square") or self.default_to_square
        if options.get("size") is not None:
            options["size"] = get_size_dict(options["size"], default_to_square=default_to_square)
        if options.get("crop_size") is not None:
            options["crop_size"] = get_size_dict(options["crop_size"], param_name="crop_size")
        for name in ("image_mean", "image_std"):
            if isinstance(options.get(name), (int, float)):
                options[name] = [float(options[name])] * RGB_CHANNELS
            elif options.get(name) is not None:
                options[name] = list(options[name])
        if options.get("resample") is not None:
            options["resample"] = int(options["resample"])
        return options

    def encoder_frame_counts(self, num_frames: int | None = None) -> dict[str, int]:
        """Frames fed to each encoder: its `encoder_settings` count, or `num_frames` for every encoder."""
        return {
            name: self.encoder_settings[name]["num_frames"] if num_frames is None else num_frames
            for name in self.vision_encoders
        }

    def video_pixel_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """Per encoder, in order, the `(frames, channels, height, width)` pixels of one video; a model takes this
        processor's output if its `config.video_pixel_shapes()` is the same. A `ValueError` when the frame size
        depends on the video (resizing off, or a short-side resize without the centre crop)."""
        return {
            name: (transform.num_frames, RGB_CHANNELS, *transform.output_size())
            for name, transform in self.transforms.items()
        }

    def preprocess(self, videos: object, **kwargs: Unpack[MervVideoProcessorKwargs]) -> BatchFeature:
        """Decode and transform `videos` (see `video_io` for accepted inputs) into `pixel_values_videos`, a
        `(num_videos, D)` float32 tensor packing every encoder's pixels (see the class docstring), and
        `video_metadata` if asked."""
        options = self._options(kwargs)
        transforms = self._transforms(options)
        videos = make_batched_video_inputs(videos)
        given_metadata = _metadata_per_video(options["video_metadata"], len(videos))
        sampling = {key: options[key] for key in ("fps", "num_frames", "do_sample_frames")}
        processed, metadata = [], []
        for i, video in enumerate(videos):
            window = {key: _value_for(key, options[key], i, len(videos)) for key in CLIP_WINDOW_OPTIONS}
            video_frames, video_metadata = self._process_one(
                video,
                f"videos[{i}]",
                transforms,
                given_metadata[i],
                options["input_data_format"],
                **window,
                **sampling,
            )
            processed.append(video_frames)
            metadata.append(video_metadata)
        data = {"pixel_values_videos": _pack(processed)}
        if options["return_metadata"]:
            data["video_metadata"] = metadata
        features = BatchFeature(data)
        return features.to(options["device"]) if options["device"] is not None else features

    def preprocess_windows(
        self, video: object, window_seconds: float, overlap_seconds: float = 0.0, **kwargs
    ) -> Iterator[tuple[float, float, BatchFeature]]:
        """One video in consecutive time windows (`video_io.time_windows`: `window_seconds` long, overlapping by
        `overlap_seconds`): `(start, end, features)` per window, in order, where `features` is what
        `self(video, clip_start_sec=start, clip_end_sec=end, **kwargs)` gives. The video is opened (demuxed) once and
        the frames of all windows are decoded in one pass; a window is given as soon as its last frame is decoded,
        and frames no later window needs are dropped, so memory holds about one window's frames. Window lengths are
        checked here; the video is read as the iterator is consumed (close it to stop early). Needs the video's frame
        rate (decoded frames: through `video_metadata`)."""
        check_window_lengths(window_seconds, overlap_seconds)
        windowed = set(CLIP_WINDOW_OPTIONS) & {key for key, value in kwargs.items() if value is not None}
        if windowed:
            raise ValueError(f"{sorted(windowed)} do not apply to windows: each window is its own clip window")
        options = self._options(kwargs)
        return self._windows(video, window_seconds, overlap_seconds, options)

    def _windows(
        self, video: object, window_seconds: float, overlap_seconds: float, options: dict
    ) -> Iterator[tuple[float, float, BatchFeature]]:
        transforms = self._transforms(options)
        sampling = {key: options[key] for key in ("fps", "num_frames", "do_sample_frames")}
        with open_video(video, "video", options["input_data_format"]) as reader:
            metadata = reader.metadata
            _fill_missing(metadata, _metadata_per_video(options["video_metadata"], 1)[0])
            if metadata.fps is None:
                raise ValueError("Windows in seconds need the video's frame rate; decoded frames have none")
            spans = time_windows(metadata.duration, window_seconds, overlap_seconds, 1 / metadata.fps)
            plans = [self.frame_plan(metadata, clip_start_sec=s, clip_end_sec=e, **sampling) for s, e in spans]
            with closing(self._process_plans(reader, plans, transforms)) as windows:
                for (start, end), plan, frames in zip(spans, plans, windows):
                    data = {"pixel_values_videos": _pack([self._maybe_flipped(frames)])}
                    if options["return_metadata"]:
                        data["video_metadata"] = [dataclasses.replace(metadata, frames_indices=plan.indices.tolist())]
                    features = BatchFeature(data)
                    yield start, end, features.to(options["device"]) if options["device"] is not None else features

    def _process_one(
        self,
        video: object,
        name: str,
        transforms: dict[str, EncoderTransform],
        given_metadata: VideoMetadata | None,
        input_data_format: str | None,
        **sampling,
    ) -> tuple[dict[str, list[np.ndarray]], VideoMetadata]:
        """One video as float32 `[3, H, W]` frames per encoder (a repeated frame is the same array)."""
        with open_video(video, name, input_data_format) as reader:
            _fill_missing(reader.metadata, given_metadata)
            plan = self.frame_plan(reader.metadata, **sampling)
            with closing(self._process_plans(reader, [plan], transforms)) as planned:
                frames = next(planned)
            metadata = reader.metadata
        metadata.frames_indices = plan.indices.tolist()
        return self._maybe_flipped(frames), metadata

    def _process_plans(
        self, reader: VideoReader, plans: Sequence[FramePlan], transforms: dict[str, EncoderTransform]
    ) -> Iterator[dict[str, list[np.ndarray]]]:
        """Each plan's float32 `[3, H, W]` frames per encoder, plan after plan, from one decoding pass over the union
        of their frames (plans ordered by time: each is given once its last frame is decoded).

        The distinct frames are decoded one at a time in a background thread while each is PIL-resized for every
        encoder that uses it (one resize per distinct target: DINOv2 and SigLIP share theirs). The torch-resized
        frames (LanguageBind) are kept as uint8 and transformed when their plan is complete (for one plan: once
        decoding is over, when torch's own threads no longer compete with the decoding thread). A frame is dropped
        after the last plan that uses it."""
        needs = [{encoder: plan.indices[plan.rows[encoder]].tolist() for encoder in transforms} for plan in plans]
        wanted = {encoder: {index for need in needs for index in need[encoder]} for encoder in transforms}
        last_plan = {index: number for number, plan in enumerate(plans) for index in plan.indices.tolist()}
        unused_after: list[list[int]] = [[] for _ in plans]
        for index, last in last_plan.items():
            unused_after[last].append(index)
        complete_at = np.maximum.accumulate([plan.indices.max() for plan in plans]).tolist()
        kept: dict[str, dict[int, np.ndarray]] = {encoder: {} for encoder in transforms}
        raw: dict[int, np.ndarray] = {}
        distinct = np.asarray(sorted(last_plan))
        number = 0
        with closing(decode_in_background(reader.iter_frames(distinct))) as frames:
            for index, frame in zip(distinct.tolist(), frames):
                resized = {}
                for encoder, transform in transforms.items():
                    if index not in wanted[encoder]:
                        continue
                    if transform.resize_backend == "torch":
                        raw[index] = frame
                    else:
                        kept[encoder][index] = _pil_transform(frame, transform, resized)
                while number < len(plans) and complete_at[number] <= index:
                    yield _plan_frames(needs[number], kept, raw, transforms)
                    for unused in unused_after[number]:
                        raw.pop(unused, None)
                        for encoder_frames in kept.values():
                            encoder_frames.pop(unused, None)
                    number += 1

    def _maybe_flipped(self, frames: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """`frames` with LanguageBind's flipped horizontally with probability 0.5 if `languagebind_random_flip`."""
        flip = self.languagebind_random_flip and random.random() < LANGUAGEBIND_FLIP_PROBABILITY
        if flip and "languagebind" in frames:
            return {**frames, "languagebind": [frame[..., ::-1] for frame in frames["languagebind"]]}
        return frames

    def frame_plan(
        self,
        metadata: VideoMetadata,
        clip_start_sec: float | None = None,
        clip_end_sec: float | None = None,
        end_frame: int | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
        do_sample_frames: bool = True,
    ) -> FramePlan:
        """Source frame indices of one video (with repeats for short videos) and each encoder's rows into them;
        `num_frames` replaces every encoder's frame count, and without `do_sample_frames` every frame is used."""
        counts = self.encoder_frame_counts(num_frames)
        if not do_sample_frames:
            every_frame = np.arange(metadata.total_num_frames)
            return FramePlan(every_frame, dict.fromkeys(counts, every_frame))
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


def _plan_frames(
    need: dict[str, list[int]],
    kept: dict[str, dict[int, np.ndarray]],
    raw: dict[int, np.ndarray],
    transforms: dict[str, EncoderTransform],
) -> dict[str, list[np.ndarray]]:
    """One plan's frames per encoder (`need`: its source frame indices per encoder, repeats included) from the
    transformed frames `kept`, first transforming (and keeping) the torch-resized ones still `raw`."""
    for encoder, transform in transforms.items():
        if transform.resize_backend == "torch":
            for index in dict.fromkeys(need[encoder]):
                if index not in kept[encoder]:
                    kept[encoder][index] = _torch_transform(raw[index], transform)
    return {encoder: [kept[encoder][index] for index in need[encoder]] for encoder in transforms}


def _pil_transform(frame: np.ndarray, transform: EncoderTransform, resized: dict) -> np.ndarray:
    """One uint8 `[H, W, 3]` frame -> float32 `[3, h, w]` through PIL resize (+ crop), rescaling and normalisation.
    `resized` caches this frame's resizes by target for encoders that share one."""
    height, width = transform.resized_size(*frame.shape[:2])
    box = transform.crop_box(height, width)
    key = (height, width, transform.interpolation, box)
    if key not in resized:
        image = Image.fromarray(frame)
        if transform.do_resize:
            image = image.resize((width, height), PIL_RESAMPLING[transform.interpolation])
        if box is not None:
            top, left, crop_height, crop_width = box
            image = image.crop((left, top, left + crop_width, top + crop_height))
        resized[key] = np.asarray(image)
    return _normalize(_to_float(resized[key], transform), transform)


def _to_float(image: np.ndarray, transform: EncoderTransform) -> np.ndarray:
    """uint8 `[H, W, 3]` -> float32 `[3, H, W]`, rescaled: by default to [0, 1] as torchvision's `ToTensor` and the
    authors' `x / 255.0` compute it (IEEE float32 division, so numpy and torch agree bit for bit). Any factor divides
    as `x / (1 / factor)`, which for 1 / 255 is that division exactly (1 / (1 / 255) rounds to 255 in float32)."""
    pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    if transform.rescale_factor is not None:
        pixels /= np.float32(1 / transform.rescale_factor)
    return pixels


def _normalize(pixels: np.ndarray, transform: EncoderTransform) -> np.ndarray:
    """`(x - mean) / std` per channel in float32, in place, as torchvision's `Normalize` / `NormalizeVideo` (unless
    `do_normalize` is off)."""
    if not transform.do_normalize:
        return pixels
    pixels -= np.asarray(transform.image_mean, dtype=np.float32)[:, None, None]
    pixels /= np.asarray(transform.image_std, dtype=np.float32)[:, None, None]
    return pixels


def _torch_transform(frame: np.ndarray, transform: EncoderTransform) -> np.ndarray:
    """The torch path (LanguageBind): rescale, [normalise], `F.interpolate` (no antialias), centre crop, [normalise].

    Frame by frame: the authors interpolate the whole `[C, T, H, W]` clip, which treats every frame plane
    independently, so the result is the same while full-resolution float copies stay one frame at a time.
    """
    pixels = _to_float(frame, transform)
    if transform.normalize_before_resize:
        pixels = _normalize(pixels, transform)
    height, width = transform.resized_size(*frame.shape[:2])
    if transform.do_resize:
        # (C, 1, H, W): each channel plane on its own, as in the authors' (C, T, H, W) clip; a (1, C, H, W) batch
        # takes another kernel path whose float32 results differ in the last bit on one thread.
        # align_corners left unset: False for the linear modes, as the authors' call, and the only value "nearest"
        # takes
        resized = F.interpolate(torch.from_numpy(pixels)[:, None], size=(height, width), mode=transform.interpolation)
        pixels = resized[:, 0].numpy()
    box = transform.crop_box(height, width)
    if box is not None:
        top, left, crop_height, crop_width = box
        pixels = pixels[:, top : top + crop_height, left : left + crop_width]
    if not transform.normalize_before_resize:
        pixels = _normalize(np.ascontiguousarray(pixels), transform)
    return pixels


def _pack_video(frames: dict[str, list[np.ndarray]], shapes: dict[str, tuple[int, ...]], row: np.ndarray) -> None:
    """Copy one video's frames into its row of the packed batch: each encoder's `(frames, 3, H, W)` block,
    C-contiguous, one after the other in the order of `shapes`."""
    start = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        np.stack(frames[name], out=row[start : start + size].reshape(shape))
        start += size


def _pack(videos: list[dict[str, list[np.ndarray]]]) -> torch.Tensor:
    """The videos' frames packed as `pixel_values_videos` `(videos, D)` (one copy): per video, each encoder's
    `(frames, 3, H, W)` block, C-contiguous, one after the other. Every video must give each encoder the same block."""
    shapes = {name: (len(frames), *frames[0].shape) for name, frames in videos[0].items()}
    for video in videos[1:]:
        for name, frames in video.items():
            if (len(frames), *frames[0].shape) != shapes[name]:
                raise ValueError(
                    f"The videos give encoder {name!r} frames of different counts or sizes "
                    f"({shapes[name]} and {(len(frames), *frames[0].shape)}), which do not batch: sample the same "
                    "number of frames (`do_sample_frames`) and resize them to one size (`do_resize`)"
                )
    packed = np.empty((len(videos), sum(math.prod(shape) for shape in shapes.values())), dtype=np.float32)
    for row, video in zip(packed, videos):
        _pack_video(video, shapes, row)
    return torch.from_numpy(packed)


def _merge_settings(vision_encoders: list[str], overrides: dict[str, dict]) -> dict[str, dict]:
    """Defaults of each named encoder with the user's partial overrides on top: JSON-serialisable copies, which share
    no dict or list with the defaults, the overrides or another processor."""
    settings = {}
    for name in vision_encoders:
        merged = copy.deepcopy({**MERV_FULL_ENCODER_SETTINGS.get(name, {}), **overrides.get(name, {})})
        settings[name] = {key: list(value) if isinstance(value, tuple) else value for key, value in merged.items()}
    return settings


def _value_for(key: str, value: object, index: int, batch_size: int) -> object:
    """A sampling value for video `index`: a scalar applies to all videos, a list gives one per video."""
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) != batch_size:
        raise ValueError(f"`{key}` has {len(value)} values for {batch_size} videos")
    return value[index]


def _interpolation_name(resample: int) -> str:
    """The `encoder_settings` name of PIL resampling filter `resample`, refused unless MERV's resizing offers it."""
    name = Image.Resampling(resample).name.lower()
    if name not in PIL_RESAMPLING:
        raise ValueError(f"`resample` = {resample} ({name}) is not supported; use one of {list(PIL_RESAMPLING)}")
    return name


def _metadata_per_video(video_metadata: object, num_videos: int) -> list[VideoMetadata | None]:
    """`video_metadata` as one `VideoMetadata` (or None) per video: one entry (dict or `VideoMetadata`) for a single
    video, or a list of them, nested lists flattened, as transformers takes it."""
    if video_metadata is None:
        return [None] * num_videos
    entries = video_metadata if isinstance(video_metadata, (list, tuple)) else [video_metadata]
    entries = [entry for item in entries for entry in (item if isinstance(item, (list, tuple)) else [item])]
    if len(entries) != num_videos:
        raise ValueError(f"`video_metadata` has {len(entries)} entries for {num_videos} videos; pass one per video")
    return [entry if isinstance(entry, VideoMetadata) else VideoMetadata(**entry) for entry in entries]


def _fill_missing(metadata: VideoMetadata, given: VideoMetadata | None) -> None:
    """Complete what a video does not tell about itself (decoded frames carry no frame rate) from `given`."""
    if given is None:
        return
    for field in ("fps", "duration"):
        if getattr(metadata, field, None) is None:
            setattr(metadata, field, getattr(given, field, None))


__all__ = ["MervVideoProcessor", "MervVideoProcessorKwargs", "MervBatchFeature", "MERV_FULL_ENCODER_SETTINGS"]
