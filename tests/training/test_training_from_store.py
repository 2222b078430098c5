"""Training from a feature store (`examples/train.py --features STORE`): the frozen encoders' features read from the
store give the loss, gradients and parameters that encoding the videos gives, in every stage; the authors' random
LanguageBind flip draws from the stored clip and mirror image as the video processor draws; a store that lacks a
video, was built with other encoders or without the flipped features is refused before training."""

import copy
import random
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoProcessor

from transformers_merv.inference.feature_store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreMismatchError,
    compute_frozen_features,
    feature_fingerprint,
)
from transformers_merv.training import BadExampleError, MervDataCollator, set_trainable
from transformers_merv.training.run import open_feature_store
from transformers_merv.video_io import load_image

from test_training import (  # noqa: F401 (module fixtures)
    CPU_RUN,
    COLOURS,
    LORA_TEST_SETTINGS,
    LossTrainer,
    chat_dataset,
    load_model,
    lora_config,
    media_root,
    model_dir,
    one_thread,
    processor,
    script_args,
    training_arguments,
    write_json,
)


MAX_RELATIVE_DIFFERENCE = 1e-6
"""float32: the store's features are computed one video at a time, live ones a batch at a time, which changes the
towers' summation order only."""
STEPS = 4
OUTPUT_INVARIANT = {"model.fusion.key_proj.bias"}
"""Parameters that change no output, so their gradient is zero up to rounding (1e-9, measured): AdamW turns such
noise into full learning-rate steps of its sign, and they drift apart between any two runs that round differently.
`test_the_fusion_key_bias_changes_no_output` checks the invariance."""


def media_files(media_root: Path) -> list[Path]:
    """The readable media of `media_root`: its four videos and its image."""
    return [media_root / f"{name}.mp4" for name in COLOURS] + [media_root / "red.png"]


