"""Issue 6, data side: CIFAR-10 in every official form, verified by content; the restricted unpickler; download of
the binary archive against a local server; `scale01` / `simple` / `zca` preprocessing fitted on the training split
only; the ZCA cache.

The real batches come from the shared data folder (binary layout, .bin.gz). The python layout and the archives are
built here from those real batches, so every loader path is checked against the same official content hashes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from advbp_cli.config import DataConfig, build_config
from advbp_cli.data import cifar10
from advbp_cli.data import preprocess as pp
from advbp_cli.data.cifar10 import BATCHES, BIN_DIR, PY_DIR, TRAIN_BATCHES, load_cifar10
from advbp_cli.data.splits import load_splits, preprocessor_for, split_of
from advbp_cli.errors import UsageProblem


# --- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_bin(data_dir) -> Path:
    folder = data_dir / "cifar10" / BIN_DIR
    if not (folder / "data_batch_1.bin.gz").is_file():
        pytest.fail(f"CIFAR-10 not found in {folder}: set ADVBP_DATA_DIR to the folder holding cifar10/")
    return folder


@pytest.fixture(scope="module")
def raw(data_dir, shared_bin):
    return load_cifar10(data_dir, download=False)


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory):
    """The per-user cache folder ($XDG_CACHE_HOME) points into a temporary folder for this module: the shared data
    folder is read-only, so ZCA fits land there, and nothing outside the test's folders is written."""
    folder = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


def _records(raw, batch: str) -> tuple[np.ndarray, np.ndarray]:
    if batch == "test_batch":
        return raw["x_test"], raw["y_test"]
    i = TRAIN_BATCHES.index(batch)
    sl = slice(i * 10_000, (i + 1) * 10_000)
    return raw["x_train"][sl], raw["y_train"][sl]


def _bin_bytes(raw, batch: str) -> bytes:
    x, y = _records(raw, batch)
    return np.concatenate([y[:, None], x], axis=1).tobytes()


def _link_bin(shared_bin: Path, root: Path, skip=()) -> None:
    """root/cifar10/cifar-10-batches-bin/ with symlinks to the shared .bin.gz files (but `skip`)."""
    folder = root / "cifar10" / BIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for b in BATCHES:
        if b not in skip:
            (folder / f"{b}.bin.gz").symlink_to(shared_bin / f"{b}.bin.gz")


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b) == {"x_train", "y_train", "x_test", "y_test"}
    for k in a:
        assert a[k].dtype == np.uint8 and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


