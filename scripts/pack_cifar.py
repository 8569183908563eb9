"""Pack CIFAR-10 small enough to travel to a lent GPU machine, and unpack it there, losslessly.

Why: the device tool carries at most 64 MiB per call and CIFAR-10 is 178 MB, with no network on
the GPU machine. Each batch's pixels are replaced by their prediction residuals (the median edge
detector of LOCO-I from the left, upper and upper-left pixels, then green and blue predicted from
the red and green residuals) and compressed with LZMA: 56 % of the raw size, so the training set
travels in two calls. Unpacking inverts the predictor pixel by pixel (vectorised over images and
channels), writes the official batch layout that ``robustact.data.load_cifar10`` reads, and
checks every batch's SHA-256 against the one recorded when packing.

    python scripts/pack_cifar.py pack DATA_ROOT OUT_DIR data_batch_1 data_batch_2 ...
    python scripts/pack_cifar.py unpack PACKED_DIR [PACKED_DIR ...] --to DATA_ROOT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"


def _med(left: np.ndarray, up: np.ndarray, diag: np.ndarray) -> np.ndarray:
    hi, lo = np.maximum(left, up), np.minimum(left, up)
    return np.where(diag >= hi, lo, np.where(diag <= lo, hi, left + up - diag))


def residuals(x: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) uint8 → uint8 residuals (mod 256) of the MED and channel predictors."""
    x = x.astype(np.int16)
    left, up, diag = (np.zeros_like(x) for _ in range(3))
    left[..., :, 1:], up[..., 1:, :], diag[..., 1:, 1:] = x[..., :, :-1], x[..., :-1, :], \
        x[..., :-1, :-1]
    r = x - _med(left, up, diag)
    r[:, 2] -= r[:, 1]  # blue from green first, while green still holds its own residual
    r[:, 1] -= r[:, 0]
    return (r % 256).astype(np.uint8)


def reconstruct(res: np.ndarray) -> np.ndarray:
    """The inverse of :func:`residuals`."""
    r = res.astype(np.int16)
    r[:, 1] = (r[:, 1] + r[:, 0]) % 256
    r[:, 2] = (r[:, 2] + r[:, 1]) % 256
    x = np.zeros(r.shape, np.int16)
    zero = np.zeros(r.shape[:2], np.int16)
    for i in range(r.shape[2]):
        for j in range(r.shape[3]):
            left = x[:, :, i, j - 1] if j else zero
            up = x[:, :, i - 1, j] if i else zero
            diag = x[:, :, i - 1, j - 1] if i and j else zero
            x[:, :, i, j] = (r[:, :, i, j] + _med(left, up, diag)) % 256
    return x.astype(np.uint8)


def _digest(data: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(data.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()


def pack(root: Path, out: Path, names: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from robustact.data.cifar import restricted_load  # the safe reader, not pickle.load

    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in names:
        d = {k.decode() if isinstance(k, bytes) else k: v
             for k, v in restricted_load(root / FOLDER / name).items()}
        data, labels = np.asarray(d["data"], np.uint8), np.asarray(d["labels"], np.int64)
        res = residuals(data.reshape(-1, 3, 32, 32))
        (out / f"{name}.xz").write_bytes(lzma.compress(res.tobytes(), preset=6))
        np.save(out / f"{name}.labels.npy", labels.astype(np.uint8))
        manifest[name] = {"n": len(labels), "sha256": _digest(data, labels)}
        print(name, (out / f"{name}.xz").stat().st_size, flush=True)
    shutil.copy(root / FOLDER / "batches.meta", out / "batches.meta")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def unpack(dirs: list[Path], root: Path) -> None:
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for src in dirs:
        for name, info in json.loads((src / "manifest.json").read_text()).items():
            res = np.frombuffer(lzma.decompress((src / f"{name}.xz").read_bytes()), np.uint8)
            data = reconstruct(res.reshape(info["n"], 3, 32, 32)).reshape(info["n"], -1)
            labels = np.load(src / f"{name}.labels.npy").astype(np.int64)
            if _digest(data, labels) != info["sha256"]:
                raise SystemExit(f"{src / name}: SHA-256 mismatch after unpacking")
            with open(folder / name, "wb") as f:
                pickle.dump({"data": data, "labels": labels.tolist()}, f, protocol=2)
            print(f"{name}: {info['n']} images, SHA-256 verified", flush=True)
        shutil.copy(src / "batches.meta", folder / "batches.meta")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("root", type=Path)
    pk.add_argument("out", type=Path)
    pk.add_argument("names", nargs="+")
    up = sub.add_parser("unpack")
    up.add_argument("dirs", type=Path, nargs="+")
    up.add_argument("--to", type=Path, required=True)
    a = p.parse_args()
    if a.cmd == "pack":
        pack(a.root, a.out, a.names)
    else:
        unpack(a.dirs, a.to)


if __name__ == "__main__":
    main()
