"""Data sets a trial trains on, as whole tensors on the trial's device.

Why whole tensors: the paper's data sets fit in (GPU) memory, and mini-batches cut by index
slicing of a permutation cost nothing next to a ProxProp step, whereas a per-sample DataLoader
would dominate small models. Loaded sets are cached per process, keyed by (spec, device), so
many trials in one worker do not reload.

Sets (their options are listed in the catalog, workers/datasets.py, and validated by
workers/config.py; the functions here take validated specs):
  digits     sklearn's bundled 8x8 digits; the last `val_fraction` (0.2) is validation.
  cifar10    the python pickle batches (cifar-10-batches-py/) under `root`; the paper's split:
             the last `val_size` (5,000) of the 50,000 training images validate; test_batch
             is the test set.
  usps       the LIBSVM files usps.bz2 / usps.t.bz2 under `root` (16x16, values in [-1, 1]);
             the last `val_size` (729) training images validate; usps.t is the test set.
  synthetic  deterministic data labelled by a random linear teacher (tests, benchmarks).
Pixels are divided by the training maximum (the paper's CIFAR scaling), so inputs lie in
[0, 1]; `train_samples: N` keeps the first N training examples.

`download: true` fetches missing files from `url` (default the catalog's official address, or
the PROXSTUDY_CIFAR10_URL / PROXSTUDY_USPS_URL environment variables), checks the md5 (the known
digests in the catalog's KNOWN_MD5, or the spec's `md5` option), and only then moves them into
place, so a truncated or corrupt download is never used and leaves nothing behind.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proxstudy.errors import DataError
from proxstudy.files import atomic_output
from proxstudy.workers.datasets import CATALOG, KNOWN_MD5

__all__ = [
    "DataError",
    "Dataset",
    "check_available",
    "clear_cache",
    "load_dataset",
]


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    input_shape: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# where file-backed sets come from

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_TRAIN_BATCHES, "test_batch")

_CHUNK = 1 << 20


def _source_url(spec: Mapping, file_name: str) -> str:
    name = spec["name"]
    info = CATALOG[name]
    url = spec.get("url") or os.environ.get(info.url_env or "") or info.default_url or ""
    if name == "usps":
        return url.rstrip("/") + "/" + file_name
    return url


def _expected_md5(spec: Mapping, file_name: str) -> str:
    return (spec.get("md5") or {}).get(file_name, KNOWN_MD5[file_name])


def _missing(spec: Mapping) -> list[Path]:
    root = Path(spec["root"])
    if spec["name"] == "cifar10":
        return [root / CIFAR_DIR / f for f in CIFAR_FILES if not (root / CIFAR_DIR / f).is_file()]
    return [root / f for f in CATALOG["usps"].download_files if not (root / f).is_file()]


def _how_to_get(spec: Mapping) -> str:
    root = spec["root"]
    if spec["name"] == "cifar10":
        archive = CATALOG["cifar10"].download_files[0]
        return (
            f"set download: true in the dataset spec to fetch {_source_url(spec, archive)}, "
            f"or extract cifar-10-python.tar.gz so that {root}/{CIFAR_DIR}/ holds {', '.join(CIFAR_FILES)}"
        )
    return (
        f"set download: true in the dataset spec to fetch them from {_source_url(spec, '')}, "
        f"or put usps.bz2 and usps.t.bz2 (LIBSVM multiclass 'usps') into {root}/"
    )


def check_available(spec: Mapping, source: str = "<config>", field: str = "dataset") -> None:
    """Raise DataError now (in the driver), naming the file ``source`` and the ``root`` field,
    when a validated spec's data cannot be had: a root that is a file, files missing with
    download off, or a root that a download could not create. Trials would all fail later."""
    if not CATALOG[spec["name"]].file_backed:
        return
    where = f"{source}: {field}.root"
    root = Path(spec["root"])
    if root.exists() and not root.is_dir():
        raise DataError(f"{where}: {root} is a file, not a directory")
    if spec["download"]:
        existing = next((p for p in (root, *root.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise DataError(f"{where}: {existing} is a file, so the download cannot create {root}")
        return
    missing = _missing(spec)
    if missing:
        raise DataError(f"{where}: {missing[0]} not found; {_how_to_get(spec)}")


# --------------------------------------------------------------------------------------------
# downloading (atomic: temp file in root -> md5 check -> rename)


@contextlib.contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """Serialise downloads into one root: parallel trials on a node would otherwise all fetch.
    The lock is on the directory itself, so no lock file is left behind."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fetch_verified(url: str, md5: str, directory: Path, file_name: str) -> Path:
    """Download `url` into a temp file in `directory`; return it once its md5 matches.
    Raise DataError (and delete the temp file) on any network error, truncation or mismatch."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    length = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                raise DataError(f"downloading {url} failed: {exc}; {file_name} was not saved") from None
        if length is not None and received != int(length):
            raise DataError(f"downloading {url}: truncated ({received} of {length} bytes); {file_name} was not saved")
        if digest.hexdigest() != md5:
            raise DataError(
                f"downloading {url}: md5 {digest.hexdigest()} does not match the expected {md5} "
                f"(corrupt or truncated download, or a different file); {file_name} was not saved"
            )
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_members(archive: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    members = []
    for member in archive.getmembers():
        path = (target / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not path.is_relative_to(target.resolve()):
            raise DataError(f"archive member {member.name!r} is not a plain file inside the archive's folder")
        members.append(member)
    return members


def _download_cifar10(spec: Mapping) -> None:
    root = Path(spec["root"])
    file_name = CATALOG["cifar10"].download_files[0]
    with _root_lock(root):
        if not _missing(spec):  # another trial finished the download meanwhile
            return
        if (root / CIFAR_DIR).exists():
            raise DataError(
                f"{root / CIFAR_DIR} exists but is incomplete (missing {_missing(spec)[0].name}); "
                "remove it and run again with download: true"
            )
        archive_path = _fetch_verified(_source_url(spec, file_name), _expected_md5(spec, file_name), root, file_name)
        staging = Path(tempfile.mkdtemp(prefix=".cifar10-extract.", dir=root))
        try:
            try:
                with tarfile.open(archive_path, "r:gz") as archive:
                    members = _safe_members(archive, staging)
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                        archive.extractall(staging, members=members, filter="data")
                    else:
                        archive.extractall(staging, members=members)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"extracting {file_name} failed: {exc}") from None
            extracted = staging / CIFAR_DIR
            absent = [f for f in CIFAR_FILES if not (extracted / f).is_file()]
            if absent:
                raise DataError(f"{file_name} has no {CIFAR_DIR}/{absent[0]}; not a CIFAR-10 python archive")
            os.replace(extracted, root / CIFAR_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            archive_path.unlink(missing_ok=True)


def _download_usps(spec: Mapping) -> None:
    root = Path(spec["root"])
    with _root_lock(root):
        fetched: list[tuple[Path, Path]] = []
        try:
            for file_name in CATALOG["usps"].download_files:
                if not (root / file_name).is_file():
                    tmp = _fetch_verified(_source_url(spec, file_name), _expected_md5(spec, file_name), root, file_name)
                    fetched.append((tmp, root / file_name))
        except BaseException:
            for tmp, _ in fetched:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in fetched:  # both verified: only now do they become visible
            os.replace(tmp, final)


def _ensure_files(spec: Mapping) -> None:
    missing = _missing(spec)
    if not missing:
        return
    if not spec["download"]:
        raise DataError(f"{spec['name']}: {missing[0]} not found; {_how_to_get(spec)}")
    (_download_cifar10 if spec["name"] == "cifar10" else _download_usps)(spec)


# --------------------------------------------------------------------------------------------
# readers: each returns host arrays (x uint8/float32 N x C x H x W, y int64)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                        "re-extract cifar-10-python.tar.gz") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected data N x 3072 and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar10(spec: Mapping) -> dict[str, np.ndarray]:
    folder = Path(spec["root"]) / CIFAR_DIR
    cache = folder / "proxstudy_cache.npz"
    newest = max((folder / f).stat().st_mtime for f in CIFAR_FILES)
    if cache.is_file() and cache.stat().st_mtime >= newest:
        try:
            with np.load(cache) as stored:
                return {k: stored[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: rebuild it from the batches
    parts = [_read_cifar_batch(folder / f) for f in CIFAR_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    arrays = {
        "x": np.concatenate([p[0] for p in parts]),
        "y": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
    }
    with contextlib.suppress(OSError), atomic_output(cache, "wb") as handle:  # read-only folder: no cache
        np.savez(handle, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"])
    return arrays


def _read_libsvm_usps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    try:
        with bz2.open(path, "rt", encoding="ascii") as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                row = np.zeros(256, dtype=np.float32)  # LIBSVM omits zero entries
                try:
                    label = int(float(fields[0]))
                    for item in fields[1:]:
                        index, value = item.split(":")
                        row[int(index) - 1] = float(value)
                except (ValueError, IndexError):
                    raise DataError(f"{path}:{number}: not a LIBSVM line with 256 features") from None
                if not 1 <= label <= 10:
                    raise DataError(f"{path}:{number}: label {label} outside 1..10")
                xs.append(row)
                ys.append(label - 1)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); delete it and download again") from None
    if not xs:
        raise DataError(f"{path}: no examples")
    x = (np.stack(xs) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
    return x.reshape(-1, 1, 16, 16).astype(np.float32), np.asarray(ys, dtype=np.int64)


def _read_usps(spec: Mapping) -> dict[str, np.ndarray]:
    root = Path(spec["root"])
    x, y = _read_libsvm_usps(root / "usps.bz2")
    x_test, y_test = _read_libsvm_usps(root / "usps.t.bz2")
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _split(spec: Mapping, x: np.ndarray, y: np.ndarray, n_val: int) -> dict[str, np.ndarray]:
    if n_val >= len(x):
        raise DataError(f"{spec['name']}: validation size {n_val} leaves no training examples of {len(x)}")
    n_train = len(x) - n_val
    keep = spec.get("train_samples", n_train)
    if keep > n_train:
        raise DataError(f"{spec['name']}: train_samples {keep} exceeds the {n_train} training examples")
    return {"x_train": x[:keep], "y_train": y[:keep], "x_val": x[n_train:], "y_val": y[n_train:]}


def _scaled(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Divide every input by the training maximum (the paper's scaling)."""
    top = float(arrays["x_train"].max()) or 1.0
    return {
        k: (v.astype(np.float32) / np.float32(top) if k.startswith("x_") else v) for k, v in arrays.items()
    }


