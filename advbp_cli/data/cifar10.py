"""CIFAR-10: the official binary layout, the official python layout (read without unpickling arbitrary objects), the
official archives, and download of the binary archive when nothing usable is on disk.

Everything is verified by content, not by container: each batch, whatever form it came in (`.bin`, `.bin.gz`, a
python pickle, a member of a tar archive), is turned into the 10 000 binary records of the official `.bin` file
(1 label byte + 3072 pixel bytes, R plane then G then B, each 32x32 row-major), and the sha256 of those 30 730 000
bytes must equal the value below. Those values belong to the official `cifar-10-batches-bin` files (whose md5s are
the ones the dataset's authors publish, listed beside them). The python version holds the same images and labels
in the same order, so a python batch must reproduce exactly the same records.

Search order, per batch: DATA_DIR/cifar10/cifar-10-batches-bin/NAME.bin.gz, NAME.bin, then
DATA_DIR/cifar10/cifar-10-batches-py/NAME. Batches still missing are then extracted from an archive in
DATA_DIR/cifar10/ (cifar-10-binary.tar.gz, then cifar-10-python.tar.gz), and, with download on, the binary archive is
downloaded (sha256/md5 of the official archive), extracted, and removed.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataMissing, UsageProblem
from ..files import write_bytes_atomic
from .download import DownloadFailed, download_verified, mirrors_from_env, new_folder
from .spec import DatasetSpec

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCHES = TRAIN_BATCHES + (TEST_BATCH,)
RECORDS_PER_BATCH = 10_000
PIXELS = 3072  # 3 x 32 x 32, R plane, G plane, B plane
RECORD = 1 + PIXELS
BATCH_BYTES = RECORDS_PER_BATCH * RECORD
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"

# Content of the official binary batches (uncompressed NAME.bin): sha256 (checked) and the published md5 (for
# reference: the same files, as listed by the dataset's users; see shared/data/README.md).
SHA256_BIN = {
    "data_batch_1": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}
MD5_BIN = {
    "data_batch_1": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


class Archive:
    def __init__(self, name: str, folder: str, member_suffix: str, size: int, md5: str, sha256: str):
        self.name, self.folder, self.member_suffix = name, folder, member_suffix
        self.size, self.md5, self.sha256 = size, md5, sha256

    def member(self, batch: str) -> str:
        return f"{self.folder}/{batch}{self.member_suffix}"


# The official archives (https://www.cs.toronto.edu/~kriz/cifar.html publishes the md5s; the sizes and sha256s
# are those recorded by independent verifications of the same files, e.g. TFDS's checksum list).
BINARY_ARCHIVE = Archive("cifar-10-binary.tar.gz", BIN_DIR, ".bin", 170_052_171,
                         "c32a1d4ab5d03f1284b67883e8d87530",
                         "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
PYTHON_ARCHIVE = Archive("cifar-10-python.tar.gz", PY_DIR, "", 170_498_071,
                         "c58f30108f718f92721af3b95e74349a",
                         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
ARCHIVES = (BINARY_ARCHIVE, PYTHON_ARCHIVE)
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
ENV_MIRRORS = "ADVBP_CIFAR10_MIRRORS"
MAX_PICKLE_BYTES = 64 << 20  # an official python batch is ~31 MB


def cifar10_folder(data_dir: Path) -> Path:
    return Path(data_dir) / "cifar10"


# --- the restricted unpickler ----------------------------------------------------------------------------------
def _numpy_attr(module: str, name: str):
    for mod in (module.replace("numpy.core", "numpy._core", 1), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _safe_dtype(*args):
    dt = np.dtype(*[a.decode("latin1") if isinstance(a, bytes) else a for a in args[:1]], *args[1:])
    if dt.hasobject:
        raise pickle.UnpicklingError("an array of Python objects is not a CIFAR-10 batch")
    return dt


def _safe_reconstruct(cls, *args):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}: only plain numpy arrays are allowed")
    return _numpy_attr("numpy._core.multiarray", "_reconstruct")(cls, *args)


def _safe_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("an array of Python objects is not a CIFAR-10 batch")
    return _numpy_attr("numpy._core.numeric", "_frombuffer")(buf, dtype, shape, order)


def _safe_codecs_encode(text, encoding="utf-8", *rest):
    # what Python 3 writes for a bytes object at pickle protocol <= 2: _codecs.encode('...', 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class RefusedPickle(Exception):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Loads dicts, lists, tuples, str, bytes, numbers, None/bools (pickle opcodes, no import needed) and plain
    numpy arrays; every other global (a function, a class, os.system, ...) is refused before anything is called."""

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise RefusedPickle(f"{module}.{name}")
        return obj


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


