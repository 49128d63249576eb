"""Attack-set files: the perturbed inputs, the true labels, the indices of the source samples and a manifest.

Two formats, both without pickle:
- npz: one `np.savez` archive per set holding plain numeric arrays `x` (float, exactly as computed), `y` (int64),
  `indices` (int64) and `manifest` (the manifest's JSON as uint8 bytes, so the file is self-contained). Load it
  with `np.load(path, allow_pickle=False)`.
- idx: the classic MNIST files, readable by any MNIST reader: `<name>-images-idx3-ubyte` (uint8, n x 28 x 28,
  pixels round(255 z)), `<name>-labels-idx1-ubyte` (uint8) and `<name>-indices-idx1-int` (big-endian int32),
  described by `<name>.json`. The manifest says the pixels were quantised, and its errors are the errors on the
  quantised images (what a reader gets back), not on the float ones.

Every set also gets a `<name>.json` manifest beside it with the sha256 of its data files, and the output folder a
`manifest.json` listing its sets with the sha256 of their manifests. A folder is written as a whole
(advbp_cli.outdir.StagedWrite) and read only through that chain of digests (`load_set`): a set whose files differ
from what its folder records, or a folder mixing sets of different attacks, is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import outdir
from .attack import preprocess_identity
from .data.download import sha256_of
from .errors import UsageProblem
from .files import atomic_path, loads_finite, write_json_atomic

FORMAT = "advbp-attack-set/1"
DIR_FORMAT = "advbp-attack-dir/1"
DIR_MANIFEST = "manifest.json"

_IDX_UINT8 = 0x08
_IDX_INT32 = 0x0C


@dataclass
class AttackSet:
    x: np.ndarray  # (n, input_size) float
    y: np.ndarray  # (n,) int64 true labels
    indices: np.ndarray  # (n,) int64 positions in the original data file named by manifest["dataset"]["source_file"]
    manifest: dict
    path: Path


def eps_tag(eps: float) -> str:
    """0.25 -> '0.25', 0.05 -> '0.05', 1e-05 -> '1e-05': the shortest text that reads back as the same float."""
    return repr(float(eps))


def files_for(out_dir: Path, name: str, fmt: str) -> dict[str, Path]:
    """Every file one set writes (the manifest last)."""
    if fmt == "npz":
        files = {"data": out_dir / f"{name}.npz"}
    elif fmt == "idx":
        files = {
            "images": out_dir / f"{name}-images-idx3-ubyte",
            "labels": out_dir / f"{name}-labels-idx1-ubyte",
            "indices": out_dir / f"{name}-indices-idx1-int",
        }
    else:
        raise ValueError(fmt)
    files["manifest"] = out_dir / f"{name}.json"
    return files


# --------------------------------------------------------------------------------------------------- quantisation
def quantise(x: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] to uint8: round(255 x), half to even (numpy's rounding). Values outside [0, 1] are a bug
    of the caller (idx sets are always clipped)."""
    return np.rint(np.asarray(x, dtype=np.float64) * 255.0).clip(0, 255).astype(np.uint8)


