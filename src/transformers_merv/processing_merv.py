"""Processor for MERV: tokenizer + video processor + the authors' prompt formats as chat templates."""

from collections.abc import Sequence

import torch
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .video_io import make_batched_video_inputs
from .video_processing_merv import MervBatchFeature, MervVideoProcessor


logger = logging.get_logger(__name__)

DEFAULT_NUM_VIDEO_TOKENS = 1024
ANSWER_CUE_SENTINEL = "QUESTION"
"""Stands in for a question when `MervProcessor.answer_cue` renders the chat template to find what follows it."""
DEFAULT_TEXT_KWARGS = {"padding": True, "padding_side": "left"}
"""Pad batches, on the left as generation needs; either can be overridden per call."""

MERV_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)

# Pieces shared by every template. Every video placeholder goes first, right after the BOS token the tokenizer adds:
# the authors splice the visual tokens there whatever the prompt says (`MERV.forward`). Assistant turns sit in
# `{% generation %}` blocks so that `return_assistant_tokens_mask=True` marks the tokens the authors train on.
_TEXT_OF = r"""
{%- macro text_of(message) -%}
{%- if message['content'] is string -%}{{ message['content'] }}
{%- else -%}{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\n') }}
{%- endif -%}
{%- endmacro -%}
{%- for message in messages if message['content'] is not string -%}
{%- for block in message['content'] if block['type'] == 'video' -%}{{ video_token | default('<video>') }}{%- endfor -%}
{%- endfor -%}
"""
_SYSTEM = r"""
{%- set system = DEFAULT_SYSTEM -%}
{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = text_of(messages[0]) -%}{%- endif -%}
"""
_UNKNOWN_ROLE = r"""
{%- else -%}{{- raise_exception('Unsupported role in this prompt format: ' + message['role']) -}}
{%- endif -%}
{%- endfor -%}
"""

PURE_CHAT_TEMPLATE = (
    _TEXT_OF
    + r"""
{#- PurePromptBuilder: "In: {question}\nOut:" per user turn, " {answer}</s>" per assistant turn, no system prompt -#}
{%- for message in messages -%}
{%- set text = text_of(message) | replace('<image>', '') | trim -%}
{%- if message['role'] == 'user' -%}{{- 'In: ' + text + '\nOut:' -}}
{%- elif message['role'] == 'assistant' -%}{%- generation -%}{{- ' ' + text + '</s>' -}}{%- endgeneration -%}
"""
    + _UNKNOWN_ROLE
)

VICUNA_CHAT_TEMPLATE = (
    _TEXT_OF
    + _SYSTEM.replace("DEFAULT_SYSTEM", repr(VICUNA_SYSTEM_PROMPT))
    + r"""
{#- VicunaV15ChatPromptBuilder: "{system} USER: {question} ASSISTANT:" then " {answer}</s>" -#}
{{- system | trim + ' ' -}}
{%- for message in messages if message['role'] != 'system' -%}
{%- set text = text_of(message) | replace('<image>', '') | trim -%}
{%- if message['role'] == 'user' -%}{{- 'USER: ' + text + ' ASSISTANT:' -}}
{%- elif message['role'] == 'assistant' -%}{%- generation -%}{{- ' ' + text + '</s>' -}}{%- endgeneration -%}
"""
    + _UNKNOWN_ROLE
)

LLAMA2_CHAT_TEMPLATE = (
    _TEXT_OF
    + _SYSTEM.replace("DEFAULT_SYSTEM", repr(MERV_SYSTEM_PROMPT))
    + r"""
{#- LLaMa2ChatPromptBuilder, its "<<SYS>" opening tag (one ">") included; later turns restate "<s>" -#}
{%- for message in messages if message['role'] != 'system' -%}
{%- set text = text_of(message) | replace('<image>', '') | trim -%}
{%- if message['role'] == 'user' and loop.first -%}
{{- '[INST] <<SYS>\n' + system | trim + '\n<</SYS>>\n\n' + text + ' [/INST]' -}}
{%- elif message['role'] == 'user' -%}{{- '<s>[INST] ' + text + ' [/INST]' -}}
{%- elif message['role'] == 'assistant' -%}{%- generation -%}{{- ' ' + text + '</s>' -}}{%- endgeneration -%}
"""
    + _UNKNOWN_ROLE
)

