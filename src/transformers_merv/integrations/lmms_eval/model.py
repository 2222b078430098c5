"""The lmms-eval `merv` model: `MervChat` (what `--model merv` resolves to) and `Merv` (`--force_simple`); see the
package's docstring."""

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm.auto import tqdm

from ... import default_model_path
from ...evaluation import DEFAULT_MAX_NEW_TOKENS
from ...inference.batching import batches, group_by
from ...inference.devices import resolve_device
from ...inference.loading import AUTO, load_model, load_processor
from ...inference.prefix_cache import VideoPrefix, generate_from_cache, prefill_video, prompt_ids
from ...video_io import clip_window


GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_beams")
"""lmms-eval generation kwargs passed on to `generate`; others (e.g. `image_aspect_ratio`) concern other models."""


@dataclass(frozen=True)
class VideoRequest:
    """One lmms-eval request in MERV's terms: a conversation about one video."""

    conversation: list[dict[str, Any]]
    video: str
    sampling: tuple[tuple[str, float], ...] = ()
    """The clip window (`clip_start_sec`, `clip_end_sec`) as sorted items."""
    generation: tuple[tuple[str, Any], ...] = ()
    until: tuple[str, ...] = ()
    continuation: str = ""
    """The text whose likelihood `loglikelihood` scores."""

    @property
    def video_key(self) -> tuple:
        """What identifies the encoded video: the video and its sampling window."""
        return self.video, self.sampling

    @property
    def batching_key(self) -> tuple:
        """What requests generated together share: the encoded video and the generation settings."""
        return self.video_key, self.generation


