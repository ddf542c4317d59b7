"""The catalog of data sets: what each one is, which options it takes, where its files come from.

Read by the validation of dataset specs (workers.config: names, options, defaults, input shapes)
and by the loaders (workers.data: files, download addresses, digests), so the two can never
disagree. This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "DATASET_NAMES", "KNOWN_MD5", "DatasetInfo"]

#: Options of every file-backed set besides ``name``.
_FILE_BACKED_OPTIONS = ("root", "download", "url", "md5", "train_samples", "val_size")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    options: tuple[str, ...]  # the spec's keys besides "name"
    #: Per-sample input shape; None where the spec gives it (synthetic).
    input_shape: tuple[int, ...] | None
    #: The files ``download: true`` fetches (file-backed sets only).
    download_files: tuple[str, ...] = ()
    #: cifar10: the archive itself; usps: the folder holding both files.
    default_url: str | None = None
    url_env: str | None = None  # environment variable that overrides default_url
    default_val_size: int | None = None  # the last training examples held out (file-backed)

    @property
    def file_backed(self) -> bool:
        return bool(self.download_files)


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", ("train_samples", "val_fraction"), (1, 8, 8)),
        DatasetInfo(
            "cifar10",
            _FILE_BACKED_OPTIONS,
            (3, 32, 32),
            download_files=("cifar-10-python.tar.gz",),
            default_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            url_env="PROXSTUDY_CIFAR10_URL",
            default_val_size=5000,
        ),
        DatasetInfo(
            "usps",
            _FILE_BACKED_OPTIONS,
            (1, 16, 16),
            download_files=("usps.bz2", "usps.t.bz2"),
            default_url="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/",
            url_env="PROXSTUDY_USPS_URL",
            default_val_size=729,
        ),
        DatasetInfo(
            "synthetic", ("n_train", "n_val", "input_shape", "num_classes", "seed", "train_samples"), None
        ),
    )
}
DATASET_NAMES = tuple(CATALOG)

#: The official files' digests (a spec's ``md5`` option overrides them).
KNOWN_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197",
    "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118",
}
