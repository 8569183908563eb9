"""Tests for robustact.data: every loader is fed tiny files written here, never real data.

The files are written by hand-rolled writers (struct / pickle / tarfile), not by the library, so
a parser bug cannot be mirrored by a matching writer bug. No test touches the network: downloads
go through an injected ``fetch`` or a ``file://`` URL.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustact.data.cifar as cifar_mod
import robustact.data.mnist as mnist_mod
from robustact.data import (
    DATASET_INFO,
    ENV_VAR,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    ImageDataset,
    UnsafeArchiveError,
    binary_task,
    download_file,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_mnist,
    read_idx,
    resolve_data_root,
    restricted_load,
    safe_extract_tar,
    split_indices,
    train_val_split,
)
from robustact.data.cifar import UnsafePickleError
from robustact.models import create_model

# ---------------------------------------------------------------------------------------------
# hand-written fixtures
# ---------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX ubyte file: 0, 0, type 0x08, ndim, big-endian uint32 dims, raw bytes."""
    assert arr.dtype == np.uint8
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def mnist_pixels(n: int, offset: int) -> np.ndarray:
    i, r, c = np.indices((n, 28, 28))
    return ((offset + 7 * i + 28 * r + c) % 256).astype(np.uint8)


MNIST_TRAIN_LABELS = np.array([3, 1, 4], dtype=np.uint8)
MNIST_TEST_LABELS = np.array([9, 0], dtype=np.uint8)


def mnist_files() -> dict[str, bytes]:
    return {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(mnist_pixels(3, 0))),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(MNIST_TRAIN_LABELS)),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(mnist_pixels(2, 100))),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(MNIST_TEST_LABELS)),
    }