class Merv(lmms):
    """MERV for lmms-eval tasks in the simple format (text + `doc_to_visual`), with option likelihood.

    `pretrained`: model folder or Hub id (default: the shipped model); `device`; `dtype` (`auto`, `float32`,
    `bfloat16`, `float16`); `batch_size`: questions about one video answered (or scored) together."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = None,
        dtype: str = AUTO,
        batch_size: int | str = 1,
    ) -> None:
        super().__init__()
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"merv: batch_size must be >= 1, got {batch_size!r}")
        model_id = pretrained or str(default_model_path())
        self.processor = load_processor(model_id)
        self.model = load_model(model_id, resolve_device(device, self.accelerator.local_process_index), dtype)

    # --- lmms-eval's interface --------------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self._generate([self._request(instance) for instance in requests])

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """`(log-likelihood, is_greedy)` per request, each wrapped in a `GenerationResult`: lmms-eval 0.7's
        `unwrap_generation_output` turns a bare tuple into its string, and passes a `GenerationResult`'s `text`
        on as it is."""
        scores = self._score([self._scored_request(instance) for instance in requests])
        return [GenerationResult(text=score) for score in scores]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("merv: multi-round generation tasks are not supported")

    # --- requests ---------------------------------------------------------------------------------------------------

    def _doc(self, task: str, split: str, doc_id: int) -> Mapping[str, Any]:
        return self.task_dict[task][split][doc_id]

    def _request(self, instance: Instance) -> VideoRequest:
        """A `generate_until` request `(context, generation kwargs, doc_to_visual, doc_id, task, split)`."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = instance.args
        videos = doc_to_visual(self._doc(task, split, doc_id))
        return _video_request(_user_turn(context, len(videos)), videos, f"{task} doc {doc_id}", gen_kwargs=gen_kwargs)

    def _scored_request(self, instance: Instance) -> VideoRequest:
        """A `loglikelihood` request `(context, continuation, doc_to_visual, doc_id, task, split)`; the continuation
        is text, or `doc_to_target` for `output_type: loglikelihood` tasks."""
        context, continuation, doc_to_visual, doc_id, task, split = instance.args
        doc = self._doc(task, split, doc_id)
        videos = doc_to_visual(doc)
        continuation = str(continuation(doc)) if callable(continuation) else continuation
        return _video_request(
            _user_turn(context, len(videos)), videos, f"{task} doc {doc_id}", continuation=continuation
        )

    # --- generation -------------------------------------------------------------------------------------------------

    def _generate(self, requests: Sequence[VideoRequest]) -> list[str]:
        answers: list[str] = [""] * len(requests)
        groups = group_by(range(len(requests)), key=lambda index: requests[index].batching_key)
        with tqdm(total=len(requests), desc="merv generate", disable=self._rank != 0) as bar:
            for indices in groups:
                prefix = self._encode(requests[indices[0]], len(indices))
                for batch in batches(indices if prefix else [], self.batch_size):
                    texts = self._generate_batch(prefix, [requests[index] for index in batch])
                    for index, text in zip(batch, texts):
                        answers[index] = _cut_at(text, requests[index].until)
                bar.update(len(indices))
        return answers

    def _encode(self, request: VideoRequest, num_requests: int) -> VideoPrefix | None:
        """The video of `request` encoded with its prompt prefix, or `None` (with a warning) when it cannot be read:
        its `num_requests` requests then get an empty answer or a log-likelihood of -inf, as `merv eval` skips
        them, rather than ending the whole evaluation."""
        try:
            return prefill_video(self.model, self.processor, request.video, dict(request.sampling))
        except (OSError, ValueError) as err:
            warnings.warn(f"merv: {num_requests} request(s) about {request.video} are not answered: {err}")
            return None

    def _generate_batch(self, prefix: VideoPrefix, batch: Sequence[VideoRequest]) -> list[str]:
        prompts = [prompt_ids(self.processor, request.conversation) for request in batch]
        output, input_ids = generate_from_cache(
            self.model, self.processor, prefix.prompt, prompts, **self._generation(dict(batch[0].generation))
        )
        return self.processor.batch_decode(output.sequences, prompt_ids=input_ids, skip_special_tokens=True)

    def _generation(self, generation: dict[str, Any]) -> dict[str, Any]:
        """`generate` kwargs: greedy unless sampling is asked for; the model's `max_new_tokens` (else the
        authors' 512) unless the task sets it."""
        configured = self.model.generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        return {"max_new_tokens": configured, **generation}

    # --- option likelihood ------------------------------------------------------------------------------------------

    def _score(self, requests: Sequence[VideoRequest]) -> list[tuple[float, bool]]:
        scores: list[tuple[float, bool]] = [(-math.inf, False)] * len(requests)
        with tqdm(total=len(requests), desc="merv loglikelihood", disable=self._rank != 0) as bar:
            for indices in group_by(range(len(requests)), key=lambda index: requests[index].video_key):
                prefix = self._encode(requests[indices[0]], len(indices))
                for batch in batches(indices if prefix else [], self.batch_size):
                    for index, score in zip(batch, self._score_batch(prefix, [requests[i] for i in batch])):
                        scores[index] = score
                bar.update(len(indices))
        return scores

    @torch.inference_mode()
    def _score_batch(self, prefix: VideoPrefix, batch: Sequence[VideoRequest]) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities after the prompt, and whether greedy decoding would
        produce exactly those tokens, for each request: the rest of each sequence after the cached prefix is run
        as one right-padded batch."""
        sequences = [self._continuation_ids(request) for request in batch]
        length = min(
            prefix.prompt.reusable_length([ids for ids, _ in sequences]),
            *(len(ids) - num_scored for ids, num_scored in sequences),
        )
        rests = [ids[length:] for ids, _ in sequences]
        padded = self.processor.tokenizer.pad(
            {"input_ids": rests}, padding=True, padding_side="right", return_tensors="pt"
        )
        attention_mask = torch.cat([torch.ones(len(batch), length, dtype=torch.long), padded["attention_mask"]], 1)
        logits = self.model(
            input_ids=padded["input_ids"].to(self.model.device),
            attention_mask=attention_mask.to(self.model.device),
            cache=prefix.prompt.cache_for(length, len(batch)),
        ).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1).cpu()
        scores = []
        for row, (rest, (_, num_scored)) in enumerate(zip(rests, sequences)):
            targets = torch.tensor(rest[len(rest) - num_scored :])
            predicting = log_probs[row, len(rest) - num_scored - 1 : len(rest) - 1]
            scores.append(
                (
                    predicting.gather(-1, targets[:, None]).sum().item(),
                    bool((predicting.argmax(-1) == targets).all()),
                )
            )
        return scores

    def _continuation_ids(self, request: VideoRequest) -> tuple[list[int], int]:
        """The token ids of prompt + continuation, and how many of the last ones are the continuation's: the prompt
        is tokenized alone and with the continuation appended to its text (as lm-eval does)."""
        context = prompt_ids(self.processor, request.conversation)
        prompt = self.processor.apply_chat_template(request.conversation, tokenize=False)
        whole = self.processor.prompt_ids(prompt + request.continuation)
        if whole[: len(context)] != context or len(whole) == len(context):
            raise ValueError(
                f"merv: the continuation {request.continuation!r} does not tokenize as an extension of its prompt"
            )
        return whole, len(whole) - len(context)


class MervChat(Merv):
    """MERV for lmms-eval tasks in the chat format: `generate_until` on the task's messages."""

    is_simple = False

    def _request(self, instance: Instance) -> VideoRequest:
        """A chat `generate_until` request `(context, doc_to_messages, generation kwargs, doc_id, task, split)`.
        Tasks defined by a Python class (as this package's) send the simple format whatever the model is."""
        if not callable(instance.args[1]):
            return super()._request(instance)
        _, doc_to_messages, gen_kwargs, doc_id, task, split = instance.args
        messages = ChatMessages(messages=doc_to_messages(self._doc(task, split, doc_id))).messages
        conversation, videos, window = [], [], {}
        for message in messages:
            content = []
            for part in message.content:
                if part.type == "text":
                    content.append({"type": "text", "text": part.text})
                elif part.type == "video":
                    content.append({"type": "video"})
                    videos.append(part.url)
                    window = clip_window(part.start_time, part.end_time)
                else:
                    raise ValueError(f"merv: {task} doc {doc_id} has {part.type} input; MERV takes videos and text")
            conversation.append({"role": message.role, "content": content})
        return _video_request(conversation, videos, f"{task} doc {doc_id}", window, gen_kwargs)


