"""Plain helpers shared by several test files (fixtures live in ``conftest.py``).

Tests import this module as ``_helpers``: pytest puts ``tests/`` on ``sys.path`` (the default
``prepend`` import mode, no ``__init__.py``), as it does for ``_resume_worker``. The leading
underscore keeps the name clear of installed packages and out of test collection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from robustact.data import load_dataset

#: What to run when the test-only reference implementation is missing. torchattacks is not in
#: the ``test`` extra: its own dependency pins would pull another torch build.
TORCHATTACKS_HINT = ("torchattacks is missing ({error}); the cross-check tests need it: run "
                     "`pip install --no-deps torchattacks` (or `bash scripts/setup.sh`)")


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator with a fixed seed: test data never comes from the global RNG."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous setting.

    The tensors in these tests are tiny: on a busy 2-core machine intra-op threads cost far more
    in synchronisation than they save (measured: the attack test files take 81 s with 2 threads,
    8 s with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_weights(build: Callable[[], nn.Module], g: torch.Generator,
                   scale: float = 1.0) -> nn.Module:
    """``build()`` with every parameter redrawn as ``scale``·N(0, 1) from ``g``, in eval mode.

    The layers are built under a forked global RNG, so their default initialisation neither
    depends on nor disturbs the global state; only ``g`` decides the weights.
    """
    with torch.random.fork_rng(devices=[]):
        model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The predicted classes, without building a graph."""
    with torch.no_grad():
        return model(x).argmax(1)


def fit_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                   lr: float) -> nn.Module:
    """Adam on the cross-entropy of the whole set; returns the model in eval mode, no grads."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def prototype_data(seed: int, n: int = 160, k: int = 4, noise_seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of k random 8×8 prototypes; ``seed`` picks the task, ``noise_seed`` the draw."""
    protos = 0.2 + 0.6 * torch.rand(k, 1, 8, 8, generator=gen(seed))
    g = gen(10_000 + noise_seed)
    y = torch.arange(n) % k
    x = (protos[y] + 0.15 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def train_prototype_cnn(seed: int = 0, min_correct: int = 20
                        ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN fitted to :func:`prototype_data`; returns (model, x_test, y_test), where the
    24 held-out samples are cut down to those the model classifies correctly (at least
    ``min_correct`` of them), so every attack starts from a correct prediction."""
    x, y = prototype_data(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))
    fit_full_batch(model, x, y, steps=150, lr=0.01)
    xt, yt = prototype_data(seed, n=24, noise_seed=1)
    keep = predict(model, xt) == yt
    assert keep.sum() >= min_correct, "the tiny model should fit its own data"
    return model, xt[keep], yt[keep]


class RowCounter(nn.Module):
    """Forwards to ``inner`` and counts the input rows it was queried with (query budgets)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


class Interrupt(Exception):
    """Raised by :class:`StopAfter`: stands for a run killed mid-training."""


class StopAfter:
    """Trainer callback that interrupts the run after epoch ``epoch``'s checkpoint is written,
    so a resume test can continue from it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: object, epoch: int, record: dict) -> None:
        if epoch == self.epoch:
            raise Interrupt


class FeatureNet(nn.Module):
    """Flatten → Linear → ReLU (``features``) → Linear (``head``): the smallest classifier with
    the ``features``/``head`` contract the audit and the defenses reach into."""

    def __init__(self, inputs: int, hidden: int, classes: int, seed: int | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


#: A user's model file: a plain ReLU MLP for the digits, no robustact in it.
USER_MLP = '''
from torch import nn

def mlp(hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
'''


def user_mlp_files(folder: Path) -> tuple[Path, Path]:
    """:data:`USER_MLP` as ``folder/net.py`` (factory ``mlp``) and its weights, trained
    briefly on the digits (:func:`user_model_files`)."""
    return user_model_files(folder, USER_MLP, lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), steps=150, lr=1e-2)


def user_model_files(folder: Path, source: str, build: Callable[[], nn.Module], *, steps: int,
                     lr: float, flat: bool = False, prefix: str = "") -> tuple[Path, Path]:
    """A user's model file ``folder/net.py`` (``source``) and its weights
    ``folder/w.safetensors``: ``build()`` seeded without touching the global RNG, trained
    full-batch on the digits (flattened with ``flat``), keys prefixed with ``prefix``."""
    (folder / "net.py").write_text(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build()
    train = load_dataset("digits", "train")
    x = train.x().flatten(1) if flat else train.x()
    fit_full_batch(net, x, train.labels, steps=steps, lr=lr)
    save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items()},
              str(folder / "w.safetensors"))
    return folder / "net.py", folder / "w.safetensors"


def cli_ok(args: list[str]) -> str:
    """Run ``robustact ARGS`` in-process; assert it succeeded; its output."""
    from typer.testing import CliRunner

    from robustact.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output
