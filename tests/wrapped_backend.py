"""A backend that exists only in the tests: numpy arithmetic behind another array type, `Wrapped`.

It is what adding a backend takes: one module of primitives (this file) and one registry line
(`register_backend("wrapped", "wrapped_backend")`, in tests/conftest.py's `wrapped_backend` fixture). Each
primitive unwraps its arguments, calls the numpy primitive of the same name and wraps the result. A Wrapped array
offers only the array protocol that backends/numpy.py's docstring promises (.shape, .reshape, first-axis indexing,
+ - * with Wrapped arrays and Python numbers, in place too) and refuses numpy: `__array_ufunc__ = None` and no
`__array__`, so shared code that called numpy, or a primitive of another backend, on a backend's array would fail
here instead of passing silently.
"""

from __future__ import annotations

import numpy as np

from advbp_cli.backends import numpy as spec


class Wrapped:
    __slots__ = ("a",)
    __array_ufunc__ = None  # numpy must not compute with it: np.add(ndarray, Wrapped) raises TypeError

    def __init__(self, a: np.ndarray):
        self.a = a

    @property
    def shape(self):
        return self.a.shape

    def reshape(self, shape):
        return Wrapped(self.a.reshape(shape))

    def __getitem__(self, i):
        if not isinstance(i, (int, slice)):
            raise TypeError(f"Wrapped arrays are indexed by an int or a slice, not {type(i).__name__}")
        return Wrapped(self.a[i])

    def __len__(self):
        return len(self.a)

    def __iter__(self):
        return (Wrapped(row) for row in self.a)

    def __neg__(self):
        return Wrapped(-self.a)

    def __add__(self, o):
        return Wrapped(self.a + _operand(o))

    def __sub__(self, o):
        return Wrapped(self.a - _operand(o))

    def __mul__(self, o):
        return Wrapped(self.a * _operand(o))

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, o):
        return Wrapped(_operand(o) - self.a)

    def __iadd__(self, o):
        self.a += _operand(o)
        return self

    def __isub__(self, o):
        self.a -= _operand(o)
        return self

    def __imul__(self, o):
        self.a *= _operand(o)
        return self


def _operand(o):
    if isinstance(o, Wrapped):
        return o.a
    if isinstance(o, (int, float)) and not isinstance(o, bool):
        return o
    raise TypeError(f"a Wrapped array computes with Wrapped arrays and Python numbers only, not {type(o).__name__}")


def _unwrap(v):
    return v.a if isinstance(v, Wrapped) else v


def _wrap(v):
    if isinstance(v, tuple):
        return tuple(_wrap(t) for t in v)
    if isinstance(v, (np.ndarray, np.generic)):
        return Wrapped(np.asarray(v))
    return v


def _lift(name: str):
    f = getattr(spec, name)

    def primitive(*args):
        return _wrap(f(*(_unwrap(a) for a in args)))

    primitive.__name__ = name
    return primitive


device = spec.device
eval_chunk = spec.eval_chunk
compute_context = spec.compute_context


def asarray(a, dtype: str, device: str) -> Wrapped:
    if isinstance(a, Wrapped):
        raise TypeError("asarray takes host data (numpy), not a Wrapped array")
    return Wrapped(spec.asarray(a, dtype, device))


def to_numpy(a: Wrapped) -> np.ndarray:
    return a.a


def stack(arrays: list) -> Wrapped:
    return Wrapped(spec.stack([_unwrap(a) for a in arrays]))


for _name in ("copy", "take_rows", "linear", "linear_grad_input", "matmul_tn", "relu_", "relu_grad", "tanh_",
              "tanh_grad", "sigmoid", "sigmoid_", "sigmoid_grad", "softplus", "log_softmax", "exp", "take_labels",
              "set_labels_", "sum_rows", "sum_batch", "mean", "argmax_rows", "count_different", "count_zeros", "count_nonfinite",
              "sign", "clip_", "clamp_", "sub_", "sub_matmul_tn_", "max_norm_", "conv2d", "conv2d_grad_input",
              "conv2d_grad_params", "max_pool", "max_pool_grad"):
    globals()[_name] = _lift(_name)
