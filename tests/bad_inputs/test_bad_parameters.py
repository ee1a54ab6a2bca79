"""Bad parameter files: each is refused before any work with one paragraph naming the key and the fix."""

from __future__ import annotations

import pytest
import torch

from harness import assert_refused, run_cli, tree_hashes


def refused_before_work(output_root, work_spy, *argv, named):
    """`nextpoi run ARGV --output-root OUTPUT_ROOT` is refused naming `named`, and the output root is unchanged."""
    before = tree_hashes(output_root)
    result = run_cli("run", *argv, "--output-root", output_root)
    message = assert_refused(result, *named, spy=work_spy)
    assert tree_hashes(output_root) == before
    return message


# One file experiment.yaml holding the text (None: no file at all); the texts the message must name.
CASES = {
    "missing file": (None, ["does not exist", "nosuch.yaml"]),
    "unknown key": ("training: {epoch: 3}\n", ["training.epoch", "Did you mean 'epochs'"]),
    "bad choice": ("loss: {name: focall}\n", ["loss.name='focall'", "'focal'"]),
    "number as text": ("optimizer: {learning_rate: 1e-3}\n", ["optimizer.learning_rate", "1.0e-3"]),
    "unknown model": ("model: {name: cnn}\n", ["model.name='cnn'", "transformer"]),
    # Values YAML reads as infinity or not-a-number.
    "infinite max_lr": ("scheduler: {max_lr: .inf}\n", ["scheduler.max_lr=inf", "must be a finite number"]),
    "minus infinite weight decay": ("optimizer: {weight_decay: -.inf}\n",
                                    ["optimizer.weight_decay=-inf", "must be a finite number"]),
    "nan dropout": ("model: {dropout: .nan}\n", ["model.dropout=nan", "must be a finite number"]),
    "infinite trees learning rate": ("model: {name: gradient_boosting}\ntrees: {learning_rate: .Inf}\n",
                                     ["trees.learning_rate=inf", "finite"]),
    # Ranges that used to end in a traceback (or, for markov_order 0, silently meant the whole window).
    "markov order 0": ("model: {name: markov, markov_order: 0}\n", ["model.markov_order=0", "must be >= 1"]),
    "model_dim 0": ("model: {model_dim: 0}\n", ["model.model_dim=0", "must be >= 1"]),
    "hidden_dim 0": ("model: {name: gru, hidden_dim: 0}\n", ["model.hidden_dim=0", "must be >= 1"]),
    "feedforward_dim 0": ("model: {feedforward_dim: 0}\n", ["model.feedforward_dim=0", "must be >= 1"]),
    "category embedding 0": ("windows: {features: [embedding, category]}\nmodel: {category_embedding_dim: 0}\n",
                             ["model.category_embedding_dim=0", "must be >= 1"]),
    "trees max_iter 0": ("model: {name: gradient_boosting}\ntrees: {max_iter: 0}\n",
                         ["trees.max_iter=0", "must be >= 1"]),
    "trees learning rate 0": ("model: {name: gradient_boosting}\ntrees: {learning_rate: 0.0}\n",
                              ["trees.learning_rate=0.0", "must be > 0"]),
    "embeddings learning rate negative": ("embeddings: {learning_rate: -0.001}\n",
                                          ["embeddings.learning_rate=-0.001", "must be > 0"]),
    "negative fold seed": ("folds: {seed: -1}\n", ["folds.seed=-1", "must be >= 0"]),
    # A key given twice: YAML would silently keep the last one.
    "section twice": ("training: {epochs: 3}\nmodel: {name: gru}\ntraining: {batch_size: 8}\n",
                      ["experiment.yaml", "line 3", "'training'", "given twice", "first on line 1", "merge"]),
    "key twice": ("training:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n",
                  ["experiment.yaml", "line 4", "'training.epochs'", "given twice", "first on line 2"]),
    # A file with no settings would start a full run with the library defaults.
    "empty file": ("", ["experiment.yaml", "holds no settings", "library defaults", "extends:"]),
    "only comments": ("# TODO: fill in\n\n# later\n", ["experiment.yaml", "holds no settings", "extends:"]),
    # Names that become folders.
    "run name climbs out": ("name: ../../x\n", ["name='../../x'", "one folder name of letters, digits"]),
    "run name with a slash": ("name: a/b\n", ["name='a/b'", "no '/'"]),
    "run name with odd characters": ("name: '*?:<>|'\n", ["name='*?:<>|'", "letters, digits, '.', '_' and '-'"]),
    "run name with a newline": ('name: "run\\nname"\n', ["name='run\\nname'", "one folder name"]),
    "run name of spaces": ("name: '   '\n", ["name='   '", "one folder name"]),
    "run name of dots": ("name: '..'\n", ["name='..'", "not starting with '.'"]),
    "dataset name climbs out": ("dataset: {name: ../../elsewhere}\n",
                                ["dataset.name='../../elsewhere'", "one folder name"]),
    "unsafe data file stem": ("dataset: {source: checkins, path: 'my checkins?.csv'}\n",
                              ["'my checkins?'", "set dataset.name"]),
    "extends itself": ("extends: experiment.yaml\nmodel: {name: gru}\n",
                       ["cycle", "experiment.yaml extends", "Remove one"]),
    "extends a missing file": ("extends: ../bases/nosuch.yaml\nmodel: {name: gru}\n",
                               ["experiment.yaml", "extends '../bases/nosuch.yaml'", "resolves to",
                                "not to the current folder"]),
    "device name": ("training: {device: gpu0}\n", ["training.device='gpu0'", "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_parameter_file_is_refused_before_work(case, tmp_path, output_root, work_spy):
    text, named = CASES[case]
    path = tmp_path / "nosuch.yaml"
    if text is not None:
        path = tmp_path / "experiment.yaml"
        path.write_text(text)
    refused_before_work(output_root, work_spy, path, named=named)


# Several files: {relative path: text}, the file given to `nextpoi run`, and the texts the message must name.
FILE_CASES = {
    "two files extend each other": (
        {"a.yaml": "extends: b.yaml\ntraining: {epochs: 3}\n", "b.yaml": "extends: a.yaml\nmodel: {name: gru}\n"},
        "a.yaml", ["cycle", "a.yaml extends", "b.yaml extends", "Remove one"]),
    "three files in a cycle": (
        {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: [c.yaml]\nmodel: {name: gru}\n",
         "c.yaml": "extends: a.yaml\ntraining: {epochs: 2}\n"},
        "a.yaml", ["cycle", "b.yaml extends", "c.yaml extends"]),
    "missing extends in a sub-folder": (
        {"experiments/child.yaml": "extends: base.yaml\nmodel: {name: gru}\n", "base.yaml": "training: {epochs: 2}\n"},
        "experiments/child.yaml",
        ["child.yaml", "extends 'base.yaml'", "experiments/base.yaml", "relative to the folder of child.yaml"]),
    "a base with a key twice": (
        {"child.yaml": "extends: base.yaml\nmodel: {name: gru}\n",
         "base.yaml": "# base\ntraining: {epochs: 2}\nloss: {name: focal}\nloss: {name: cross_entropy}\n"},
        "child.yaml", ["base.yaml", "line 4", "'loss'", "given twice"]),
    "an empty base": ({"child.yaml": "extends: base.yaml\nmodel: {name: gru}\n", "base.yaml": "\n"},
                      "child.yaml", ["base.yaml", "holds no settings"]),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file_structure_is_refused_before_work(case, tmp_path, output_root, work_spy):
    files, main, named = FILE_CASES[case]
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    message = refused_before_work(output_root, work_spy, tmp_path / main, named=named)
    assert "RecursionError" not in message


def test_a_later_file_with_no_settings_is_refused_too(tmp_path, output_root, work_spy):
    good = tmp_path / "good.yaml"
    good.write_text("model: {name: gru}\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    refused_before_work(output_root, work_spy, good, empty, named=["empty.yaml", "holds no settings"])


def test_a_cuda_device_this_machine_lacks_is_refused_before_work(tmp_path, output_root, work_spy):
    """The real check: `cuda` without a GPU, or one GPU number beyond those PyTorch sees."""
    path = tmp_path / "experiment.yaml"
    path.write_text("model: {name: gru}\n")
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    refused_before_work(output_root, work_spy, path, "--device", device,
                        named=[f"training.device='{device}'", "auto", "cpu"])
    path.write_text(f"model: {{name: gru}}\ntraining: {{device: '{device}'}}\n")
    refused_before_work(output_root, work_spy, path, named=[f"training.device='{device}'", "auto"])


@pytest.mark.parametrize("available, count, device, named", [
    (False, 0, "cuda", ["training.device='cuda'", "sees none", "training.device: auto", "or cpu"]),
    (False, 0, "cuda:0", ["training.device='cuda:0'", "sees none"]),
    (True, 2, "cuda:2", ["training.device='cuda:2'", "GPU number 2", "sees 2 CUDA GPUs", "auto or cpu"]),
    (True, 1, "cuda:5", ["training.device='cuda:5'", "sees 1 CUDA GPU (cuda:0)"]),
])
def test_an_absent_gpu_is_refused_before_work(available, count, device, named, monkeypatch, tmp_path, output_root,
                                              work_spy):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    path = tmp_path / "experiment.yaml"
    path.write_text("model: {name: gru}\n")
    refused_before_work(output_root, work_spy, path, "--device", device, named=named)