# --- the real files ------------------------------------------------------------------------------------------------
def test_real_files_shapes_balance_first_labels_and_pixels(raw):
    assert raw["x_train"].shape == (50000, 3072) and raw["x_test"].shape == (10000, 3072)
    assert raw["y_train"].shape == (50000,) and raw["y_test"].shape == (10000,)
    assert all(raw[k].dtype == np.uint8 for k in raw)
    assert np.bincount(raw["y_train"], minlength=10).tolist() == [5000] * 10
    assert np.bincount(raw["y_test"], minlength=10).tolist() == [1000] * 10
    assert raw["y_train"][:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # data_batch_1
    assert raw["y_test"][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # test_batch
    # spot checks printed from the python version: R plane first, B plane last
    assert raw["x_train"][0, :3].tolist() == [59, 43, 50]
    assert raw["x_train"][0, -3:].tolist() == [140, 84, 72]
    assert raw["x_train"][9999, :3].tolist() == [62, 61, 60]  # last image of data_batch_1


def test_validation_mode_holds_out_the_last_10000_training_images(raw):
    train = split_of(raw, "train", "validation", "float32")
    val = split_of(raw, "validation", "validation", "float32")
    assert train.indices.tolist() == list(range(40000)) and val.indices.tolist() == list(range(40000, 50000))
    assert len(split_of(raw, "train", "test", "float32").y) == 50000
    np.testing.assert_array_equal(val.y, raw["y_train"][40000:])
    assert train.x.dtype == np.float32 and 0 <= train.x.min() and train.x.max() <= 1


# --- the python layout, read by the restricted unpickler -------------------------------------------------------
def _sbs(b: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING / BINSTRING, loaded as bytes with encoding='bytes'
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _py2_array(a: np.ndarray) -> bytes:
    """What Python 2.7 cPickle (protocol 2) with numpy 1.x writes for a C-contiguous uint8 array."""
    head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _sbs(b"b") + b"\x87R"
    dtype = (b"cnumpy\ndtype\n" + _sbs(b"u1") + _int(0) + _int(1) + b"\x87R(" + _int(3) + _sbs(b"|") + b"NNN"
             + _int(-1) + _int(-1) + _int(0) + b"tb")
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    return head + b"(" + _int(1) + shape + dtype + b"\x89" + _sbs(a.tobytes()) + b"tb"


def _py2_batch(x: np.ndarray, y: np.ndarray, label: bytes) -> bytes:
    out = [b"\x80\x02}(", _sbs(b"batch_label"), _sbs(label), _sbs(b"labels"), b"](",
           b"".join(_int(int(v)) for v in y), b"e", _sbs(b"data"), _py2_array(x), _sbs(b"filenames"), b"](",
           b"".join(_sbs(f"img_{j}.png".encode()) for j in range(len(y))), b"e", b"u."]
    return b"".join(out)


def _py_batch(raw, batch: str, how: str) -> bytes:
    x, y = _records(raw, batch)
    label = f"{batch} (rebuilt for a test)"
    names = [f"img_{j}.png" for j in range(len(y))]
    if how == "py2":
        return _py2_batch(x, y, label.encode())
    if how == "py3-p2-bytes-keys":  # Python 3 at protocol 2 writes bytes through _codecs.encode
        return pickle.dumps({b"batch_label": label.encode(), b"labels": y.tolist(), b"data": x,
                             b"filenames": [n.encode() for n in names]}, protocol=2)
    protocol = {"p4": 4, "p5": 5, "default": None}[how]
    return pickle.dumps({"batch_label": label, "labels": y.tolist(), "data": np.array(x), "filenames": names},
                        protocol=protocol)


PY_FORMS = dict(zip(BATCHES, ["py2", "py3-p2-bytes-keys", "p4", "p5", "default", "py2"]))


@pytest.fixture(scope="module")
def py_layout(raw, tmp_path_factory) -> Path:
    """A data folder holding only cifar-10-batches-py/, each batch pickled a different way (Python 2 cPickle
    emulated byte for byte, Python 3 protocols 2, 4, 5 and the default)."""
    root = tmp_path_factory.mktemp("pylayout")
    folder = root / "cifar10" / PY_DIR
    folder.mkdir(parents=True)
    for batch, how in PY_FORMS.items():
        (folder / batch).write_bytes(_py_batch(raw, batch, how))
    return root


def test_python_layout_loads_identically_through_the_restricted_unpickler(py_layout, raw):
    _assert_same(load_cifar10(py_layout, download=False), raw)


def test_restricted_unpickler_reads_a_python2_batch_as_plain_objects(raw):
    x, y = _records(raw, "data_batch_1")
    d = cifar10.restricted_loads(_py2_batch(x[:3], y[:3], b"training batch 1 of 5"))
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert d[b"labels"] == y[:3].tolist() and d[b"filenames"][0] == b"img_0.png"
    assert type(d[b"data"]) is np.ndarray and d[b"data"].dtype == np.uint8
    np.testing.assert_array_equal(d[b"data"], x[:3])


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(kind: str, marker: Path) -> bytes:
    if kind == "os.system":
        return pickle.dumps({"data": _Payload(os.system, f"touch {marker}"), "labels": [0]})
    if kind == "builtins.exec":
        return pickle.dumps(_Payload(exec, f"open({str(marker)!r}, 'w').close()"))
    if kind == "object-array":  # dtype object: numpy would unpickle arbitrary elements
        return pickle.dumps({"data": np.array([1, "a"], dtype=object), "labels": [0, 1]})
    if kind == "reconstruct-other-class":  # an allowed function called with something other than ndarray
        return b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R."
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "object-array", "reconstruct-other-class"])
def test_hostile_pickle_named_like_a_batch_is_refused_and_not_run(tmp_path, shared_bin, kind):
    marker = tmp_path / "pwned"
    _link_bin(shared_bin, tmp_path, skip=("data_batch_1",))
    (tmp_path / "cifar10" / PY_DIR).mkdir(parents=True)
    (tmp_path / "cifar10" / PY_DIR / "data_batch_1").write_bytes(_hostile(kind, marker))
    with pytest.raises(UsageProblem) as err:
        load_cifar10(tmp_path, download=False)
    msg = str(err.value)
    assert "data_batch_1" in msg and "\n" not in msg
    if kind in ("os.system", "builtins.exec"):
        assert "refuses to unpickle" in msg and ("posix.system" in msg or "builtins.exec" in msg)
    assert not marker.exists()


def test_hostile_pickle_through_advbp_train_exits_2_and_writes_nothing(cli, tmp_path, shared_bin):
    marker = tmp_path / "pwned"
    _link_bin(shared_bin, tmp_path, skip=("data_batch_1",))
    (tmp_path / "cifar10" / PY_DIR).mkdir(parents=True)
    (tmp_path / "cifar10" / PY_DIR / "data_batch_1").write_bytes(_hostile("os.system", marker))
    out = tmp_path / "run"
    r = cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download", "--out", str(out)])
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "posix.system" in lines[0], r.stderr
    assert not marker.exists() and not out.exists()


# --- damaged files ---------------------------------------------------------------------------------------------------
def _damage(kind: str, folder: Path, shared_bin: Path, raw) -> None:
    good = _bin_bytes(raw, "data_batch_1")
    if kind == "truncated-gz":
        gz = (shared_bin / "data_batch_1.bin.gz").read_bytes()
        (folder / BIN_DIR / "data_batch_1.bin.gz").write_bytes(gz[: len(gz) // 2])
    elif kind == "flipped-byte":
        bad = bytearray(good)
        bad[123_456] ^= 0x01
        (folder / BIN_DIR / "data_batch_1.bin").write_bytes(bytes(bad))
    elif kind == "short-bin":
        (folder / BIN_DIR / "data_batch_1.bin").write_bytes(good[: 3073 * 5000])
    elif kind == "wrong-label-py":  # a python batch whose content is not the official one
        x, y = _records(raw, "data_batch_1")
        y = y.copy()
        y[0] = (y[0] + 1) % 10
        (folder / PY_DIR).mkdir()
        (folder / PY_DIR / "data_batch_1").write_bytes(pickle.dumps({"data": x, "labels": y.tolist()}))
    elif kind == "truncated-py":
        (folder / PY_DIR).mkdir()
        (folder / PY_DIR / "data_batch_1").write_bytes(pickle.dumps({"data": _records(raw, "data_batch_1")[0]})[:5000])


@pytest.mark.parametrize("kind,needle", [
    ("truncated-gz", "truncated or corrupt"),
    ("flipped-byte", "corrupt or not the official data_batch_1"),
    ("short-bin", "holds 15365000 bytes"),
    ("wrong-label-py", "corrupt or not the official data_batch_1"),
    ("truncated-py", "cannot read"),
])
def test_damaged_batches_are_refused(tmp_path, shared_bin, raw, kind, needle):
    _link_bin(shared_bin, tmp_path, skip=("data_batch_1",))
    _damage(kind, tmp_path / "cifar10", shared_bin, raw)
    for download in (False, True):  # a damaged file is reported, never silently replaced by a download
        with pytest.raises(UsageProblem, match=needle):
            load_cifar10(tmp_path, download=download)


def test_missing_batches_without_download_name_them(tmp_path, shared_bin):
    _link_bin(shared_bin, tmp_path, skip=("data_batch_4", "test_batch"))
    with pytest.raises(UsageProblem, match="missing.*data_batch_4, test_batch.*download is off"):
        load_cifar10(tmp_path, download=False)


# --- archives and download -----------------------------------------------------------------------------------------
def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def binary_archive(raw, tmp_path_factory) -> Path:
    """cifar-10-binary.tar.gz rebuilt from the real batches (same members as the official archive, including the
    meta and readme files). Its own md5/sha256 differ from the official archive's (other gzip and tar headers);
    its members' content is the official content."""
    path = tmp_path_factory.mktemp("archive") / cifar10.BINARY_ARCHIVE.name
    members = {f"{BIN_DIR}/batches.meta.txt": "\n".join(cifar10.CLASSES).encode() + b"\n",
               f"{BIN_DIR}/readme.html": b"<html></html>"}
    members.update({f"{BIN_DIR}/{b}.bin": _bin_bytes(raw, b) for b in BATCHES})
    _tar_gz(path, members)
    return path


def test_local_binary_archive_is_extracted_verified_and_loads(tmp_path, binary_archive, raw):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / binary_archive.name).symlink_to(binary_archive)
    logs = []
    _assert_same(load_cifar10(tmp_path, download=False, log=logs.append), raw)
    assert sorted(p.name for p in (tmp_path / "cifar10" / BIN_DIR).iterdir()) == sorted(f"{b}.bin" for b in BATCHES)
    assert (tmp_path / "cifar10" / binary_archive.name).exists()  # the user's own archive is left alone
    assert any("extracted" in m for m in logs)


def test_local_python_archive_is_extracted_through_the_restricted_unpickler(tmp_path, py_layout, raw):
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / "cifar10" / cifar10.PYTHON_ARCHIVE.name, "w:gz", compresslevel=0) as tar:
        for b in BATCHES:
            tar.add(py_layout / "cifar10" / PY_DIR / b, arcname=f"{PY_DIR}/{b}")
    _assert_same(load_cifar10(tmp_path, download=False), raw)
    assert sorted(p.name for p in (tmp_path / "cifar10" / PY_DIR).iterdir()) == sorted(BATCHES)


def test_archive_members_cannot_escape_or_link(tmp_path, shared_bin):
    root = tmp_path / "data"
    _link_bin(shared_bin, root, skip=("data_batch_2",))
    path = root / "cifar10" / cifar10.BINARY_ARCHIVE.name
    with tarfile.open(path, "w:gz") as tar:
        for name in ("../escaped.bin", f"{BIN_DIR}/../../escaped2.bin", str(tmp_path / "absolute.bin")):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        link = tarfile.TarInfo(f"{BIN_DIR}/data_batch_2.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UsageProblem, match="data_batch_2.bin is not a regular file"):
        load_cifar10(root, download=False)
    found = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert not any("escaped" in f or "absolute" in f for f in found)
    assert not (root / "cifar10" / BIN_DIR / "data_batch_2.bin").exists()


class _Server:
    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(binary_archive, monkeypatch):
    s = _Server({f"/good/{binary_archive.name}": binary_archive.read_bytes()})
    monkeypatch.setenv(cifar10.ENV_MIRRORS, f"{s.url}/missing/,{s.url}/good/")
    yield s
    s.close()


def test_download_of_the_binary_archive_from_a_local_server(tmp_path, server, binary_archive, raw, monkeypatch):
    # The official archive cannot be served offline, so the archive's own checksum is set to the rebuilt one's.
    # What protects the data is unchanged: every member is still checked against the official content hashes.
    import hashlib

    monkeypatch.setattr(cifar10.BINARY_ARCHIVE, "sha256", hashlib.sha256(binary_archive.read_bytes()).hexdigest())
    logs = []
    _assert_same(load_cifar10(tmp_path, download=True, log=logs.append), raw)
    name = binary_archive.name
    assert server.hits == [f"/missing/{name}", f"/good/{name}"]  # a 404 moves on to the next mirror
    folder = tmp_path / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == [BIN_DIR]  # the archive is removed, no temporary file left
    assert sorted(p.name for p in (folder / BIN_DIR).iterdir()) == sorted(f"{b}.bin" for b in BATCHES)
    assert any("downloading" in m for m in logs)
    hits = len(server.hits)
    _assert_same(load_cifar10(tmp_path, download=True), raw)
    assert len(server.hits) == hits  # present now: nothing downloaded again


def test_download_with_the_official_checksum_refuses_other_bytes_and_keeps_nothing(tmp_path, server):
    # unpatched: the rebuilt archive is not byte-identical to the official one, so it must be refused
    with pytest.raises(UsageProblem, match="could not download cifar-10-binary.tar.gz.*does not match"):
        load_cifar10(tmp_path, download=True, log=lambda m: None)
    left = [p for p in (tmp_path / "cifar10").rglob("*")]
    assert left == []


# --- preprocessing -------------------------------------------------------------------------------------------------
def test_config_dataset_preprocess_and_input_size(tmp_path):
    cfg = build_config({}, {"data": {"dataset": "cifar10", "preprocess": "zca"}})
    assert cfg.model.input_size == 3072 and cfg.data.zca_epsilon == pp.DEFAULT_ZCA_EPSILON
    assert build_config({}, {}).model.input_size == 784 and build_config({}, {}).data.preprocess == "scale01"
    with pytest.raises(UsageProblem, match="model.input_size is 784, but cifar10 images have 3072 features"):
        build_config({"model": {"input_size": 784}}, {"data": {"dataset": "cifar10"}})
    with pytest.raises(UsageProblem, match="--zca-epsilon"):
        build_config({}, {"data": {"zca_epsilon": 0}})
    with pytest.raises(UsageProblem, match="--preprocess"):
        build_config({}, {"data": {"preprocess": "pca"}})


@pytest.mark.parametrize("eval_split,n_fit", [("test", 50000), ("validation", 40000)])
@pytest.mark.parametrize("kind", ["simple", "zca"])
def test_preprocessing_is_fitted_on_the_training_split_only(raw, monkeypatch, eval_split, n_fit, kind):
    seen = []

    def fake_fit(kind_, x, **kw):
        seen.append((kind_, x.shape))
        assert np.may_share_memory(x, raw["x_train"]) and x.base is not None  # a view of the first n_fit rows
        return pp.Scale01()

    monkeypatch.setattr(pp, "fit", fake_fit)
    data = DataConfig(dataset="cifar10", preprocess=kind, eval_split=eval_split, train_limit=100)
    preprocessor_for(data, raw)
    assert seen == [(kind, (n_fit, 3072))]  # train_limit does not change what it is fitted on


def test_simple_is_one_scalar_mean_and_std_over_the_training_split(raw):
    for eval_split, n in (("test", 50000), ("validation", 40000)):
        data = DataConfig(dataset="cifar10", preprocess="simple", eval_split=eval_split)
        prep = preprocessor_for(data, raw)
        train = split_of(raw, "train", eval_split, "float64", preprocess=prep)
        assert abs(train.x.mean()) < 1e-9 and abs(train.x.std() - 1) < 1e-9
        assert train.preprocess["kind"] == "simple" and train.preprocess["fit_samples"] == n
        # one scalar for all pixels: the channels keep their own offsets (R brighter than B on CIFAR-10)
        planes = train.x.reshape(-1, 3, 1024).mean(axis=(0, 2))
        assert planes[0] - planes[2] > 0.05
        evaluation = split_of(raw, eval_split, eval_split, "float64", preprocess=prep)
        assert 1e-6 < abs(evaluation.x.mean()) < 0.1  # the held-out images were not used in the fit


@pytest.fixture(scope="module")
def zca_full(raw, data_dir, user_cache):
    """ZCA fitted on all 50 000 training images with a tiny regulariser (eps = 1e-8, below every eigenvalue), as
    `advbp train --dataset cifar10 --preprocess zca --zca-epsilon 1e-8` would fit it, cached in the user cache."""
    t = time.perf_counter()
    zca = pp.fit_zca(raw["x_train"], 1e-8, pp.cache_dirs("cifar10"), log=lambda m: None)
    return zca, time.perf_counter() - t


def test_zca_whitened_training_data_has_near_identity_covariance(raw, zca_full):
    """Exactly, C_white = I - V diag(eps / (lambda + eps)) V^T, so every entry of C_white - I is at most
    eps / (lambda_min + eps) in size: with lambda_min = 1.6e-6 (x/255) and eps = 1e-8 that is 0.0063. The check runs
    on the full 50 000 x 3072 whitened training set, on 96 random pixel columns (96 x 96 entries: diagonal and
    off-diagonal), computed in chunks to keep memory low; `apply` is checked against the same formula."""
    zca, _ = zca_full
    x = raw["x_train"]
    lam_min, eps = zca.eigenvalues.min(), zca.epsilon
    tol = eps / (lam_min + eps) + 1e-6  # + float64 rounding (observed ~6e-4 total, all of it the bound's term)
    assert 1e-6 < lam_min and tol < 0.01  # a real "near identity", not a vacuous bound
    cols = np.sort(np.random.default_rng(0).choice(3072, 96, replace=False))
    w = zca.whiten[:, cols]
    cov, total = np.zeros((96, 96)), np.zeros(96)
    for s in range(0, len(x), 5000):
        z = (x[s : s + 5000] / 255.0 - zca.mean) @ w
        cov += z.T @ z
        total += z.sum(axis=0)
    cov /= len(x)
    assert np.abs(total / len(x)).max() < 1e-9  # zero mean
    dev = np.abs(cov - np.eye(96))
    assert dev.max() <= tol, (dev.max(), tol)
    np.testing.assert_allclose(zca.apply(x[:300], "float64")[:, cols], (x[:300] / 255.0 - zca.mean) @ w,
                               rtol=0, atol=1e-9)
    f32 = zca.apply(x[:300], "float32")
    assert f32.dtype == np.float32  # computed in float32 (the run's dtype): observed max deviation 8e-5
    np.testing.assert_allclose(f32, zca.apply(x[:300], "float64"), rtol=0, atol=1e-3)


def test_zca_cache_is_reused_and_identical(raw, data_dir, zca_full, user_cache):
    first, _ = zca_full
    files = list((user_cache / "advbp" / "preprocess" / "cifar10").glob("zca-*.npz"))
    assert [f.name for f in files] == [first.cache_file.name] and not first.cache_hit
    assert not (data_dir / "cifar10" / "preprocess").exists()  # the read-only data folder is left alone
    again = pp.fit_zca(raw["x_train"], 1e-8, pp.cache_dirs("cifar10"), log=lambda m: None)
    assert again.cache_hit and again.cache_file == first.cache_file
    for a in ("mean", "whiten", "eigenvalues"):
        np.testing.assert_array_equal(getattr(again, a), getattr(first, a))
    # how fast a reuse is belongs to a benchmark, not a test: the reuse is proven by cache_hit and equal arrays


def _small():
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, size=(3000, 1)) * 0.5 + rng.integers(0, 128, size=(3000, 256))).astype(np.uint8)


