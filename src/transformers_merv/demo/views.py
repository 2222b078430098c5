"""The HTML the demo page shows: answers, the fusion-weight bar chart, notes and errors. Text is escaped; element
classes are what the page's CSS (`app.CSS`) and the browser tests read."""

from collections.abc import Mapping, Sequence
from html import escape

from ..inference.fusion_weights import CHART_COLORS


PERCENT = 100
WEIGHT_DIGITS = 3


def error_html(message: str) -> str:
    """One error message, shown as an alert."""
    return f'<div class="merv-error" role="alert">{escape(message)}</div>'


def note_html(message: str) -> str:
    """A remark in place of a result (e.g. why there are no fusion weights)."""
    return f'<p class="merv-note">{escape(message)}</p>'


def answers_html(answers: Sequence[tuple[str, str]]) -> str:
    """Questions and their answers (so far), in order."""
    items = "".join(
        f'<li><span class="merv-question">{escape(question)}</span> '
        f'<span class="merv-answer">{escape(answer)}</span></li>'
        for question, answer in answers
    )
    return f'<ol class="merv-answers">{items}</ol>'


def fusion_chart_html(weights: Mapping[str, float], title: str) -> str:
    """A horizontal bar per encoder, its length the encoder's fusion weight (the weights sum to one)."""
    rows = "".join(_bar_row(name, weight, index) for index, (name, weight) in enumerate(weights.items()))
    return f'<figure class="merv-fusion"><figcaption>{escape(title)}</figcaption>{rows}</figure>'


def _bar_row(name: str, weight: float, index: int) -> str:
    red, green, blue = CHART_COLORS[index % len(CHART_COLORS)]
    return (
        f'<div class="merv-bar-row"><span class="merv-encoder">{escape(name)}</span>'
        f'<span class="merv-bar-track"><span class="merv-bar" style="width: {PERCENT * weight:.1f}%; '
        f'background: rgb({red}, {green}, {blue})"></span></span>'
        f'<span class="merv-weight">{weight:.{WEIGHT_DIGITS}f}</span></div>'
    )