LLAMA31_CHAT_TEMPLATE = (
    _TEXT_OF
    + _SYSTEM.replace("DEFAULT_SYSTEM", repr(MERV_SYSTEM_PROMPT))
    + r"""
{#- LLaMa31PromptBuilder (messages are not stripped; the tokenizer adds <|begin_of_text|>) -#}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' -}}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'user' -%}
{{- '<|start_header_id|>user<|end_header_id|>\n\n' + text_of(message) + '<|eot_id|>' -}}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- elif message['role'] == 'assistant' -%}
{%- generation -%}{{- text_of(message) + '<|eot_id|>' -}}{%- endgeneration -%}
"""
    + _UNKNOWN_ROLE
)

QWEN2_CHAT_TEMPLATE = (
    _TEXT_OF
    + _SYSTEM.replace("DEFAULT_SYSTEM", repr(MERV_SYSTEM_PROMPT))
    + r"""
{#- Qwen2PromptBuilder (messages are not stripped; no BOS, so the video placeholders come first) -#}
{{- '<|im_start|>system\n' + system + '<|im_end|>\n' -}}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['role'] == 'user' -%}
{{- '<|im_start|>user\n' + text_of(message) + '<|im_end|>\n<|im_start|>assistant\n' -}}
{%- elif message['role'] == 'assistant' -%}
{%- generation -%}{{- text_of(message) + '<|im_end|>' -}}{%- endgeneration -%}
"""
    + _UNKNOWN_ROLE
)

MERV_CHAT_TEMPLATES = {
    "pure": PURE_CHAT_TEMPLATE,
    "vicuna": VICUNA_CHAT_TEMPLATE,
    "llama2-chat": LLAMA2_CHAT_TEMPLATE,
    "llama3.1-chat": LLAMA31_CHAT_TEMPLATE,
    "qwen2": QWEN2_CHAT_TEMPLATE,
}
"""The authors' prompt builders (`merv/models/backbones/llm/prompting/`), by the name of their LLM family suffix."""


def merv_chat_templates(default: str = "pure") -> dict[str, str]:
    """All prompt formats as named templates, `default` under the name "default" (the one `apply_chat_template`
    uses when no `chat_template` is given). The released MERV models use "pure"."""
    if default not in MERV_CHAT_TEMPLATES:
        raise ValueError(f"Unknown prompt format {default!r}; choose one of {list(MERV_CHAT_TEMPLATES)}")
    others = {name: template for name, template in MERV_CHAT_TEMPLATES.items() if name != default}
    return {"default": MERV_CHAT_TEMPLATES[default], **others}


class MervProcessor(ProcessorMixin):
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

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs) -> list:
        """Load the video processor as `MervVideoProcessor` directly: transformers' `AutoVideoProcessor` needs
        torchvision, which MERV does not use."""
        subfolder = kwargs.pop("subfolder", "")
        video_processor = MervVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [video_processor, tokenizer]

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

    def __call__(self, text: str | list[str] | None = None, videos: object = None, **kwargs) -> MervBatchFeature:
        """Tokenize `text` (each `<video>` expanded) and process `videos` (see [`MervVideoProcessor`]).

        Text kwargs (`padding`, `padding_side`, `truncation`, ...) go to the tokenizer, sampling kwargs
        (`clip_start_sec`, `clip_end_sec`, `end_frame`, `fps`) to the video processor.
        """
        user_text_kwargs = kwargs.get("text_kwargs", {})
        for key, value in DEFAULT_TEXT_KWARGS.items():
            if key not in kwargs and key not in user_text_kwargs:
                kwargs[key] = value
        outputs = super().__call__(text=text, videos=videos, **kwargs)
        return MervBatchFeature(outputs.data)

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
                f"The text has {num_markers} {self.video_token} marker(s) but {num_videos} video(s) were given; "
                "put one marker per video in the text (the chat template does this for video blocks)"
            )

    def _process_videos(self, videos: object, **kwargs) -> tuple[MervBatchFeature, list[str]]:
        processed = self.video_processor(videos, **kwargs)
        num_videos = next(iter(processed["pixel_values_videos"].values())).shape[0]
        return processed, [self.replace_video_token(processed, index) for index in range(num_videos)]

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.video_token * self.num_video_tokens

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

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decode prompts or prompts + answers without the space the prompt format puts before an answer
        (`" {answer}</s>"`): transformers' image-text-to-text pipeline cuts the decoded prompt off the decoded
        sequence, so its answers then equal `batch_decode(..., prompt_ids=...)`'s."""
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


__all__ = ["MervProcessor", "MERV_CHAT_TEMPLATES", "merv_chat_templates"]
