"""How much each encoder contributes to a video's visual tokens (its fusion weight), as text bars or a PNG chart."""

from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..configuration_merv import MervConfig
from ..modeling_merv import MervVideoFeaturesOutput


BAR_WIDTH = 40
"""Characters of the longest text bar."""
CHART_WIDTH = 720
CHART_ROW_HEIGHT = 44
CHART_BAR_INSET = 8
CHART_MARGIN = 20
CHART_LABEL_WIDTH = 150
CHART_VALUE_WIDTH = 70
CHART_TITLE_HEIGHT = 56
CHART_FONT_SIZE = 18
CHART_TITLE_CHARS = 70
CHART_BACKGROUND = (255, 255, 255)
CHART_TEXT = (20, 20, 20)
CHART_AXIS = (160, 160, 160)
CHART_COLORS = ((66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193))


def encoder_weights(config: MervConfig, features: MervVideoFeaturesOutput, video: int = 0) -> dict[str, float]:
    """The fusion weight of each encoder for one video of `features`, or a `ValueError` when the model's fusion has
    none (only `cross_attention`, MERV's, and `scalar` weigh the encoders)."""
    if features.fusion_weights is None:
        raise no_weights_error(config)
    return dict(zip(config.vision_encoders, features.fusion_weights[video].float().tolist()))


def no_weights_error(config: MervConfig) -> ValueError:
    """The error for a model whose fusion has no per-encoder weights."""
    return ValueError(
        f"this model's fusion ({config.fusion_type!r}) has no per-encoder weights, so there is no contribution "
        "to show; fusion_type 'cross_attention' (MERV's) or 'scalar' has them"
    )


def chart_color(index: int) -> tuple[int, int, int]:
    """The chart colour of the `index`-th encoder (colours repeat after `CHART_COLORS`)."""
    return CHART_COLORS[index % len(CHART_COLORS)]


def format_weights(weights: Mapping[str, float]) -> str:
    """One line per encoder: name, weight and a bar scaled to the largest weight."""
    width = max(len(name) for name in weights)
    largest = max(weights.values()) or 1.0
    return "\n".join(
        f"  {name:<{width}}  {weight:.3f}  {'█' * round(BAR_WIDTH * weight / largest)}"
        for name, weight in weights.items()
    )


def draw_fusion_chart(weights: Mapping[str, float], question: str, path: str | Path) -> None:
    """A horizontal bar chart of the fusion weights (PNG, Pillow only). Bars are labelled by the keys of `weights`
    and coloured by encoder: the key itself, or what follows its last ": " (as in "count: dinov2")."""
    height = CHART_TITLE_HEIGHT + CHART_ROW_HEIGHT * len(weights) + CHART_MARGIN
    image = Image.new("RGB", (CHART_WIDTH, height), CHART_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=CHART_FONT_SIZE)
    title = question if len(question) <= CHART_TITLE_CHARS else question[: CHART_TITLE_CHARS - 1] + "…"
    draw.text((CHART_MARGIN, CHART_MARGIN), f"Fusion weights: {title}", fill=CHART_TEXT, font=font)
    left = CHART_MARGIN + max(CHART_LABEL_WIDTH, round(max(font.getlength(name) for name in weights)) + CHART_MARGIN)
    span = CHART_WIDTH - left - CHART_VALUE_WIDTH - CHART_MARGIN
    encoders = list(dict.fromkeys(map(_chart_encoder, weights)))
    for row, (name, weight) in enumerate(weights.items()):
        top = CHART_TITLE_HEIGHT + row * CHART_ROW_HEIGHT
        middle = top + CHART_ROW_HEIGHT // 2
        draw.text((CHART_MARGIN, middle), name, fill=CHART_TEXT, font=font, anchor="lm")
        bar_end = left + max(1, round(span * weight))
        color = chart_color(encoders.index(_chart_encoder(name)))
        draw.rectangle((left, top + CHART_BAR_INSET, bar_end, top + CHART_ROW_HEIGHT - CHART_BAR_INSET), fill=color)
        draw.text((bar_end + CHART_BAR_INSET, middle), f"{weight:.3f}", fill=CHART_TEXT, font=font, anchor="lm")
    draw.line((left, CHART_TITLE_HEIGHT, left, height - CHART_MARGIN), fill=CHART_AXIS, width=1)
    try:
        image.save(path, format="PNG")
    except OSError as err:
        raise OSError(f"cannot write {path}: {err}") from err


def _chart_encoder(label: str) -> str:
    """The encoder a chart bar belongs to: its label, or what follows the label's last ": "."""
    return label.rsplit(": ", 1)[-1]
