"""Input checks shared by the library, so bad input fails early with a message naming the problem.

Why a module of its own: a NaN image or a model left in train mode otherwise surfaces as a cryptic
error deep inside an attack or a silently wrong number. Every public entry point that takes images,
labels, logits or a model calls these first.
"""

from __future__ import annotations

import itertools
import math
import operator

import torch
from torch import nn

__all__ = [
    "check_images",
    "check_labels",
    "check_logits",
    "check_eval_mode",
    "check_positive_int",
    "check_model_output",
    "match_model_dtype",
    "resolve_device",
    "top_ties",
]


def check_images(x: torch.Tensor, name: str = "x", *, ndim: int | None = 4) -> None:
    """Images must be a floating tensor of shape (N, C, H, W) with finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    # One pass: NaN propagates into aminmax and ±inf lands in it, so finite bounds imply finite x.
    lo_t, hi_t = torch.aminmax(x.detach())
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (robustact models normalise internally), "
            f"got values in [{lo:.4g}, {hi:.4g}]"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    """Labels must be an integer tensor of shape (n,) with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} has negative class indices (min {int(y.min())})")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise ValueError(
            f"{name} has class index {int(y.max())} but the model has {num_classes} classes"
        )


def check_positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    """``value`` as an int, refusing bools, floats, negatives and (unless ``allow_zero``) zero.

    Why one helper: counts (epochs, batch sizes, ``n``, ``limit``) arrive from the CLI and from
    configs; a zero or negative one otherwise surfaces as ``range() arg 3 must not be zero`` or an
    empty ``torch.cat`` far from the argument that caused it.
    """
    try:
        v = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        v = None
    if v is None or v < (0 if allow_zero else 1):
        kind = "a non-negative integer" if allow_zero else "a positive integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return v


def check_model_output(z: object, name: str = "model output") -> torch.Tensor:
    """The model's output must be one logits tensor; return it.

    Why: models that return ``(logits, features)`` or a dict otherwise fail deep inside a loss
    or ``argmax`` with an error about tuples that does not say which object was wrong.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"{name} must be a logits tensor of shape (N, num_classes), got "
            f"{type(z).__name__}; wrap a model that returns (logits, ...) so that forward "
            "returns only the logits"
        )
    return z


def match_model_dtype(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` cast to the floating dtype of ``model``'s parameters (unchanged if it matches).

    Why cast rather than refuse: images in [0, 1] lose nothing that matters when a float64 batch
    meets a float32 model (or the reverse), and refusing would turn a numpy-made batch into an
    error about "Double and Float" deep inside a convolution. A model without floating
    parameters or buffers leaves ``x`` as it is.
    """
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return x if x.dtype == t.dtype else x.to(t.dtype)
    return x


def check_logits(z: torch.Tensor, n: int | None = None, name: str = "logits") -> None:
    """Logits must be one (N, K) tensor, finite, and not look like probabilities.

    Why the probability check: feeding softmax outputs where logits are due makes cross-entropy
    and margin losses nearly flat, so attacks silently fail and a model looks robust.
    """
    check_model_output(z, name)
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (N, num_classes), got {tuple(z.shape)}")
    if n is not None and z.shape[0] != n:
        raise ValueError(f"{name} has {z.shape[0]} rows but there are {n} inputs")
    if z.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got {z.shape[1]}")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if z.shape[0] >= 2 and z.shape[1] >= 3:
        zd = z.detach()
        rows_sum_to_one = torch.allclose(zd.sum(1), torch.ones_like(zd[:, 0]), atol=1e-4)
        # Nearly one-hot rows are not evidence of a softmax: a saturated bounded output
        # activation (sigmoid(T·z) at high T) legitimately produces them, with the losers at
        # 1e-20 rather than exactly 0 (a real LeNet-5 at T = 100 was refused). The evidence is a
        # row that is *not* saturated yet sums to one. (Checked only when the rows sum to one:
        # raw logits almost never do, so the common case is one pass.)
        if (rows_sum_to_one and bool((zd.amax(1) < 1 - 1e-4).any())
                and bool((zd >= 0).all()) and bool((zd <= 1).all())):
            raise ValueError(
                f"{name} look like probabilities (non-negative rows summing to 1); "
                "robustact expects raw logits: remove the final softmax from the model, or "
                "wrap it in robustact.models.outputs.LogOf (robustact evaluate does so itself)"
            )


def check_eval_mode(model: nn.Module, what: str = "this operation") -> None:
    """Refuse a model in train mode: dropout and batch-norm statistics would change the answer."""
    if model.training:
        raise ValueError(
            f"the model is in train mode; call model.eval() before {what} "
            "(dropout and batch-norm updates would make results wrong and non-reproducible)"
        )


def resolve_device(spec: str | torch.device, name: str = "device") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:i"`` as given.

    Why here: every command that runs a model takes a device, and asking for CUDA on a machine
    without it must fail up front with one line naming the option, not deep inside a forward.
    """
    if isinstance(spec, torch.device):
        dev = spec
    elif spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(spec, str) and (spec == "cpu" or spec.split(":")[0] == "cuda"):
        try:
            dev = torch.device(spec)
        except RuntimeError as e:
            raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:i', got {spec!r}"
                             ) from e
    else:
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:i', got {spec!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {str(spec)!r} but CUDA is not available on this machine "
                             "(use 'cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {str(spec)!r} but only {torch.cuda.device_count()} CUDA "
                             "device(s) exist")
    return dev

def top_ties(outputs: torch.Tensor) -> torch.Tensor:
    """Per row of ``outputs`` (N, K): True where the largest value occurs more than once.

    Why here, in the lowest layer: a saturated bounded output (sigmoid(T·z) at high T) makes
    several outputs exactly 1.0 in float32, and ``argmax`` then breaks the tie by index, so a
    model's decision silently becomes "the lowest tied class". The defenses (which warn when they
    create ties) and the evaluation (which counts a tied prediction as not correct) both need
    this one count, and neither may import the other. Ties are judged in the outputs' own dtype:
    that is what ``argmax`` sees.
    """
    z = check_model_output(outputs).detach()
    if z.ndim != 2:
        raise ValueError(f"outputs must have shape (N, num_classes), got {tuple(z.shape)}")
    top = z.amax(dim=1, keepdim=True)
    return (z == top).sum(dim=1) > 1
