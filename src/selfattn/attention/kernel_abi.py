"""The C kernel's entry points as one typed table, and the wrapper that checks every call against it.

``selfattn_flash_fwd`` takes 30 positional arguments and ``selfattn_flash_bwd`` 36; a wrong order or a
tensor of the wrong size would be read as garbage by C. Here each argument is declared once — name,
kind and, for buffers, the number of elements the C side reads or writes — in the C signature's
order. The ctypes ``argtypes`` are derived from that table, and :meth:`Kernel.forward` /
:meth:`Kernel.backward` take keyword arguments only and check every buffer's dtype, contiguity,
device and size before the call (``ValueError`` "expected X, got Y").

Legend: b batch, h query heads, g kv heads, n/m queries/keys (padded: n_pad, m_pad), d/e head dims
(padded to 32). Layouts are described in ``csrc/flash_cpu.c``. Mask bytes: 1 = may attend; segment ids:
query i may attend key j only when qseg[i] == kseg[j]; a general mask (bytes) or bias (float32) is read at
its strides msb, msh, msn (0 = broadcast; keys contiguous).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch
from torch import Tensor

Dims = dict[str, int]


class Arg(NamedTuple):
    name: str
    kind: str  # "elem" (bf16|f32 operand), "f32", "u8", "i32" buffers; "i64", "float", "int" scalars
    numel: Callable[[Dims], int] | None = None  # buffers: elements the C side touches
    optional: bool = False  # a buffer that may be None (passed as NULL)


def _rows(s: Dims) -> int:  # key-padding rows: b when each batch row has its own, else 1 (shared)
    return s["b"] if s["kpm_bstride"] else 1


def _extent(s: Dims) -> int:  # elements of a compact (b|1, h|1, n|1, m) mask at strides msb, msh, msn
    return (s["b"] - 1) * s["msb"] + (s["h"] - 1) * s["msh"] + (s["n"] - 1) * s["msn"] + s["m"]


_PADDING = [
    Arg("kpm", "u8", lambda s: _rows(s) * s["m_pad"], optional=True),
    Arg("kpm_bstride", "i64"),
    Arg("kpm_all", "u8", lambda s: _rows(s) * (s["m_pad"] // s["kb"]), optional=True),
    Arg("slopes", "f32", lambda s: s["h"], optional=True),
    Arg("qseg", "i32", lambda s: s["b"] * s["n_pad"], optional=True),  # segment ids, or both None
    Arg("kseg", "i32", lambda s: s["b"] * s["m_pad"], optional=True),
    Arg("mask", "u8", lambda s: _extent(s), optional=True),  # a general mask, or a bias: never both
    Arg("bias", "f32", lambda s: _extent(s), optional=True),
    Arg("msb", "i64"), Arg("msh", "i64"), Arg("msn", "i64"),
]
_SIZES = [Arg(x, "i64") for x in ("b", "h", "g", "n", "m", "n_pad", "m_pad", "d", "e")] + [
    Arg("scale", "float"), Arg("left", "i64"), Arg("right", "i64"), Arg("nthreads", "int")]


def _q(c: str) -> Callable[[Dims], int]:  # (b, h, n_pad, c) buffers
    return lambda s: s["b"] * s["h"] * s["n_pad"] * s[c]


def _k(c: str) -> Callable[[Dims], int]:  # (b, g, m_pad, c) buffers
    return lambda s: s["b"] * s["g"] * s["m_pad"] * s[c]


FORWARD = [Arg("q", "elem", _q("d")), Arg("kp", "elem", _k("d")), Arg("vp", "elem", _k("e")), *_PADDING,
           Arg("out", "elem", _q("e")), Arg("lse", "f32", lambda s: s["b"] * s["h"] * s["n_pad"]), *_SIZES]
BACKWARD = [Arg("q", "elem", _q("d")), Arg("qt", "elem", _q("d")), Arg("kp", "elem", _k("d")),
            Arg("kvp", "elem", _k("d")), Arg("vtp", "elem", _k("e")), Arg("dout", "elem", _q("e")),
            Arg("dot", "elem", _q("e")), Arg("lse2", "f32", lambda s: s["b"] * s["h"] * s["n_pad"]),
            Arg("delta", "f32", lambda s: s["b"] * s["h"] * s["n_pad"]), *_PADDING,
            Arg("dq", "f32", _q("d")), Arg("dk", "f32", _k("d")), Arg("dv", "f32", _k("e")), *_SIZES]
_CTYPES = {"elem": ctypes.c_void_p, "f32": ctypes.c_void_p, "u8": ctypes.c_void_p, "i32": ctypes.c_void_p,
           "i64": ctypes.c_int64, "float": ctypes.c_float, "int": ctypes.c_int}
ABI = {"bf16": torch.bfloat16, "f32": torch.float32}  # variant -> operand dtype ("elem")
_DTYPES = {"f32": torch.float32, "u8": torch.uint8, "i32": torch.int32}
_NAMES = {id(t): frozenset(a.name for a in t) for t in (FORWARD, BACKWARD)}  # table -> its argument names


def _check_dims(s: Dims, qb: int, kb: int) -> None:
    def bad(name: str, expected: str) -> NoReturn:
        raise ValueError(f"kernel argument {name}: expected {expected}, got {s[name]}")

    if s["n_pad"] % qb or s["n_pad"] < s["n"]:
        bad("n_pad", f"a multiple of {qb} >= n={s['n']}")
    if s["m_pad"] % kb or s["m_pad"] < s["m"]:
        bad("m_pad", f"a multiple of {kb} >= m={s['m']}")
    for name in ("d", "e"):
        if s[name] % 32 or s[name] <= 0:
            bad(name, "a positive multiple of 32")
    if s["g"] <= 0 or s["h"] % s["g"]:
        bad("h", f"a multiple of g={s['g']}")
    for name in ("msb", "msh", "msn"):
        if s[name] < 0:
            bad(name, "a stride >= 0")
    if s["kpm_bstride"] not in (0, s["m_pad"]):
        bad("kpm_bstride", f"0 or m_pad={s['m_pad']}")


def _pointer(arg: Arg, t: Tensor | None, elem: torch.dtype, dims: Dims) -> int:
    if t is None:
        if not arg.optional:
            raise ValueError(f"kernel argument {arg.name}: expected a tensor, got None")
        return 0
    dtype = elem if arg.kind == "elem" else _DTYPES[arg.kind]
    if arg.numel is None:  # only buffers (with a numel) are passed as pointers
        raise ValueError(f"kernel argument {arg.name}: not a buffer")
    want = arg.numel(dims)
    if not isinstance(t, Tensor) or t.dtype != dtype or t.is_cuda or not t.is_contiguous() or t.device.type != "cpu":
        got = f"{t.dtype} on {t.device}, contiguous={t.is_contiguous()}" if isinstance(t, Tensor) else type(t)
        raise ValueError(f"kernel argument {arg.name}: expected a contiguous CPU {dtype} tensor, got {got}")
    if t.numel() != want:
        raise ValueError(f"kernel argument {arg.name}: expected {want} elements, got {t.numel()} {tuple(t.shape)}")
    return t.data_ptr()


def _bind(fn: Any, table: list[Arg]) -> Any:
    fn.restype = ctypes.c_int
    fn.argtypes = [_CTYPES[a.kind] for a in table]
    return fn


@dataclass(frozen=True)
class Kernel:
    """One loaded build of the kernel; call :meth:`forward` / :meth:`backward` with keywords only."""

    variant: str  # "bf16" | "f32"
    path: Path
    lib: ctypes.CDLL
    elem: torch.dtype  # operand dtype
    qb: int  # query rows per block
    kb: int  # keys per block

    def __post_init__(self) -> None:
        _bind(self.lib.selfattn_flash_fwd, FORWARD)
        _bind(self.lib.selfattn_flash_bwd, BACKWARD)

    def _call(self, fn: Any, table: list[Arg], kwargs: dict[str, Any]) -> None:
        if kwargs.keys() != _NAMES[id(table)]:
            names = [a.name for a in table]
            missing, extra = sorted(set(names) - set(kwargs)), sorted(set(kwargs) - set(names))
            raise ValueError(f"kernel call: expected the arguments {names}; missing {missing}, unexpected {extra}")
        dims = {a.name: int(kwargs[a.name]) for a in table if a.numel is None and a.kind != "float"}
        dims["kb"] = self.kb
        _check_dims(dims, self.qb, self.kb)
        if (kwargs["qseg"] is None) != (kwargs["kseg"] is None):
            raise ValueError("kernel arguments qseg, kseg: expected both or neither, got one")
        if kwargs["mask"] is not None and kwargs["bias"] is not None:
            raise ValueError("kernel arguments mask, bias: expected at most one, got both")
        values = [_pointer(a, kwargs[a.name], self.elem, dims) if a.numel is not None else kwargs[a.name]
                  for a in table]
        if fn(*values) != 0:
            raise MemoryError(f"the {self.variant} attention kernel could not allocate its scratch buffers")

    def forward(self, **kwargs: Any) -> None:
        """``selfattn_flash_fwd`` with the arguments of :data:`FORWARD`, by name; writes out and lse."""
        self._call(self.lib.selfattn_flash_fwd, FORWARD, kwargs)

    def backward(self, **kwargs: Any) -> None:
        """``selfattn_flash_bwd`` with the arguments of :data:`BACKWARD`, by name; writes dq, dk, dv."""
        self._call(self.lib.selfattn_flash_bwd, BACKWARD, kwargs)


__all__ = ["ABI", "BACKWARD", "FORWARD", "Arg", "Kernel"]
