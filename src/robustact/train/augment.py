"""Batched data augmentation on tensors, with randomness from an explicit ``torch.Generator``.

Why not torchvision: its transforms work per image and draw from the global RNG, which makes a
resumed run diverge from an uninterrupted one. Here one call augments a whole batch; every random
number comes from the generator the trainer seeds from ``(seed, epoch)``; and the random draws are
made on the CPU, so the same seed gives the same crops on CPU and GPU.

``"cifar"`` is the standard CIFAR recipe of the papers (papers.md §1): pad 4 pixels with zeros, take
a random crop of the original size, flip horizontally with probability ½. ``"shift"`` is the digit
version: a random translation by up to 2 pixels (pad 2, crop), never a flip (a mirrored digit is
another symbol).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["AUGMENTATIONS", "crop_flip", "random_crop_flip", "random_shift", "get_augmentation"]

AUGMENTATIONS = ("none", "cifar", "shift")

#: ``augment(x, generator) -> x_augmented`` for a float batch (N, C, H, W).
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def crop_flip(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Deterministic kernel: zero-pad by ``padding``, crop (H, W) at per-sample offsets, flip.

    ``top`` and ``left`` are per-sample offsets in ``[0, 2·padding]`` into the padded image,
    ``flip`` a per-sample bool. Offset ``padding`` with no flip returns the input unchanged.
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    for name, t in (("top", top), ("left", left), ("flip", flip)):
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if bool((top < 0).any() | (top > 2 * padding).any() | (left < 0).any()
            | (left > 2 * padding).any()):
        raise ValueError(f"crop offsets must lie in [0, {2 * padding}]")
    dev = x.device
    top, left, flip = top.to(dev), left.to(dev), flip.to(dev, torch.bool)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    cols = torch.arange(w, device=dev)
    # Flipping the crop == reading its columns right to left.
    cols = torch.where(flip[:, None], (w - 1) - cols[None, :], cols[None, :]) + left[:, None]
    rows = top[:, None] + torch.arange(h, device=dev)[None, :]
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop (after zero padding) and, if ``flip``, random horizontal flip of a batch."""
    if generator.device.type != "cpu":
        raise ValueError("pass a CPU torch.Generator: draws are made on the CPU so that "
                         "CPU and GPU runs crop alike")
    n = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return crop_flip(x, top, left, flips, padding)


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels in each direction, zero fill, no flip."""
    return random_crop_flip(x, generator, padding=max_shift, flip=False)


def get_augmentation(name: str) -> Augmentation | None:
    """The augmentation named in a :class:`~robustact.train.TrainConfig` (None for "none")."""
    if name == "none":
        return None
    if name == "cifar":
        return random_crop_flip
    if name == "shift":
        return random_shift
    raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTATIONS}")
