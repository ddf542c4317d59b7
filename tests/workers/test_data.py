"""Data loaders on fixtures in the real formats, downloads from a loopback server."""

from __future__ import annotations

import functools
import operator
from pathlib import Path

import numpy as np
import pytest
import torch

from proxstudy.workers.config import validate_dataset_spec
from proxstudy.workers.data import DataError, Dataset, check_available, clear_cache, load_dataset
from tests.support.data_files import (
    cifar_archive_bytes,
    cifar_arrays,
    md5,
    serve,
    usps_arrays,
    usps_bytes,
    write_cifar_batches,
)


def _load(spec: dict, device: str | torch.device = "cpu") -> Dataset:
    """The loaders take validated specs, as a trial config holds them."""
    return load_dataset(validate_dataset_spec(spec, "<test>"), device)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------------------------- digits


def test_digits_split_and_scaling():
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = _load({"name": "digits"})
    n_val = round(len(raw.data) * 0.2)
    n_train = len(raw.data) - n_val
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.x_train) == n_train and len(data.x_val) == n_val
    assert data.x_test is None and data.y_test is None
    # the held-out split is the LAST examples, pixels divided by the training maximum (16)
    expected_val = raw.data[n_train:].reshape(-1, 1, 8, 8) / raw.data[:n_train].max()
    np.testing.assert_allclose(data.x_val.numpy(), expected_val, rtol=0, atol=1e-7)
    assert torch.equal(data.y_train, torch.as_tensor(raw.target[:n_train]))
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0


def test_digits_options_and_cache():
    small = _load({"name": "digits", "train_samples": 100, "val_fraction": 0.5})
    assert len(small.x_train) == 100 and len(small.x_val) == round(1797 * 0.5)
    assert _load({"name": "digits", "train_samples": 100, "val_fraction": 0.5}) is small
    assert _load({"name": "digits"}) is not small


def test_synthetic_is_deterministic_and_labels_in_range():
    spec = {"name": "synthetic", "n_train": 64, "n_val": 16, "input_shape": [3, 4, 4], "num_classes": 5, "seed": 3}
    first = _load(spec)
    clear_cache()
    second = _load(spec)
    assert first is not second
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_val, second.y_val)
    assert first.x_train.shape == (64, 3, 4, 4) and first.input_shape == (3, 4, 4)
    assert int(first.y_train.max()) < 5 and first.num_classes == 5
    other = _load({**spec, "seed": 4})
    assert not torch.equal(first.x_train, other.x_train)


# ---------------------------------------------------------------------------------- cifar10


def _cifar_spec(root: Path, **extra) -> dict:
    return {"name": "cifar10", "root": str(root), "val_size": 6, **extra}


