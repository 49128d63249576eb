"""Checkpoints: safetensors files (named arrays, no pickle) with the run's config in the metadata, so a
checkpoint alone is enough to rebuild and evaluate its network with any backend, and a run directory's
config.json can be checked against what its weights were trained with (MAY_CHANGE, check_same_record)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .backends import architecture
from .config import RunConfig
from .errors import UsageProblem
from .files import atomic_path

FORMAT = "advbp-checkpoint/1"


OPTIMIZER_PREFIX = "momentum."  # momentum buffers travel in the checkpoint as `momentum.<parameter name>`


def expected_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes: conv.i.weight (out, in, k, k) and conv.i.bias for a conv net's conv layers,
    then layers.i.weight (fan_in, fan_out) and layers.i.bias (see backends.Architecture)."""
    return architecture(model_cfg).param_shapes()


def split_optimizer_state(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(parameters, optimizer state) of a checkpoint's tensors."""
    params = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    state = {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return params, state


# safetensors dtype names of the arrays a checkpoint holds
_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("float16"): "F16",
           np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}
CONFIG_DIGEST = "config_sha256"  # metadata: sha256 of the metadata's config text, checked when it is read


def save_checkpoint(path: Path, params: dict[str, np.ndarray], config_dict: dict, epoch: int, extra=None) -> None:
    """A safetensors file written by advbp itself (through files.atomic_path, so a kill leaves no foreign temporary
    file) with deterministic bytes: tensors in name order, header JSON with sorted keys. Two identical runs give
    checkpoints with the same sha256."""
    config_text = json.dumps(config_dict)
    meta = {"format": FORMAT, "config": config_text, "epoch": str(epoch),
            CONFIG_DIGEST: hashlib.sha256(config_text.encode("utf-8")).hexdigest()}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    arrays = {k: np.ascontiguousarray(v, dtype=np.asarray(v).dtype.newbyteorder("<")) for k, v in sorted(params.items())}
    header: dict = {"__metadata__": meta}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {"dtype": _DTYPES[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            _write_safetensors(fh, head, arrays)


def _write_safetensors(fh, head: bytes, arrays: dict[str, np.ndarray]) -> None:
    fh.write(struct.pack("<Q", len(head)))
    fh.write(head)
    for arr in arrays.values():
        fh.write(memoryview(arr).cast("B"))


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata alone (the header; no tensor is read)."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise UsageProblem(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise UsageProblem(f"{path} is not a readable safetensors checkpoint ({type(exc).__name__}: {exc})") from None
    return _check_metadata(path, meta)


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata, without pickle; any unreadable file is a UsageProblem, not a traceback."""
    try:
        tensors = {}
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except FileNotFoundError:
        raise UsageProblem(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types for malformed headers and data
        raise UsageProblem(f"{path} is not a readable safetensors checkpoint ({type(exc).__name__}: {exc})") from None
    return tensors, _check_metadata(path, meta)


def _check_metadata(path: Path, meta: dict) -> dict:
    if meta.get("format") != FORMAT:
        raise UsageProblem(f"{path} is not an advbp checkpoint (metadata format is {meta.get('format')!r}, expected {FORMAT!r})")
    epoch = meta.get("epoch", "0")
    if not (epoch.isascii() and epoch.isdigit()):
        raise UsageProblem(f"{path} is not a valid advbp checkpoint (metadata epoch is {epoch!r}, expected a whole number)")
    want = meta.get(CONFIG_DIGEST)
    if want is not None and hashlib.sha256(meta.get("config", "").encode("utf-8")).hexdigest() != want:
        raise UsageProblem(f"{path}: the config in its metadata does not have the sha256 the checkpoint records "
                           f"({CONFIG_DIGEST}): the metadata was edited")
    return meta


# The fields of a run's config that may differ between a checkpoint and the config it is used with: how many
# epochs, and where and with how many threads the arithmetic runs. A resume that changes one records it in
# config.json ("resumed"). Every other field, today's and any added later, is the run's identity (model, training,
# data, preprocessing, seed, dtype, ...): a difference is refused. Letting a field change is one line here.
MAY_CHANGE = {
    "train.epochs": "--epochs (a resume may extend a run)",
    "runtime.backend": "--backend",
    "runtime.device": "--device",
    "runtime.threads": "the CPU thread count",
}


def flat_fields(config_dict: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.05}} -> {"train.lr": 0.05}."""
    out = {}
    for k, v in config_dict.items():
        if isinstance(v, dict):
            out.update(flat_fields(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def differing_fields(a: dict, b: dict, identity: bool = True) -> list[str]:
    """The dotted fields where two config dicts differ: the identity fields (not in MAY_CHANGE), or only those in
    MAY_CHANGE (identity=False)."""
    fa, fb = flat_fields(a), flat_fields(b)
    missing = object()
    return sorted(k for k in fa.keys() | fb.keys()
                  if (k not in MAY_CHANGE) == identity and fa.get(k, missing) != fb.get(k, missing))


def config_of(path: Path, meta: dict[str, str]):
    """The RunConfig a checkpoint's metadata records (fields added since it was written take their defaults)."""
    try:
        raw = json.loads(meta.get("config", ""))
    except json.JSONDecodeError:
        raise UsageProblem(f"checkpoint {path} carries no readable config in its metadata") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise UsageProblem(f"checkpoint {path} carries no model config in its metadata")
    try:
        return RunConfig.model_validate(raw)
    except Exception as exc:
        raise UsageProblem(f"the config in {path}'s metadata is not valid: {str(exc).splitlines()[0]}") from None


def check_same_record(path: Path, meta: dict[str, str], cfg, config_origin: str) -> None:
    """A run is one record: the config the checkpoint was trained with (its metadata) and the run's config.json
    must agree in every identity field, not only the architecture. A config.json edited after training (another
    lr, eps, seed, train_limit, preprocessing, dtype...) or a checkpoint copied in from another run is refused,
    naming the fields."""
    saved = config_of(path, meta).model_dump(mode="json")
    want = cfg.model_dump(mode="json")
    diff = differing_fields(saved, want)
    if diff:
        fs, fw = flat_fields(saved), flat_fields(want)
        shown = diff[:4]
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise UsageProblem(
            f"checkpoint {path} was trained with {', '.join(f'{k}={fs.get(k)!r}' for k in shown)} but "
            f"{config_origin} says {', '.join(f'{k}={fw.get(k)!r}' for k in shown)}{more}: the config was edited after "
            "training, or the checkpoint belongs to another run (only "
            f"{', '.join(sorted(MAY_CHANGE))} may differ)"
        )


def check_params(path: Path, params: dict[str, np.ndarray], model_cfg) -> None:
    """The tensors must be exactly the ones the config's architecture needs, with float dtypes; momentum buffers
    (`momentum.<name>`) may come along, one per parameter with its shape, for all parameters or none."""
    want = expected_shapes(model_cfg)
    params, state = split_optimizer_state(params)
    if state:
        want_state = {OPTIMIZER_PREFIX + k: v for k, v in want.items()}
        missing = sorted(set(want_state) - set(state))
        extra = sorted(set(state) - set(want_state))
        if missing or extra:
            raise UsageProblem(f"checkpoint {path} has incomplete momentum buffers: missing {missing or 'none'}, "
                               f"unexpected {extra or 'none'}")
        want = {**want, **want_state}
        params = {**params, **state}
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        conv = (f"conv {'-'.join(map(str, model_cfg.conv_channels))} + "
                if getattr(model_cfg, "arch", "mlp") == "conv" else "")
        raise UsageProblem(
            f"checkpoint {path} does not fit a {conv}{model_cfg.input_size}-{'-'.join(map(str, model_cfg.hidden))}-"
            f"{model_cfg.num_classes} network: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, shape in want.items():
        arr = params[name]
        if tuple(arr.shape) != shape:
            raise UsageProblem(
                f"checkpoint {path}: {name} has shape {tuple(arr.shape)}, but the config's architecture "
                f"(hidden {model_cfg.hidden}) needs {shape}: a checkpoint of another architecture?"
            )
        if arr.dtype not in (np.float32, np.float64):
            raise UsageProblem(f"checkpoint {path}: {name} has dtype {arr.dtype}, expected float32 or float64")
        if not np.isfinite(arr).all():
            raise UsageProblem(f"checkpoint {path}: {name} holds NaN or Inf")
