"""Small data files in the REAL on-disk formats, and a loopback HTTP server to download them.

CIFAR-10: python pickles (protocol 2, as the official archive) of dicts with b"data" (uint8,
N x 3072, channel-major) and b"labels", in cifar-10-batches-py/, packed as a .tar.gz.
USPS: LIBSVM text "label idx:val ..." (labels 1..10, values in [-1, 1]) compressed with bz2.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_arrays(n_per_batch: int, seed: int = 0, max_pixel: int = 200) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Per batch file: (uint8 data N x 3072, labels). max_pixel < 255 so scaling by the
    training maximum is distinguishable from dividing by 255."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in CIFAR_BATCHES:
        data = rng.integers(0, max_pixel + 1, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        out[name] = (data, labels)
    return out


def write_cifar_batches(folder: Path, arrays: Mapping[str, tuple[np.ndarray, list[int]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in arrays.items():
        doc = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(doc, handle, protocol=2)
    return folder


def cifar_archive_bytes(arrays: Mapping[str, tuple[np.ndarray, list[int]]]) -> bytes:
    """cifar-10-python.tar.gz content: the batches inside cifar-10-batches-py/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        archive.addfile(folder)
        for name, (data, labels) in arrays.items():
            payload = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def usps_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(values in [-1, 1] with some exact zeros, N x 256; labels 1..10)."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.uniform(-1.0, 1.0, size=(n, 256)), 6)
    values[:, ::7] = 0.0  # LIBSVM omits zeros: the reader must restore them
    values[0, 0], values[0, 1] = -1.0, 1.0
    labels = rng.integers(1, 11, size=n)
    return values, labels


def usps_bytes(values: np.ndarray, labels: np.ndarray) -> bytes:
    lines = []
    for row, label in zip(values, labels, strict=True):
        items = " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row) if v != 0.0)
        lines.append(f"{int(label)} {items}\n")
    return bz2.compress("".join(lines).encode("ascii"))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@contextlib.contextmanager
def serve(
    files: Mapping[str, bytes],
    truncate: frozenset[str] = frozenset(),
    hits: dict[str, int] | None = None,
    held: threading.Event | None = None,
    requested: threading.Event | None = None,
) -> Iterator[str]:
    """Serve `files` (URL path -> bytes) on 127.0.0.1 at a free port; yields the base URL.
    Files named in `truncate` announce their full Content-Length but send only half, then
    close the connection (a download cut off mid-way). `hits` counts requests per file.
    `requested` is set at the first request; while `held` is set, requests wait (a download
    that hangs) until it is cleared."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            if hits is not None:
                hits[name] = hits.get(name, 0) + 1
            if requested is not None:
                requested.set()
            while held is not None and held.is_set():
                time.sleep(0.05)
            if name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in truncate else body)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass  # a client that went away (a killed trial): nothing to report

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
