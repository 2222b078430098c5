"""The feature store's core (`inference.feature_store`): fingerprints that name what differs, content keys that never
serve a stale feature, exact round trips, flipped LanguageBind features, readers that see other writers' records, and
an index whose torn last line (a killed writer) is ignored."""

import copy
import os
import shutil
from unittest import mock

import pytest
import torch

from transformers_merv.inference.feature_store import (
    FeatureStore,
    FeatureStoreMismatchError,
    compute_frozen_features,
    feature_fingerprint,
    file_sha256,
)
from transformers_merv.inference.prefix_cache import process_video

from conftest import EXAMPLE_VIDEO


@pytest.fixture(scope="module")
def video_features(shipped):
    """The example video's pixels (processed without the flip) and its frozen features, one video."""
    model, processor = shipped
    pixels = process_video(processor, EXAMPLE_VIDEO)
    features, _ = compute_frozen_features(model, pixels)
    return pixels, {name: tensor[0] for name, tensor in features.items()}


@pytest.fixture
def video(tmp_path):
    """A copy of the example video that a test may change."""
    return shutil.copy(EXAMPLE_VIDEO, tmp_path / "clip.mp4")


def _store_with(path, shipped, video, features, dtype=None) -> tuple[FeatureStore, str]:
    model, processor = shipped
    store = FeatureStore.create(path, feature_fingerprint(model, processor, dtype or model.dtype))
    with store.writer() as writer:
        key = writer.add(video, None, features)
    return store, key


def test_a_fingerprint_mismatch_names_every_difference(shipped, tmp_path):
    model, processor = shipped
    FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.model.vision_towers["siglip"].parameters()).add_(1e-3)
    with pytest.raises(FeatureStoreMismatchError) as caught:
        FeatureStore.open(tmp_path / "store", feature_fingerprint(changed, processor, torch.bfloat16))
    message = str(caught.value)
    assert "encoders.siglip.weights: store has" in message
    assert 'dtype: store has "float32", this model and processor give "bfloat16"' in message
    assert "encoders.dinov2" not in message  # only what differs is named
    FeatureStore.open(tmp_path / "store", feature_fingerprint(model, processor))  # the same fingerprint opens


def test_get_returns_exactly_what_was_added_in_the_stored_dtype(shipped, video, video_features, tmp_path):
    _, features = video_features
    store, key = _store_with(tmp_path / "float32", shipped, video, features)
    assert set(store.get(key)) == set(features)
    assert all(torch.equal(store.get(key)[name], tensor) for name, tensor in features.items())
    half, half_key = _store_with(tmp_path / "bfloat16", shipped, video, features, torch.bfloat16)
    assert half_key == key
    assert all(torch.equal(half.get(key)[name], tensor.to(torch.bfloat16)) for name, tensor in features.items())
    assert store.get(key + "@other") is None


def test_key_for_reads_the_index_digest_of_an_unchanged_file_and_rehashes_a_changed_one(
    shipped, video, video_features, tmp_path
):
    store, key = _store_with(tmp_path / "store", shipped, video, video_features[1])
    with mock.patch("transformers_merv.inference.feature_store.file_sha256", side_effect=AssertionError("hashed")):
        assert store.key_for(video) == key  # same size and modification time: the index's digest
        assert store.key_for(video, {"end_frame": 4}) == f"{key}@end_frame=4"
    with open(video, "ab") as file:
        file.write(b"\0")
    assert store.key_for(video) == file_sha256(video) != key
    assert store.get(store.key_for(video)) is None  # the edited video's stale features are not served


def test_flipped_features_are_the_models_on_horizontally_flipped_languagebind_frames(shipped, video, tmp_path):
    model, processor = shipped
    pixels = process_video(processor, video)
    features, flipped = compute_frozen_features(model, pixels, flipped_languagebind=True)
    flipping = copy.copy(processor.video_processor)
    flipping.languagebind_random_flip = True
    with mock.patch("transformers_merv.video_processing_merv.random.random", return_value=0.0):  # always flip
        flipped_pixels = flipping([str(video)])["pixel_values_videos"]
    expected = model.model.get_frozen_video_features(flipped_pixels)
    assert torch.equal(flipped, expected["languagebind"])
    assert not torch.equal(flipped, features["languagebind"])
    store = FeatureStore.create(
        tmp_path / "store", feature_fingerprint(model, processor, model.dtype), flipped_languagebind=True
    )
    with store.writer() as writer:
        key = writer.add(video, None, {name: f[0] for name, f in features.items()}, flipped_languagebind=flipped[0])
    assert torch.equal(store.get(key, flipped=True)["languagebind"], expected["languagebind"][0])
    assert torch.equal(store.get(key, flipped=True)["dinov2"], expected["dinov2"][0])  # the other encoders' as is


def test_a_reader_sees_another_writers_records_after_refresh(shipped, video, video_features, tmp_path):
    model, processor = shipped
    reader = FeatureStore.create(tmp_path / "store", feature_fingerprint(model, processor, model.dtype))
    writing, key = _store_with(tmp_path / "store", shipped, video, video_features[1])
    assert key in writing and key not in reader
    reader.refresh()
    assert key in reader and torch.equal(reader.get(key)["vivit"], video_features[1]["vivit"])


def test_a_torn_last_index_line_is_ignored(shipped, video, video_features, tmp_path):
    store, key = _store_with(tmp_path / "store", shipped, video, video_features[1])
    (index,) = store.path.glob("index-*.jsonl")
    with open(index, "ab") as file:
        file.write(b'{"key": "0123", "source": "/killed/while/writi')
    reopened = FeatureStore.open(store.path, store.fingerprint)
    assert len(reopened) == 1 and key in reopened and "0123" not in reopened


def test_shards_get_the_mode_of_any_new_file(shipped, video, video_features, tmp_path):
    """safetensors writes 0600 files; a store shared between users must be readable as the umask allows."""
    store, _ = _store_with(tmp_path / "store", shipped, video, video_features[1])
    umask = os.umask(0)
    os.umask(umask)
    assert {shard.stat().st_mode & 0o777 for shard in store.path.glob("shard-*.safetensors")} == {0o666 & ~umask}
