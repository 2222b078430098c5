"""MERV as an lmms-eval model: `lmms-eval --model merv --model_args pretrained=PATH_OR_ID --tasks ...`.

lmms-eval finds the model through the `lmms_eval.models` entry point of this package (`model_manifest`), which names
the classes by their paths: lmms-eval imports them (`model.py`), and with them torch and the model, only when a run
uses them. Two classes implement it:

- `MervChat` (what `--model merv` resolves to): `generate_until` on the chat messages of the task (`doc_to_messages`,
  or lmms-eval's messages built from `doc_to_visual` + `doc_to_text`).
- `Merv` (`--force_simple`): `generate_until` on the task's text and visuals, and `loglikelihood`, which
  multiple-choice tasks (`output_type: multiple_choice`) need: lmms-eval sends them to simple models only.

Every request names one video. Requests about the same video (and sampling window) are answered together: the video
is decoded and encoded once, and the prompt prefix it shares with every question is cached (`inference.prefix_cache`); the
questions are then generated, or their continuations scored, `batch_size` at a time from that cache. Frames are
sampled by MERV's own video processor; a chat message's `start_time` / `end_time` is the sampling window.
"""

MODEL_ID = "merv"
MODEL_MODULE = f"{__name__}.model"


def model_manifest():
    """The `lmms_eval.models` entry point: `merv` resolves to `MervChat`, and to `Merv` under `--force_simple`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID, simple_class_path=f"{MODEL_MODULE}.Merv", chat_class_path=f"{MODEL_MODULE}.MervChat"
    )


__all__ = ["MODEL_ID", "model_manifest"]
