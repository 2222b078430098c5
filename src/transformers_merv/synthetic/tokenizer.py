"""A small Llama-style BPE tokenizer for the synthetic video QA language, built with `tokenizers`.

Like Llama's SentencePiece tokenizer it marks word starts with "▁" (so an answer generated after `"...\\nOut:"` is
the same token as the answer tokenized on its own), falls back to bytes for any character it has not seen (nothing is
ever lost to `<unk>`), prepends BOS and appends no EOS. Words never merge across spaces or punctuation, so with the
default vocabulary every word of the synthetic data, in particular every answer, is a single token.

Ids: `<unk>` 0, `<s>` 1, `</s>` 2, `<PAD>` 3, `<video>` 4, then the 256 byte tokens `<0x00>`..`<0xFF>`, then the learnt
pieces.
"""

import json
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .video_qa import ANSWER_VOCABULARY


UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, VIDEO_TOKEN = "<unk>", "<s>", "</s>", "<PAD>", "<video>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, VIDEO_TOKEN)
UNK_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, VIDEO_TOKEN_ID = range(len(SPECIAL_TOKENS))
NUM_BYTES = 256
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(NUM_BYTES))
WORD_START = "▁"
DEFAULT_VOCAB_SIZE = 512
"""Special and byte tokens take 261 ids; the rest leaves room to merge every word of the synthetic data whole."""
MODEL_MAX_LENGTH = 2048
"""The authors' `llm_max_length`."""
PROMPT_FORMAT = "In: {question}\nOut:"
"""The authors' "pure" prompt around each user turn; assistant turns follow as `" {answer}</s>"`."""


def conversation_texts(records: Iterable[dict]) -> Iterator[str]:
    """Texts of Video-LLaVA records as the model reads them: gpt turns as they are, human turns in `PROMPT_FORMAT`
    twice, as the authors train (with the `<video>` placeholder in the text) and evaluate (without it)."""
    for record in records:
        for turn in record["conversations"]:
            if turn["from"] != "human":
                yield turn["value"]
                continue
            yield PROMPT_FORMAT.format(question=turn["value"])
            yield PROMPT_FORMAT.format(question=turn["value"].replace(VIDEO_TOKEN, "").strip())


def _backend(vocab_size: int, texts: Iterable[str]) -> Tokenizer:
    """Train BPE on `texts`, then add the byte tokens in front of the learnt pieces and turn byte fallback on."""
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    draft = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    draft.pre_tokenizer = pre_tokenizer
    draft.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size - NUM_BYTES, special_tokens=[]))
    learnt = draft.get_vocab()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for token in sorted(learnt, key=learnt.get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge) for merge in json.loads(draft.to_str())["model"]["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK_TOKEN, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.Sequence(
        [decoders.Replace(WORD_START, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return backend


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    single_token_words: Iterable[str] = ANSWER_VOCABULARY,
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on `texts` (e.g. `conversation_texts` of the training records). Its vocabulary has at most
    `vocab_size` entries: training stops early once every word of `texts` is a single piece.

    Raises `ValueError` when `vocab_size` leaves no room for learnt pieces, or when a word of `single_token_words`
    (by default every answer of the synthetic data) does not come out as a single token.
    """
    if vocab_size <= len(SPECIAL_TOKENS) + NUM_BYTES:
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS) + NUM_BYTES} special and byte tokens")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_backend(vocab_size, texts),
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[VIDEO_TOKEN],
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    split_words = [word for word in single_token_words if len(tokenizer.tokenize(word)) != 1]
    if split_words:
        raise ValueError(f"{split_words} are not single tokens; train on texts containing them or raise vocab_size")
    return tokenizer


def longest_answer_tokens(tokenizer, examples: Iterable[dict]) -> int:
    """New tokens the longest answer of Video-LLaVA `examples` takes, its `</s>` included (the "pure" template renders
    an answer as `" {answer}</s>"`)."""
    answers = [turn["value"] for example in examples for turn in example["conversations"] if turn["from"] == "gpt"]
    return max(len(tokenizer(f" {answer}", add_special_tokens=False)["input_ids"]) for answer in answers) + 1
