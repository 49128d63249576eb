"""Input preprocessing, fitted on the training split only and applied to every split alike.

- `scale01` (default): x / 255.
- `simple`: (x - m) / s with ONE scalar mean m and ONE scalar standard deviation s over every pixel value of every
  training image (all channels, all positions). This is the literal reading of the paper ("a simple mean and
  standard deviation normalization over the whole data set") and what the `simple` mode of the DataProvider that
  the author's later code (anokland/dfa-torch) uses does (`Data:add(-Data:mean()):div(Data:std())`). m and s are
  computed exactly from integer sums of the uint8 pixels; s is the population std (ddof 0).
- `zca`: ZCA whitening of x / 255: z = (x/255 - mu) W with W = V diag(1 / sqrt(lambda + eps)) V^T, where mu is the
  per-feature mean and C = V diag(lambda) V^T the per-feature covariance (divided by n) of the training split, and
  eps (`zca_epsilon`) is added to every eigenvalue. This is pylearn2's `ZCA` (filter_bias added to the
  eigenvalues of X^T X / n), the preprocessing of Goodfellow et al.'s maxout and Srivastava et al. 2014's CIFAR-10
  networks (filter_bias 0.1), without the global contrast normalisation they applied first (the paper names ZCA
  only). Their filter_bias 0.1 acted on GCN'd data whose per-pixel mean square is ~1; on x/255, whose per-pixel
  variance is ~0.062 (covariance trace 190), the same relative regularisation is ~0.006-0.01, hence the default
  eps = 0.01. dfa-torch's `unsup.zca_whiten` uses eps 1e-5 on 0-255 pixels, i.e. ~1.5e-10 on x/255: almost no
  regularisation. With eps > 0 the whitened covariance is V diag(lambda / (lambda + eps)) V^T, the identity only
  in the directions whose variance is well above eps (CIFAR-10, x/255: 512 of 3072 eigenvalues exceed 0.01).

The ZCA fit costs a d x d covariance over the training split plus a d x d eigendecomposition (CIFAR-10: d = 3072,
~15 s on one core), so it is cached on disk as an .npz (no pickle) in the per-user cache folder
(~/.cache/advbp/preprocess/DATASET, or under $XDG_CACHE_HOME), named by a key over the sha256 of the training pixels
and every parameter: different data, split or eps get a different file. A damaged cache file is refitted. The data
folder is never written: it may be shared, read-only, or a copy the user wants left exactly as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import UsageProblem
from ..files import atomic_path
from .paths import default_cache_dir

KINDS = ("scale01", "simple", "zca")
DEFAULT_ZCA_EPSILON = 0.01
ZCA_VERSION = "zca/1"  # bump when the computation changes: old cache files then stop matching
CHUNK = 4096


def data_sha256(x_uint8: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((x_uint8.dtype.str, x_uint8.shape)).encode())
    h.update(np.ascontiguousarray(x_uint8).data)
    return h.hexdigest()


class Preprocessor:
    kind = "scale01"

    def apply(self, x_uint8: np.ndarray, dtype: str) -> np.ndarray:
        return x_uint8.astype(dtype) / np.asarray(255, dtype=dtype)

    def describe(self) -> dict:
        return {"kind": self.kind}


class Scale01(Preprocessor):
    pass


class Simple(Preprocessor):
    kind = "simple"

    def __init__(self, mean: float, std: float, n: int):
        self.mean, self.std, self.n = float(mean), float(std), int(n)  # in 0-255 pixel units

    @classmethod
    def fit(cls, x_uint8: np.ndarray) -> "Simple":
        count = x_uint8.size
        s1 = s2 = 0
        for start in range(0, len(x_uint8), CHUNK):
            block = x_uint8[start : start + CHUNK].astype(np.int64)
            s1 += int(block.sum())
            s2 += int((block * block).sum())
        # exact in integers: var = (count * s2 - s1^2) / count^2
        var = (count * s2 - s1 * s1) / (count * count)
        if var <= 0:
            raise UsageProblem("preprocess 'simple': every training pixel has the same value (std 0)")
        return cls(s1 / count, var**0.5, len(x_uint8))

    def apply(self, x_uint8, dtype):
        out = np.empty(x_uint8.shape, dtype=dtype)
        for start in range(0, len(x_uint8), CHUNK):
            block = x_uint8[start : start + CHUNK].astype(np.float64)
            out[start : start + CHUNK] = (block - self.mean) / self.std
        return out

    def describe(self):
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "units": "0-255 pixel values",
                "scope": "one scalar over the whole training split", "fit_samples": self.n}


class ZCA(Preprocessor):
    kind = "zca"

    def __init__(self, mean: np.ndarray, whiten: np.ndarray, eigenvalues: np.ndarray, epsilon: float, meta: dict,
                 cache_file: Path | None = None, cache_hit: bool = False):
        self.mean, self.whiten, self.eigenvalues = mean, whiten, eigenvalues
        self.epsilon, self.meta, self.cache_file, self.cache_hit = float(epsilon), meta, cache_file, cache_hit

    @classmethod
    def compute(cls, x_uint8: np.ndarray, epsilon: float, meta: dict | None = None) -> "ZCA":
        """Fits on x_uint8 (n, d) without any cache."""
        n, d = x_uint8.shape
        mean = x_uint8.sum(axis=0, dtype=np.int64) / (255.0 * n)
        cov = np.zeros((d, d))
        for start in range(0, n, CHUNK):
            block = x_uint8[start : start + CHUNK] / 255.0 - mean
            cov += block.T @ block
        cov /= n
        cov = (cov + cov.T) / 2
        lam, vec = np.linalg.eigh(cov)
        lam = np.clip(lam, 0.0, None)  # rounding can leave the smallest a hair below zero
        whiten = (vec / np.sqrt(lam + epsilon)) @ vec.T
        whiten = (whiten + whiten.T) / 2
        return cls(mean, whiten, lam, epsilon, meta or {})

    def apply(self, x_uint8, dtype):
        # computed in the run's dtype (float32 halves the cost of the d x d product; its rounding is the run's own)
        out = np.empty(x_uint8.shape, dtype=dtype)
        mean, whiten = self.mean.astype(dtype), self.whiten.astype(dtype)
        for start in range(0, len(x_uint8), CHUNK):
            block = x_uint8[start : start + CHUNK].astype(dtype) / np.asarray(255, dtype=dtype) - mean
            np.matmul(block, whiten, out=out[start : start + CHUNK])
        return out

    def describe(self):
        return {"kind": self.kind, "epsilon": self.epsilon, "input": "x/255", "key": self.meta.get("key"),
                "data_sha256": self.meta.get("data_sha256"), "fit_samples": self.meta.get("n"),
                "cache_file": str(self.cache_file) if self.cache_file else None}


# --- the ZCA cache ------------------------------------------------------------------------------------------------
def _writable(folder: Path) -> bool:
    """Whether files may be created in `folder` (or in its nearest existing parent, where it would be made): the
    permission bits are respected even for root, so a data folder published read-only (r-x) is left alone."""
    folder = Path(folder).absolute()
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return folder.is_dir() and bool(mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def cache_dirs(dataset: str) -> list[Path]:
    """Where ZCA fits are looked for and saved: the per-user cache folder (~/.cache/advbp/preprocess/DATASET or
    $XDG_CACHE_HOME's), never the data folder (see the module docstring)."""
    return [default_cache_dir() / "preprocess" / dataset]


def zca_key(x_uint8: np.ndarray, epsilon: float) -> dict:
    meta = {"version": ZCA_VERSION, "epsilon": float(epsilon), "input": "x/255", "covariance": "X^T X / n",
            "n": int(x_uint8.shape[0]), "features": int(x_uint8.shape[1]), "data_sha256": data_sha256(x_uint8)}
    meta["key"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return meta


def cache_name(meta: dict) -> str:
    return f"zca-eps{meta['epsilon']:g}-n{meta['n']}-{meta['key'][:16]}.npz"


def _load_cached(path: Path, meta: dict) -> ZCA | None:
    d = meta["features"]
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"][()]))
            mean, whiten, lam = z["mean"], z["whiten"], z["eigenvalues"]
    except Exception:  # truncated zip, missing member, bad json: any of them means refit
        return None
    if stored != meta or mean.shape != (d,) or whiten.shape != (d, d) or lam.shape != (d,):
        return None
    if not (np.isfinite(mean).all() and np.isfinite(whiten).all() and np.isfinite(lam).all()):
        return None
    return ZCA(mean.astype(np.float64), whiten.astype(np.float64), lam.astype(np.float64), meta["epsilon"], meta,
               cache_file=path, cache_hit=True)


def _save(zca: ZCA, dirs: list[Path], log) -> Path | None:
    name = cache_name(zca.meta)
    for folder in dirs:
        if not _writable(folder):
            continue
        path = folder / name
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, mean=zca.mean, whiten=zca.whiten, eigenvalues=zca.eigenvalues,
                             meta=np.array(json.dumps(zca.meta, sort_keys=True)))
            return path
        except OSError as exc:
            log(f"advbp: cannot cache the ZCA fit in {folder} ({exc.strerror or exc}); trying the next place")
    log("advbp: the ZCA fit could not be cached anywhere; it will be computed again next time")
    return None


def fit_zca(x_uint8: np.ndarray, epsilon: float = DEFAULT_ZCA_EPSILON, dirs: list[Path] | None = None,
            log=print) -> ZCA:
    """The ZCA fit of x_uint8, from the cache when a matching file exists, else computed and cached."""
    if not epsilon > 0 or not np.isfinite(epsilon):
        raise UsageProblem(f"invalid value for zca_epsilon: must be a finite number > 0 (got {epsilon!r})")
    meta = zca_key(x_uint8, epsilon)
    dirs = list(dirs or [])
    for folder in dirs:
        path = folder / cache_name(meta)
        if path.is_file():
            hit = _load_cached(path, meta)
            if hit is not None:
                return hit
            log(f"advbp: {path} is damaged or does not match the data; fitting ZCA again")
    n, d = x_uint8.shape
    log(f"advbp: fitting ZCA whitening (eps {epsilon:g}) on {n} training images: a {d}x{d} covariance and its "
        "eigendecomposition, cached for later runs")
    t = time.perf_counter()
    zca = ZCA.compute(x_uint8, epsilon, meta)
    zca.meta = meta
    zca.cache_file = _save(zca, dirs, log) if dirs else None
    log(f"advbp: ZCA fitted in {time.perf_counter() - t:.1f} s" + (f", cached in {zca.cache_file}" if zca.cache_file else ""))
    return zca


def fit(kind: str, x_train_uint8: np.ndarray, *, zca_epsilon: float = DEFAULT_ZCA_EPSILON,
        cache: list[Path] | None = None, log=print) -> Preprocessor:
    """The preprocessing `kind`, fitted on the training split `x_train_uint8` (uint8, (n, d))."""
    if kind == "scale01":
        return Scale01()
    if kind == "simple":
        return Simple.fit(x_train_uint8)
    if kind == "zca":
        return fit_zca(x_train_uint8, zca_epsilon, cache, log=log)
    raise UsageProblem(f"unknown preprocessing {kind!r} (accepted: {', '.join(KINDS)})")
