"""Training in several processes: `examples/train.py` under `torchrun` (DDP through transformers' `Trainer`, gloo on
the CPU) trains the same parameters as one process that sees the same examples in each optimizer step, from the videos
and from a feature store (`--features`)."""

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from transformers_merv import MervForConditionalGeneration
from transformers_merv.inference.feature_store import FeatureStore

from conftest import EXAMPLES, build_store, script_args


STEPS = 3
LEARNING_RATE = 1e-3
GLOBAL_BATCH = 2
RECIPE = (
    "--stage", "finetune", "--use_cpu", "--bf16", "false", "--max_steps", str(STEPS),
    "--learning_rate", str(LEARNING_RATE), "--lr_scheduler_type", "constant", "--warmup_steps", "0",
    "--global_batch_size", str(GLOBAL_BATCH), "--dataloader_num_workers", "0", "--save_strategy", "no",
    "--disable_tqdm", "true", "--log_level", "info",
)  # fmt: skip
"""The finetune recipe (AdamW, weight decay 0.1, clipping at 1, activation checkpointing), float32, with a constant
learning rate so that every step moves the parameters (about `LEARNING_RATE` per step: Adam's steps are normalised).
`--global_batch_size` sets the accumulation to `GLOBAL_BATCH / (per-device batch x processes)`."""
ATOL = 1e-6
"""How far parameters trained from the same examples may lie apart after `STEPS` steps. Splitting the step's batch into
two one-example micro-batches (gradient accumulation, one process) changes only the float32 summation order (and
drops the padding); it moves the parameters by up to 1.6e-7, about one float32 unit at their values (1e-7 to 1e-6),
measured with torch 2.13 on the CPU; DDP on 2 processes moves them by the same 1.6e-7, ZeRO-3 (which reduces and
steps flattened partitions) by 7.6e-7. From a feature store, DDP lies the same 1.6e-7 from one process training
from the store, and exactly on DDP training from the videos. A step with other examples moves them by about 6e-3
(measured: another seed's data order, or DDP averaging per-process mean losses instead of the token-weighted mean,
`--average_tokens_across_devices false`)."""
ZERO_GRADIENT = ("model.fusion.key_proj.bias",)
"""Parameters whose gradient is zero in exact arithmetic: the query fusion's key bias adds the same `q . b` to every
key's score, which its softmax cancels. Their float32 gradients are rounding noise (about 1e-10), which Adam's
normalisation (epsilon 1e-8) turns into updates of about 1e-5 that differ with any summation order, the
one-process micro-batches' included; they are checked to stay that small instead of being compared."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_config(example: str, folder: Path) -> Path:
    """`examples/<example>` for 2 processes on the CPU in float32; everything else as shipped."""
    config = yaml.safe_load((EXAMPLES / example).read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    path = folder / example
    path.write_text(yaml.safe_dump(config))
    return path


def launch(launcher: str, folder: Path) -> list[str]:
    """The command that starts `examples/train.py`: one process (`python`), two DDP processes (`torchrun`), or two
    processes with `examples/accelerate_deepspeed.yaml` (`deepspeed`)."""
    script, port = str(EXAMPLES / "train.py"), str(free_port())
    if launcher == "python":
        return [sys.executable, script]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", port, script]  # fmt: skip
    config = accelerate_config(f"accelerate_{launcher}.yaml", folder)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_ip", "127.0.0.1", "--main_process_port", port, script]  # fmt: skip


@pytest.fixture(scope="module")
def store(model_dir, media_root, tmp_path_factory) -> FeatureStore:
    """The frozen features of `media_root`'s videos (`build_store`), computed on one thread as the training processes
    compute them live, so that training from the store differs from training from the videos only in where the
    features come from (the store's features computed on 2 threads move the trained parameters by up to 8.8e-7:
    the towers' float32 summation order, which Adam's normalisation amplifies where a gradient is small)."""
    return build_store(model_dir, media_root, tmp_path_factory.mktemp("store"), num_threads=1)


def trained_parameters(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint in `folder` as `from_pretrained` loads it (ZeRO-3 saves the module names, which it maps)."""
    return MervForConditionalGeneration.from_pretrained(folder).state_dict()


