"""Compiled (numba) kernels of the ranking: per-distance counting instead of sorting.

A Hamming distance takes only ``bits + 1`` values, so a ranking "by distance, ties by ascending
database index" is a counting sort: one pass counts the items (and the relevant items) at each
distance, the prefix sums give where each distance's bucket starts, and a second pass in database
order hands out ranks inside each bucket. Every kernel here is O(n_db) per query, exact, with no
comparison sort, and releases the GIL (the callers run query chunks on threads). On CPUs with
AVX-512 VBMI2 the counting sort and the APs go 64 items at a time (the AVX-512 blocks below and
:func:`ranked_stats_simd`), with the same numbers to float rounding.

Codes and labels come as (n, words) ``uint64`` rows (:func:`pipeline.eval.words.words64`). The first pass walks the
database in blocks of :data:`BLOCK` items, each block against all the rows of the chunk, so the
database is read from memory once per chunk rather than once per query.

Kernels are compiled on first use and cached on disk (numba ``cache=True``: ``__pycache__`` beside
this file, or the user's cache folder when that is read-only), so only the first run on a machine
pays the compilation (seconds). Importing numba and loading the cached kernels still costs about a
second per process, so small problems take the NumPy twins of :mod:`pipeline.eval.numpy_kernels`
instead (:func:`pipeline.eval.hamming.compiled_engine` decides).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def _import_numba_math_without_blas_probe() -> None:
    """Import numba's ``numba.np.arraymath`` with SciPy's BLAS hidden, unless either is loaded.

    Why: numba loads that module when it first compiles or loads a cached kernel, and the module
    checks at import whether SciPy's BLAS is there by importing ``scipy.linalg`` (about 0.25 s of
    every ``cmimh evaluate``: 0.97 -> 0.71 s from start to the first kernel's result, measured).
    What the check decides: whether numba's ``np.correlate`` and ``np.convolve`` of floats call
    SciPy's BLAS or a plain loop; these kernels call neither. The rest of numba's linear algebra
    (``np.dot``, ``np.linalg``) looks for the BLAS when a kernel using it compiles, and finds it:
    the hidden entry is removed at once."""
    blas = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules or blas in sys.modules:
        return
    sys.modules[blas] = None  # type: ignore[assignment]  # "import scipy.linalg.cython_blas" fails
    try:
        import numba.np.arraymath  # noqa: F401
    except ImportError:  # a numba laid out otherwise: it loads what it needs itself, probe and all
        pass
    finally:
        del sys.modules[blas]


_import_numba_math_without_blas_probe()

from llvmlite import binding as _ll  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit  # noqa: E402
from numba.core import cgutils, config, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from pipeline.errors import PipelineError  # noqa: E402

#: Database items per block of :func:`distances` (a block's code words stay in L1).
BLOCK = 4096

_JIT = {"nogil": True, "cache": True, "boundscheck": False}


@intrinsic
def _popcnt(typingctx, x):
    """The CPU's popcount of a uint64 (LLVM ``ctpop``), typed int64 (numba widens int64 + uint64 to
    float64, so distances stay signed)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@intrinsic