def test_zca_with_the_default_regulariser_is_identity_only_up_to_it(tmp_path):
    """With eps = 0.01 the whitened covariance is V diag(lambda / (lambda + eps)) V^T: checked against an
    independent eigendecomposition (small data: 3000 x 256)."""
    x = _small()
    zca = pp.fit_zca(x, pp.DEFAULT_ZCA_EPSILON, [tmp_path], log=lambda m: None)
    z = zca.apply(x, "float64")
    cov = z.T @ z / len(x)
    lam, vec = np.linalg.eigh(np.cov(x.T / 255.0, bias=True))
    expected = (vec * (lam / (lam + 0.01))) @ vec.T
    np.testing.assert_allclose(cov, expected, rtol=0, atol=1e-9)
    assert np.abs(z.mean(axis=0)).max() < 1e-12


def test_zca_cache_is_keyed_by_eps_and_data_and_survives_damage(tmp_path):
    x = _small()
    logs = []
    a = pp.fit_zca(x, 0.01, [tmp_path], log=logs.append)
    b = pp.fit_zca(x, 0.1, [tmp_path], log=logs.append)
    c = pp.fit_zca(x[:2000], 0.01, [tmp_path], log=logs.append)
    assert len({a.cache_file, b.cache_file, c.cache_file}) == 3 and len(list(tmp_path.glob("zca-*.npz"))) == 3
    assert not np.allclose(a.whiten, b.whiten)
    # a damaged cache file is refitted, and replaced by a good one
    a.cache_file.write_bytes(a.cache_file.read_bytes()[:1000])
    logs.clear()
    again = pp.fit_zca(x, 0.01, [tmp_path], log=logs.append)
    assert not again.cache_hit and any("damaged" in m for m in logs)
    np.testing.assert_array_equal(again.whiten, a.whiten)
    assert pp.fit_zca(x, 0.01, [tmp_path], log=logs.append).cache_hit
    # a file whose metadata belongs to other data is not used either
    with np.load(b.cache_file) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["data_sha256"] = "0" * 64
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez(b.cache_file.open("wb"), **arrays)
    assert not pp.fit_zca(x, 0.1, [tmp_path], log=logs.append).cache_hit
    assert not list(tmp_path.glob("*.tmp"))


