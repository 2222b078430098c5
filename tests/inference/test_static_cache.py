"""A fast `generate` from the cached prefix: a static KV cache filled from the prefix and a compiled forward give
the eager greedy ids (several questions in padded batches, and chat), compiling once; the static cache's sizing and
reuse; a clear error where torch.compile cannot run."""

import pytest
import torch
from torch._inductor import config as inductor_config
from transformers import AutoModel, AutoProcessor

from transformers_merv import default_model_path
from transformers_merv.inference.prefix_cache import (
    VideoChat,
    answer_questions,
    generate_from_cache,
    prefill_video,
    prompt_ids,
    question_conversation,
)
from transformers_merv.inference.static_cache import (
    STATIC_CACHE_BUCKET,
    StaticPromptCache,
    bucketed_length,
    check_compile_support,
)

from conftest import MEDIA, PREFIX_QUESTIONS, answer_ids_from_cache

VIDEO = MEDIA / "flipping_a_pancake.mkv"
GREEDY = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
"""Full-length answers: every generated id is compared."""
QUESTIONS = [*PREFIX_QUESTIONS, "Where?", "Why is it round?"]
"""Five questions: batches of two leave a last batch of one, filled up to two rows."""
BATCH_SIZE = 2


@pytest.fixture(scope="module")
def compiled():
    """The default model (compiled once, on its first compiled `generate`), its processor and the video's prefix."""
    model = AutoModel.from_pretrained(default_model_path()).eval()
    processor = AutoProcessor.from_pretrained(default_model_path())
    return model, processor, prefill_video(model, processor, VIDEO)


def test_compiled_answers_are_the_eager_greedy_ids_and_compile_once(compiled):
    model, processor, prefix = compiled
    eager = answer_questions(model, processor, prefix, QUESTIONS, batch_size=BATCH_SIZE, **GREEDY)
    assert (
        answer_questions(model, processor, prefix, QUESTIONS, batch_size=BATCH_SIZE, compile=True, **GREEDY) == eager
    )
    assert hasattr(model, "_compiled_call")  # transformers' compiled forward ran the decoding steps
    prompts = [prompt_ids(processor, question_conversation(q), None) for q in QUESTIONS[:BATCH_SIZE]]
    static = StaticPromptCache(model)
    with torch._dynamo.config.patch(error_on_recompile=True):  # same rows and bucket: no second compilation
        output, input_ids = generate_from_cache(model, processor, prefix.prompt, prompts, static, **GREEDY)
        again = answer_questions(
            model, processor, prefix, QUESTIONS[::-1], batch_size=BATCH_SIZE, compile=True, **GREEDY
        )
    assert output.sequences[:, input_ids.shape[1] :].tolist() == answer_ids_from_cache(
        model, processor, prefix, QUESTIONS[:BATCH_SIZE], **GREEDY
    )
    assert again == eager[::-1]
    assert prefix.prompt.cache.get_seq_length() == prefix.prompt.length  # the cached prefix is left as it was


def test_compiled_chat_equals_the_eager_chat(compiled):
    model, processor, prefix = compiled
    answers = {}
    for compile in (False, True):
        chat = VideoChat(model, processor, prefix, compile=compile)
        answers[compile] = [chat.ask(question, **GREEDY) for question in QUESTIONS]
    assert answers[True] == answers[False]
    assert chat._static.cache is chat._cached.cache  # each turn went on in the previous turn's static cache


def test_the_static_cache_holds_the_prefix_in_every_row_and_grows_by_buckets(compiled):
    model, _, prefix = compiled
    static, length = StaticPromptCache(model), prefix.prompt.length - 1
    cache = static.prepare(prefix.prompt.cache, length, rows=3, total_length=length + 1)
    layer, source = cache.layers[0], prefix.prompt.cache.layers[0]
    assert layer.max_cache_len == bucketed_length(length + 1) and int(layer.cumulative_length) == length
    assert torch.equal(layer.keys[:, :, :length], source.keys[:, :, :length].expand(3, -1, -1, -1))
    assert not layer.keys[:, :, length:].any()
    assert static.prepare(prefix.prompt.cache, length, 3, length + 2) is cache  # refilled in place
    assert static.prepare(cache, length - 1, 3, length) is cache and int(layer.cumulative_length) == length - 1
    longer = static.prepare(prefix.prompt.cache, length, 3, layer.max_cache_len + 1)
    assert longer is not cache and longer.layers[0].max_cache_len == layer.max_cache_len + STATIC_CACHE_BUCKET
    assert static.prepare(prefix.prompt.cache, length, 1, length + 1).layers[0].batch_size == 1


@pytest.mark.parametrize(("tokens", "bucketed"), [(1, 256), (256, 256), (257, 512), (1300, 1536)])
def test_static_cache_lengths_are_rounded_up_to_buckets(tokens, bucketed):
    assert STATIC_CACHE_BUCKET == 256 and bucketed_length(tokens) == bucketed


def test_compiling_without_a_cpp_compiler_names_what_is_missing():
    with inductor_config.patch({"cpp.cxx": ("no-such-c++",)}):
        with pytest.raises(RuntimeError, match="torch.compile on the CPU needs a C\\+\\+ compiler.*no-such-c\\+\\+"):
            check_compile_support(torch.device("cpu"))
    check_compile_support(torch.device("cpu"))  # this machine has one