def _cttz(typingctx, x):
    """Trailing zero bits of a non-zero uint64 (LLVM ``cttz``), typed int64."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.int64(types.uint64), codegen


@intrinsic
def _half(typingctx, x):
    """``x >> 1`` for an unsigned integer as one LLVM ``lshr``: numba's ``>>`` guards shift counts
    past the width (Python semantics), which made the hot loops below ~3x slower."""
    if not (isinstance(x, types.Integer) and not x.signed):
        return None

    def codegen(context, builder, signature, args):
        return builder.lshr(args[0], ir.Constant(args[0].type, 1))

    return x(x), codegen


# ----------------------------------------------------------------------------- AVX-512 blocks
# The vector building blocks of :func:`ranked_stats_simd`: numba intrinsics, LLVM IR written by
# hand. Why: the scalar counting sort (:func:`ranked_stats`) moves one item at a time, a few
# nanoseconds each, and that was most of ``cmimh evaluate``'s time at MS-COCO size. With 64 items
# in one vector register, the items of one Hamming distance are picked out by one comparison and
# packed together by one ``vpcompressb`` (AVX-512 VBMI2), so a block of 64 items is placed in as
# many steps as its range of distances (about 20 for 64-bit codes), not 64; and AP@all adds 8
# ranks a fused multiply-add.
#
# Each block reads or writes exactly 64 bytes; the callers handle the tails and keep the memory
# past each read and write in bounds (see the docstrings). LLVM lowers these generic intrinsics
# (``llvm.experimental.vector.compress``, ``llvm.fma``, vector reductions) on any CPU, but only
# with AVX-512 VBMI2 is the compress one instruction: :data:`SIMD` says whether this process has
# it, and the callers take the scalar kernels otherwise (``CMIMH_SIMD=0`` forces them).
#
# The blocks live in this file, not a module of their own, because numba's on-disk cache checks
# only the source file of a cached kernel: a block changed in another file would leave the
# compiled kernels that inline it stale.


def _available() -> bool:
    """AVX-512 F/BW/VBMI2 on the CPU numba compiles for (the host), and an LLVM that knows
    ``llvm.experimental.vector.compress`` (LLVM 19+); ``CMIMH_SIMD=0`` turns the path off, and so
    does ``NUMBA_DISABLE_JIT=1`` (the blocks are IR: they cannot run as Python)."""
    switch = os.environ.get("CMIMH_SIMD", "1")
    if switch not in ("0", "1"):
        raise PipelineError(f"CMIMH_SIMD must be 0 (the scalar kernels) or 1 (the default), not {switch!r}")
    if switch == "0" or config.DISABLE_JIT:
        return False
    if config.CPU_NAME not in (None, "host") or _ll.llvm_version_info < (19,):
        return False  # a named target (say, a portable cache) may lack the instructions
    try:
        feats = _ll.get_host_cpu_features()
    except RuntimeError:
        return False
    return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vbmi2"))


#: Whether the compress path is used (fixed at import; tests and benchmarks set it).
SIMD = _available()

#: Items a block (bytes a vector).
LANES = 64

_I1, _I8, _I32, _I64, _F64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.DoubleType()
_V8 = ir.VectorType(_I8, LANES)
_V1 = ir.VectorType(_I1, LANES)
_VD = ir.VectorType(_F64, 8)
_VW = ir.VectorType(_I64, 8)  # 8 code or label words
_VB8 = ir.VectorType(_I8, 8)  # their 8 bytes of output


def _data(context, builder, aty, arr):
    return context.make_array(aty)(context, builder, arr).data


def _load64(context, builder, aty, arr, offset):
    """The 64 bytes of array ``arr`` from element ``offset`` (unaligned)."""
    p = builder.gep(_data(context, builder, aty, arr), [offset])
    return builder.load(builder.bitcast(p, _V8.as_pointer()), align=1)


def _splat(builder, value, vty):
    undef = ir.Constant(vty, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _byte_array(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.uint8


def _word_array(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.uint64


@intrinsic
def block_key_range(typingctx, keys, j0):
    """``(min << 8) | max`` of the keys ``keys[j0:j0 + 64]`` (uint8; the caller keeps j0 + 64 <= size)."""
    if not _byte_array(keys):
        return None

    def codegen(context, builder, signature, args):
        vec = _load64(context, builder, signature.args[0], args[0], args[1])
        fty = ir.FunctionType(_I8, [_V8])
        umin = cgutils.get_or_insert_function(builder.module, fty, "llvm.vector.reduce.umin.v64i8")
        umax = cgutils.get_or_insert_function(builder.module, fty, "llvm.vector.reduce.umax.v64i8")
        lo = builder.zext(builder.call(umin, [vec]), _I64)
        hi = builder.zext(builder.call(umax, [vec]), _I64)
        return builder.or_(builder.shl(lo, ir.Constant(_I64, 8)), hi)

    return types.int64(keys, j0), codegen


def _positions(pos) -> bool:
    return isinstance(pos, types.Array) and pos.ndim == 1 and pos.dtype == types.int64


@intrinsic
def place_block(typingctx, keys, j0, lo, hi, out, pos):
    """One block of the counting sort: for each distance d in lo..hi, the relevance bits (key & 1)
    of the items of ``keys[j0:j0 + 64]`` with key >> 1 == d, in block order, go to
    ``out[pos[d]:]`` and ``pos[d]`` advances by their number. The keys are compared with one
    vector of 2 * d stepped by 2 (no broadcast a step).

    Each packed vector is stored whole, 64 bytes: the bytes past the items are garbage, which the
    bucket's next store overwrites or which lies in the 64 bytes the caller leaves free past every
    bucket (so ``out`` must hold pos[d] + 64 for every d at every call)."""
    if not (_byte_array(keys) and _byte_array(out) and _positions(pos)):
        return None

    def codegen(context, builder, signature, args):
        k, j, lo_, hi_, o, ps = args
        vec = _load64(context, builder, signature.args[0], k, j)
        dist2 = builder.and_(vec, _splat(builder, ir.Constant(_I8, 0xFE), _V8))  # 2 * distance
        bit = builder.and_(vec, _splat(builder, ir.Constant(_I8, 1), _V8))
        odata = _data(context, builder, signature.args[4], o)
        pdata = _data(context, builder, signature.args[5], ps)
        compress = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8, _V1, _V8]),
                                                  "llvm.experimental.vector.compress.v64i8")
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [_I64])
        want = cgutils.alloca_once(builder, _V8)
        builder.store(_splat(builder, builder.trunc(builder.shl(lo_, ir.Constant(_I64, 1)), _I8), _V8), want)
        two = _splat(builder, ir.Constant(_I8, 2), _V8)
        with cgutils.for_range(builder, builder.add(builder.sub(hi_, lo_), ir.Constant(_I64, 1))) as loop:
            d = builder.add(lo_, loop.index)
            w = builder.load(want)
            builder.store(builder.add(w, two), want)
            mask = builder.icmp_unsigned("==", dist2, w)
            n = builder.call(popcount, [builder.bitcast(mask, _I64)])
            packed = builder.call(compress, [bit, mask, ir.Constant(_V8, ir.Undefined)])
            pp = builder.gep(pdata, [d])
            at = builder.load(pp)
            builder.store(packed, builder.bitcast(builder.gep(odata, [at]), _V8.as_pointer()), align=1)
            builder.store(builder.add(at, n), pp)
        return context.get_dummy_value()

    return types.void(keys, j0, lo, hi, out, pos), codegen


@intrinsic
def keys_block(typingctx, a, db0, rel, j0, out):
    """``out[j0 + t] = 2 * popcount(a ^ db0[j0 + t]) + rel[j0 + t]`` for t < 64: the keys of
    :func:`keys` for codes of one 64-bit word, 8 items a 512-bit popcount (LLVM's own loop takes
    256-bit vectors on this CPU, and the popcount and the narrowing share one port). Bounds as
    the blocks above: j0 + 64 <= the arrays' sizes."""
    if not (isinstance(a, types.Integer) and _word_array(db0) and _byte_array(rel) and _byte_array(out)):
        return None

    def codegen(context, builder, signature, args):
        aw, dbw, rl, j, o = args
        words = builder.gep(_data(context, builder, signature.args[1], dbw), [j])
        rels = builder.gep(_data(context, builder, signature.args[2], rl), [j])
        outs = builder.gep(_data(context, builder, signature.args[4], o), [j])
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VW, [_VW]), "llvm.ctpop.v8i64")
        qa = _splat(builder, aw, _VW)
        for g in range(8):
            at = ir.Constant(_I64, 8 * g)
            w = builder.load(builder.bitcast(builder.gep(words, [at]), _VW.as_pointer()), align=8)
            dist = builder.trunc(builder.call(popcount, [builder.xor(w, qa)]), _VB8)
            r = builder.load(builder.bitcast(builder.gep(rels, [at]), _VB8.as_pointer()), align=1)
            key = builder.add(builder.add(dist, dist), r)
            builder.store(key, builder.bitcast(builder.gep(outs, [at]), _VB8.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(a, db0, rel, j0, out), codegen


@intrinsic
def any_bits_block(typingctx, a, words, j0, out, first):
    """``out[j0 + t] = (first ? 0 : out[j0 + t]) | ((a & words[j0 + t]) != 0)`` for t < 64: one
    label word of :func:`relevance_simd`, 8 items a 512-bit test. Bounds as the blocks above."""
    if not (isinstance(a, types.Integer) and _word_array(words) and _byte_array(out)
            and isinstance(first, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        aw, ws, j, o, fst = args
        src = builder.gep(_data(context, builder, signature.args[1], ws), [j])
        dst = builder.gep(_data(context, builder, signature.args[3], o), [j])
        qa = _splat(builder, aw, _VW)
        zero64, zero8 = ir.Constant(_VW, [0] * 8), ir.Constant(_VB8, [0] * 8)
        keep = builder.not_(context.cast(builder, fst, signature.args[4], types.boolean))
        for g in range(8):
            at = ir.Constant(_I64, 8 * g)
            w = builder.load(builder.bitcast(builder.gep(src, [at]), _VW.as_pointer()), align=8)
            hit = builder.zext(builder.icmp_unsigned("!=", builder.and_(w, qa), zero64), _VB8)
            op = builder.bitcast(builder.gep(dst, [at]), _VB8.as_pointer())
            prev = builder.select(keep, builder.load(op, align=1), zero8)
            builder.store(builder.or_(prev, hit), op, align=1)
        return context.get_dummy_value()

    return types.void(a, words, j0, out, first), codegen


@intrinsic
def nonzero_bits(typingctx, arr, j0):
    """Bit t set where ``arr[j0 + t] != 0``, t < 64 (uint8; the caller keeps j0 + 64 <= size)."""
    if not _byte_array(arr):
        return None

    def codegen(context, builder, signature, args):
        vec = _load64(context, builder, signature.args[0], args[0], args[1])
        return builder.bitcast(builder.icmp_unsigned("!=", vec, ir.Constant(_V8, [0] * LANES)), _I64)

    return types.uint64(arr, j0), codegen


@intrinsic
def ap_block(typingctx, bits, before, rank0, inv, acc):
    """AP@all's sum over 64 consecutive ranks ``rank0 + 1 .. rank0 + 64``, bit t of ``bits``
    marking a relevant item at rank rank0 + t + 1, ``before`` relevant items ranked above them:
    the m-th relevant item at rank p adds m / p = m * inv[p - 1], into ``acc`` (32 float64: four
    vectors of 8 lanes, so that the adds do not wait on each other). Returns ``before`` plus the
    set bits. Each lane's m is ``before`` plus a popcount of ``bits`` below it (8 lanes a
    512-bit popcount, none waiting on another), and the lanes without a relevant item are masked
    out of the multiply-add. ``inv`` must hold rank0 + 64 entries (the masked lanes read the
    entries past the last rank)."""
    sig = types.int64(bits, before, rank0, inv, acc)

    def codegen(context, builder, signature, args):
        b, h, r0, iv, ac = args
        inv_d = _data(context, builder, signature.args[3], iv)
        acc_d = _data(context, builder, signature.args[4], ac)
        accp = [builder.bitcast(builder.gep(acc_d, [ir.Constant(_I64, 8 * q)]), _VD.as_pointer()) for q in range(4)]
        accs = [builder.load(p, align=8) for p in accp]
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [_I64])
        popv = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VW, [_VW]), "llvm.ctpop.v8i64")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VD, [_VD, _VD, _VD]), "llvm.fma.v8f64")
        all_bits = _splat(builder, b, _VW)
        hv = _splat(builder, builder.sitofp(h, _F64), _VD)
        for g in range(8):
            upto = ir.Constant(_VW, [((2 << (8 * g + lane)) - 1) & ((1 << 64) - 1) for lane in range(8)])
            m_th = builder.fadd(hv, builder.sitofp(builder.call(popv, [builder.and_(all_bits, upto)]), _VD))
            p = builder.gep(inv_d, [builder.add(r0, ir.Constant(_I64, 8 * g))])
            iv8 = builder.load(builder.bitcast(p, _VD.as_pointer()), align=8)
            byte = builder.trunc(builder.lshr(b, ir.Constant(_I64, 8 * g)), _I8)
            lane_set = builder.bitcast(byte, ir.VectorType(_I1, 8))
            accs[g % 4] = builder.select(lane_set, builder.call(fma, [m_th, iv8, accs[g % 4]]), accs[g % 4])
        for p, a in zip(accp, accs, strict=True):
            builder.store(a, p, align=8)
        return builder.add(h, builder.call(popcount, [b]))

    return sig, codegen


