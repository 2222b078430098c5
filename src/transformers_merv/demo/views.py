"""The HTML the demo page shows: answers, the fusion-weight bar chart, notes and errors. Text is escaped; element
classes are what the page's CSS (`app.CSS`) and the browser tests read."""

from collections.abc import Mapping, Sequence
from html import escape

from ..inference.fusion_weights import chart_color
from ..inference.windows import WindowAnswer


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
    return (
        f'<div class="merv-bar-row"><span class="merv-encoder">{escape(name)}</span>'
        f'<span class="merv-bar-track"><span class="merv-bar" style="width: {PERCENT * weight:.1f}%; '
        f'background: rgb{chart_color(index)}"></span></span>'
        f'<span class="merv-weight">{weight:.{WEIGHT_DIGITS}f}</span></div>'
    )


def timeline_html(windows: Sequence[WindowAnswer]) -> str:
    """A row per time window: its span, its answer and its fusion weights as one bar split by encoder."""
    rows = "".join(
        f'<tr class="merv-window"><td class="merv-span">{window.start_sec:.1f}–{window.end_sec:.1f} s</td>'
        f'<td class="merv-answer">{escape(window.answer)}</td><td>{_stacked_bar(window.fusion_weights)}</td></tr>'
        for window in windows
    )
    weights = next((window.fusion_weights for window in windows if window.fusion_weights), None)
    legend = legend_html(list(weights)) if weights else ""
    return (
        f'{legend}<table class="merv-timeline"><thead><tr><th>window</th><th>answer</th><th>fusion weights</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _stacked_bar(weights: Mapping[str, float] | None) -> str:
    """One bar, a segment per encoder as long as its weight (titled with its name and weight); "–" without weights."""
    if weights is None:
        return "–"
    segments = "".join(
        f'<span class="merv-segment" title="{escape(name)} {weight:.{WEIGHT_DIGITS}f}" '
        f'style="width: {PERCENT * weight:.1f}%; background: rgb{chart_color(index)}"></span>'
        for index, (name, weight) in enumerate(weights.items())
    )
    return f'<span class="merv-stacked-bar">{segments}</span>'


def legend_html(encoders: Sequence[str]) -> str:
    """The encoders' colours, for the timeline's bars."""
    items = "".join(
        f'<span class="merv-legend-item"><span class="merv-swatch" style="background: rgb{chart_color(index)}"></span>'
        f"{escape(name)}</span>"
        for index, name in enumerate(encoders)
    )
    return f'<div class="merv-legend">{items}</div>'