def write_mnist(root: Path) -> None:
    d = root / "MNIST" / "raw"
    d.mkdir(parents=True)
    for name, data in mnist_files().items():
        (d / name).write_bytes(data)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 rows; row i, flat position j holds (offset + 11 i + 7 j) mod 256."""
    i, j = np.indices((n, 3072))
    return ((offset + 11 * i + 7 * j) % 256).astype(np.uint8)


def cifar_expected(n: int, offset: int) -> np.ndarray:
    """What the loader must return for cifar_rows: channel-major planes of row-major 32x32."""
    i, c, r, col = np.indices((n, 3, 32, 32))
    return ((offset + 11 * i + 7 * (c * 1024 + r * 32 + col)) % 256).astype(np.uint8)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def write_pickle(path: Path, obj: object, protocol: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def cifar10_tree(root: Path, protocol: int = 2) -> dict[str, list[int]]:
    """Five 2-image training batches and a 3-image test batch; returns the labels written."""
    d = root / "cifar-10-batches-py"
    labels = {"train": [], "test": [5, 3, 5]}
    for b in range(1, 6):
        lab = [b % 10, (3 * b) % 10]
        labels["train"] += lab
        write_pickle(d / f"data_batch_{b}", {"batch_label": "training batch",
                                             "data": cifar_rows(2, 10 * b), "labels": lab},
                     protocol)
    write_pickle(d / "test_batch", {"data": cifar_rows(3, 200), "labels": labels["test"]},
                 protocol)
    write_pickle(d / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072}, protocol)
    return labels


def cifar100_tree(root: Path) -> None:
    d = root / "cifar-100-python"
    fine_names = [f"fine{k}" for k in range(100)]
    coarse_names = [f"coarse{k}" for k in range(20)]
    write_pickle(d / "train", {"data": cifar_rows(3, 1), "fine_labels": [99, 0, 42],
                               "coarse_labels": [19, 0, 7]}, 4)
    write_pickle(d / "test", {"data": cifar_rows(2, 2), "fine_labels": [5, 6],
                              "coarse_labels": [1, 2]}, 4)
    write_pickle(d / "meta", {"fine_label_names": fine_names,
                              "coarse_label_names": coarse_names}, 4)


def tiny_dataset(counts: list[int], name: str = "toy") -> ImageDataset:
    """Labels 0,0,..,1,1,.. per ``counts``; image k is filled with the value k % 256."""
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(counts)])
    n = labels.numel()
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return ImageDataset(images, labels, [f"c{k}" for k in range(len(counts))], name)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve(table: dict[str, bytes], log: list[str] | None = None) -> Callable[[str, Path], None]:
    """A fetcher that answers from memory; unknown URLs fail like a dead mirror."""

    def fetch(url: str, dest: Path) -> None:
        if log is not None:
            log.append(url)
        if url not in table:
            raise OSError(f"connection refused: {url}")
        Path(dest).write_bytes(table[url])

    return fetch


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# ---------------------------------------------------------------------------------------------
# ImageDataset
# ---------------------------------------------------------------------------------------------


def test_dataset_x_is_bytes_over_255_and_indexing_forms() -> None:
    ds = tiny_dataset([2, 3])
    assert len(ds) == 5 and ds.num_classes == 2 and ds.shape == (1, 2, 2)
    x = ds.x()
    assert x.dtype == torch.float32 and x.shape == (5, 1, 2, 2)
    assert x[3, 0, 1, 1].item() == pytest.approx(3 / 255)
    assert torch.equal(ds.x(slice(1, 3)), x[1:3])
    assert torch.equal(ds.x([4, 0]), x[[4, 0]])
    assert torch.equal(ds.x(torch.tensor([-1])), x[[4]])
    mask = torch.tensor([True, False, False, True, False])
    assert torch.equal(ds.x(mask), x[[0, 3]])
    assert torch.equal(ds.y(mask), torch.tensor([0, 1]))
    img, lab = ds[4]
    assert img.shape == (1, 2, 2) and lab == 1 and isinstance(lab, int)
    assert img[0, 0, 0].item() == pytest.approx(4 / 255)
    # the stored bytes are not modified by the in-place division
    assert ds.images.dtype == torch.uint8 and int(ds.images[4, 0, 0, 0]) == 4


def test_dataset_rejects_bad_input() -> None:
    good_x = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    good_y = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(good_x.float(), good_y, ["a", "b"], "t")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageDataset(good_x[:, 0], good_y, ["a", "b"], "t")
    with pytest.raises(TypeError, match="int64"):
        ImageDataset(good_x, good_y.int(), ["a", "b"], "t")
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        ImageDataset(good_x, torch.tensor([0]), ["a", "b"], "t")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ImageDataset(good_x, torch.tensor([0, 2]), ["a", "b"], "t")
    with pytest.raises(ValueError, match="unique"):
        ImageDataset(good_x, good_y, ["a", "a"], "t")
    with pytest.raises(TypeError, match="class-name"):
        ImageDataset(good_x, good_y, "ab", "t")
    with pytest.raises(ValueError, match="name"):
        ImageDataset(good_x, good_y, ["a", "b"], "")
    ds = ImageDataset(good_x, good_y, ["a", "b"], "t")
    with pytest.raises(TypeError, match="ambiguous"):
        ds.x(0)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        ds.x([2])
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError, match="float"):
        ds.x(torch.tensor([0.0]))


def test_from_float_round_trips_and_subset_keeps_metadata() -> None:
    ds = tiny_dataset([1, 1, 2])
    again = ImageDataset.from_float(ds.x(), ds.labels, ds.classes, ds.name)
    assert torch.equal(again.images, ds.images)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageDataset.from_float(ds.x() - 0.5, ds.labels, ds.classes, ds.name)
    sub = ds.subset([3, 0])
    assert sub.classes == ds.classes and sub.name == ds.name
    assert sub.labels.tolist() == [2, 0] and sub.images[:, 0, 0, 0].tolist() == [3, 0]
    assert sub.class_counts().tolist() == [1, 0, 1]


def test_works_with_a_torch_dataloader() -> None:
    ds = tiny_dataset([3, 3])
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert torch.equal(xb, ds.x(slice(0, 4))) and torch.equal(yb, ds.y(slice(0, 4)))


# ---------------------------------------------------------------------------------------------
# data root
# ---------------------------------------------------------------------------------------------


def test_data_root_argument_then_env_then_default(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "robustact" / "data"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    with pytest.raises(ValueError, match="empty"):
        resolve_data_root("")
    with pytest.raises(TypeError):
        resolve_data_root(3)  # type: ignore[arg-type]


def test_env_var_is_used_by_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert len(load_mnist("train")) == 3
    assert len(load_dataset("mnist", "test")) == 2


# ---------------------------------------------------------------------------------------------
# MNIST / IDX
# ---------------------------------------------------------------------------------------------


def test_read_idx_hand_computed_int32_big_endian(tmp_path: Path) -> None:
    raw = bytes.fromhex("00000C01" "00000003" "00000001" "FFFFFFFE" "00011170")
    (tmp_path / "v.idx").write_bytes(raw)
    arr = read_idx(tmp_path / "v.idx")
    assert arr.dtype == np.int32 and arr.tolist() == [1, -2, 70000]


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(bytes.fromhex("08030000"))
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    good = idx_bytes(mnist_pixels(2, 0))
    (tmp_path / "short.gz").write_bytes(gzip.compress(good[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_mnist_returns_exact_pixels_and_labels(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    tr = load_mnist("train", root=tmp_path)
    te = load_mnist("test", root=tmp_path)
    assert tr.shape == (1, 28, 28) and tr.name == "mnist" and tr.classes[3] == "3"
    assert torch.equal(tr.images[:, 0], torch.from_numpy(mnist_pixels(3, 0)))
    assert tr.labels.tolist() == [3, 1, 4] and te.labels.tolist() == [9, 0]
    assert int(tr.images[1, 0, 2, 5]) == 7 + 2 * 28 + 5  # hand-computed pixel
    assert int(te.images[0, 0, 0, 0]) == 100
    assert tr.x().max() <= 1.0


def test_mnist_reads_decompressed_files_too(tmp_path: Path) -> None:
    d = tmp_path / "MNIST" / "raw"
    d.mkdir(parents=True)
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(mnist_pixels(2, 100)))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(MNIST_TEST_LABELS))
    assert load_mnist("test", root=tmp_path).labels.tolist() == [9, 0]


def test_mnist_missing_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist("train", root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert ENV_VAR in msg and "--data-root" in msg and "download=True" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg
    assert "given as an argument" in msg


def test_mnist_download_tries_mirrors_and_verifies(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    files = mnist_files()
    for name, data in files.items():
        monkeypatch.setitem(mnist_mod.MNIST_MD5, name, md5(data))
    # the first mirror is down, the second one serves the files
    second = mnist_mod.MNIST_MIRRORS[1]
    log: list[str] = []
    fetch = serve({second + n: b for n, b in files.items()}, log)
    ds = load_mnist("test", root=tmp_path, download=True, fetch=fetch)
    assert ds.labels.tolist() == [9, 0]
    assert log[0].startswith(mnist_mod.MNIST_MIRRORS[0]) and log[1].startswith(second)
    raw = tmp_path / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                      "t10k-labels-idx1-ubyte.gz"]
    # present and verified: a second call does not fetch at all
    def no_network(url: str, dest: Path) -> None:
        raise AssertionError("fetched although the files are present")

    assert len(load_mnist("test", root=tmp_path, download=True, fetch=no_network)) == 2


def test_mnist_download_checksum_mismatch_is_rejected(tmp_path: Path) -> None:
    files = mnist_files()  # tiny files: they cannot match the real MNIST checksums
    fetch = serve({m + n: b for m in mnist_mod.MNIST_MIRRORS for n, b in files.items()})
    with pytest.raises(DatasetNotFoundError) as err:
        load_mnist("train", root=tmp_path, download=True, fetch=fetch)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    raw = tmp_path / "MNIST" / "raw"
    assert list(raw.iterdir()) == []  # nothing half-written or unverified left behind


# ---------------------------------------------------------------------------------------------
# downloads and archives
# ---------------------------------------------------------------------------------------------


def test_download_file_over_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello robustact")
    dest = tmp_path / "out" / "f.bin"
    got = download_file(src.as_uri(), dest, md5(b"hello robustact"))
    assert got == dest and dest.read_bytes() == b"hello robustact"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_file(src.as_uri(), tmp_path / "out" / "g.bin", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.bin"]
    with pytest.raises(DownloadError, match="scheme"):
        download_file("ftp://example.invalid/x", tmp_path / "out" / "h.bin", "0" * 32)


def test_download_file_replaces_a_corrupt_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"corrupt")
    download_file("u", dest, md5(b"good"), fetch=serve({"u": b"good"}))
    assert dest.read_bytes() == b"good"


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> None:
    """members: (name, kind, payload) with kind None = file, b'sym' = symlink to payload."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == b"sym":
                info.type = tarfile.SYMTYPE
                info.linkname = payload.decode()
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("bad", [
    ("../escape.txt", None, b"x"),
    ("/tmp/robustact-absolute.txt", None, b"x"),
    ("dir/../../escape.txt", None, b"x"),
    ("link", b"sym", b"/etc/passwd"),
])
def test_safe_extract_rejects_unsafe_members(tmp_path: Path, bad: tuple) -> None:
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, [("ok/first.txt", None, b"fine"), bad])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        safe_extract_tar(archive, dest)
    # checked before writing: not even the harmless first member was extracted
    assert list(dest.rglob("*")) == []
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_writes_regular_files(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, [("d/x.txt", None, b"1"), ("d/sub/y.txt", None, b"22")])
    written = safe_extract_tar(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "d/sub/y.txt", "d/x.txt"]
    assert (tmp_path / "out" / "d" / "sub" / "y.txt").read_bytes() == b"22"


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_exact_pixels_labels_and_order(tmp_path: Path, protocol: int) -> None:
    labels = cifar10_tree(tmp_path, protocol)
    tr = load_cifar10("train", root=tmp_path)
    te = load_cifar10("test", root=tmp_path)
    assert tr.shape == (3, 32, 32) and len(tr) == 10 and len(te) == 3
    assert tr.classes == CIFAR10_NAMES and tr.name == "cifar10"
    assert tr.labels.tolist() == labels["train"] and te.labels.tolist() == [5, 3, 5]
    expect = np.concatenate([cifar_expected(2, 10 * b) for b in range(1, 6)])
    assert torch.equal(tr.images, torch.from_numpy(expect))
    assert torch.equal(te.images, torch.from_numpy(cifar_expected(3, 200)))
    # hand-computed: test image 1, blue plane, row 3, column 4 -> flat 2148
    assert int(te.images[1, 2, 3, 4]) == 143


