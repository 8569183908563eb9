"""Error paths: every user error reaches the user as one ``error:`` line (exit code 2), never a
traceback or a bare "Aborted."; bugs give one line and exit code 1; ``--debug`` shows the
traceback. Also: data-file errors name the file, help is readable at 80 columns, ``--download``.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import cifar10_tree, idx_bytes, md5, mnist_files, write_mnist, write_pickle
from torch import nn
from typer.main import get_command
from typer.testing import CliRunner

import robustact.cli.evaluate as cli_module
import robustact.data.mnist as mnist_mod
from robustact.attacks import PGD, verify
from robustact.attacks.registry import available_attacks
from robustact.checkpoint import save_checkpoint
from robustact.cli import app
from robustact.core.validate import check_positive_int, match_model_dtype
from robustact.data import DataFormatError, load_cifar10, load_mnist
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.train import TrainConfig, Trainer, TrainingDivergedError, load_checkpoint

runner = CliRunner()


def one_error_line(res: object, *needles: str, code: int = 2) -> str:
    """Assert the run ended with exactly one non-empty output line, ``error: ...``."""
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == code, out  # type: ignore[attr-defined]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    assert "Traceback" not in out and "Aborted" not in out
    for needle in needles:
        assert needle in lines[0], out
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("errs") / "m"
    res = runner.invoke(app, ["train", "--model", "smallcnn", "--dataset", "digits",
                              "--epochs", "1", "--optimizer", "adam", "--lr", "0.003",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out / "final"


# --- data files ------------------------------------------------------------------------------


def corrupt_mnist(root: Path, how: str) -> Path:
    write_mnist(root)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    if how == "truncated":  # a cut-off download: the gzip stream ends early (EOFError)
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif how == "magic":  # valid gzip, but not an IDX file
        path.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + bytes(100)))
    elif how == "dims":  # an IDX file of the wrong image size
        path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 20, 20), np.uint8))))
    return path


def corrupt_cifar(root: Path, how: str) -> Path:
    cifar10_tree(root)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    if how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif how == "no images":
        write_pickle(path, {"data": np.zeros((0, 3072), np.uint8), "labels": []}, 4)
    elif how == "not a dict":
        write_pickle(path, [1, 2, 3], 2)
    elif how == "label range":  # label 10 with 10 class names
        write_pickle(path, {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, 2)
        path = path.parent
    return path


@pytest.mark.parametrize("dataset, how, needle", [
    ("mnist", "truncated", "truncated"), ("mnist", "random", "gzip"),
    ("mnist", "magic", "magic"), ("mnist", "dims", "28, 28"),
    ("cifar10", "empty", "is empty"), ("cifar10", "random", "corrupted"),
    ("cifar10", "truncated", "truncated"), ("cifar10", "no images", "N >= 1"),
    ("cifar10", "not a dict", "dict"), ("cifar10", "label range", "disagree"),
])
def test_corrupt_data_file_is_one_error_naming_it(tmp_path: Path, dataset: str, how: str,
                                                  needle: str) -> None:
    corrupt, load = {"mnist": (corrupt_mnist, load_mnist),
                     "cifar10": (corrupt_cifar, load_cifar10)}[dataset]
    path = corrupt(tmp_path, how)
    with pytest.raises(DataFormatError, match=needle) as err:
        load("train", root=tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    res = runner.invoke(app, ["train", "--dataset", dataset, "--model", "smallcnn",
                              "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                              "--no-progress"])
    one_error_line(res, str(path), needle)


def test_missing_data_advice_names_the_download_flag_and_root(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--dataset", "mnist", "--data-root", str(tmp_path),
                              "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.startswith("error: MNIST (train split) not found")
    fix = next(ln for ln in res.output.splitlines() if "fix:" in ln)
    assert "--download" in fix and str(tmp_path) in fix
    for command in ("train", "eval", "attack", "tune-jump", "retrofit"):
        help_text = runner.invoke(app, [command, "--help"], terminal_width=80).output
        assert "--download" in help_text, command


def test_download_flag_fetches_missing_mnist(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    files = {  # 40 training and 10 test images: enough for a stratified validation split
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (40, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.arange(40, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (10, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.arange(10, dtype=np.uint8)),
    }
    assert set(files) == set(mnist_files())
    for name, raw in files.items():
        data = gzip.compress(raw)
        (mirror / name).write_bytes(data)
        monkeypatch.setitem(mnist_mod.MNIST_MD5, name, md5(data))
    monkeypatch.setattr(mnist_mod, "MNIST_MIRRORS", (mirror.as_uri() + "/",))
    root = tmp_path / "data"
    res = runner.invoke(app, ["train", "--dataset", "mnist", "--model", "smallcnn",
                              "--epochs", "1", "--batch-size", "16", "--data-root", str(root),
                              "--download", "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(files)


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["--n", "-5"], ("n must be a positive integer", "-5")),
    (["--n", "0"], ("n must be a positive integer", "0")),
    (["--batch-size", "0"], ("batch_size must be a positive integer",)),
])
def test_attack_counts_are_checked(trained: Path, tmp_path: Path, args: list[str],
                                   needles: tuple[str, ...]) -> None:
    res = runner.invoke(app, ["attack", "--model", str(trained), "--eps", "0.1", *args,
                              "--out", str(tmp_path / "a"), "--no-progress"])
    one_error_line(res, *needles)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_is_checked(trained: Path, limit: str) -> None:
    res = runner.invoke(app, ["eval", "--model", str(trained), "--limit", limit])
    one_error_line(res, "limit must be a positive integer")


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--epochs", "-1"], "epochs must be a positive integer"),
    (["--milestones", "3,x"], "--milestones expects comma-separated int"),
])
def test_train_arguments_name_the_option_not_internals(tmp_path: Path, args: list[str],
                                                       needle: str) -> None:
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model", "smallcnn", *args,
                              "--out", str(tmp_path / "o"), "--no-progress"])
    line = one_error_line(res, needle)
    assert "TrainConfig" not in line


def test_tune_jump_grid_is_checked(trained: Path) -> None:
    res = runner.invoke(app, ["tune-jump", "--model", str(trained), "--grid", "0,a"])
    one_error_line(res, "--grid expects comma-separated float")


def test_usage_errors_are_one_line_too() -> None:
    one_error_line(runner.invoke(app, ["train", "--epoch", "3"]), "--epoch", "--help")
    one_error_line(runner.invoke(app, ["trian"]), "No such command", "train")
    one_error_line(runner.invoke(app, ["eval"]), "--model")


def test_check_positive_int() -> None:
    assert check_positive_int(3, "n") == 3
    assert check_positive_int(np.int64(2), "n") == 2
    assert check_positive_int(0, "n", allow_zero=True) == 0
    for bad in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="n must be a"):
            check_positive_int(bad, "n")


# --- the error path itself -------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError("boom\nsecond line"), EOFError("cut"),
                                 KeyError("k")])
def test_unexpected_errors_are_one_line_with_the_debug_hint(
        trained: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def broken(*a: object, **k: object) -> None:
        raise exc

    monkeypatch.setattr(cli_module, "clean_accuracy", broken)  # the name the CLI calls
    res = runner.invoke(app, ["eval", "--model", str(trained)])
    line = one_error_line(res, type(exc).__name__, "--debug", code=1)
    assert "second line" not in line
    res = runner.invoke(app, ["--debug", "eval", "--model", str(trained)])
    assert res.exit_code == 1 and "Traceback" in res.output and "in broken" in res.output
    assert res.output.rstrip().splitlines()[-1] == line  # same error line, same exit code


def test_debug_shows_user_errors_too(trained: Path) -> None:
    res = runner.invoke(app, ["--debug", "eval", "--model", str(trained), "--limit", "0"])
    assert res.exit_code == 2 and "Traceback" in res.output
    assert "check_positive_int" in res.output
    assert res.output.rstrip().splitlines()[-1].startswith("error: limit must be")


# --- help at 80 columns ----------------------------------------------------------------------


def test_help_is_readable_at_80_columns() -> None:
    group = get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert {"train", "eval", "attack", "tune-jump", "retrofit", "demo"} <= set(commands)
    for name, command in commands.items():
        res = runner.invoke(app, [name, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        words = {w.rstrip(",") for w in res.output.split()}  # "-n, --n" lists both
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                assert opt in words, f"{name}: {opt} missing or cut\n{res.output}"
        assert max(len(ln) for ln in res.output.splitlines()) <= 80, res.output


def test_attack_help_lists_the_registry() -> None:
    res = runner.invoke(app, ["attack", "--help"], terminal_width=80)
    text = " ".join(res.output.split())
    assert " | ".join(available_attacks()) in text


# --- training that diverges ------------------------------------------------------------------


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    x = torch.rand(64, 1, 8, 8)
    y = torch.arange(64) % 10
    model = create_model("smallcnn", dataset="digits", num_classes=10)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, optimizer="adam", schedule="constant",
                      log_every=1)

    def poison_epoch_2(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, step: int):
        return (xb * math.nan if step >= 4 else xb), yb  # 4 steps per epoch

    trainer = Trainer(model, (x, y), None, cfg, out_dir=tmp_path, progress=False,
                      batch_hook=poison_epoch_2)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit()
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FloatingPointError)
    assert "\n" not in msg
    for needle in ("epoch 2", "step 1 of 4", "learning rate 0.01", "--lr", str(tmp_path)):
        assert needle in msg, msg
    last, card = load_checkpoint(tmp_path / "last")
    assert card["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in last.parameters())


def test_nan_loss_in_the_cli_is_a_user_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--dataset", "digits", "--model", "smallcnn",
                              "--epochs", "1", "--lr", "1e30", "--out", str(tmp_path / "o"),
                              "--no-progress"])
    one_error_line(res, "diverged", "epoch 1", "learning rate", "--lr")


# --- dtype and model output ------------------------------------------------------------------


class ReturnsTuple(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), x


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("smallcnn", dataset="digits", num_classes=10).eval()


def test_float64_inputs_on_a_float32_model() -> None:
    model = small_model()
    x64 = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6)
    res = PGD(eps=0.1, steps=3)(model, x64, y)
    ref = PGD(eps=0.1, steps=3)(model, x64.float(), y)
    assert res.x_adv.dtype == torch.float32
    assert torch.equal(res.x_adv, ref.x_adv)  # the cast is all that differs
    assert verify(model, x64, y, res).mismatch == 0
    assert accuracy(model, (x64, y)) == accuracy(model, (x64.float(), y))
    assert match_model_dtype(model, x64).dtype == torch.float32


def test_model_returning_a_tuple_is_one_clear_error() -> None:
    model = ReturnsTuple(small_model()).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    for call in (lambda: PGD(eps=0.1, steps=2)(model, x, y),
                 lambda: PGD(eps=0.0, steps=1)(model, x, y),
                 lambda: accuracy(model, (x, y)),
                 lambda: verify(model, x, y, x)):
        with pytest.raises(TypeError, match=r"must be a logits tensor .*got tuple"):
            call()



def test_checkpoint_without_its_dataset_asks_for_dataset(tmp_path: Path) -> None:
    """A checkpoint saved by hand (no ``data`` in its card): one line naming --dataset."""
    model = create_model("smallcnn", dataset="digits").eval()
    save_checkpoint(tmp_path / "bare", model)
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "bare")])
    one_error_line(res, "does not record its dataset", "--dataset")
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "bare"), "--dataset", "digits"])
    assert res.exit_code == 0, res.output