# ----------------------------------------------------------------------------- metrics

@njit(**_JIT)
def relevance(qlw, dblT, rel):  # pragma: no cover - compiled
    """``rel[i, j] = 1`` when query i and database item j share a label: label words ``qlw``
    (rows, nl) against ``dblT`` (nl, ndb), one word at a time (vectorised)."""
    r, nl = qlw.shape
    ndb = dblT.shape[1]
    for i in range(r):
        ri = rel[i]
        a = qlw[i, 0]
        d0 = dblT[0]
        for j in range(ndb):
            ri[j] = (a & d0[j]) != 0
        for w in range(1, nl):
            a = qlw[i, w]
            dw = dblT[w]
            for j in range(ndb):
                ri[j] |= (a & dw[j]) != 0


@njit(**_JIT)
def relevance_simd(qlw, dblT, rel):  # pragma: no cover - compiled
    """:func:`relevance` with :func:`any_bits_block` (the AVX-512 path), the database in blocks
    of :data:`BLOCK` label words (32 KiB), each against every row: the label words are read from
    memory once a call, not once a row (in the evaluate stage, where the other kernels fill the
    caches, that halved the relevance's time)."""
    r, nl = qlw.shape
    ndb = dblT.shape[1]
    nfull = ndb - ndb % LANES
    step = max(LANES, (BLOCK // nl) // LANES * LANES)
    for j0 in range(0, nfull, step):
        j1 = min(nfull, j0 + step)
        for i in range(r):
            ri = rel[i]
            for w in range(nl):
                a = qlw[i, w]
                dw = dblT[w]
                for j in range(j0, j1, LANES):
                    any_bits_block(a, dw, j, ri, w == 0)
    for i in range(r):
        for j in range(nfull, ndb):
            hit = np.uint64(0)
            for w in range(nl):
                hit |= qlw[i, w] & dblT[w, j]
            rel[i, j] = hit != 0


@njit(**_JIT)
def distances(qw, dbT, out):  # pragma: no cover - compiled
    """Hamming distances of code words ``qw`` (rows, nw) to ``dbT`` (nw, ndb) into ``out`` (rows,
    ndb) uint8/uint16: the database in blocks of :data:`BLOCK` items, each against every row (so it
    is read from memory once per call), one word at a time. (Loops run over slices from 0: LLVM
    vectorises those, not ``range(j0, j1)``.)"""
    r, nw = qw.shape
    ndb = dbT.shape[1]
    for j0 in range(0, ndb, BLOCK):
        j1 = min(ndb, j0 + BLOCK)
        n = j1 - j0
        for i in range(r):
            oi = out[i, j0:j1]
            a = qw[i, 0]
            dw = dbT[0, j0:j1]
            for j in range(n):
                oi[j] = _popcnt(a ^ dw[j])
            for w in range(1, nw):
                a = qw[i, w]
                dw = dbT[w, j0:j1]
                for j in range(n):
                    oi[j] += _popcnt(a ^ dw[j])


@njit(**_JIT)
def keys(qw, dbT, rel, out):  # pragma: no cover - compiled
    """``out[i, j] = 2 * distance + rel[i, j]``: the key of the counting below (as :func:`distances`)."""
    r, nw = qw.shape
    ndb = dbT.shape[1]
    for j0 in range(0, ndb, BLOCK):
        j1 = min(ndb, j0 + BLOCK)
        n = j1 - j0
        for i in range(r):
            oi = out[i, j0:j1]
            ri = rel[i, j0:j1]
            a = qw[i, 0]
            dw = dbT[0, j0:j1]
            if nw == 1:
                for j in range(n):
                    oi[j] = 2 * _popcnt(a ^ dw[j]) + ri[j]
                continue
            for j in range(n):
                oi[j] = _popcnt(a ^ dw[j])
            for w in range(1, nw):
                a = qw[i, w]
                dw = dbT[w, j0:j1]
                for j in range(n):
                    oi[j] += _popcnt(a ^ dw[j])
            for j in range(n):
                oi[j] = 2 * oi[j] + ri[j]


@njit(**_JIT)
def keys_simd(qw, db0, rel, out):  # pragma: no cover - compiled
    """:func:`keys` of codes of one 64-bit word with :func:`keys_block` (the AVX-512 path):
    query words ``qw`` (rows, 1), database words ``db0`` (ndb,), ``out`` (rows, ndb) uint8; the
    database in blocks of :data:`BLOCK` items, each against every row, as :func:`keys`."""
    r = qw.shape[0]
    ndb = db0.size
    nfull = ndb - ndb % LANES
    for j0 in range(0, nfull, BLOCK):
        j1 = min(nfull, j0 + BLOCK)
        for i in range(r):
            a = qw[i, 0]
            ri = rel[i]
            oi = out[i]
            for j in range(j0, j1, LANES):
                keys_block(a, db0, ri, j, oi)
    for i in range(r):
        a = qw[i, 0]
        for j in range(nfull, ndb):
            out[i, j] = 2 * _popcnt(a ^ db0[j]) + rel[i, j]


@njit(**_JIT)
def key_counts(keys, H):  # pragma: no cover - compiled
    """``H[i, key] += 1`` per item: per distance d, ``H[i, 2d]`` irrelevant and ``H[i, 2d + 1]``
    relevant items."""
    r, ndb = keys.shape
    for i in range(r):
        ki = keys[i]
        Hi = H[i]
        for j in range(ndb):
            Hi[ki[j]] += 1


@njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc"})
def _weighted_sum(w, n):  # pragma: no cover - compiled
    """sum over m < n of (m + 1) * w[m] (vectorised: the order of the additions is the compiler's,
    fixed for a build)."""
    acc = 0.0
    for m in range(n):
        acc += (m + 1.0) * w[m]
    return acc


@njit(**_JIT, inline="always")
def _head_stats(ranked, inv, ap_ks, pk, ap_row, hits_row):  # pragma: no cover - compiled
    """AP@k (k of ``ap_ks``) and relevant counts within the top K (K of ``pk``) from the ranked
    relevance ``ranked``; both lists ascending. Branch-free between the cut-offs (relevance is a
    coin flip to the branch predictor): the m-th relevant item at rank p adds m * inv[p - 1]."""
    na, npk = ap_ks.size, pk.size
    h = 0
    acc = 0.0
    p = 0
    a = 0
    b = 0
    while a < na or b < npk:
        nxt = ap_ks[a] if a < na else pk[b]
        if b < npk and pk[b] < nxt:
            nxt = pk[b]
        for q in range(p, nxt):
            rr = ranked[q]
            h += rr
            acc += (rr * h) * inv[q]
        p = nxt
        while a < na and ap_ks[a] == p:
            ap_row[a] = acc / h if h > 0 else 0.0
            a += 1
        while b < npk and pk[b] == p:
            hits_row[b] = h
            b += 1


@njit(**_JIT, inline="always")
def _bucket_starts(Hi, pos, kmax):  # pragma: no cover - compiled
    """``pos[d]`` = the rank (0-based) where distance d's bucket starts, from the key counts ``Hi``
    of one row; returns the last bucket holding a rank below ``kmax``."""
    nv = pos.size
    s = 0
    dmax = nv - 1
    found = False
    for d in range(nv):
        pos[d] = s
        s += Hi[2 * d] + Hi[2 * d + 1]
        if s >= kmax and not found:
            dmax = d  # ranks 1..kmax lie in the buckets 0..dmax
            found = True
    return dmax


@njit(**_JIT, inline="always")
def _ap_all(ranked, inv, w):  # pragma: no cover - compiled
    """AP over the whole ranked relevance: the m-th relevant item at rank p adds m / p. Gather 1/p
    of the relevant ranks (branch-free: relevance is a coin flip to the branch predictor), then one
    vector sum."""
    n = 0
    for p in range(ranked.size):
        w[n] = inv[p]
        n += ranked[p]
    return _weighted_sum(w, n) / n if n > 0 else 0.0


@njit(**_JIT, inline="always")
def _place(key, pos, ranked, one):  # pragma: no cover - compiled
    """One step of the counting sort: the item's relevance (the key's low bit) at the next rank of
    its distance's bucket."""
    d = _half(key)
    p = pos[d]
    ranked[p] = key & 1
    pos[d] = p + one


@njit(**_JIT)
def ranked_stats(keys, H, need_all, ap_ks, pk, ranked, inv, w, ap_all, ap_k, hits):  # pragma: no cover - compiled
    """Per row i, from its keys (database order) and key counts ``H[i]``: the ranked relevance by
    a counting sort (buckets by distance, database order inside), then AP@all (``need_all``),
    AP@k for each k of ``ap_ks`` and the relevant items within the top K for each K of ``pk``
    (both ascending, at most ndb).

    ``ranked`` (2, ndb) uint8 and ``w`` (ndb,) float64 are scratch, ``inv[p] = 1 / (p + 1)``.
    With ``need_all`` rows go in pairs through one loop over the database: the two rows' bucket
    counters are independent, so the CPU overlaps their store-to-load chains (measured 1.3x
    faster than a row at a time). Without ``need_all`` only ranks up to max(ap_ks, pk) are placed,
    and items in the buckets past that rank are skipped.
    """
    r, ndb = keys.shape
    nv = H.shape[1] // 2
    kmax = 0
    if ap_ks.size:
        kmax = max(kmax, ap_ks[-1])
    if pk.size:
        kmax = max(kmax, pk[-1])
    pa = np.empty(nv, np.uint32)
    pb = np.empty(nv, np.uint32)
    ra = ranked[0]
    rb = ranked[1]
    one = np.uint32(1)
    i = 0
    if need_all:
        while i + 1 < r:
            _bucket_starts(H[i], pa, kmax)
            _bucket_starts(H[i + 1], pb, kmax)
            ka = keys[i]
            kb = keys[i + 1]
            for j in range(ndb):
                _place(ka[j], pa, ra, one)
                _place(kb[j], pb, rb, one)
            ap_all[i] = _ap_all(ra, inv, w)
            _head_stats(ra, inv, ap_ks, pk, ap_k[i], hits[i])
            ap_all[i + 1] = _ap_all(rb, inv, w)
            _head_stats(rb, inv, ap_ks, pk, ap_k[i + 1], hits[i + 1])
            i += 2
    for i in range(i, r):  # the odd row out, or every row of the head-only case
        dmax = _bucket_starts(H[i], pa, kmax)
        ki = keys[i]
        if need_all:
            for j in range(ndb):
                _place(ki[j], pa, ra, one)
            ap_all[i] = _ap_all(ra, inv, w)
        else:
            kmax_key = 2 * dmax + 1  # d <= dmax, compared on the key itself
            for j in range(ndb):
                key = ki[j]
                if key <= kmax_key:
                    d = _half(key)
                    p = pa[d]
                    if p < kmax:
                        ra[p] = key & 1
                    pa[d] = p + one
        _head_stats(ra, inv, ap_ks, pk, ap_k[i], hits[i])


@njit(**_JIT, inline="always")
def _simd_starts(Hi, exact, ndb, start, pos):  # pragma: no cover - compiled
    """Where each distance's bucket starts in the buffer of :func:`ranked_stats_simd` (``pos``
    too): end to end from the key counts ``Hi`` with 64 bytes free past each (``exact``), or
    ndb + 64 bytes apart."""
    s = 0
    for d in range(start.size):
        if exact:
            start[d] = s + LANES * d
            s += Hi[2 * d] + Hi[2 * d + 1]
        else:
            start[d] = d * (ndb + LANES)
        pos[d] = start[d]


@njit(**_JIT, inline="always")
def _acc_total(acc):  # pragma: no cover - compiled
    tot = 0.0
    for q in range(acc.size):
        tot += acc[q]
    return tot


@njit(**_JIT, inline="always")
def _simd_row_stats(buf, start, pos, Hi, exact, need_all, ap_ks, pk, inv, acc,
                    ap_row, hits_row):  # pragma: no cover - compiled
    """One row's numbers from its placed buckets (``pos[d]``: the end of bucket d), in one pass
    over the ranks, 64 at a time: AP@all (when ``need_all``; returned, else 0), the relevant count
    of each bucket (into ``Hi`` unless ``exact``, where ``Hi`` holds them already), and at each
    cut-off k of ``ap_ks`` and ``pk`` (ascending) AP@k and the relevant items in the top k: a block
    holding a cut-off is added in two parts, the ranks up to k first."""
    one = np.uint64(1)
    na, npk = ap_ks.size, pk.size
    kap = ap_ks[-1] if na else 0  # AP sums are needed up to this rank (all of them with need_all)
    a = 0
    b = 0
    acc[:] = 0.0
    h = 0  # relevant items ranked so far
    rank0 = 0  # items ranked so far
    for d in range(start.size):
        n = pos[d] - start[d]
        before = h
        for t in range(0, n, LANES):
            r0 = rank0 + t
            nb = min(LANES, n - t)
            bits = nonzero_bits(buf, start[d] + t)
            if nb < LANES:
                bits &= (one << np.uint64(nb)) - one
            sums = need_all or r0 < kap
            while a < na or b < npk:  # the cut-offs within ranks r0 + 1 .. r0 + nb
                k = ap_ks[a] if a < na else pk[b]
                if b < npk and pk[b] < k:
                    k = pk[b]
                if k > r0 + nb:
                    break
                low = bits if k - r0 == LANES else bits & ((one << np.uint64(k - r0)) - one)
                bits &= ~low
                h = ap_block(low, h, r0, inv, acc) if sums else h + _popcnt(low)
                while a < na and ap_ks[a] == k:
                    ap_row[a] = _acc_total(acc) / h if h > 0 else 0.0
                    a += 1
                while b < npk and pk[b] == k:
                    hits_row[b] = h
                    b += 1
            h = ap_block(bits, h, r0, inv, acc) if sums else h + _popcnt(bits)
        if not exact:
            Hi[2 * d] = n - (h - before)
            Hi[2 * d + 1] = h - before
        rank0 += n
    return _acc_total(acc) / h if need_all and h > 0 else 0.0


@njit(**_JIT)
def ranked_stats_simd(keys, H, exact, need_all, ap_ks, pk, buf, inv, acc,
                      ap_all, ap_k, hits):  # pragma: no cover - compiled
    """:func:`ranked_stats` from 64-item blocks (the AVX-512 blocks above): the same counting sort
    by distance, database order inside, then one pass over the ranks for AP@all, AP@k (8 ranks a
    multiply-add: to float rounding of :func:`ranked_stats`, whose additions go in another order)
    and the relevant counts of P@K (equal).

    Buckets lie in ``buf`` (uint8) with 64 free bytes past each (:func:`place_block` stores whole
    vectors). ``exact``: ``H`` holds the key counts (:func:`key_counts`) and the buckets lie end
    to end, ``buf`` of ndb + 64 * nv bytes; else each bucket has room for every item, ``buf`` of
    nv * (ndb + 64) bytes, no counting pass is needed, and ``H`` (zeros) is filled here.
    ``inv[p] = 1 / (p + 1)`` with 64 entries past ndb (any finite value); ``acc`` (32,) float64
    scratch."""
    r, ndb = keys.shape
    nv = H.shape[1] // 2
    start = np.empty(nv, np.int64)
    pos = np.empty(nv, np.int64)
    nfull = ndb - ndb % LANES
    for i in range(r):
        ki = keys[i]
        _simd_starts(H[i], exact, ndb, start, pos)
        for j0 in range(0, nfull, LANES):
            kr = block_key_range(ki, j0)
            place_block(ki, j0, kr >> 9, (kr & 255) >> 1, buf, pos)
        for j in range(nfull, ndb):
            key = ki[j]
            d = _half(key)
            buf[pos[d]] = key & 1
            pos[d] += 1
        ap_all[i] = _simd_row_stats(buf, start, pos, H[i], exact, need_all, ap_ks, pk, inv, acc, ap_k[i], hits[i])


@njit(**_JIT)
def head_stats(idx, qlw, dblw, ap_ks, pk, ranked, inv, ap_k, hits):  # pragma: no cover - compiled
    """AP@k and top-K relevant counts (as :func:`ranked_stats`) of rows whose ranking head is
    ``idx`` (rows, kmax) database rows; relevance from label words ``qlw`` (rows, nl) and ``dblw``
    (ndb, nl). ``ranked`` is (kmax,) uint8 scratch, ``inv[p] = 1 / (p + 1)``."""
    r, kmax = idx.shape
    nl = qlw.shape[1]
    for i in range(r):
        for p in range(kmax):
            j = idx[i, p]
            hit = np.uint64(0)
            for w in range(nl):
                hit |= qlw[i, w] & dblw[j, w]
            ranked[p] = hit != 0
        _head_stats(ranked, inv, ap_ks, pk, ap_k[i], hits[i])


# ----------------------------------------------------------------------------- ranking

#: Database items sampled per row to guess the top-k distance threshold.
SAMPLE = 4096


_HI = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)


@njit(**_JIT, inline="always")
def _le_mask(x, t1):  # pragma: no cover - compiled
    """High bit of each byte of ``x`` (bytes < 128) set where the byte is < t1 (t1 <= 128 bytes
    of ``t1 * 0x01..``): ``(x | 0x80..) - t1`` keeps a byte's high bit exactly when byte >= t1,
    with no borrow between bytes."""
    return ~((x | _HI) - t1) & _HI


@njit(**_JIT)
def _count_le(di, ndb, t, swar):  # pragma: no cover - compiled
    """Items of ``di[:ndb]`` at distance <= t."""
    c = 0
    nw = ndb // 8 if swar else 0
    if swar:
        words = di.view(np.uint64)
        t1 = np.uint64(t + 1) * _ONES
        for w in range(nw):
            c += _popcnt(_le_mask(words[w], t1))
    for j in range(8 * nw, ndb):
        c += di[j] <= t
    return c


@njit(**_JIT)
def _collect_le(di, ndb, t, swar, cand):  # pragma: no cover - compiled
    """Database rows of ``di[:ndb]`` at distance <= t, ascending, into ``cand``; their number."""
    n = 0
    nw = ndb // 8 if swar else 0
    if swar:
        words = di.view(np.uint64)
        t1 = np.uint64(t + 1) * _ONES
        for w in range(nw):
            mw = _le_mask(words[w], t1)
            while mw:
                cand[n] = 8 * w + _cttz(mw) // 8
                n += 1
                mw &= mw - np.uint64(1)
    for j in range(8 * nw, ndb):
        if di[j] <= t:
            cand[n] = j
            n += 1
    return n


@njit(**_JIT)
def topk_from_distances(dist, ndb, nv, k, idx_out, dist_out, cand):  # pragma: no cover - compiled
    """Top ``k`` (1 <= k <= ndb) of each row of ``dist[:, :ndb]`` by (distance, index) into
    ``idx_out``/``dist_out`` (rows, k); ``dist`` is uint8 or uint16 with rows of a multiple of 8
    items, ``cand`` (ndb,) int64 scratch.

    A strided sample of :data:`SAMPLE` items guesses a distance t holding at least k items (with a
    4-sigma margin); one counting pass checks it (raised until it holds), one pass collects the
    items at distance <= t in database order, and a counting sort of those by distance (stable)
    gives the exact top k. With one-byte distances below 128 both passes test 8 items per 64-bit
    word (SWAR), so the cost per item is a fraction of a nanosecond.
    """
    r = dist.shape[0]
    stride = max(1, ndb // SAMPLE)
    m = (ndb + stride - 1) // stride
    e = k * m / ndb
    target = min(m, int(np.ceil(e + 4.0 * np.sqrt(e) + 4.0)))
    hist = np.empty(nv, np.int64)
    pos = np.empty(nv, np.int64)
    swar = nv <= 128 and dist.shape[1] % 8 == 0  # one-byte distances (the callers' dtype) below 128
    for i in range(r):
        di = dist[i]
        hist[:] = 0
        for j in range(0, ndb, stride):
            hist[di[j]] += 1
        t = 0
        acc = 0
        for d in range(nv):
            acc += hist[d]
            t = d
            if acc >= target:
                break
        while t < nv - 1 and _count_le(di, ndb, t, swar) < k:  # the sample can underestimate
            t += 1
        n = _collect_le(di, ndb, t, swar, cand)
        hist[:] = 0
        for u in range(n):
            hist[di[cand[u]]] += 1
        s = 0
        for d in range(nv):
            pos[d] = s
            s += hist[d]
        oi = idx_out[i]
        od = dist_out[i]
        for u in range(n):
            j = cand[u]
            d = di[j]
            p = pos[d]
            pos[d] = p + 1
            if p < k:
                oi[p] = j
                od[p] = d


@njit(**_JIT)
def pair_ranks_words(qw, db0, pair, out):  # pragma: no cover - compiled
    """:func:`pair_ranks` of codes of one 64-bit word (up to 64 bits), from the codes: query words
    ``qw`` (rows, 1) against the database words ``db0`` (ndb,), each distance computed and compared
    in one vectorised pass, none stored (measured 2.1x faster than distances then
    :func:`pair_ranks` at 64 bits: 0.24 against 0.50 ns a pair, one thread). The database goes in
    blocks of :data:`BLOCK` words, each against every row, so that it is read from L1 (two threads
    took 0.08-0.09 s against 0.10-0.12 s for 5,000 x 117,000 pairs; one thread the same)."""
    r = qw.shape[0]
    ndb = db0.size
    dp = np.empty(r, np.int64)
    for i in range(r):
        p = pair[i]
        out[i] = -1 if p < 0 else 0
        dp[i] = _popcnt(qw[i, 0] ^ db0[p]) if p >= 0 else 0
    for j0 in range(0, ndb, BLOCK):
        j1 = min(ndb, j0 + BLOCK)
        blk = db0[j0:j1]
        for i in range(r):
            p = pair[i]
            if p < 0:
                continue
            a = qw[i, 0]
            t = dp[i]
            c = 0
            if p >= j1:  # the whole block before the pair: as close counts too
                for j in range(blk.size):
                    c += _popcnt(a ^ blk[j]) <= t
            elif p < j0:  # after it: only closer
                for j in range(blk.size):
                    c += _popcnt(a ^ blk[j]) < t
            else:
                head = blk[:p - j0]
                for j in range(head.size):
                    c += _popcnt(a ^ head[j]) <= t
                tail = blk[p - j0 + 1:]
                for j in range(tail.size):
                    c += _popcnt(a ^ tail[j]) < t
            out[i] += c


@njit(**_JIT)
def pair_ranks(dist, pair, out):  # pragma: no cover - compiled
    """0-based rank of database row ``pair[i]`` in row i of ``dist`` (the items before it: closer,
    or as close with a smaller index); -1 where ``pair[i] < 0``."""
    r, ndb = dist.shape
    for i in range(r):
        pi = pair[i]
        if pi < 0:
            out[i] = -1
            continue
        di = dist[i]
        dp = di[pi]
        c = 0
        head = di[:pi]
        for j in range(head.size):
            c += head[j] <= dp
        tail = di[pi + 1:]
        for j in range(tail.size):
            c += tail[j] < dp
        out[i] = c
