"""Sparse weight storage inside a standard ONNX graph.

ONNX's own ``sparse_initializer`` stores int64 COO indices (8 bytes per nonzero, more than the fp32 value itself) and
ONNX Runtime merely densifies it at load, so a file using it is no smaller. Instead each sparse initializer is replaced
by a small subgraph of standard ops whose inputs are all constants:

* the nonzero values (fp32, fp16 or int8), in row-major order, and
* the positions, in whichever of these encodings is smallest for that tensor:

  - ``bitmap``: the 0/1 pattern bit-packed (``numpy.packbits``, big-endian), one bit per weight;
  - ``kernel-bitmap``: one bit per (output, input) kernel, then one bit per weight of the nonzero kernels only: real
    tickets have 40-70% all-zero 3x3 kernels, so this is well under one bit per weight;
  - ``gapsB`` (B = 2, 4 or 8 bits): the distance of each nonzero to the previous one as B-bit symbols, the symbol 0
    meaning "add 2**B - 1 and continue" (so long gaps need no filler values). At 10% density 4-bit gaps cost about
    5 bits per nonzero (the entropy bound is 4.7), against 10 bits per nonzero for a bitmap;
  - ``blockBOxBI`` (only when the caller names a block size, i.e. for block tickets): one bit per block of ``BO``
    output x ``BI`` input channels of one kernel tap (edge blocks partial, as ``lipdeploy.patterns.block``), and the
    values of every position of the kept blocks (a kept weight that is exactly zero is stored as a value, so the
    encoding is lossless for any tensor). The per-weight pattern is rebuilt with two Gathers of the block bits by
    the constant maps ``channel // BO`` and ``channel // BI``.

Unpacking uses Unsqueeze/BitShift/Mod/CumSum/Gather/Compress/ScatterElements/Reshape only. Because every input is an
initializer, ONNX Runtime's constant folding (enabled at its default graph optimisation level) evaluates the subgraph
once at session load: at run time the network sees plain dense initializers, so sparse storage costs nothing per run
and reconstructs the weights bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_PACK_ELEMENTS = 256  # below this the unpacking nodes cost more than they save
NODE_OVERHEAD_BYTES = 600  # serialized size of one unpacking subgraph (nodes + small constants), roughly


@dataclass
class PackedTensor:
    """What happened to one initializer (for the manifest)."""

    name: str
    shape: list[int]
    nonzeros: int
    encoding: str  # "bitmap" | "kernel-bitmap" | "gaps2" | "gaps4" | "gaps8" | "blockBOxBI" | "dense"
    dense_bytes: int
    packed_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _bitmap_cost(flat_mask: np.ndarray) -> int:
    return (flat_mask.size + 7) // 8


def _kernel_bitmap_cost(mask: np.ndarray) -> int | None:
    if mask.ndim != 4 or mask.shape[2] * mask.shape[3] == 1:
        return None
    kk = mask.shape[2] * mask.shape[3]
    kern = mask.reshape(-1, kk).any(1)
    return (kern.size + 7) // 8 + (int(kern.sum()) * kk + 7) // 8 + kk


def _gap_symbols(flat_mask: np.ndarray, bits: int) -> np.ndarray:
    """Position stream with ``bits``-bit symbols: each nonzero is preceded by q escape symbols (0, each adding
    E = 2**bits - 1) and ends with its remainder r in 1..E, where gap = q * E + r and the first gap is position + 1."""
    pos = np.flatnonzero(flat_mask).astype(np.int64)
    gaps = np.diff(pos, prepend=-1)
    esc = (1 << bits) - 1
    q = (gaps - 1) // esc
    r = gaps - q * esc
    out = np.zeros(int((q + 1).sum()), dtype=np.uint8)
    out[np.cumsum(q + 1) - 1] = r
    return out


def _pack_symbols(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Big-endian packing of ``bits``-bit symbols into bytes (bits in 1, 2, 4, 8)."""
    if bits == 8:
        return symbols.astype(np.uint8)
    per = 8 // bits
    padded = np.zeros(-(-symbols.size // per) * per, dtype=np.uint8)
    padded[: symbols.size] = symbols
    shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
    return (padded.reshape(-1, per) << shifts).sum(1, dtype=np.uint16).astype(np.uint8)


GAP_BITS = (2, 4, 8)


class _Builder:
    """Adds nodes and initializers to a graph with unique names."""

    def __init__(self, graph: onnx.GraphProto, prefix: str) -> None:
        self.graph = graph
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.n = 0

    def name(self, tag: str) -> str:
        self.n += 1
        return f"{self.prefix}/{self.n}"

    def const(self, array: np.ndarray, tag: str) -> str:
        name = self.name(tag)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def unpack_bits(self, packed: np.ndarray, count: int, tag: str, bits: int = 1) -> str:
        """int32 vector of ``count`` ``bits``-bit symbols from big-endian packed bytes."""
        b = self.const(packed, f"{tag}_bits")
        if bits == 8:
            return self.op("Cast", [b], to=TensorProto.INT32)
        u = self.op("Unsqueeze", [b, self.const(np.array([1], np.int64), "axis")])
        shifts = self.const(np.arange(8 - bits, -1, -bits, dtype=np.uint8)[None, :], "shifts")
        s = self.op("BitShift", [u, shifts], direction="RIGHT")
        bit = self.op("Mod", [s, self.const(np.array([1 << bits], np.uint8), "modulus")])
        flat = self.op("Reshape", [bit, self.const(np.array([-1], np.int64), "shape")])
        sl = self.op(
            "Slice",
            [flat, self.const(np.array([0], np.int64), "start"), self.const(np.array([count], np.int64), "end")],
        )
        return self.op("Cast", [sl], to=TensorProto.INT32)

    def gather_values(self, flat_mask: str, values: np.ndarray, tag: str) -> str:
        """Dense flat tensor: values at the mask's ones, in order; zero elsewhere (CumSum index into [0, values])."""
        padded = self.const(np.concatenate([np.zeros(1, values.dtype), values]), f"{tag}_values")
        cs = self.op("CumSum", [flat_mask, self.const(np.array(0, np.int32), "axis")])
        idx = self.op("Mul", [cs, flat_mask])
        return self.op("Gather", [padded, idx], axis=0)


def _block_keep(array: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Bool ``[NBo, NBi, taps]``: the ``block = (Bo, Bi)`` blocks of a 4-D ``array`` holding any nonzero."""
    cout, cin, kh, kw = array.shape
    bo, bi = block
    nbo, nbi = -(-cout // bo), -(-cin // bi)
    padded = np.zeros((nbo * bo, nbi * bi, kh * kw), dtype=bool)
    padded[:cout, :cin] = (array != 0).reshape(cout, cin, kh * kw)
    return padded.reshape(nbo, bo, nbi, bi, kh * kw).any(axis=(1, 3))


def _block_positions(array: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(block bits ``[NBo, NBi, taps]``, flat bool mask of every position inside a kept block)."""
    keep = _block_keep(array, block)
    cout, cin = array.shape[:2]
    full = keep[np.arange(cout) // block[0]][:, np.arange(cin) // block[1]]  # [Cout, Cin, taps]
    return keep, full.reshape(-1)


def _costs(array: np.ndarray, block: tuple[int, int] | None = None) -> dict[str, int]:
    flat = array.reshape(-1)
    flat_mask = flat != 0
    values = flat[flat_mask]
    vbytes = values.dtype.itemsize
    costs = {"bitmap": _bitmap_cost(flat_mask) + (values.size + 1) * vbytes}
    kb = _kernel_bitmap_cost(array != 0)
    if kb is not None:
        costs["kernel-bitmap"] = kb + (values.size + 1) * vbytes
    for bits in GAP_BITS:
        n_sym = _gap_symbols(flat_mask, bits).size
        costs[f"gaps{bits}"] = -(-n_sym * bits // 8) + values.size * vbytes
    if block is not None and array.ndim == 4:
        keep, inside = _block_positions(array, block)
        maps = 8 * (array.shape[0] + array.shape[1])  # the two int64 channel -> block maps
        costs[f"block{block[0]}x{block[1]}"] = (keep.size + 7) // 8 + maps + (int(inside.sum()) + 1) * vbytes
    return costs


def packed_cost(array: np.ndarray, block: tuple[int, int] | None = None) -> int:
    """Bytes of the smallest packed encoding of ``array`` (values + positions); ``block``: also consider one bit per
    ``(Bo, Bi)`` block."""
    return min(_costs(array, block).values())


def pack_tensor(
    graph: onnx.GraphProto,
    name: str,
    array: np.ndarray,
    output_name: str,
    prefix: str | None = None,
    block: tuple[int, int] | None = None,
) -> tuple[list[onnx.NodeProto], PackedTensor]:
    """Nodes computing ``output_name`` (the dense ``array``, any dtype) from its packed form; adds their constants.

    The caller removes the original initializer. Zeros of ``array`` define the pattern (lossless: -0.0 becomes 0.0),
    except inside the kept blocks of the block encoding (``block = (Bo, Bi)``), which stores their values as they are.
    """
    b = _Builder(graph, prefix or f"sparse/{name}")
    flat = array.reshape(-1)
    flat_mask = flat != 0
    values = flat[flat_mask]
    costs = _costs(array, block)
    encoding = min(costs, key=costs.get)
    if encoding.startswith("block"):
        assert block is not None
        keep, inside = _block_positions(array, block)
        values = flat[inside]
        dense = _unpack_blocks(b, keep, array.shape, block, values)
    elif encoding.startswith("gaps"):
        dense = _unpack_gaps(b, flat, int(encoding[4:]), values)
    elif encoding == "bitmap":
        m = b.unpack_bits(np.packbits(flat_mask), flat.size, "mask")
        dense = b.gather_values(m, values, "w")
    else:
        dense = _unpack_kernel_bitmap(b, array, values)
    b.op("Reshape", [dense, b.const(np.array(array.shape, np.int64), "shape")], output=output_name)
    info = PackedTensor(
        name=name,
        shape=list(array.shape),
        nonzeros=int(np.count_nonzero(values)),
        encoding=encoding,
        dense_bytes=int(array.nbytes),
        packed_bytes=int(costs[encoding]),
    )
    return b.nodes, info


def _unpack_blocks(
    b: _Builder, keep: np.ndarray, shape: tuple[int, ...], block: tuple[int, int], values: np.ndarray
) -> str:
    """The flat dense tensor from its kept-block bits ``keep`` ``[NBo, NBi, taps]`` and the ``values`` of every
    position inside a kept block: the per-weight pattern is the block bits gathered by channel // Bo, channel // Bi."""
    bits = b.unpack_bits(np.packbits(keep.reshape(-1)), keep.size, "blocks")
    grid = b.op("Reshape", [bits, b.const(np.array(keep.shape, np.int64), "grid")])
    row_map = b.const(np.arange(shape[0], dtype=np.int64) // block[0], "row_blocks")
    col_map = b.const(np.arange(shape[1], dtype=np.int64) // block[1], "col_blocks")
    rows = b.op("Gather", [grid, row_map], axis=0)  # [Cout, NBi, taps]
    full = b.op("Gather", [rows, col_map], axis=1)  # [Cout, Cin, taps]
    m = b.op("Reshape", [full, b.const(np.array([-1], np.int64), "shape")])
    return b.gather_values(m, values, "w")


def _unpack_gaps(b: _Builder, flat: np.ndarray, bits: int, values: np.ndarray) -> str:
    """The flat dense tensor from the ``bits``-bit gap symbols of its nonzeros' positions (see :func:`_gap_symbols`)
    and their ``values``."""
    symbols = _gap_symbols(flat != 0, bits)
    sym = b.unpack_bits(_pack_symbols(symbols, bits), symbols.size, "gaps", bits)
    is_esc = b.op("Equal", [sym, b.const(np.array([0], np.int32), "zero")])
    sym64 = b.op("Cast", [sym], to=TensorProto.INT64)
    step = b.op("Where", [is_esc, b.const(np.array([(1 << bits) - 1], np.int64), "escape"), sym64])
    ends = b.op("CumSum", [step, b.const(np.array(0, np.int64), "axis")])  # 1 + position after each symbol
    # k-th terminal symbol -> slot k, escapes -> a spare slot (summed there, then sliced off). Compress would be
    # shorter but ONNX Runtime does not constant-fold it (data-dependent shape); this keeps every shape static.
    term = b.op("Cast", [b.op("Not", [is_esc])], to=TensorProto.INT64)
    rank = b.op(
        "Sub",
        [b.op("CumSum", [term, b.const(np.array(0, np.int64), "axis")]), b.const(np.array([1], np.int64), "one")],
    )
    slot = b.op("Where", [is_esc, b.const(np.array([values.size], np.int64), "spare"), rank])
    zeros_pos = b.op(
        "ConstantOfShape",
        [b.const(np.array([values.size + 1], np.int64), "n")],
        value=numpy_helper.from_array(np.zeros(1, np.int64)),
    )
    scattered = b.op("ScatterElements", [zeros_pos, slot, ends], axis=0, reduction="add")
    pos1 = b.op(
        "Slice",
        [scattered, b.const(np.array([0], np.int64), "start"), b.const(np.array([values.size], np.int64), "end")],
    )
    pos = b.op("Sub", [pos1, b.const(np.array([1], np.int64), "one")])
    zeros = b.op(
        "ConstantOfShape",
        [b.const(np.array([flat.size], np.int64), "n")],
        value=numpy_helper.from_array(np.zeros(1, flat.dtype)),
    )
    return b.op("ScatterElements", [zeros, pos, b.const(values, "values")], axis=0)


def _unpack_kernel_bitmap(b: _Builder, array: np.ndarray, values: np.ndarray) -> str:
    """The flat dense tensor from one bit per kernel, one bit per weight of the nonzero kernels, and the values."""
    kk = array.shape[2] * array.shape[3]
    kern = (array != 0).reshape(-1, kk).any(1)
    inner = (array != 0).reshape(-1, kk)[kern].reshape(-1)
    km = b.unpack_bits(np.packbits(kern), kern.size, "kernels")
    im = b.unpack_bits(np.packbits(inner), inner.size, "inner")
    im2 = b.op("Reshape", [im, b.const(np.array([-1, kk], np.int64), "shape")])
    rows = b.op("Concat", [b.const(np.zeros((1, kk), np.int32), "zero_row"), im2], axis=0)
    kcs = b.op("CumSum", [km, b.const(np.array(0, np.int32), "axis")])
    kidx = b.op("Mul", [kcs, km])
    full = b.op("Gather", [rows, kidx], axis=0)
    m = b.op("Reshape", [full, b.const(np.array([-1], np.int64), "shape")])
    return b.gather_values(m, values, "w")


def pack_initializers(
    model: onnx.ModelProto, names: list[str], block: tuple[int, int] | None = None
) -> list[PackedTensor]:
    """Replace the named initializers of ``model`` (in place) by packed storage where that is smaller; ``block``
    (a block ticket's ``(Bo, Bi)``) adds the one-bit-per-block encoding to the candidates.

    New nodes go at the front of the graph (their inputs are all constants), so the node order stays topological.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    report: list[PackedTensor] = []
    for name in names:
        init = inits[name]
        array = numpy_helper.to_array(init)
        nnz = int(np.count_nonzero(array))
        dense_info = PackedTensor(name, list(array.shape), nnz, "dense", int(array.nbytes), int(array.nbytes))
        if array.size < MIN_PACK_ELEMENTS:
            report.append(dense_info)
            continue
        if packed_cost(array, block) + NODE_OVERHEAD_BYTES >= 0.9 * array.nbytes:  # not worth it: keep dense
            report.append(dense_info)
            continue
        nodes, info = pack_tensor(graph, name, array, name, prefix=f"sp{len(report)}", block=block)
        graph.initializer.remove(init)
        new_nodes.extend(nodes)
        report.append(info)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old)
    return report
