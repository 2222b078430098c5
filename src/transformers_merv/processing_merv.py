"""Processor for MERV: tokenizer + video processor + the authors' prompt formats as chat templates."""

from collections.abc import Sequence
from importlib.resources import files

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.utils import logging

from .compat import DirectVideoProcessorLoading
from .video_io import make_batched_video_inputs
from .video_processing_merv import MervVideoProcessor, MervVideoProcessorKwargs


logger = logging.get_logger(__name__)

DEFAULT_NUM_VIDEO_TOKENS = 1024
ANSWER_CUE_SENTINEL = "QUESTION"
"""Stands in for a question when `MervProcessor.answer_cue` renders the chat template to find what follows it."""

PROMPT_FORMATS = ("pure", "vicuna", "llama2-chat", "llama3.1-chat", "qwen2")
"""The authors' prompt builders (`merv/models/backbones/llm/prompting/` in princetonvisualai/merv), by the name of
their LLM family suffix."""


# The templates are the `.jinja` files a saved processor carries, kept as such in the package (`chat_templates/`). In
# every one, the video placeholders go first, right after the BOS token the tokenizer adds: the authors splice the
# visual tokens there whatever the prompt says (`MERV.forward`). Assistant turns sit in `{% generation %}` blocks so
# that `return_assistant_tokens_mask=True` marks the tokens the authors train on.
def merv_chat_templates(default: str = "pure") -> dict[str, str]:
    """All prompt formats as named templates, `default` under the name "default" (the one `apply_chat_template`
    uses when no `chat_template` is given). The released MERV models use "pure"."""
    if default not in PROMPT_FORMATS:
        raise ValueError(f"Unknown prompt format {default!r}; choose one of {list(PROMPT_FORMATS)}")
    templates = files(__package__) / "chat_templates"
    named = {name: (templates / f"{name}.jinja").read_text(encoding="utf-8") for name in PROMPT_FORMATS}
    return {"default": named.pop(default), **named}


class MervProcessorKwargs(ProcessingKwargs, total=False):
    """Call options of `MervProcessor`: the tokenizer's, and the video processor's sampling options. Batches are
    padded, on the left as generation needs; either can be overridden per call. (`_defaults` is honoured by every
    supported transformers release; processor class attributes, its successor, only from 5.23.)"""

    videos_kwargs: MervVideoProcessorKwargs
    _defaults = {"text_kwargs": {"padding": True, "padding_side": "left"}}


