"""Downloads that are verified before use, written atomically, and extracted safely.

Why each piece:
- *checksums*: a truncated transfer or a tampered mirror must never become "the dataset"; every
  file is checked against a known MD5 before it is moved into place.
- *atomic writes*: the file is fetched into a temporary name in the target directory and
  ``os.replace``-d only once verified, so an interrupted download leaves nothing that looks valid.
- *safe extraction*: a tar member named ``/etc/x`` or ``../../x``, or a link, could write outside
  the data root; the whole archive is checked before anything is written, and only regular files
  and directories are extracted (no links, devices, owners or permissions from the archive).
- *injectable fetch*: ``fetch(url, dest)`` is a parameter, so tests (and air-gapped mirrors) never
  need the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from robustact.data.root import DataFormatError

__all__ = [
    "Fetcher",
    "DownloadError",
    "ChecksumError",
    "UnsafeArchiveError",
    "md5sum",
    "urllib_fetch",
    "download_file",
    "safe_extract_tar",
    "download_and_extract",
]

#: ``fetch(url, dest)`` writes the bytes at ``url`` to the file ``dest`` (or raises).
Fetcher = Callable[[str, Path], None]

_CHUNK = 1 << 20
_SCHEMES = ("https", "http", "file")


class DownloadError(OSError):
    """Every source for a file failed (network error, HTTP error, bad checksum)."""


class ChecksumError(DownloadError):
    """Every source for a file delivered bytes whose MD5 does not match the known one."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target directory, or is not a plain file."""


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in chunks (the CIFAR archives are 170 MB)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def urllib_fetch(url: str, dest: Path, *, timeout: float = 60.0) -> None:
    """Default fetcher: stream ``url`` (http, https or file) into ``dest`` with the stdlib."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"refusing to fetch {url!r}: scheme must be one of {_SCHEMES}")
    req = urllib.request.Request(url, headers={"User-Agent": "robustact"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:  # noqa: S310
        shutil.copyfileobj(resp, out, _CHUNK)


def download_file(
    urls: str | Sequence[str], dest: str | os.PathLike[str], md5: str, *,
    fetch: Fetcher | None = None,
) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that delivers bytes with the given MD5.

    An already-present ``dest`` with the right checksum is kept (no network). Each attempt goes
    to a temporary file next to ``dest`` that is deleted on failure, so a failed download leaves
    the directory as it was. Raises :class:`ChecksumError` when every source gave wrong bytes,
    else :class:`DownloadError`, with the reason for each source in the message.
    """
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        raise ValueError("download_file needs at least one URL")
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetch = urllib_fetch if fetch is None else fetch
    failures: list[str] = []
    all_checksum = True
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(url, tmp)
            got = md5sum(tmp)
            if got != md5:
                failures.append(f"{url}: checksum mismatch (expected md5 {md5}, got {got})")
                continue
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # noqa: BLE001 - any failure of one source means: try the next
            all_checksum = False
            failures.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    cls = ChecksumError if all_checksum else DownloadError
    raise cls(f"could not download {dest.name}: " + "; ".join(failures))


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    first = name.parts[0] if name.parts else ""
    if name.is_absolute() or member.name.startswith(("/", "\\")) or first.endswith(":"):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} has an absolute path")
    if ".." in name.parts or "\\" in member.name:
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} escapes the target directory")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive}: member {member.name!r} is a link or special file; only regular files "
            "and directories are extracted"
        )
    return name


def safe_extract_tar(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Extract a (possibly compressed) tar archive into ``dest``; return the files written.

    Every member is checked first; if any is unsafe nothing is written and
    :class:`UnsafeArchiveError` is raised. An archive that is not a readable tar (truncated,
    corrupted) raises :class:`~robustact.data.root.DataFormatError` naming it.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _extract(archive, dest)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{archive}: not a readable tar archive, truncated or corrupted "
                              f"({type(e).__name__}: {e})") from None


def _extract(archive: Path, dest: Path) -> list[Path]:
    base = dest.resolve()
    written: list[Path] = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        checked = [(m, _check_member(m, archive)) for m in members]
        for m, rel in checked:
            target = (base / rel).resolve()
            if not target.is_relative_to(base):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} escapes {dest}")
        for m, rel in checked:
            target = base / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise UnsafeArchiveError(f"{archive}: cannot read member {m.name!r}")
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            written.append(target)
    return written


def download_and_extract(
    urls: Sequence[str], root: Path, archive_name: str, md5: str, folder: str, *,
    fetch: Fetcher | None = None,
) -> Path:
    """Download a verified archive into ``root`` and move its ``folder`` to ``root / folder``.

    Extraction goes to a temporary directory under ``root`` first, and files are moved into place
    one by one with ``os.replace``, so an interrupted extraction never leaves a half-written file
    under its real name. The archive is removed afterwards (it would double the disk use).
    """
    root.mkdir(parents=True, exist_ok=True)
    archive = download_file(urls, root / archive_name, md5, fetch=fetch)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        safe_extract_tar(archive, tmp_dir)
        src_dir = tmp_dir / folder
        if not src_dir.is_dir():
            raise DownloadError(f"{archive.name} does not contain the expected folder {folder}/")
        target = root / folder
        for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            out = target / f.relative_to(src_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    archive.unlink()
    return root / folder
