"""scikit-learn's bundled 8×8 handwritten digits: a real dataset that needs no download.

Why it is here: it makes end-to-end examples and smoke tests on real images possible offline in
seconds. The pixel values are 0..16; they are stored as uint8 via ``round(v * 255 / 16)``
(numpy rounding, half to even: 8 -> 128), so ``x()`` gives v / 16 up to 1/510. The data has no
official train/test split, so a fixed stratified split (20 % test, seed 0 by default) is used;
the same arguments always give the same images.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from robustact.data.dataset import ImageDataset
from robustact.data.root import check_split
from robustact.data.splits import split_indices

__all__ = ["load_digits"]


def load_digits(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageDataset:
    """The digits ``split`` as (N, 1, 8, 8) uint8 (1797 images in all, 10 classes).

    ``root`` and ``download`` are accepted for a uniform loader signature and ignored: the data
    ships inside scikit-learn.
    """
    check_split(split)
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: sklearn takes ~1 s

    bunch = sk_load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    if values.min() < 0 or values.max() > 16:
        raise ValueError(f"sklearn digits values outside 0..16: [{values.min()}, {values.max()}]")
    images = torch.from_numpy(np.rint(values * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    ds = ImageDataset(images, labels, [str(d) for d in range(10)], "digits")
    train, test = split_indices(labels, val_fraction=test_fraction, seed=seed, stratified=True)
    return ds.subset(train if split == "train" else test)