TrainRun = Callable[..., dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def train(model_dir, media_root, tmp_path_factory) -> TrainRun:
    """`train(launcher, per_device_batch, *extra_args)`: the parameters `examples/train.py` saves after `STEPS`
    steps of `GLOBAL_BATCH` examples (`RECIPE`), started by `launch(launcher)`; each run once per module. One thread
    per process, as `torchrun` sets for several, so that the runs differ only in how the batch is split."""
    runs = {}

    def run(launcher: str, per_device_batch: int, *extra: str) -> dict[str, torch.Tensor]:
        key = (launcher, per_device_batch, *extra)
        if key not in runs:
            output_dir = tmp_path_factory.mktemp(f"{launcher}-{per_device_batch}")
            argv = script_args(model_dir, media_root, output_dir / "model", *RECIPE)
            argv += ["--per_device_train_batch_size", str(per_device_batch), *extra]
            result = subprocess.run(
                launch(launcher, output_dir) + argv,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=240,
            )
            assert result.returncode == 0, result.stdout[-4000:]
            assert f"(w. parallel, distributed & accumulation) = {GLOBAL_BATCH}" in result.stdout  # Trainer's log
            assert ("Videos from the feature store" in result.stdout) == ("--features" in extra)  # train.py's log
            runs[key] = trained_parameters(output_dir / "model")
        return runs[key]

    return run


def assert_same_training(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> None:
    """Every parameter within `ATOL` of `expected`, but those of `ZERO_GRADIENT`, which must have moved less than
    1/20 of the others' largest update in both runs."""
    assert actual.keys() == expected.keys() == initial.keys()
    largest_update = max((expected[name] - initial[name]).abs().max() for name in expected)
    assert largest_update > 0.5 * LEARNING_RATE * STEPS  # the comparison is of trained parameters
    for name in expected:
        if name in ZERO_GRADIENT:
            for run in (actual, expected):
                assert (run[name] - initial[name]).abs().max() < largest_update / 20, name
        else:
            torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")


SPLITS = {"accumulation": ("python", 1), "ddp": ("torchrun", 1), "deepspeed": ("deepspeed", 1)}
"""How the runs compared with one process taking the whole batch split it: one process accumulating two
micro-batches of one example; two DDP processes of one example each; two ZeRO-3 processes
(`examples/accelerate_deepspeed.yaml`; marker `deepspeed`, deselected by default and run by CI suite
`.ci/suites/35-deepspeed.sh`, which installs DeepSpeed)."""


def case(data: str, split: str):
    marks = [pytest.mark.deepspeed] if split == "deepspeed" else []
    return pytest.param(data, SPLITS[split], id=f"{data}-{split}", marks=marks)


@pytest.fixture()
def data_args(request) -> tuple[str, ...]:
    """What the model trains from, as extra arguments of `examples/train.py`: the videos, decoded as it trains, or
    their frozen features from the module's feature store (`--features`, `build_store`)."""
    if request.param == "store":
        return ("--features", str(request.getfixturevalue("store").path))
    return ()


@pytest.mark.parametrize(
    ("data_args", "split"),
    [*(case("videos", split) for split in SPLITS), case("store", "ddp"), case("store", "deepspeed")],
    indirect=["data_args"],
)
def test_a_split_step_trains_the_parameters_of_the_whole_batch(train, model_dir, data_args, split):
    """Trainer shards the (seeded, shuffled) batches over the processes: at each step the two processes' examples
    are the one-process batch's, and the averaged gradient is its gradient (the loss is averaged over the tokens of
    all processes). No dropout (every dropout probability of the tiny model is 0) makes the processes differ. From
    the store, every process reads the features of its own examples (gradient accumulation from the store is one
    process's batching, which tests/training/test_training.py compares with live training)."""
    initial = trained_parameters(model_dir)
    model = MervForConditionalGeneration.from_pretrained(model_dir)
    assert not any(module.p for module in model.modules() if isinstance(module, torch.nn.Dropout))
    whole_batch = train("python", GLOBAL_BATCH, *data_args)
    assert_same_training(train(*split, *data_args), whole_batch, initial)


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("deepspeed", marks=pytest.mark.deepspeed)])
def test_several_processes_train_the_same_parameters_from_the_store_as_from_the_videos(
    train, model_dir, store, launcher
):
    """The store holds each video's frozen features as a training process computes them live (one video at a time,
    on one thread), so the same split trained from the store gives the parameters of training from the videos
    (measured: identical under DDP), and a store whose features reached the wrong examples would move them by about
    6e-3 (`ATOL`)."""
    initial = trained_parameters(model_dir)
    assert_same_training(train(launcher, 1, "--features", str(store.path)), train(launcher, 1), initial)


def test_the_comparison_tells_which_examples_each_step_holds(train):
    """Another seed shuffles the data otherwise: parameters trained on other examples per step lie far outside
    `ATOL` of the first run's, so a process that trained on other examples than its share would be caught."""
    whole_batch, reshuffled = train("python", GLOBAL_BATCH), train("python", GLOBAL_BATCH, "--seed", "8")
    difference = max((reshuffled[name] - whole_batch[name]).abs().max() for name in whole_batch)
    assert difference > 1000 * ATOL
