"""Images of every PIL mode become 8-bit RGB frames, or are refused naming the input (`video_io`'s image decoding,
through `read_video` and the processor): 16-bit greyscale is scaled to eight bits, not clipped; images whose value
range is unknown (32-bit integers beyond 16 bits, floating point) are refused."""

import numpy as np
import pytest
from PIL import Image

from transformers_merv import read_video


def _grey_ramp(dtype: type) -> np.ndarray:
    """A 16-bit ramp from black (0) to white (65535), 64 x 64."""
    return np.linspace(0, 2**16 - 1, 64 * 64).reshape(64, 64).astype(dtype)


def _as_eight_bit_rgb(ramp: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(ramp.astype(np.float64) / 257).astype(np.uint8)[..., None], 3, axis=-1)


def test_a_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(tmp_path):
    """`convert("RGB")` would clip 16-bit grey to 255 almost everywhere: the ramp must stay a ramp. (Pillow >= 10.3
    opens the file as mode "I;16", older Pillow as "I": the oldest-dependencies suite reads it the other way.)"""
    ramp = _grey_ramp(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert np.array_equal(read_video(tmp_path / "ramp.png", 1)[0][0], _as_eight_bit_rgb(ramp))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32], ids=["I;16", "I"])
def test_sixteen_bit_greyscale_pil_images_are_scaled_to_eight_bits(dtype):
    ramp = _grey_ramp(dtype)
    assert np.array_equal(read_video(Image.fromarray(ramp), 1)[0][0], _as_eight_bit_rgb(ramp))
    assert np.array_equal(read_video([Image.fromarray(ramp)], 1)[0][0], _as_eight_bit_rgb(ramp))


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.full((8, 8), 2**20, np.int32)), "is a 32-bit integer image with values outside 0..65535"),
        (Image.fromarray(np.full((8, 8), 0.5, np.float32)), r"is a floating-point image \(PIL mode 'F'\)"),
    ],
)
def test_images_of_unknown_value_range_are_refused_naming_the_input(image, message, default_processor):
    with pytest.raises(ValueError, match=rf"^`videos\[0\]` {message}"):
        default_processor(text="<video>In: what?\nOut:", videos=image)
