"""Visual tokens from a feature store (`inference.video_features`): equal to the live ones (the default model and a
converted fixture, the store built in one batch), clip windows in the key, videos missing from the store encoded live
and added with a writer (once, however often asked for), unreadable videos recorded and refused with their error,
and stores of other settings refused."""

import os
import shutil
from unittest import mock

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from transformers_merv import MervVideoProcessor, default_model_path
from transformers_merv.inference.feature_store import FeatureStore, FeatureStoreMismatchError, feature_fingerprint
from transformers_merv.inference.prefix_cache import process_video
from transformers_merv.inference.video_features import (
    LiveVideoFeatures,
    RecordedFailure,
    StoreCounts,
    StoredVideoFeatures,
    open_video_features,
)
from transformers_merv.video_io import clip_window

from conftest import EXAMPLE_VIDEO, MEDIA, build_feature_store

VIDEOS = [EXAMPLE_VIDEO, MEDIA / "flipping_a_pancake.mkv", MEDIA / "video_0.mov"]
BROKEN = MEDIA / "corrupted.mp4"
WINDOW = clip_window(clip_start_sec=0.25, clip_end_sec=1.0)
EPS = torch.finfo(torch.float32).eps
BATCHED_ENCODER_ULPS = 2
"""How far fused tokens from features encoded in a batch of videos may lie from those of one video alone, in float32
units at the largest value (`eps * max|tokens|`): DINOv2's and ViViT's matrix products round otherwise in a batch
(the converted fixture: 1.2 units; the default model: none)."""


@pytest.fixture(scope="module", params=["default-model", "converted-fixture"])
def loaded(request):
    folder = default_model_path() if request.param == "default-model" else request.getfixturevalue("converted_full")
    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _counting_decodes():
    """Counts the video processor's calls (each decodes a video)."""
    return mock.patch.object(
        MervVideoProcessor, "preprocess", autospec=True, side_effect=MervVideoProcessor.preprocess
    )


def _live(model, processor, video, window=None) -> torch.Tensor:
    live = LiveVideoFeatures(model, processor)
    return live.features([live.load(video, window)]).pooler_output


def test_stored_features_give_the_live_visual_tokens(loaded, tmp_path):
    model, processor = loaded
    assert model.dtype == torch.float32
    one_by_one = tmp_path / "one-by-one"
    for video in VIDEOS:
        build_feature_store(one_by_one, model, processor, [video])
    batched = build_feature_store(tmp_path / "batched", model, processor, VIDEOS)  # the encoders ran on a batch of 3
    live = torch.cat([_live(model, processor, video) for video in VIDEOS])
    for store in (FeatureStore.open(one_by_one), batched):
        source = StoredVideoFeatures.checked(model, processor, store)
        stored = source.features([source.load(video) for video in VIDEOS]).pooler_output
        assert source.counts == StoreCounts(read=len(VIDEOS))
        if store is batched:  # a batch of videos may round the encoders' sums otherwise
            torch.testing.assert_close(stored, live, rtol=0, atol=BATCHED_ENCODER_ULPS * EPS * live.abs().max().item())
        else:  # the same operations on the same inputs
            assert torch.equal(stored, live)


def test_the_clip_window_is_part_of_the_key(shipped, tmp_path):
    model, processor = shipped
    store = build_feature_store(tmp_path / "store", model, processor, VIDEOS[:1], WINDOW)
    source = StoredVideoFeatures.checked(model, processor, store)
    windowed = source.features([source.load(VIDEOS[0], WINDOW)]).pooler_output
    assert torch.equal(windowed, _live(model, processor, VIDEOS[0], WINDOW))
    assert not torch.equal(windowed, _live(model, processor, VIDEOS[0]))
    source.load(VIDEOS[0])  # the whole video is not in the store: encoded live
    assert source.counts == StoreCounts(read=1, encoded=1)


def test_missing_videos_are_encoded_live_and_added_once_with_a_writer(shipped, tmp_path):
    model, processor = shipped
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    without_writer = StoredVideoFeatures.checked(model, processor, store)
    without_writer.load(VIDEOS[0])
    assert without_writer.counts == StoreCounts(encoded=1) and len(store) == 0
    with open_video_features(model, processor, store, add=True) as source:
        with torch.no_grad(), _counting_decodes() as decodes:
            first, again = source.load(VIDEOS[0]), source.load(VIDEOS[0])  # asked for twice (per question)
        assert decodes.call_count == 1 and source.counts == StoreCounts(read=1, encoded=1, added=1)
        assert len(store) == 0  # the writer's shard is completed when the block ends
    reopened = FeatureStore.open(store.path)
    assert len(reopened) == 1 and len(list(store.path.glob("index-*.jsonl"))) == 1
    assert len((next(store.path.glob("index-*.jsonl"))).read_text().splitlines()) == 1  # written once
    stored = reopened.get(reopened.key_for(VIDEOS[0]))
    assert all(torch.equal(stored[name], first[name].cpu()) and first[name] is again[name] for name in stored)
    assert "1 videos read from it, 1 encoded live, 1 added to it, 0 recorded as unreadable" in source.report()


def test_unreadable_videos_are_recorded_and_then_refused_with_their_error(shipped, tmp_path):
    model, processor = shipped
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    with pytest.raises(ValueError) as live_error:
        process_video(processor, BROKEN)
    with open_video_features(model, processor, store, add=True) as source:
        for _ in range(2):
            with pytest.raises(ValueError, match="corrupt") as error:
                source.load(BROKEN)
    assert str(error.value) == str(live_error.value)
    reopened = FeatureStore.open(store.path)
    assert reopened.failure(reopened.key_for(BROKEN)) == str(live_error.value)
    assert len(next(store.path.glob("index-*.jsonl")).read_text().splitlines()) == 1  # recorded once
    reader = StoredVideoFeatures.checked(model, processor, reopened)
    with _counting_decodes() as decodes, pytest.raises(RecordedFailure) as recorded:
        reader.load(BROKEN)
    assert str(recorded.value) == str(live_error.value) and decodes.call_count == 0
    assert reader.counts == StoreCounts(failed=1)


def test_a_fifo_is_refused_unread_and_not_recorded(shipped, tmp_path):
    model, processor = shipped
    store = FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    os.mkfifo(tmp_path / "pipe.mp4")
    with open_video_features(model, processor, store, add=True) as source:
        with pytest.raises(ValueError, match=r"pipe\.mp4' is a FIFO \(named pipe\), not a regular file"):
            source.load(tmp_path / "pipe.mp4")  # hashing it would block until a writer came
    assert not list(store.path.glob("index-*.jsonl"))


def test_a_renamed_copy_is_found_by_its_content(shipped, tmp_path):
    model, processor = shipped
    store = build_feature_store(tmp_path / "store", model, processor, VIDEOS[:1])
    shutil.copy(VIDEOS[0], tmp_path / "renamed.mp4")
    source = StoredVideoFeatures.checked(model, processor, store)
    source.load(tmp_path / "renamed.mp4")
    assert source.counts == StoreCounts(read=1)


def test_a_store_of_another_dtype_is_refused(shipped, tmp_path):
    model, processor = shipped
    store = build_feature_store(tmp_path / "store", model, processor, VIDEOS[:1])
    half = AutoModel.from_pretrained(default_model_path(), dtype=torch.bfloat16)
    with pytest.raises(
        FeatureStoreMismatchError, match='dtype: store has "float32", this model and processor give "bf'
    ):
        StoredVideoFeatures.checked(half, processor, store)
