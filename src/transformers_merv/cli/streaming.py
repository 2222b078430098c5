"""Answers written as they are generated, on one line each: `merv ask` and `merv chat` with `--stream`."""

import argparse
import re
import sys
from typing import TextIO

import torch
from transformers.generation.streamers import BaseStreamer

from .errors import CliError
from ..utils.console import one_line


BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
"""A byte-fallback token (SentencePiece, Llama's tokenizer): a run of them decodes as one UTF-8 sequence, so a later
byte can turn the whole run into replacement characters."""


def settled(answer: str) -> str:
    """The part of a partly generated answer that more tokens cannot change: the text before its last whitespace
    (the last word may still grow or decode differently, e.g. an incomplete UTF-8 character)."""
    ends = [index for index, char in enumerate(answer) if char.isspace()]
    return answer[: ends[-1]] if ends else ""


class OneLineStreamer(BaseStreamer):
    """A `generate` streamer (batch of one) that writes the answer to `stream` as its words are generated: in the
    end exactly the text `one_line(processor.batch_decode(..., prompt_ids=..., skip_special_tokens=True)[0])` gives,
    then a newline. The prompt, which `generate` streams first, is skipped."""

    def __init__(self, tokenizer, stream: TextIO):
        self.tokenizer, self.stream = tokenizer, stream
        self._prompt_skipped = False
        self._ids: list[int] = []
        self._written = ""

    def put(self, value: torch.Tensor) -> None:
        """Take the next token (the first call: the prompt) and write the words it settles."""
        if not self._prompt_skipped:
            self._prompt_skipped = True
            return
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("OneLineStreamer streams one answer: generate one sequence (no beams, batch of one)")
        self._ids += value.flatten().tolist()
        self._write(one_line(settled(self._answer(self._ids[: self._bytes_start()]))).rstrip())

    def end(self) -> None:
        """Write the rest of the answer and the newline, and get ready for the next answer."""
        self._write(one_line(self._answer(self._ids)))
        self.stream.write("\n")
        self.stream.flush()
        self._prompt_skipped, self._ids, self._written = False, [], ""

    def _answer(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _bytes_start(self) -> int:
        """Where the trailing run of byte-fallback tokens starts (the text they decode to may still change)."""
        tokens = self.tokenizer.convert_ids_to_tokens(self._ids)
        start = len(tokens)
        while start and BYTE_TOKEN.fullmatch(tokens[start - 1]):
            start -= 1
        return start

    def _write(self, text: str) -> None:
        """Write what `text` adds to the text written so far."""
        if not text.startswith(self._written):
            raise RuntimeError(
                f"the streamed answer {self._written!r} does not begin {text!r}: this tokenizer decodes a longer "
                "answer into a different beginning; answer without --stream"
            )
        if len(text) > len(self._written):
            self.stream.write(text[len(self._written) :])
            self.stream.flush()
            self._written = text


def streams(args: argparse.Namespace) -> bool:
    """Whether answers are streamed: `--stream`/`--no-stream`, else when stdout is a terminal and the decoding can
    stream (beam search cannot)."""
    beams = (args.num_beams or 1) > 1
    if args.stream and beams:
        raise CliError("--stream cannot stream beam search (--num-beams > 1); drop one of them")
    return args.stream if args.stream is not None else sys.stdout.isatty() and not beams


def stream_kwargs(args: argparse.Namespace, processor) -> dict[str, OneLineStreamer]:
    """The `generate` kwargs that stream answers to stdout when `streams(args)`, else none."""
    return {"streamer": OneLineStreamer(processor.tokenizer, sys.stdout)} if streams(args) else {}
