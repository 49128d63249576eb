"""The seams of docs/architecture.md: the data set registry is the only list of data sets (config validation,
--dataset's choices, the splits and the protocol's sizes follow it; an unknown name is one line, never MNIST), a
data set is one module plus one registry line, the exceptions cli.main prints live in errors.py, and importing
advbp or asking for its presets and help loads none of torch, matplotlib, rich or ray."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from advbp_cli.cli import cli
from advbp_cli.config import RunConfig, build_config
from advbp_cli.data.registry import dataset_names, get_dataset, register_dataset, unregister_dataset
from advbp_cli.data.splits import (ensure_dataset, idx_writable, load_raw, load_splits, recorded_image_shape,
                                    split_definition, training_count)
from advbp_cli.errors import Interrupted, UsageProblem
from advbp_cli.protocol import describe


def test_the_registry_holds_the_papers_data_sets_with_their_facts():
    assert dataset_names() == ["mnist", "cifar10"]
    mnist, cifar = get_dataset("mnist"), get_dataset("cifar10")
    assert (mnist.image_shape, mnist.features, mnist.train_size, mnist.test_size) == ((1, 28, 28), 784, 60000, 10000)
    assert (cifar.image_shape, cifar.features, cifar.train_size, cifar.test_size) == ((3, 32, 32), 3072, 50000, 10000)
    assert len(mnist.files_sha256) == 4 and len(cifar.files_sha256) == 6
    assert all(len(sha) == 64 for sha in [*mnist.files_sha256.values(), *cifar.files_sha256.values()])


@pytest.mark.parametrize("call", [get_dataset, lambda n: load_raw(n, "."), lambda n: ensure_dataset(n, ".")])
def test_an_unknown_data_set_is_refused_never_mnist(call):
    with pytest.raises(UsageProblem) as exc:
        call("svhn")
    assert str(exc.value) == "unknown data set 'svhn' (accepted: mnist, cifar10)"


@pytest.mark.parametrize("args", [["--dataset", "svhn"], ["--set", "data.dataset=svhn"]])
def test_an_unknown_data_set_on_the_command_line_is_one_line(cli, args):
    r = cli(["train", *args, "--epochs", "1"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "svhn" in lines[0], r.stderr
    assert "mnist" in lines[0] and "cifar10" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_the_dataset_choices_are_the_registry(command):
    option = next(p for p in cli.commands[command].params if p.name == "cfg__data__dataset")
    assert list(option.type.choices) == dataset_names()


def test_an_unknown_data_set_in_a_config_is_refused():
    with pytest.raises(UsageProblem, match="unknown data set 'svhn'"):
        build_config({"data": {"dataset": "svhn"}}, {}, source="preset x")


@pytest.fixture
def tiny():
    import tiny_dataset

    register_dataset(tiny_dataset.SPEC)
    yield tiny_dataset
    unregister_dataset("tiny")


def test_a_new_data_set_is_one_module_and_one_registry_line(tiny, tmp_path):
    """Config, splits, the protocol's words and a whole training run follow the registered spec."""
    from advbp_cli.rundir import RunDir
    from advbp_cli.trainer import train

    cfg = RunConfig.model_validate({
        "model": {"hidden": [8], "num_classes": 4},
        "train": {"epochs": 20, "lr": 0.5, "batch_size": 5},
        "data": {"dataset": "tiny", "eval_split": "validation"},
        "runtime": {"backend": "numpy", "dtype": "float64"},
    })
    assert cfg.model.input_size == 18  # filled in from the spec's image shape
    assert describe(cfg) == "20 epochs on all 90 training images, validation error on all 30 images"
    assert training_count(cfg.data) == 90
    assert split_definition("validation", cfg.data) == "training images 90..119 (the last 30)"
    train_split, eval_split = load_splits(cfg.data, "float64", tmp_path)
    assert np.array_equal(eval_split.indices, np.arange(90, 120)) and len(train_split.y) == 90
    with pytest.raises(UsageProblem, match="tiny has 4 classes"):
        build_config({"data": {"dataset": "tiny"}}, {})  # 10 output units for a 4-class data set

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.lock()
    try:
        summary = train(cfg, run, tmp_path, download=False)
    finally:
        run.unlock()
    assert summary["epochs_completed"] == 20 and summary["headline"]["value"] < 50  # learnt (chance: 75 %)


