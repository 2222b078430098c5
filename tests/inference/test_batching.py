"""Grouping by key and cutting into batches (`transformers_merv.inference.batching`)."""

import pytest

from transformers_merv.inference.batching import batches, group_by


def test_groups_come_in_order_of_first_appearance_and_keep_the_items_order():
    words = ["bee", "ant", "bat", "cow", "asp", "cat"]
    assert group_by(words, key=lambda word: word[0]) == [["bee", "bat"], ["ant", "asp"], ["cow", "cat"]]
    assert group_by(range(5), key=lambda index: index % 2) == [[0, 2, 4], [1, 3]]
    assert group_by([], key=len) == []


def test_batches_are_consecutive_and_only_the_last_is_shorter():
    assert batches("abcdefg", 3) == ["abc", "def", "g"]
    assert batches([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]
    assert batches([1, 2], 5) == [[1, 2]]
    assert batches((), 2) == []


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_an_error(size):
    with pytest.raises(ValueError, match=f"batch size must be >= 1, got {size}"):
        batches([1, 2], size)