# --- reading one batch into the 30 730 000 bytes of its binary records ----------------------------------------
def _bin_records(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read(BATCH_BYTES + 1)
        with open(path, "rb") as fh:
            return fh.read(BATCH_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageProblem(f"cannot read {path}: truncated or corrupt ({exc})") from None


def _records_from_pickle(data: bytes, where: str) -> bytes:
    try:
        batch = restricted_loads(data)
    except RefusedPickle as exc:
        raise UsageProblem(f"{where} is not a CIFAR-10 batch: it asks to load {exc}, which advbp refuses to "
                           "unpickle (only plain dicts, lists, strings and numpy arrays are read); nothing in it was run") from None
    except Exception as exc:  # truncated or malformed pickle: any exception type can come out of pickle
        raise UsageProblem(f"cannot read {where}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise UsageProblem(f"{where} is not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    get = lambda key: batch.get(key.encode(), batch.get(key))  # noqa: E731 - py2 files give bytes keys
    data_arr, labels = get("data"), get("labels")
    if not isinstance(data_arr, np.ndarray) or data_arr.dtype != np.uint8 or data_arr.shape != (RECORDS_PER_BATCH, PIXELS):
        got = f"{data_arr.dtype} {data_arr.shape}" if isinstance(data_arr, np.ndarray) else type(data_arr).__name__
        raise UsageProblem(f"{where}: 'data' must be uint8 of shape ({RECORDS_PER_BATCH}, {PIXELS}) (got {got})")
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != RECORDS_PER_BATCH:
        raise UsageProblem(f"{where}: 'labels' must be a list of {RECORDS_PER_BATCH} labels")
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UsageProblem(f"{where}: 'labels' must be integers 0-9") from None
    if lab.ndim != 1 or lab.min() < 0 or lab.max() > 9:
        raise UsageProblem(f"{where}: 'labels' must be integers 0-9")
    rec = np.empty((RECORDS_PER_BATCH, RECORD), np.uint8)
    rec[:, 0] = lab
    rec[:, 1:] = data_arr
    return rec.tobytes()


def _py_records(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise UsageProblem(f"{path} is {size} bytes, too large for a CIFAR-10 python batch")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    return _records_from_pickle(data, str(path))


def _check(batch: str, records: bytes, where: str) -> None:
    if len(records) != BATCH_BYTES:
        raise UsageProblem(f"{where} holds {len(records)} bytes of records, a CIFAR-10 batch has {BATCH_BYTES}: "
                           "truncated or corrupt; delete it to download it again, or replace it with the original")
    actual = hashlib.sha256(records).hexdigest()
    if actual != SHA256_BIN[batch]:
        raise UsageProblem(f"{where} is corrupt or not the official {batch} (sha256 of its records {actual[:12]}..., "
                           f"expected {SHA256_BIN[batch][:12]}...); delete it to download it again, or replace it")


def _candidates(data_dir: Path, batch: str) -> list[tuple[Path, str]]:
    folder = cifar10_folder(data_dir)
    return [(folder / BIN_DIR / f"{batch}.bin.gz", "bin"), (folder / BIN_DIR / f"{batch}.bin", "bin"),
            (folder / PY_DIR / batch, "py")]


def locate(data_dir: Path, batch: str) -> tuple[Path, str] | None:
    for path, kind in _candidates(data_dir, batch):
        if path.is_file():
            return path, kind
    return None


# Files verified in this process, keyed by (path, size, mtime): `advbp train` checks before it creates the run
# directory and the trainer loads afterwards; the second pass need not hash 184 MB again.
_verified: dict[tuple[str, int, int], bool] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def read_batch(path: Path, kind: str, batch: str) -> np.ndarray:
    """The batch's records, verified, as a (10000, 3073) uint8 array: column 0 the label, then R, G, B planes."""
    records = _bin_records(path) if kind == "bin" else _py_records(path)
    stamp = _stamp(path)
    if not _verified.get(stamp):
        _check(batch, records, str(path))
        _verified[stamp] = True
    elif len(records) != BATCH_BYTES:  # changed in place without a new mtime: still refuse a short file
        _check(batch, records, str(path))
    return np.frombuffer(records, np.uint8).reshape(RECORDS_PER_BATCH, RECORD)


# --- archives -----------------------------------------------------------------------------------------------------
def _extract(archive_path: Path, archive: Archive, wanted: list[str], data_dir: Path, log) -> list[str]:
    """Reads only the members named after `wanted` batches (regular files at their official paths: nothing else in
    the archive is ever written, so no path in it can escape the data folder), verifies each one's records, and
    writes it atomically where `locate` will find it. Returns the batches extracted."""
    folder = cifar10_folder(data_dir)
    names = {archive.member(b): b for b in wanted}
    done = []
    try:
        with tarfile.open(archive_path, "r:*") as tar:
            for info in tar:
                batch = names.get(info.name.removeprefix("./"))
                if batch is None or batch in done:
                    continue
                if not info.isreg():
                    raise UsageProblem(f"{archive_path}: member {info.name} is not a regular file")
                if info.size > MAX_PICKLE_BYTES:
                    raise UsageProblem(f"{archive_path}: member {info.name} is {info.size} bytes, too large for a batch")
                data = tar.extractfile(info).read()
                where = f"{archive_path} member {info.name}"
                records = data if archive is BINARY_ARCHIVE else _records_from_pickle(data, where)
                _check(batch, records, where)
                dest = folder / archive.folder / f"{batch}{archive.member_suffix}"
                write_bytes_atomic(dest, data)
                _verified[_stamp(dest)] = True
                done.append(batch)
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageProblem(f"cannot read {archive_path}: truncated or corrupt archive ({exc}); delete it to "
                           "download it again, or replace it with the original") from None
    if done:
        log(f"advbp: extracted {', '.join(done)} from {archive_path}")
    return done


def ensure_files(data_dir: Path, download: bool = True, log=print, verify: bool = True) -> dict[str, tuple[Path, str]]:
    """Every CIFAR-10 batch located (and verified unless `verify` is false: `read_batch` verifies anyway),
    extracting from a local archive or downloading the official binary archive for any that are missing.
    Returns batch -> (path, 'bin' | 'py')."""
    data_dir = Path(data_dir)
    found: dict[str, tuple[Path, str]] = {}
    for batch in BATCHES:
        hit = locate(data_dir, batch)
        if hit is not None:
            if verify:
                read_batch(*hit, batch)  # verifies (once per process)
            found[batch] = hit
    missing = [b for b in BATCHES if b not in found]
    folder = cifar10_folder(data_dir)
    for archive in ARCHIVES:
        if missing and (folder / archive.name).is_file():
            _extract(folder / archive.name, archive, missing, data_dir, log)
            missing = [b for b in missing if locate(data_dir, b) is None]
    expected = f"{BIN_DIR}/ or {PY_DIR}/ or {BINARY_ARCHIVE.name}"
    if missing and not download:
        what = "no CIFAR-10 batch" if len(missing) == len(BATCHES) else f"missing {', '.join(missing)}"
        raise DataMissing("CIFAR-10", folder, expected, f"{what}; download is off")
    if missing:
        dest = folder / BINARY_ARCHIVE.name
        mirrors = mirrors_from_env(ENV_MIRRORS, MIRRORS)
        try:
            with new_folder(folder):
                log(f"advbp: downloading {BINARY_ARCHIVE.name} ({BINARY_ARCHIVE.size / 1e6:.0f} MB) into {folder}")
                download_verified(BINARY_ARCHIVE.name, [m + BINARY_ARCHIVE.name for m in mirrors], dest,
                                  BINARY_ARCHIVE.sha256, log=log)
        except DownloadFailed as exc:
            raise DataMissing("CIFAR-10", folder, expected, f"the download failed: {exc.summary}",
                              detail=str(exc)) from None
        try:
            _extract(dest, BINARY_ARCHIVE, missing, data_dir, log)
        finally:
            dest.unlink(missing_ok=True)  # the verified .bin files are kept; the 170 MB archive is not needed
        still = [b for b in missing if locate(data_dir, b) is None]
        if still:
            raise UsageProblem(f"{BINARY_ARCHIVE.name} did not contain {', '.join(still)}")
    for batch in BATCHES:
        if batch not in found:
            found[batch] = locate(data_dir, batch)
    return found


def load_cifar10(data_dir: Path, download: bool = True, log=print) -> dict[str, np.ndarray]:
    """uint8 images (n, 3072) in the binary format's plane order (R 1024, G 1024, B 1024; each 32x32 row-major) and
    uint8 labels: x_train (50000, 3072), y_train, x_test (10000, 3072), y_test, in the official order."""
    files = ensure_files(data_dir, download=download, log=log, verify=False)
    train = np.concatenate([read_batch(*files[b], b) for b in TRAIN_BATCHES])
    test = read_batch(*files[TEST_BATCH], TEST_BATCH)
    return {
        "x_train": np.ascontiguousarray(train[:, 1:]),
        "y_train": np.ascontiguousarray(train[:, 0]),
        "x_test": np.ascontiguousarray(test[:, 1:]),
        "y_test": np.ascontiguousarray(test[:, 0]),
    }


SPEC = DatasetSpec(
    name="cifar10", title="CIFAR-10", description="32x32 RGB images of 10 classes (Table 3)",
    image_shape=(3, 32, 32), classes=len(CLASSES), train_size=len(TRAIN_BATCHES) * RECORDS_PER_BATCH,
    test_size=RECORDS_PER_BATCH, validation_size=10_000,
    files_sha256={f"{batch}.bin": sha for batch, sha in SHA256_BIN.items()},
    module=__name__, loader="load_cifar10",
)

__all__ = ["SPEC", "load_cifar10", "ensure_files", "restricted_loads", "RestrictedUnpickler", "SHA256_BIN", "MD5_BIN",
           "BINARY_ARCHIVE", "PYTHON_ARCHIVE", "CLASSES"]