def test_a_registered_name_cannot_be_taken_by_another_spec(tiny):
    import dataclasses

    with pytest.raises(ValueError, match="already registered"):
        register_dataset(dataclasses.replace(tiny.SPEC, classes=5))


def test_interrupted_is_an_error_cli_main_prints():
    assert Interrupted.exit_code == 130 and UsageProblem.exit_code == 2


LAZY = ("torch", "matplotlib", "rich", "ray")


@pytest.mark.parametrize("argv", [None, ["presets"], ["presets", "--json"], ["presets", "show", "mnist-relu-2x400-adv"],
                                  ["--help"], ["train", "--help"], ["sweep", "--help"], ["report", "--help"]])
def test_import_and_presets_and_help_load_no_heavy_library(argv):
    code = ("import sys, advbp_cli\n"
            + ("" if argv is None else
               f"from advbp_cli.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass\n")
            + f"loaded = [m for m in {LAZY!r} if m in sys.modules]\n"
            "assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]


@pytest.mark.parametrize("dataset,n_file", [("mnist", 60000), ("cifar10", 50000)])
def test_the_split_words_and_training_counts_that_attack_manifests_record(dataset, n_file):
    """The registry's split words and training counts (which attack manifests and attack.training_indices use)
    are those the attack manifests recorded before the registry replaced attack.TRAIN_FILE_SIZES."""
    def data(eval_split, limit=None):
        return build_config({"data": {"dataset": dataset, "eval_split": eval_split, "train_limit": limit}}, {}).data

    assert split_definition("validation", data("test")) == f"training images {n_file - 10000}..{n_file - 1} (the last 10 000)"
    assert split_definition("test", data("test")) == "the 10 000 test images"
    assert split_definition("train", data("validation")) == f"training images 0..{n_file - 10001} (the source's training data)"
    assert split_definition("train", data("test")) == f"all {n_file} training images"
    assert training_count(data("test")) == n_file and training_count(data("validation")) == n_file - 10000
    assert training_count(data("validation", 300)) == 300
    spec = get_dataset(dataset)
    names = ([f"{b}.bin" for b in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                                   "test_batch")] if dataset == "cifar10" else
             [f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                  "t10k-labels-idx1-ubyte")])
    assert list(spec.files_sha256) == names
    assert spec.idx_image_shape == ((28, 28) if dataset == "mnist" else None)


@pytest.mark.parametrize("values,shape,idx", [
    ({"data": {"dataset": "mnist"}}, [28, 28], True),
    ({"data": {"dataset": "mnist", "preprocess": "zca"}}, [28, 28], False),
    ({"data": {"dataset": "cifar10"}}, [3, 32, 32], False),
    ({"data": {"dataset": "cifar10", "preprocess": "simple"}}, [3, 32, 32], False),
    ({"data": {"dataset": "cifar10"}, "model": {"arch": "conv", "input_shape": [3, 32, 32]}}, [3, 32, 32], False),
])
def test_the_registry_gives_the_image_shape_and_idx_rule_that_attack_manifests_use(values, shape, idx):
    """recorded_image_shape and idx_writable (which `advbp attack` uses) give what the manifests recorded before
    they replaced commands/attack's _image_shape and its IDX_SHAPES check: (28, 28) only for MNIST, IDX files only
    for MNIST scale01 runs."""
    cfg = build_config(values, {})
    assert recorded_image_shape(cfg) == shape
    assert idx_writable(cfg) == idx