# --- helpers ---------------------------------------------------------------------------------------------------------


def _user_turn(text: str, num_videos: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "video"}] * num_videos + [{"type": "text", "text": text}]}]


def _video_request(
    conversation: list[dict[str, Any]],
    videos: Sequence[Any],
    where: str,
    window: Mapping[str, float] | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
    continuation: str = "",
) -> VideoRequest:
    if len(videos) != 1 or not isinstance(videos[0], str):
        raise ValueError(
            f"merv: {where} gives {len(videos)} visual(s) ({videos!r}); MERV answers about one video file"
        )
    gen_kwargs = gen_kwargs or {}
    until = gen_kwargs.get("until") or ()
    return VideoRequest(
        conversation=conversation,
        video=videos[0],
        sampling=tuple(sorted((window or {}).items())),
        generation=tuple(sorted(_generation_kwargs(gen_kwargs).items())),
        until=(until,) if isinstance(until, str) else tuple(until),
        continuation=continuation,
    )


def _generation_kwargs(gen_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """lmms-eval's generation kwargs as `generate`'s: sampling when `do_sample` or a positive temperature."""
    sample = bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature") or 0) > 0
    kept = {key: gen_kwargs[key] for key in GENERATION_KEYS if gen_kwargs.get(key) is not None}
    if not sample:
        kept = {key: value for key, value in kept.items() if key in ("max_new_tokens", "num_beams")}
    return {"do_sample": sample, **kept}


def _cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


__all__ = ["Merv", "MervChat"]