def _load_host(spec: Mapping) -> tuple[dict[str, np.ndarray], int]:
    name = spec["name"]
    if name == "digits":
        # imported here: scikit-learn (with scipy) takes about a second to import, and the
        # sweep driver, which imports this module through the trainables, never loads data
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.data.reshape(-1, 1, 8, 8).astype(np.float32)
        y = bunch.target.astype(np.int64)
        arrays = _split(spec, x, y, round(len(x) * spec["val_fraction"]))
        return _scaled(arrays), 10
    if name == "synthetic":
        return _synthetic(spec), spec["num_classes"]
    _ensure_files(spec)
    raw = _read_cifar10(spec) if name == "cifar10" else _read_usps(spec)
    arrays = _split(spec, raw["x"], raw["y"], spec["val_size"])
    arrays["x_test"], arrays["y_test"] = raw["x_test"], raw["y_test"]
    return _scaled(arrays), 10


def _synthetic(spec: Mapping) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec["seed"])
    shape = tuple(spec["input_shape"])
    n = spec["n_train"] + spec["n_val"]
    features = int(np.prod(shape))
    x = rng.random((n, features), dtype=np.float32)
    teacher = rng.standard_normal((features, spec["num_classes"])).astype(np.float32)
    y = np.argmax((x - 0.5) @ teacher, axis=1).astype(np.int64)
    arrays = _split(spec, x.reshape((n, *shape)), y, spec["n_val"])
    return arrays


# --------------------------------------------------------------------------------------------
# the per-process cache

_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str], Dataset] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def load_dataset(spec: Mapping, device: str | torch.device = "cpu") -> Dataset:
    """The data set a validated spec (``TrialConfig.dataset``, or ``validate_dataset_spec``'s
    result) describes, as tensors on `device` (float32 inputs, int64 labels)."""
    device = torch.device(device)
    key = (json.dumps(spec, sort_keys=True), str(device))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    arrays, num_classes = _load_host(spec)

    def put(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device)

    def put_if_there(name: str) -> torch.Tensor | None:
        return put(name) if arrays.get(name) is not None else None

    dataset = Dataset(
        name=spec["name"],
        x_train=put("x_train"),
        y_train=put("y_train"),
        x_val=put("x_val"),
        y_val=put("y_val"),
        x_test=put_if_there("x_test"),
        y_test=put_if_there("y_test"),
        num_classes=num_classes,
        input_shape=tuple(arrays["x_train"].shape[1:]),
    )
    with _cache_lock:
        _cache[key] = dataset
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return dataset