def test_cifar10_reads_real_pickles(tmp_path):
    arrays = cifar_arrays(4, seed=1)
    write_cifar_batches(tmp_path / "cifar-10-batches-py", arrays)
    data = _load(_cifar_spec(tmp_path))
    train_data = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = functools.reduce(operator.iadd, (arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    top = train_data[:14].max()  # 20 images, last 6 validate
    assert top < 255
    assert data.x_train.shape == (14, 3, 32, 32) and data.x_val.shape == (6, 3, 32, 32)
    assert data.x_test.shape == (4, 3, 32, 32) and data.input_shape == (3, 32, 32)
    np.testing.assert_allclose(data.x_train.numpy().reshape(14, -1), train_data[:14] / top, atol=1e-7)
    np.testing.assert_allclose(data.x_val.numpy().reshape(6, -1), train_data[14:] / top, atol=1e-7)
    # channel-major layout: the first 1024 values are the red plane of image 0
    np.testing.assert_allclose(data.x_train[0, 0].numpy().ravel(), train_data[0, :1024] / top, atol=1e-7)
    assert data.y_train.tolist() == train_labels[:14] and data.y_val.tolist() == train_labels[14:]
    assert data.y_test.tolist() == arrays["test_batch"][1]
    # the .npz cache beside the files gives the same data on the next (uncached) load
    assert (tmp_path / "cifar-10-batches-py" / "proxstudy_cache.npz").is_file()
    clear_cache()
    again = _load(_cifar_spec(tmp_path))
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    subset = _load(_cifar_spec(tmp_path, train_samples=5))
    assert len(subset.x_train) == 5 and torch.equal(subset.y_val, data.y_val)


def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(DataError) as info:
        _load(_cifar_spec(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "download: true" in message
    with pytest.raises(DataError):
        check_available(validate_dataset_spec(_cifar_spec(tmp_path), "<test>"))
    check_available(validate_dataset_spec(_cifar_spec(tmp_path, download=True), "<test>"))  # would download: fine


def test_cifar10_corrupt_pickle_is_a_data_error(tmp_path):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py", cifar_arrays(2))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        _load(_cifar_spec(tmp_path, val_size=2))


def test_cifar10_download_verifies_and_extracts(tmp_path):
    arrays = cifar_arrays(3, seed=2)
    archive = cifar_archive_bytes(arrays)
    root = tmp_path / "data"
    with serve({"cifar-10-python.tar.gz": archive}) as base:
        spec = _cifar_spec(root, download=True, url=f"{base}/cifar-10-python.tar.gz", md5=md5(archive), val_size=5)
        data = _load(spec)
    assert data.x_train.shape == (10, 3, 32, 32) and data.y_test.tolist() == arrays["test_batch"][1]
    # only the extracted folder remains: no archive, no temp files
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]


def test_concurrent_loads_download_once(tmp_path):
    """Parallel trials on one node share one download (the root is locked while fetching)."""
    from concurrent.futures import ThreadPoolExecutor

    archive = cifar_archive_bytes(cifar_arrays(2, seed=4))
    hits: dict[str, int] = {}
    with serve({"cifar-10-python.tar.gz": archive}, hits=hits) as base:
        spec = _cifar_spec(tmp_path, download=True, url=f"{base}/cifar-10-python.tar.gz", md5=md5(archive), val_size=2)
        with ThreadPoolExecutor(3) as pool:
            loaded = list(pool.map(lambda device: _load(spec, device), ["cpu", "cpu:0", torch.device("cpu")]))
    assert hits == {"cifar-10-python.tar.gz": 1}
    assert all(torch.equal(d.x_train, loaded[0].x_train) for d in loaded)


def test_cifar10_corrupt_download_leaves_nothing(tmp_path):
    archive = cifar_archive_bytes(cifar_arrays(2))
    root = tmp_path / "data"
    with serve({"cifar-10-python.tar.gz": archive}) as base:
        spec = _cifar_spec(root, download=True, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32)
        with pytest.raises(DataError, match="md5"):
            _load(spec)
    assert list(root.iterdir()) == []


def test_cifar10_truncated_download_leaves_nothing(tmp_path, monkeypatch):
    archive = cifar_archive_bytes(cifar_arrays(2))
    root = tmp_path / "data"
    with serve({"cifar-10-python.tar.gz": archive}, truncate=frozenset({"cifar-10-python.tar.gz"})) as base:
        # the URL from the environment variable this time
        monkeypatch.setenv("PROXSTUDY_CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
        with pytest.raises(DataError, match=r"truncated|failed"):
            _load(_cifar_spec(root, download=True, md5=md5(archive)))
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------------------------- usps


def _usps_files(n_train: int = 12, n_test: int = 5) -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    train_values, train_labels = usps_arrays(n_train, seed=5)
    test_values, test_labels = usps_arrays(n_test, seed=6)
    return {
        "usps.bz2": (usps_bytes(train_values, train_labels), train_values, train_labels),
        "usps.t.bz2": (usps_bytes(test_values, test_labels), test_values, test_labels),
    }


def test_usps_reads_libsvm_bz2(tmp_path):
    files = _usps_files()
    for name, (payload, _, _) in files.items():
        (tmp_path / name).write_bytes(payload)
    data = _load({"name": "usps", "root": str(tmp_path), "val_size": 2})
    _, values, labels = files["usps.bz2"]
    assert data.input_shape == (1, 16, 16) and data.num_classes == 10
    assert data.x_train.shape == (10, 1, 16, 16) and data.x_val.shape == (2, 1, 16, 16)
    # [-1, 1] -> [0, 1]; omitted (zero) entries come back as 0.5; labels 1..10 -> 0..9
    expected = (values + 1.0) / 2.0
    np.testing.assert_allclose(data.x_train.numpy().reshape(10, 256), expected[:10], atol=1e-6)
    assert float(data.x_train[0, 0, 0, 0]) == 0.0 and float(data.x_train[0, 0, 0, 1]) == 1.0
    assert data.y_train.tolist() == (labels[:10] - 1).tolist()
    assert data.y_test.tolist() == (files["usps.t.bz2"][2] - 1).tolist()


def test_usps_download_good_corrupt_truncated(tmp_path):
    files = _usps_files()
    payloads = {name: content[0] for name, content in files.items()}
    digests = {name: md5(content) for name, content in payloads.items()}
    bad = {**digests, "usps.t.bz2": "f" * 32}

    corrupt_root = tmp_path / "corrupt"
    with serve(payloads) as base, pytest.raises(DataError, match="md5"):
        _load({"name": "usps", "root": str(corrupt_root), "download": True, "url": base, "md5": bad, "val_size": 2})
    # the good first file is not kept either: nothing becomes visible unless all verify
    assert list(corrupt_root.iterdir()) == []

    cut_root = tmp_path / "cut"
    with serve(payloads, truncate=frozenset({"usps.bz2"})) as base, pytest.raises(DataError):
        _load({"name": "usps", "root": str(cut_root), "download": True, "url": base, "md5": digests, "val_size": 2})
    assert list(cut_root.iterdir()) == []

    good_root = tmp_path / "good"
    with serve(payloads) as base:
        data = _load({"name": "usps", "root": str(good_root), "download": True, "url": base + "/", "md5": digests,
                      "val_size": 2})
    assert len(data.x_train) == 10 and len(data.x_test) == 5
    assert (good_root / "usps.bz2").read_bytes() == payloads["usps.bz2"]


def test_usps_malformed_line_names_file_and_line(tmp_path):
    import bz2

    (tmp_path / "usps.bz2").write_bytes(bz2.compress(b"3 1:0.5 2:-0.25\nseven 1:0.1\n"))
    (tmp_path / "usps.t.bz2").write_bytes(bz2.compress(b"3 1:0.5\n"))
    with pytest.raises(DataError, match=r"usps\.bz2:2: "):
        _load({"name": "usps", "root": str(tmp_path), "val_size": 1})


def test_usps_missing_files_message(tmp_path):
    with pytest.raises(DataError) as info:
        _load({"name": "usps", "root": str(tmp_path)})
    assert str(tmp_path / "usps.bz2") in str(info.value) and "download: true" in str(info.value)


def test_default_checksums_are_the_official_ones():
    from proxstudy.workers.datasets import KNOWN_MD5

    assert KNOWN_MD5 == {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197",
        "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118",
    }