def test_zca_fits_go_to_the_user_cache_never_into_a_data_folder(tmp_path, monkeypatch):
    """A writable data folder is left untouched too: the cache is the only place new fits are written."""
    data = tmp_path / "data" / "cifar10"
    data.mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    zca = pp.fit_zca(_small(), 0.01, pp.cache_dirs("cifar10"), log=lambda m: None)
    assert zca.cache_file.parent == tmp_path / "xdg" / "advbp" / "preprocess" / "cifar10"
    assert list(data.iterdir()) == []
    assert pp.fit_zca(_small(), 0.01, pp.cache_dirs("cifar10"), log=lambda m: None).cache_hit


def test_load_splits_applies_the_runs_zca_and_eval_recomputes_it(cli, data_dir, tmp_path, zca_full, raw):
    """End to end: a CIFAR-10 run with ZCA (the fixture's eps, so the cached fit is reused), then `advbp eval` on
    it gives the run's own last evaluation error: eval applied the same preprocessing."""
    out = tmp_path / "run"
    r = cli(["train", "--dataset", "cifar10", "--preprocess", "zca", "--zca-epsilon", "1e-8", "--hidden", "16",
             "--output", "softmax_ce", "--lr", "0.01", "--batch-size", "50", "--epochs", "1", "--train-limit", "500",
             "--eval-limit", "400", "--backend", "numpy", "--data-dir", str(data_dir), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    assert "fitting ZCA" not in r.stderr  # the cached fit was used
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["data"]["preprocess"] == "zca" and record["config"]["model"]["input_size"] == 3072
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ev = json.loads(cli(["eval", str(out), "--data-dir", str(data_dir), "--limit", "400", "--json"]).stdout)
    assert ev["n"] == 400 and ev["error"] == pytest.approx(rows[-1]["eval_error"], abs=1e-9)
    # and load_splits gives exactly the fixture's transform of the same images
    cfg = build_config(record["config"], {})
    train, _ = load_splits(cfg.data, "float32", data_dir, download=False, log=lambda m: None)
    np.testing.assert_array_equal(train.x, zca_full[0].apply(raw["x_train"][:500], "float32"))
