"""MNIST: the four IDX files (gzip'd or raw), verified by sha256, downloaded from public mirrors if missing."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataMissing, UsageProblem
from .download import DownloadFailed, download_verified, mirrors_from_env, new_folder, sha256_of
from .spec import DatasetSpec

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# sha256 of the .gz files (TFDS's list) and of the uncompressed files (computed from the verified originals).
SHA256_GZ = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
SHA256_RAW = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
ENV_MIRRORS = "ADVBP_MNIST_MIRRORS"


def mnist_folder(data_dir: Path) -> Path:
    return Path(data_dir) / "mnist"


def locate(data_dir: Path, name: str) -> tuple[Path, str] | None:
    """The file for `name` in data_dir/mnist (.gz preferred, raw accepted) and its expected sha256."""
    folder = mnist_folder(data_dir)
    for path, table in ((folder / f"{name}.gz", SHA256_GZ), (folder / name, SHA256_RAW)):
        if path.is_file():
            return path, table[name]
    return None


def ensure_files(data_dir: Path, download: bool, log=print) -> dict[str, Path]:
    """Every MNIST file, verified; missing ones downloaded when `download` is true."""
    found: dict[str, Path] = {}
    missing = []
    for name in FILES:
        hit = locate(data_dir, name)
        if hit is None:
            missing.append(name)
            continue
        path, expected = hit
        actual = sha256_of(path)
        if actual != expected:
            raise UsageProblem(
                f"{path} is truncated or corrupt (sha256 {actual[:12]}..., expected {expected[:12]}...); "
                "delete it to download it again, or replace it with the original file"
            )
        found[name] = path
    folder = mnist_folder(data_dir)
    expected = ", ".join(f"{m}.gz" for m in FILES)
    if missing and not download:
        what = "no MNIST file" if len(missing) == len(FILES) else "missing " + ", ".join(f"{m}.gz" for m in missing)
        raise DataMissing("MNIST", folder, expected, f"{what}; download is off")
    if not missing:
        return found
    mirrors = mirrors_from_env(ENV_MIRRORS, MIRRORS)
    try:
        with new_folder(folder):
            for name in missing:
                dest = folder / f"{name}.gz"
                log(f"advbp: downloading {name}.gz into {folder}")
                download_verified(f"{name}.gz", [m + f"{name}.gz" for m in mirrors], dest, SHA256_GZ[name], log=log)
                found[name] = dest
    except DownloadFailed as exc:
        raise DataMissing("MNIST", folder, expected, f"the download of {name}.gz failed: {exc.summary}",
                          detail=str(exc)) from None
    return found


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd or raw) as a uint8 array; checks the magic number and the declared size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UsageProblem(f"cannot read {path}: {exc}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageProblem(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise UsageProblem(f"{path} declares {expected} values but holds {len(raw) - offset}: truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist(data_dir: Path, download: bool = True, log=print) -> dict[str, np.ndarray]:
    """uint8 images flattened to 784 and uint8 labels: x_train (60000, 784), y_train, x_test (10000, 784), y_test."""
    files = ensure_files(data_dir, download, log=log)
    x_train = read_idx(files["train-images-idx3-ubyte"])
    x_test = read_idx(files["t10k-images-idx3-ubyte"])
    return {
        "x_train": x_train.reshape(len(x_train), -1),
        "y_train": read_idx(files["train-labels-idx1-ubyte"]),
        "x_test": x_test.reshape(len(x_test), -1),
        "y_test": read_idx(files["t10k-labels-idx1-ubyte"]),
    }


SPEC = DatasetSpec(
    name="mnist", title="MNIST", description="handwritten digits, 28x28 grey (Table 2)",
    image_shape=(1, 28, 28), classes=10, train_size=60_000, test_size=10_000, validation_size=10_000,
    files_sha256={f"{name}.gz": SHA256_GZ[name] for name in FILES},
    module=__name__, loader="load_mnist", idx_image_shape=(28, 28),
)