class MervProcessor(DirectVideoProcessorLoading):
    r"""
    Tokenizer and [`MervVideoProcessor`] in one: `processor(text=..., videos=...)` expands each `<video>` in the
    text to `num_video_tokens` placeholder tokens (which the model replaces by the fused visual tokens), tokenizes and
    pads (left by default, as generation needs), and returns `input_ids`, `attention_mask` and
    `pixel_values_videos`.

    The default chat template is the authors' "pure" format: one user turn with a video renders as
    `<video>In: {question}\nOut:`, so the ids are `[BOS] + [video] * num_video_tokens + ids("In: ...\nOut:")`, the
    sequence the authors' model sees. The other formats are named templates (`chat_template="vicuna"`,
    `"llama2-chat"`, `"llama3.1-chat"`, `"qwen2"`). In every format each user turn already ends with the assistant
    cue, as in the authors' prompt builders, so `add_generation_prompt` changes nothing.

    Args:
        video_processor ([`MervVideoProcessor`]):
            The video processor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer, with `video_token` added as a special token.
        chat_template (`str` or `dict[str, str]`, *optional*):
            Defaults to `merv_chat_templates("pure")`.
        num_video_tokens (`int`, *optional*, defaults to 1024):
            Visual tokens per video (`MervConfig.num_video_tokens`; 1024 for merv-full).
        video_token (`str`, *optional*, defaults to `"<video>"`):
            The placeholder marking where a video goes in the text.
    """

    _auto_class = "AutoProcessor"  # saved processors carry `auto_map` and these files, for `trust_remote_code=True`
    valid_processor_kwargs = MervProcessorKwargs
    direct_video_processor_class = MervVideoProcessor  # loaded without `AutoVideoProcessor` (needs torchvision)

    def __init__(
        self,
        video_processor=None,
        tokenizer=None,
        chat_template: str | dict[str, str] | None = None,
        num_video_tokens: int = DEFAULT_NUM_VIDEO_TOKENS,
        video_token: str = "<video>",
        **kwargs,
    ):
        if chat_template is None:
            chat_template = merv_chat_templates()
        super().__init__(video_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.num_video_tokens = num_video_tokens
        self.video_token = video_token
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        if tokenizer.convert_ids_to_tokens(self.video_token_id) != video_token:
            raise ValueError(
                f"The tokenizer has no {video_token!r} token; add it with "
                f"`tokenizer.add_special_tokens({{'additional_special_tokens': [{video_token!r}]}})` "
                "(and give the language model's embeddings a row for it)"
            )
        # transformers 5 does not save Llama tokenizers' `legacy` flag, and a reloaded one stops prefixing text after
        # special tokens; keep the flag in the config the tokenizer saves.
        if getattr(tokenizer, "legacy", None) is not None:
            tokenizer.init_kwargs.setdefault("legacy", tokenizer.legacy)
        self._warn_if_no_prefix_space_after_specials()

    def check_argument_for_proper_class(self, argument_name: str, argument: object) -> type:
        """Check the video processor against `MervVideoProcessor` itself: transformers looks video processor classes
        up in registries that exist only when torchvision is installed, which MERV does not need."""
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        if not isinstance(argument, MervVideoProcessor):
            raise TypeError(f"`video_processor` must be a MervVideoProcessor, got {type(argument).__name__}")
        return MervVideoProcessor

    def save_pretrained(self, save_directory, *args, **kwargs) -> list[str]:
        """[`ProcessorMixin.save_pretrained`], leaving this processor as it was: its tokenizer saves the processor's
        chat templates (the two write the same files, and the tokenizer's own would leave stale named templates
        beside them), and the `auto_map` that transformers sets on the processor while saving goes to the file only,
        so that the processor stays equal to one loaded from the folder."""
        tokenizer_templates = self.tokenizer.chat_template
        self.tokenizer.chat_template = self.chat_template
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.tokenizer.chat_template = tokenizer_templates
            self.__dict__.pop("auto_map", None)

    def _warn_if_no_prefix_space_after_specials(self) -> None:
        """The authors tokenize the prompt on its own after BOS, where SentencePiece adds its leading "▁". Text
        right after our `<video>` placeholders only gets it from tokenizers that prefix every text segment
        (Llama `legacy=True`, as the authors' fast tokenizer behaves); otherwise the ids drift from theirs."""
        alone = self.tokenizer("In", add_special_tokens=False)["input_ids"]
        after_video = self.tokenizer(self.video_token + "In", add_special_tokens=False)["input_ids"][1:]
        if alone != after_video:
            logger.warning(
                "This tokenizer tokenizes text after a special token differently from text at the start "
                f"({alone} vs {after_video}), so prompts will not match the authors' token ids. For Llama "
                "SentencePiece tokenizers, load or save them with `legacy=True`."
            )

    def __call__(
        self, text: str | list[str] | None = None, videos: object = None, **kwargs: Unpack[MervProcessorKwargs]
    ) -> BatchFeature:
        """Tokenize `text` (each `<video>` expanded) and process `videos` (see [`MervVideoProcessor`]).

        Text kwargs (`padding`, `padding_side`, `truncation`, ...) go to the tokenizer, video kwargs (sampling:
        `clip_start_sec`, `clip_end_sec`, `end_frame`, `fps`, `num_frames`; transformers' resize and normalisation
        options) to the video processor. This is `ProcessorMixin.__call__` with `text` and `videos` as its first two
        positional arguments.
        """
        return super().__call__(text=text, videos=videos, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs) -> None:
        """Check that the text has exactly one `<video>` marker per video, naming both counts."""
        if text is None and videos is None:
            raise ValueError("MervProcessor needs `text`, `videos` or both")
        if text is None:
            return
        texts = [text] if isinstance(text, str) else text
        if not all(isinstance(sample, str) for sample in texts):
            raise ValueError("`text` must be a string or a list of strings")
        num_markers = sum(sample.count(self.video_token) for sample in texts)
        num_videos = 0 if videos is None else len(make_batched_video_inputs(videos))
        if num_markers != num_videos:
            raise ValueError(
                f"The total number of {self.video_token} tokens in the prompts should be the same as the number of "
                f"videos passed: found {num_markers} {self.video_token} marker(s) and {num_videos} video(s); put one "
                "marker per video in the text (the chat template does this for video blocks)"
            )

    def _process_videos(self, videos: object, **kwargs) -> tuple[BatchFeature, list[str]]:
        # The hook in-tree processors override too (qwen2_5_vl): the base counts videos with transformers'
        # `make_batched_videos`, which does not know every input `video_io` reads; the video processor's output does.
        processed = self.video_processor(videos, **kwargs)
        num_videos = processed["pixel_values_videos"].shape[0]
        return processed, [self.replace_video_token(processed, index) for index in range(num_videos)]

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.video_placeholders

    @property
    def video_placeholders(self) -> str:
        """What each `<video>` marker of a text becomes before tokenization: `num_video_tokens` placeholder tokens."""
        return self.video_token * self.num_video_tokens

    def prompt_ids(self, text: str) -> list[int]:
        """The `input_ids` that `processor(text=text, videos=...)` gives for one text, each `<video>` marker expanded to
        the placeholders, without decoding any video."""
        return self.tokenizer(text.replace(self.video_token, self.video_placeholders))["input_ids"]

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """[`ProcessorMixin.apply_chat_template`] with this processor's `video_token` available to the template."""
        kwargs.setdefault("video_token", self.video_token)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    def batch_decode(self, sequences, prompt_ids: torch.Tensor | Sequence[Sequence[int]] | None = None, **kwargs):
        """Decode `sequences`; with `prompt_ids` (the `input_ids` given to `generate`), decode only the answers.

        `generate` returns the prompt followed by the new tokens. Given `prompt_ids`, its length (shared by the
        padded batch) is cut off every sequence, and each answer is `strip()`ped, as the authors' `generate()`
        returns it. Other kwargs (`skip_special_tokens`, ...) go to the tokenizer.
        """
        if prompt_ids is None:
            return self.tokenizer.batch_decode(sequences, **kwargs)
        sequences, prompt_ids = torch.as_tensor(sequences).cpu(), torch.as_tensor(prompt_ids).cpu()
        prompt_length = prompt_ids.shape[-1]
        if sequences.shape[-1] < prompt_length or not torch.equal(sequences[..., :prompt_length], prompt_ids):
            raise ValueError("`sequences` do not start with `prompt_ids`; pass the `input_ids` given to `generate`")
        answers = self.tokenizer.batch_decode(sequences[..., prompt_length:], **kwargs)
        return [answer.strip() for answer in answers]

    def post_process_image_text_to_text(
        self,
        generated_outputs: torch.Tensor | Sequence[Sequence[int]],
        skip_special_tokens: bool = True,
        prompt_ids: torch.Tensor | Sequence[Sequence[int]] | None = None,
        **kwargs,
    ) -> list[str]:
        """Decode `generate` outputs to text, as in-tree processors do (pipelines call this). With `prompt_ids`, only
        the answers (see `batch_decode`). Without, prompts + answers lose the space the prompt format puts before an
        answer (`" {answer}</s>"`): transformers' image-text-to-text pipeline cuts the decoded prompt off the decoded
        sequence, so its answers then equal `batch_decode(..., prompt_ids=...)`'s."""
        if prompt_ids is not None:
            return self.batch_decode(
                generated_outputs, prompt_ids=prompt_ids, skip_special_tokens=skip_special_tokens, **kwargs
            )
        sequences = torch.as_tensor(generated_outputs)
        texts = self.tokenizer.batch_decode(
            sequences.reshape(-1, sequences.shape[-1]), skip_special_tokens=skip_special_tokens, **kwargs
        )
        cue = self.answer_cue()
        return [_strip_after_last(text, cue) for text in texts]

    def answer_cue(self) -> str:
        """The text the default chat template puts after a user's question, right before the answer (`"\\nOut:"`
        for the authors' "pure" format)."""
        rendered = self.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": ANSWER_CUE_SENTINEL}]}], tokenize=False
        )
        return rendered.rpartition(ANSWER_CUE_SENTINEL)[2]


def _strip_after_last(text: str, cue: str) -> str:
    """`text` without the whitespace that follows the last `cue` in it."""
    head, found, tail = text.rpartition(cue)
    return head + found + tail.lstrip() if found else text


__all__ = ["MervProcessor", "MervProcessorKwargs", "PROMPT_FORMATS", "merv_chat_templates"]