def build_store(model_dir: Path, media_root: Path, path: Path, flipped: bool = False) -> FeatureStore:
    """A float32 store of every medium of `media_root` (with the corrupted video recorded as unreadable)."""
    model, processor = load_model(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    store = FeatureStore.create(path, feature_fingerprint(model, processor, torch.float32), flipped)
    with store.writer() as writer:
        for media in media_files(media_root):
            video = load_image(media, str(media)) if media.suffix == ".png" else media
            pixels = processor.video_processor([video])["pixel_values_videos"]
            features, mirrored = compute_frozen_features(model, pixels, flipped)
            writer.add(
                media,
                None,
                {name: tensor[0] for name, tensor in features.items()},
                flipped_languagebind=None if mirrored is None else mirrored[0],
            )
        writer.add_failure(media_root / "corrupted.mp4", None, "invalid data found when processing input")
    return store


@pytest.fixture(scope="module")
def store(model_dir, media_root, tmp_path_factory) -> FeatureStore:
    return build_store(model_dir, media_root, tmp_path_factory.mktemp("store"))


def relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    return ((found - expected).norm() / expected.norm().clamp_min(torch.finfo(expected.dtype).tiny)).item()


def stage_model(model_dir: Path, stage: str) -> torch.nn.Module:
    model = load_model(model_dir)
    set_trainable(model, stage)
    torch.manual_seed(0)  # LoRA's initialisation
    return get_peft_model(model, lora_config(model, **LORA_TEST_SETTINGS)) if stage == "lora" else model


def loss_and_gradients(model: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("stage", "data", "data_format"), [("align", "caption.json", "caption"), ("finetune", "chat.json", "chat"), ("lora", "chat.json", "chat")])
def test_one_step_from_the_store_gives_the_loss_and_gradients_of_live_encoding(
    store, model_dir, media_root, processor, stage, data, data_format
):
    model = load_model(model_dir)
    shapes = model.config.frozen_feature_shapes()
    live = chat_dataset(media_root, processor, data, data_format=data_format)
    stored = chat_dataset(media_root, processor, data, data_format=data_format, feature_store=store)
    rows = range(min(len(live), 4 if data_format == "caption" else 7))
    live_batch = MervDataCollator.from_processor(processor)([live[row] for row in rows])
    stored_batch = MervDataCollator.from_processor(processor, frozen_feature_shapes=shapes)([stored[row] for row in rows])
    assert "pixel_values_videos" not in stored_batch and torch.equal(live_batch["input_ids"], stored_batch["input_ids"])
    assert torch.equal(live_batch["labels"], stored_batch["labels"])
    live_loss, live_gradients = loss_and_gradients(stage_model(model_dir, stage), live_batch)
    stored_loss, stored_gradients = loss_and_gradients(stage_model(model_dir, stage), stored_batch)
    assert abs(stored_loss - live_loss) <= MAX_RELATIVE_DIFFERENCE * abs(live_loss)
    assert live_gradients.keys() == stored_gradients.keys()
    differences = {name: relative_difference(stored_gradients[name], grad) for name, grad in live_gradients.items()}
    print(stage, max(differences.values()))
    assert max(differences.values()) <= MAX_RELATIVE_DIFFERENCE, max(differences.items(), key=lambda item: item[1])


def train(model_dir: Path, dataset, collator: MervDataCollator, output_dir: Path) -> LossTrainer:
    """`STEPS` finetuning steps of 4 examples, seeded."""
    trainer = LossTrainer(
        model=stage_model(model_dir, "finetune"),
        args=training_arguments(output_dir, max_steps=STEPS, learning_rate=1e-3),
        train_dataset=dataset,
        data_collator=collator,
    )
    trainer.train()
    return trainer


def with_random_flip(processor):
    flipping = copy.deepcopy(processor)
    flipping.video_processor.languagebind_random_flip = True
    return flipping


@pytest.mark.parametrize("random_flip", [False, True], ids=["deterministic", "random-flip"])
def test_trainer_steps_from_the_store_give_the_parameters_of_live_training(
    model_dir, media_root, processor, tmp_path, random_flip
):
    """With the random flip, the store's draws are the video processor's (same probability, one draw per video):
    under the same seed, the same clips are mirrored."""
    store = build_store(model_dir, media_root, tmp_path / "store", flipped=random_flip)
    processor = with_random_flip(processor) if random_flip else processor
    shapes = load_model(model_dir).config.frozen_feature_shapes()
    live = train(
        model_dir, chat_dataset(media_root, processor), MervDataCollator.from_processor(processor), tmp_path / "live"
    )
    stored = train(
        model_dir,
        chat_dataset(media_root, processor, feature_store=store),
        MervDataCollator.from_processor(processor, frozen_feature_shapes=shapes),
        tmp_path / "stored",
    )
    assert len(set(live.step_losses)) == STEPS
    losses = [relative_difference(torch.tensor(a), torch.tensor(b)) for a, b in zip(stored.step_losses, live.step_losses)]
    live_parameters = dict(live.model.named_parameters())
    differences = {
        name: relative_difference(parameter, live_parameters[name])
        for name, parameter in stored.model.named_parameters()
        if parameter.requires_grad and name not in OUTPUT_INVARIANT
    }
    assert max(losses) <= MAX_RELATIVE_DIFFERENCE
    assert max(differences.values()) <= MAX_RELATIVE_DIFFERENCE, max(differences.items(), key=lambda item: item[1])


def test_the_fusion_key_bias_changes_no_output(model_dir, media_root, processor):
    """Why `OUTPUT_INVARIANT` is left out of the parameter comparison: the fusion's scores are q . (W x_e + b), so the
    bias adds the same q . b to every encoder's score, which the softmax removes."""
    model = load_model(model_dir).eval()
    batch = MervDataCollator.from_processor(processor)([chat_dataset(media_root, processor)[0]])
    with torch.no_grad():
        before = model(**batch).logits
        for name in OUTPUT_INVARIANT:
            model.get_parameter(name).normal_()
        torch.testing.assert_close(model(**batch).logits, before)