def test_cifar10_python2_style_module_names(tmp_path: Path) -> None:
    """The official batches name numpy.core.multiarray (numpy 1.x); that must load too."""
    cifar10_tree(tmp_path, protocol=2)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = p.read_bytes()
    if b"numpy._core.multiarray" in raw:
        p.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in p.read_bytes()
    assert torch.equal(load_cifar10("test", root=tmp_path).images,
                       torch.from_numpy(cifar_expected(3, 200)))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    cifar100_tree(tmp_path)
    fine = load_cifar100("train", root=tmp_path)
    coarse = load_cifar100("train", root=tmp_path, label_mode="coarse")
    assert fine.num_classes == 100 and fine.labels.tolist() == [99, 0, 42]
    assert fine.classes[42] == "fine42" and fine.name == "cifar100"
    assert coarse.num_classes == 20 and coarse.labels.tolist() == [19, 0, 7]
    assert coarse.name == "cifar100-coarse"
    assert torch.equal(fine.images, torch.from_numpy(cifar_expected(3, 1)))
    te = load_dataset("cifar100", "test", root=tmp_path)
    assert te.labels.tolist() == [5, 6]
    with pytest.raises(ValueError, match="label_mode"):
        load_cifar100("train", root=tmp_path, label_mode="medium")


def test_cifar_missing_files_error_names_everything(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar10("test", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "batches.meta" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert ENV_VAR in msg and "--data-root" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_cifar100("test", root=tmp_path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > pwned.txt",))


def test_restricted_unpickler_refuses_foreign_globals(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for protocol in (2, 4):
        p = tmp_path / f"evil{protocol}"
        p.write_bytes(pickle.dumps({"data": _Evil()}, protocol=protocol))
        with pytest.raises(UnsafePickleError, match="system"):
            restricted_load(p)
    assert not (tmp_path / "pwned.txt").exists()
    # an object array would smuggle arbitrary Python objects: refused by dtype
    p = tmp_path / "objects"
    p.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="object"):
        restricted_load(p)
    # and a poisoned batch inside a dataset folder stops the loader the same way
    cifar10_tree(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({"data": _Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError):
        load_cifar10("test", root=tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def cifar10_archive(tmp_path: Path) -> bytes:
    src = tmp_path / "src"
    cifar10_tree(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_cifar10_download_extracts_verified_archive(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = cifar10_archive(tmp_path)
    monkeypatch.setattr(cifar_mod, "CIFAR10_MD5", md5(data))
    root = tmp_path / "root"
    ds = load_dataset("cifar10", "test", root=root, download=True,
                      fetch=serve({cifar_mod.CIFAR10_URL: data}))
    assert torch.equal(ds.images, torch.from_numpy(cifar_expected(3, 200)))
    # archive and temporary extraction folder are gone; only the dataset folder remains
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]


def test_cifar10_download_checksum_mismatch(tmp_path: Path) -> None:
    data = cifar10_archive(tmp_path)  # real md5 expected: this archive cannot match
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        load_cifar10("train", root=root, download=True,
                     fetch=serve({cifar_mod.CIFAR10_URL: data}))
    assert not (root / "cifar-10-batches-py").exists()
    assert list(root.iterdir()) == []


def test_offline_download_failure_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar100("train", root=tmp_path, download=True, fetch=serve({}))
    msg = str(err.value)
    assert "download failed" in msg and "connection refused" in msg
    assert "cifar-100-python.tar.gz" in msg


# ---------------------------------------------------------------------------------------------
# splits and binary tasks
# ---------------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_reproducible_stratified() -> None:
    ds = tiny_dataset([10, 20, 30])
    tr, va = train_val_split(ds, 0.1, seed=3)
    ids_tr = set(tr.images[:, 0, 0, 0].tolist())  # image k holds the value k
    ids_va = set(va.images[:, 0, 0, 0].tolist())
    assert ids_tr.isdisjoint(ids_va) and ids_tr | ids_va == set(range(60))
    assert va.class_counts().tolist() == [1, 2, 3]  # 10 % of each class, by hand
    tr2, va2 = train_val_split(ds, 0.1, seed=3)
    assert torch.equal(va.images, va2.images) and torch.equal(tr.labels, tr2.labels)
    _, va3 = train_val_split(ds, 0.1, seed=4)
    assert not torch.equal(va.images, va3.images)
    # default is 10 %
    assert len(train_val_split(ds)[1]) == 6


def test_split_val_size_uses_largest_remainder() -> None:
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    _, va = split_indices(labels, val_size=4)
    # quotas 4/3 each -> floors 1, 1, 1; the one left over goes to the lowest class index
    assert torch.bincount(labels[va], minlength=3).tolist() == [2, 1, 1]
    labels = torch.tensor([0] * 7 + [1] * 3)
    _, va = split_indices(labels, val_size=5)
    # quotas 3.5, 1.5 -> floors 3, 1; tie on .5 goes to class 0
    assert torch.bincount(labels[va], minlength=2).tolist() == [4, 1]


def test_split_unstratified_and_no_global_rng_use() -> None:
    labels = torch.zeros(50, dtype=torch.long)
    state = torch.get_rng_state()
    tr, va = split_indices(labels, val_size=7, stratified=False, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(va) == 7 and len(tr) == 43
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(50))


def test_split_rejects_bad_sizes() -> None:
    ds = tiny_dataset([3, 3])
    with pytest.raises(ValueError, match="exactly one"):
        train_val_split(ds, 0.5, val_size=2)
    for frac in (0.0, 1.0, float("nan"), -0.2):
        with pytest.raises(ValueError, match="between 0 and 1"):
            train_val_split(ds, frac)
    for size in (0, 6):
        with pytest.raises(ValueError, match="at least one"):
            train_val_split(ds, val_size=size)
    with pytest.raises(TypeError, match="seed"):
        train_val_split(ds, 0.5, seed=1.5)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 10**6),
       st.floats(0.05, 0.95))
def test_split_property_partition_and_proportional(counts: list[int], seed: int,
                                                   frac: float) -> None:
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(counts)])
    n = labels.numel()
    k = round(frac * n)
    if not 1 <= k <= n - 1:
        return
    tr, va = split_indices(labels, val_size=k, seed=seed)
    assert len(va) == k and len(tr) + len(va) == n
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(n))
    per_class = torch.bincount(labels[va], minlength=len(counts))
    for c, got in zip(counts, per_class.tolist(), strict=True):
        quota = k * c / n
        assert int(quota) <= got <= int(quota) + 1  # floor or floor + 1, never more than c
        assert got <= c


def test_binary_task_relabels_second_class_as_positive() -> None:
    base = tiny_dataset([2, 1, 3, 2])
    ds = ImageDataset(base.images, base.labels, ["plane", "car", "cat", "dog"], "toy")
    bt = binary_task(ds, ("cat", "dog"))
    assert bt.classes == ["cat", "dog"] and bt.name == "toy-cat-vs-dog"
    assert bt.labels.tolist() == [0, 0, 0, 1, 1]
    assert bt.images[:, 0, 0, 0].tolist() == [3, 4, 5, 6, 7]  # original order kept
    swapped = binary_task(ds, (3, 0))  # by index, reversed: dog -> 0, plane -> 1
    assert swapped.classes == ["dog", "plane"]
    assert swapped.labels.tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown class 'cow'"):
        binary_task(ds, ("cat", "cow"))
    with pytest.raises(ValueError, match="differ"):
        binary_task(ds, ("cat", 2))
    with pytest.raises(ValueError, match="out of range"):
        binary_task(ds, (0, 4))
    with pytest.raises(ValueError, match="pair"):
        binary_task(ds, ("cat",))
    with pytest.raises(ValueError, match="pair"):
        binary_task(ds, "catdog")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# digits and the registry
# ---------------------------------------------------------------------------------------------


def test_digits_shape_range_split_and_values(no_env: None) -> None:
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    tr, te = load_digits("train"), load_dataset("digits", "test")
    assert tr.shape == te.shape == (1, 8, 8) and tr.num_classes == 10
    assert len(tr) + len(te) == 1797 and len(te) == round(0.2 * 1797)
    x = tr.x()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    # stratified: the two splits together have sklearn's class counts, the test part ~20 % each
    total = torch.bincount(torch.from_numpy(bunch.target), minlength=10)
    assert torch.equal(tr.class_counts() + te.class_counts(), total)
    assert (te.class_counts() - 0.2 * total).abs().max() <= 1
    # pixel values are v/16 quantised to bytes: round(v * 255 / 16) / 255
    _, te_idx = split_indices(torch.from_numpy(bunch.target).long(), val_fraction=0.2, seed=0)
    v = torch.from_numpy(bunch.images[te_idx.numpy()]).unsqueeze(1)
    assert (te.x() - v / 16).abs().max() <= 1 / 510 + 1e-7
    assert te.labels.tolist() == bunch.target[te_idx.numpy()].tolist()
    assert torch.equal(load_digits("test").images, te.images)  # reproducible
    assert not torch.equal(load_digits("test", seed=1).labels, te.labels)


def test_registry_names_info_and_errors(tmp_path: Path) -> None:
    for name, info in DATASET_INFO.items():  # the model registry builds from the same table
        cfg = create_model("mlp", dataset=name).robustact_config
        assert (cfg["in_channels"], cfg["input_size"], cfg["input_size"]) == info.shape
        assert cfg["num_classes"] == info.num_classes
        assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (info.mean, info.std)
    assert DATASET_INFO["cifar100"].num_classes == 100
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", root=tmp_path)
    cifar10_tree(tmp_path)
    assert load_dataset("CIFAR-10", "test", root=tmp_path).name == "cifar10"
