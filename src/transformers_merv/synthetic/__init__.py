"""Synthetic video QA: deterministic videos of coloured shapes with questions whose answers follow from each scene's
geometry (`video_qa`), and a small Llama-style tokenizer for its language (`tokenizer`). The package's default model
is trained on it (`examples/build_default_model.py`); tests and benchmarks use it as data with known answers."""

from .tokenizer import build_tokenizer, conversation_texts, longest_answer_tokens
from .video_qa import ANSWER_VOCABULARY, DEFAULT_NUM_VIDEOS, EXAMPLE_SCENE, SPLITS, generate_dataset, render_example


__all__ = [
    "ANSWER_VOCABULARY",
    "DEFAULT_NUM_VIDEOS",
    "EXAMPLE_SCENE",
    "SPLITS",
    "build_tokenizer",
    "conversation_texts",
    "generate_dataset",
    "longest_answer_tokens",
    "render_example",
]