def dequantise(q: np.ndarray, dtype) -> np.ndarray:
    """uint8 back to [0, 1] exactly as the data loader scales MNIST (advbp_cli.data.splits._scaled)."""
    return q.astype(dtype) / np.asarray(255, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------- IDX
def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = arr.astype(">i4" if code == _IDX_INT32 else np.uint8).tobytes()
    return header + data


def _write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------------------------------------------- write
def write_set(out_dir: Path, name: str, fmt: str, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
              manifest: dict, compress: bool = True) -> dict[str, Path]:
    """Writes one set (data files first, then `<name>.json`); returns the files written. For idx, `x` must
    already be the uint8 images (see `quantise`)."""
    files = files_for(out_dir, name, fmt)
    manifest = dict(manifest, format=FORMAT, name=name, file_format=fmt,
                    files={k: p.name for k, p in files.items() if k != "manifest"})
    if fmt == "npz":
        arrays = {
            "x": np.ascontiguousarray(x),
            "y": np.ascontiguousarray(y, dtype=np.int64),
            "indices": np.ascontiguousarray(indices, dtype=np.int64),
            "manifest": np.frombuffer(json.dumps(manifest).encode("utf-8"), dtype=np.uint8),
        }
        assert all(a.dtype != object for a in arrays.values())
        with atomic_path(files["data"]) as tmp:
            with open(tmp, "wb") as fh:  # a file object, so numpy does not append ".npz" to the temporary name
                (np.savez_compressed if compress else np.savez)(fh, **arrays)
    else:
        assert x.dtype == np.uint8
        shape = manifest["image_shape"]
        _write_bytes(files["images"], _idx_bytes(x.reshape(len(x), *shape), _IDX_UINT8))
        _write_bytes(files["labels"], _idx_bytes(np.asarray(y, dtype=np.uint8), _IDX_UINT8))
        _write_bytes(files["indices"], _idx_bytes(np.asarray(indices, dtype=np.int32), _IDX_INT32))
    manifest["sha256"] = {k: sha256_of(p) for k, p in files.items() if k != "manifest"}
    write_json_atomic(files["manifest"], manifest)
    return files


def write_dir_manifest(out_dir: Path, common: dict, sets: list[dict]) -> Path:
    path = out_dir / DIR_MANIFEST
    write_json_atomic(path, {**common, "format": DIR_FORMAT, "sets": sets})
    return path


# ----------------------------------------------------------------------------------------------------------- read
def _check_manifest(manifest, path: Path) -> dict:
    """The fields eval relies on, with their types: a hand-edited or hostile manifest is refused in one line."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UsageProblem(f"{path} is not an advbp attack set (manifest format {got!r}, expected {FORMAT!r})")

    def bad(field: str, want: str):
        raise UsageProblem(f"{path}: manifest field {field!r} is missing or not {want}")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    if not number(manifest.get("eps")) or manifest["eps"] < 0:
        bad("eps", "a number >= 0")
    clip = manifest.get("clip")
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(number(c) for c in clip)):
        bad("clip", "null or [lo, hi]")
    ds = manifest.get("dataset")
    if not isinstance(ds, dict) or not all(isinstance(ds.get(k), str) for k in ("name", "split", "source_file")):
        bad("dataset", "an object with name, split and source_file")
    if manifest.get("file_format") not in ("npz", "idx"):
        bad("file_format", "npz or idx")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and v and "/" not in v and v not in (".", "..")
                                              for v in files.values()):
        bad("files", "an object of file names in the set's folder")
    if manifest.get("source_error") is not None and not number(manifest["source_error"]):
        bad("source_error", "a number")
    prep = manifest.get("preprocess")
    if prep is not None and not (isinstance(prep, dict) and isinstance(prep.get("kind"), str)):
        bad("preprocess", "an object with a kind")
    if manifest.get("source") is not None and not isinstance(manifest["source"], dict):
        bad("source", "an object")
    if manifest.get("input_shape") is not None and not (
            isinstance(manifest["input_shape"], list) and all(isinstance(d, int) for d in manifest["input_shape"])):
        bad("input_shape", "a list of integers")
    return manifest


def _load_npz(raw: bytes, path: Path) -> AttackSet:
    """An npz set from its (already verified) bytes."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = {"x", "y", "indices", "manifest"} - set(npz.files)
            if missing:
                raise UsageProblem(f"{path} is not an advbp attack set: arrays {sorted(missing)} are missing")
            x, y, indices, raw_manifest = npz["x"], npz["y"], npz["indices"], npz["manifest"]
    except UsageProblem:
        raise
    except ValueError as exc:  # object arrays (pickle) are refused by allow_pickle=False
        raise UsageProblem(f"{path} cannot be read without pickle ({exc}); advbp never loads pickled data") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageProblem(f"{path} is not a readable npz file ({type(exc).__name__}: {exc})") from None
    try:
        manifest = json.loads(raw_manifest.astype(np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UsageProblem(f"{path}: its embedded manifest is not valid JSON") from None
    for name, arr in (("y", y), ("indices", indices)):
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise UsageProblem(f"{path}: array {name!r} must be one-dimensional integers (got {arr.dtype}, shape {arr.shape})")
    return AttackSet(x, y.astype(np.int64), indices.astype(np.int64), _check_manifest(manifest, path), path)


def _idx_array(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in (_IDX_UINT8, _IDX_INT32):
        raise UsageProblem(f"{path} is not an IDX file of uint8 or int32 values")
    code, ndim = raw[2], raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    dtype = np.dtype(np.uint8) if code == _IDX_UINT8 else np.dtype(">i4")
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise UsageProblem(f"{path} declares {expected} bytes of data but holds {len(raw) - offset}: truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _load_idx(raws: dict[str, bytes], folder: Path, manifest: dict, dtype, path: Path) -> AttackSet:
    try:
        names = {k: manifest["files"][k] for k in ("images", "labels", "indices")}
    except KeyError:
        raise UsageProblem(f"{path}: its manifest does not name the images, labels and indices files of its set") from None
    images, labels, indices = (_idx_array(raws[k], folder / names[k]) for k in ("images", "labels", "indices"))
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise UsageProblem(f"{folder / names['images']} and {folder / names['labels']} must hold uint8 values")
    x = dequantise(images.reshape(len(images), -1), dtype)
    return AttackSet(x, labels.astype(np.int64), indices.astype(np.int64), manifest, path)


# ---------------------------------------------------------------------------------------------- verified reads
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def _locate(path: Path) -> tuple[Path, str]:
    """(folder, set name) of a set given as its .npz, its .json manifest or its idx images file."""
    name = path.name
    for suffix in (".npz", ".json", "-images-idx3-ubyte"):
        if name.endswith(suffix) and name != DIR_MANIFEST:
            return path.parent, name[: -len(suffix)]
    raise UsageProblem(f"{path}: expected an attack set's .npz file, its .json manifest or its idx images file")


def _verified(folder: Path, name: str, want: str, recorded_by: Path) -> bytes:
    """The bytes of folder/name, only if their sha256 is the one `recorded_by` records for them."""
    try:
        raw = outdir.read_bytes(folder, name)
    except FileNotFoundError:
        raise UsageProblem(f"{folder / name} is missing, but {recorded_by} lists it") from None
    except OSError as exc:
        raise UsageProblem(f"cannot read {folder / name}: {exc.strerror or exc}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise UsageProblem(f"{folder / name} has sha256 {got[:16]}..., but {recorded_by} records {want[:16]}... for "
                           "it: the file was changed or replaced after 'advbp attack' wrote it")
    return raw


def read_dir_manifest(folder: str | Path) -> dict:
    """A folder's manifest.json (as a committed write left it, see outdir.resolve), with the sha256 of every set's
    manifest; the only record of which sets a folder holds."""
    folder = Path(folder)
    mpath = folder / DIR_MANIFEST
    try:
        raw = outdir.read_bytes(folder, DIR_MANIFEST)
    except FileNotFoundError:
        staged = " ('advbp attack' was interrupted before it finished; run it again)" if (
            folder / outdir.STAGING).exists() else ""
        raise UsageProblem(f"{folder} holds no {DIR_MANIFEST}: not a folder written by 'advbp attack'{staged}") from None
    except OSError as exc:
        raise UsageProblem(f"cannot read {mpath}: {exc.strerror or exc}") from None
    try:
        manifest = loads_finite(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"{mpath} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DIR_FORMAT:
        raise UsageProblem(f"{mpath} is not an advbp attack folder manifest (expected format {DIR_FORMAT!r})")
    sets = manifest.get("sets")
    if not isinstance(sets, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and s.get("manifest") == f"{s['name']}.json"
            and "/" not in s["name"] and isinstance(s.get("eps"), (int, float)) for s in sets):
        raise UsageProblem(f"{mpath}: 'sets' is not a list of {{name, eps, manifest}} entries")
    if not all(isinstance(s.get("manifest_sha256"), str) and _HEX64.match(s["manifest_sha256"]) for s in sets):
        raise UsageProblem(f"{mpath} lists its sets without the sha256 of their manifests (written by an older "
                           "advbp), so they cannot be verified; make them again with 'advbp attack'")
    return manifest


def load_set(path: str | Path, dtype="float32") -> AttackSet:
    """An attack set from its .npz file, its .json manifest or (idx) its images file, used only if every file is
    the one its folder records: the folder's manifest.json lists the set with its manifest's sha256, that manifest
    has the sha256 of each data file, and the set shares the folder's source, data set and attack. Non-finite inputs
    and inputs outside the recorded clipping range are refused too. `dtype` is the float type quantised idx pixels
    are scaled into; npz sets keep the dtype they were written with."""
    path = Path(path)
    if not path.exists() and not outdir.resolve(path.parent, path.name).exists():  # (or still being moved in)
        raise UsageProblem(f"attack set {path} does not exist")
    if path.is_dir():
        raise UsageProblem(f"attack set {path} is a folder; name one of its sets (`advbp eval --attack-set FOLDER` takes all of them)")
    folder, name = _locate(path)
    folder_manifest = read_dir_manifest(folder)
    mpath = folder / DIR_MANIFEST
    entry = next((s for s in folder_manifest["sets"] if s["name"] == name), None)
    if entry is None:
        raise UsageProblem(f"{path} is not one of the sets {mpath} lists, so it cannot be verified: advbp uses only "
                           "sets of a folder written by 'advbp attack'")
    sidecar = folder / entry["manifest"]
    try:
        manifest = _check_manifest(loads_finite(_verified(folder, entry["manifest"], entry["manifest_sha256"], mpath)),
                                   sidecar)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"{sidecar} is not valid JSON ({exc})") from None
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or set(digests) != set(manifest["files"]) or not all(
            isinstance(v, str) and _HEX64.match(v) for v in digests.values()):
        raise UsageProblem(f"{sidecar}: manifest field 'sha256' must give the sha256 of each of its files")
    _same_folder(manifest, folder_manifest, sidecar, mpath)
    raws = {k: _verified(folder, f, digests[k], sidecar) for k, f in manifest["files"].items()}
    if manifest["file_format"] == "npz":
        if "data" not in raws:
            raise UsageProblem(f"{sidecar} does not name its npz file (manifest files.data)")
        aset = _load_npz(raws["data"], folder / manifest["files"]["data"])
        if aset.manifest != {k: v for k, v in manifest.items() if k != "sha256"}:
            raise UsageProblem(f"{folder / manifest['files']['data']}: its embedded manifest differs from {sidecar}")
        aset.manifest, aset.path = manifest, path  # the sidecar also holds the files' sha256
    else:
        aset = _load_idx(raws, folder, manifest, dtype, path)
    _check_arrays(aset, path)
    return aset


def _same_folder(manifest: dict, folder_manifest: dict, sidecar: Path, mpath: Path) -> None:
    """Every set of a folder comes from the folder's one attack: same source checkpoint, data set and attack."""
    for key in ("source", "dataset", "preprocess", "attack"):
        if key in folder_manifest and manifest.get(key) != folder_manifest[key]:
            what = {"source": "source checkpoint", "dataset": "data set", "preprocess": "preprocessing"}.get(key, key)
            raise UsageProblem(f"{sidecar} has another {what} than {mpath} records for the folder: the folder mixes "
                               "sets of different attacks")


def _check_arrays(aset: AttackSet, path: Path) -> None:
    n = len(aset.x)
    if aset.x.ndim != 2 or len(aset.y) != n or len(aset.indices) != n:
        raise UsageProblem(
            f"{path}: inconsistent arrays (x {tuple(aset.x.shape)}, y {tuple(aset.y.shape)}, indices {tuple(aset.indices.shape)})"
        )
    if aset.x.dtype.kind != "f":
        raise UsageProblem(f"{path}: inputs have dtype {aset.x.dtype}, expected float")
    bad = int(np.size(aset.x) - np.isfinite(aset.x).sum())
    if bad:
        raise UsageProblem(f"{path}: {bad} of its inputs are NaN or infinite; a set of non-finite inputs has no error rate")
    clip = aset.manifest.get("clip")
    if clip is not None and n and (aset.x.min() < clip[0] or aset.x.max() > clip[1]):
        raise UsageProblem(f"{path}: inputs range over [{aset.x.min():.6g}, {aset.x.max():.6g}], outside the clipping "
                           f"range [{clip[0]:.6g}, {clip[1]:.6g}] its manifest records")


def sets_in_dir(folder: str | Path) -> list[Path]:
    """The sets of an attack folder (each as its .json manifest), in ascending eps, as its manifest.json lists them."""
    folder = Path(folder)
    sets = read_dir_manifest(folder)["sets"]
    return [folder / s["manifest"] for s in sorted(sets, key=lambda s: s["eps"])]


def same_preprocessing(a: dict | None, b: dict | None) -> bool:
    """Whether two preprocessings (Preprocessor.describe() dicts; None = a set from before preprocessing was
    recorded, i.e. scale01) are the same transform: same kind and fitted parameters."""
    ia, ib = preprocess_identity(a), preprocess_identity(b)
    if ia.keys() != ib.keys():
        return False
    for k in ia:
        va, vb = ia[k], ib[k]
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            if not math.isclose(va, vb, rel_tol=1e-12, abs_tol=0.0):
                return False
        elif va != vb:
            return False
    return True


def check_compatible(aset: AttackSet, cfg, model_label: str, preprocess: dict | None = None) -> None:
    """Refuses a set the model cannot be evaluated on: other data set, other preprocessing (kind or fitted
    parameters; checked when `preprocess`, the model's fitted Preprocessor.describe(), is given), other input
    shape, labels out of range."""
    ds = aset.manifest.get("dataset", {})
    name = ds.get("name") if isinstance(ds, dict) else None
    if name != cfg.data.dataset:
        raise UsageProblem(
            f"attack set {aset.path} was made from data set {name!r}, but {model_label} is a {cfg.data.dataset!r} model"
        )
    if preprocess is not None and not same_preprocessing(aset.manifest.get("preprocess"), preprocess):
        theirs = preprocess_identity(aset.manifest.get("preprocess"))
        ours = preprocess_identity(preprocess)
        what = (f"{theirs['kind']} inputs" if theirs["kind"] != ours["kind"] else
                f"{theirs['kind']} inputs fitted differently ({_fit_text(theirs)} against {_fit_text(ours)})")
        raise UsageProblem(f"attack set {aset.path} holds {what}, but {model_label} takes {ours['kind']} inputs "
                           f"({_fit_text(ours)}); its inputs mean other pixels to this model")
    if aset.x.shape[1] != cfg.model.input_size:
        raise UsageProblem(
            f"attack set {aset.path} has inputs of size {aset.x.shape[1]}, but {model_label} takes inputs of size "
            f"{cfg.model.input_size}"
        )
    declared = aset.manifest.get("input_shape")
    if declared is not None and list(declared) != [aset.x.shape[1]]:
        raise UsageProblem(f"attack set {aset.path}: manifest input_shape {declared} does not match its data {aset.x.shape[1]}")
    if len(aset.y) and (aset.y.min() < 0 or aset.y.max() >= cfg.model.num_classes):
        raise UsageProblem(
            f"attack set {aset.path} has labels outside 0..{cfg.model.num_classes - 1}, the classes of {model_label}"
        )


def _fit_text(identity: dict) -> str:
    def g(v):
        return f"{v:.6g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)

    if identity["kind"] == "simple":
        return f"mean {g(identity['mean'])}, std {g(identity['std'])}"
    if identity["kind"] == "zca":
        return f"eps {identity.get('epsilon')}, key {str(identity.get('key'))[:12]}"
    return "x/255"
