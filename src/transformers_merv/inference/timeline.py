"""The fusion weights of a video's time windows as a timeline (PNG, Pillow only): one stacked bar per window, one
colour per encoder (`fusion_weights`' chart colours), time in seconds along the x axis and each window's answer
under its bar. A window's bar spans from its start to the next window's start (the last: to its end), so overlapping
windows sit side by side."""

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .fusion_weights import (
    CHART_AXIS,
    CHART_BACKGROUND,
    CHART_FONT_SIZE,
    CHART_MARGIN,
    CHART_TEXT,
    CHART_TITLE_CHARS,
    CHART_TITLE_HEIGHT,
    CHART_WIDTH,
    chart_color,
)
from .windows import WindowAnswer


TIMELINE_PLOT_HEIGHT = 240
TIMELINE_AXIS_LABEL_WIDTH = 50
TIMELINE_TICK_LENGTH = 5
TIMELINE_TICKS = 6
"""About this many labelled times along the x axis."""
TIMELINE_LABEL_ROW_HEIGHT = 24
TIMELINE_LEGEND_SWATCH = 14
TIMELINE_LEGEND_GAP = 24
TIMELINE_BAR_GAP = 1
"""Pixels left blank between neighbouring bars."""
ELLIPSIS = "…"
NICE_STEPS = (1, 2, 5)
"""Tick spacings: these times a power of ten seconds."""
DECIMAL_BASE = 10


def draw_fusion_timeline(windows: Sequence[WindowAnswer], title: str, path: str | Path) -> None:
    """Draw the windows' fusion weights as stacked bars over time, with `title` and each window's answer, into the
    PNG `path`. A `ValueError` when a window has no fusion weights."""
    if any(window.fusion_weights is None for window in windows):
        raise ValueError("the windows have no fusion weights (this model's fusion does not weigh the encoders)")
    font = ImageFont.load_default(size=CHART_FONT_SIZE)
    plot_top = CHART_TITLE_HEIGHT + TIMELINE_LABEL_ROW_HEIGHT
    plot_bottom = plot_top + TIMELINE_PLOT_HEIGHT
    height = plot_bottom + 2 * TIMELINE_LABEL_ROW_HEIGHT + CHART_MARGIN
    image = Image.new("RGB", (CHART_WIDTH, height), CHART_BACKGROUND)
    draw = ImageDraw.Draw(image)
    short_title = title if len(title) <= CHART_TITLE_CHARS else title[: CHART_TITLE_CHARS - 1] + ELLIPSIS
    draw.text((CHART_MARGIN, CHART_MARGIN), f"Fusion weights over time: {short_title}", fill=CHART_TEXT, font=font)
    encoders = list(windows[0].fusion_weights)
    _draw_legend(draw, font, encoders, CHART_TITLE_HEIGHT)
    left, right = CHART_MARGIN + TIMELINE_AXIS_LABEL_WIDTH, CHART_WIDTH - CHART_MARGIN
    scale = (right - left) / windows[-1].end_sec
    for number, window in enumerate(windows):
        bar_end = windows[number + 1].start_sec if number + 1 < len(windows) else window.end_sec
        x0, x1 = left + round(window.start_sec * scale), left + round(bar_end * scale) - TIMELINE_BAR_GAP
        _draw_stacked_bar(draw, window, encoders, (x0, plot_top, max(x0, x1), plot_bottom))
        label = _fitted(window.answer, font, x1 - x0)
        draw.text(
            ((x0 + x1) // 2, plot_bottom + TIMELINE_LABEL_ROW_HEIGHT), label, fill=CHART_TEXT, font=font, anchor="mt"
        )
    _draw_axes(draw, font, (left, plot_top, right, plot_bottom), windows[-1].end_sec)
    try:
        image.save(path, format="PNG")
    except OSError as err:
        raise OSError(f"cannot write {path}: {err}") from err


def _draw_legend(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, encoders: list[str], top: int) -> None:
    """One colour swatch and name per encoder, in a row."""
    x = CHART_MARGIN + TIMELINE_AXIS_LABEL_WIDTH
    for index, encoder in enumerate(encoders):
        draw.rectangle((x, top, x + TIMELINE_LEGEND_SWATCH, top + TIMELINE_LEGEND_SWATCH), fill=chart_color(index))
        x += TIMELINE_LEGEND_SWATCH + CHART_MARGIN // 2
        draw.text((x, top + TIMELINE_LEGEND_SWATCH // 2), encoder, fill=CHART_TEXT, font=font, anchor="lm")
        x += round(font.getlength(encoder)) + TIMELINE_LEGEND_GAP


def _draw_stacked_bar(
    draw: ImageDraw.ImageDraw, window: WindowAnswer, encoders: list[str], box: tuple[int, int, int, int]
) -> None:
    """The window's weights stacked from the bottom of `box` (x0, top, x1, bottom), the first encoder lowest; a
    weight's share of the bar is its share of the window's total."""
    x0, top, x1, bottom = box
    total = sum(window.fusion_weights.values()) or 1.0
    below = 0.0
    for index, encoder in enumerate(encoders):
        upper = below + window.fusion_weights[encoder] / total
        y_low, y_high = bottom - round(below * (bottom - top)), bottom - round(upper * (bottom - top))
        if y_high < y_low:
            draw.rectangle((x0, y_high, x1, y_low - 1), fill=chart_color(index))
        below = upper


def _draw_axes(
    draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, box: tuple[int, int, int, int], duration: float
) -> None:
    """The y axis (0 and 1) and the x axis with ticks labelled in seconds."""
    left, top, right, bottom = box
    draw.line((left, top, left, bottom), fill=CHART_AXIS)
    draw.line((left, bottom, right, bottom), fill=CHART_AXIS)
    for value, y, anchor in (("0", bottom, "rb"), ("1", top, "rt")):
        draw.text((left - TIMELINE_TICK_LENGTH, y), value, fill=CHART_TEXT, font=font, anchor=anchor)
    step = _tick_step(duration)
    for tick in range(int(duration / step) + 1):
        x = left + round(tick * step * (right - left) / duration)
        draw.line((x, bottom, x, bottom + TIMELINE_TICK_LENGTH), fill=CHART_AXIS)
        draw.text((x, bottom + TIMELINE_TICK_LENGTH), f"{tick * step:g} s", fill=CHART_TEXT, font=font, anchor="mt")


def _tick_step(duration: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that gives at most `TIMELINE_TICKS` intervals over `duration`."""
    power = DECIMAL_BASE ** math.floor(math.log10(duration / TIMELINE_TICKS))
    return next(step * power for step in (*NICE_STEPS, DECIMAL_BASE) if duration / (step * power) <= TIMELINE_TICKS)


def _fitted(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` on one line, cut with an ellipsis to fit `width` pixels (empty when not even the ellipsis fits)."""
    text = " ".join(text.split())
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + ELLIPSIS) > width:
        text = text[:-1]
    return text + ELLIPSIS if text else ""


__all__ = ["draw_fusion_timeline"]
