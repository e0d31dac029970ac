"""Dense matrix products inside an expression, handed to BLAS.

``Σ_k A[m,k] * B[n,k]`` over two dense operands is a matrix product. The loop
nest spcomp emits for it is a dot product per ``(m, n)`` with no register or
cache blocking, a third of what OpenBLAS (the BLAS NumPy and SciPy ship) gets
from the same machine. So when an expression needs such a product at every
``(m, n)`` — every operand of the expression is dense, so nothing sparse makes
most of the products unwanted — the lowerer computes it into a dense temporary
``G[m,n]`` with one ``gemm`` call before the loop nest and the nest reads ``G``.
The TwELL gate ``H[t,n] = relu(X[t,k]*Wg[n,k])`` is the case that matters:
the GEMM runs at BLAS speed and the nest only applies relu and packs.

Where a sparse operand takes part (SDDMM, the fused TwELL up/down projection)
the product is wanted only at stored coordinates and the loop nest is the
right tool, so nothing is offloaded. Offloading is CPU-only, float32/float64
only (no bfloat16 BLAS), and off when a schedule orders, vectorises, unrolls,
precomputes or parallelises loops explicitly, or says ``no_blas()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formats import Format
from ..ir import nodes as n
from ..notation import Access, IndexVar, Literal, Sum, TensorVar, accesses
from .normalize import factors, product, rebuild

BLAS_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Gemm:
    """``temp[m,n] = Σ_k a[m,k] * b[k,n]``, each operand as BLAS sees it.

    ``trans_a`` is true when ``a`` is stored ``k``-major (a row-major ``k × m``
    matrix); ``trans_b`` when ``b`` is stored ``n``-major (row-major ``n × k``).
    """
    temp: TensorVar
    a: Access
    b: Access
    m: IndexVar
    n: IndexVar
    k: IndexVar
    trans_a: bool
    trans_b: bool

    @property
    def access(self) -> Access:
        return Access(self.temp, (self.m, self.n))

    def describe(self) -> str:
        fn = "sgemm" if self.temp.dtype == "float32" else "dgemm"
        return f"{self.access!r} = sum({self.k.name}, {self.a!r} * {self.b!r})   (one BLAS {fn} call)"


def _row_major_over(acc: Access, first: IndexVar) -> bool:
    """Whether dense ``acc`` (two indices) is stored with ``first`` as its row index."""
    return acc.indices[acc.tensor.format.order[0]] == first


def _as_gemm(s: Sum, lhs: Access, dtype: str, name: str):
    """``(Gemm, constant factor)`` computing sum ``s``, or None when ``s`` is not a
    matrix product (up to constant factors, which stay outside: ``2 * G[m,n]``)."""
    fs = factors(s.body)
    constants = [f for f in fs if isinstance(f, Literal)]
    fs = [f for f in fs if not isinstance(f, Literal)]
    if len(fs) != 2 or not all(isinstance(f, Access) for f in fs):
        return None
    k = s.index
    for f in fs:
        t = f.tensor
        if (not t.format.is_dense or t.dtype != dtype or len(f.indices) != 2
                or len(set(f.indices)) != 2 or k not in f.indices):
            return None
    free = [next(i for i in f.indices if i != k) for f in fs]
    if free[0] == free[1]:
        return None  # a batch index (row-wise dot products), not a matrix product
    # the factor whose free index the output stores first is A, so G is laid out as
    # the output is stored and the nest, which walks the output in its storage order
    # (a CSC output: columns first), reads G row by row, not with a stride
    out = [lhs.indices[level] for level in lhs.tensor.format.order]
    rank = [out.index(i) if i in out else len(out) for i in free]
    if rank[1] < rank[0]:
        fs, free = fs[::-1], free[::-1]
    a, b = fs
    m, n = free
    temp = TensorVar(name, 2, Format.dense(2), dtype)
    return (Gemm(temp, a, b, m, n, k, trans_a=not _row_major_over(a, m), trans_b=_row_major_over(b, n)),
            constants)


def offload(rhs, lhs: Access, dtype: str, taken: set) -> tuple:
    """``(rhs with matrix products replaced by temporaries, [Gemm, ...])``.

    Products are found innermost first, so a chain ``A·(B·C)`` becomes two calls.
    ``taken`` holds tensor names in use; temporaries get fresh ones (``G``, ``G2`` ...).
    """
    if dtype not in BLAS_DTYPES or not all(acc.tensor.format.is_dense for acc in accesses(rhs)):
        return rhs, []
    gemms: list = []

    def fresh() -> str:
        k, name = 2, "G"
        while name in taken:
            name, k = f"G{k}", k + 1
        taken.add(name)
        return name

    def go(e):
        e = rebuild(e, go)
        if isinstance(e, Sum):
            found = _as_gemm(e, lhs, dtype, "")
            if found is not None:
                g, constants = found
                g = Gemm(TensorVar(fresh(), 2, g.temp.format, dtype), g.a, g.b, g.m, g.n, g.k,
                         g.trans_a, g.trans_b)
                gemms.append(g)
                return product(constants + [g.access])
        return e

    return go(rhs), gemms


# ------------------------------------------------------------ the calls

def gemm_into_temporary(g: Gemm, params: dict, sizes: dict) -> list:
    """Allocate the product's temporary and fill it with one gemm call."""
    c = params[g.temp.name].vals
    return [n.Comment(g.describe()),
            n.Allocate(c, n.Binary("*", sizes[g.m], sizes[g.n])),  # beta = 0 writes every entry
            gemm_call(g, c, params, sizes)]


def gemm_call(g: Gemm, c, params: dict, sizes: dict, alpha: float = 1.0, beta: float = 0.0):
    """``c = alpha * a·b + beta * c`` for product ``g``, ``c`` row-major ``m × n``."""
    def row_stride(acc):
        return n.Binary("max", sizes[acc.indices[acc.tensor.format.order[1]]], n.i64(1))
    m, n_ = sizes[g.m], sizes[g.n]
    return n.Gemm(c, params[g.a.tensor.name].vals, params[g.b.tensor.name].vals,
                  m, n_, sizes[g.k], row_stride(g.a), row_stride(g.b),
                  n.Binary("max", n_, n.i64(1)), g.trans_a, g.trans_b, alpha, beta)


def direct_gemm(gemms: list, lhs, rhs):
    """``(gemm, alpha)`` when the right side is ``alpha`` times one product and the
    dense output is stored row-major over the product's ``(m, n)``, else None."""
    if len(gemms) != 1:
        return None
    g = gemms[0]
    fmt = lhs.tensor.format
    if (not fmt.is_dense or fmt.order != tuple(range(fmt.ndim)) or tuple(lhs.indices) != (g.m, g.n)
            or lhs.tensor.dtype != g.temp.dtype):
        return None
    alpha, rest = 1.0, []
    for f in factors(rhs):
        if isinstance(f, Literal):
            alpha *= f.value
        else:
            rest.append(f)
    return (g, alpha) if rest == [g.access] else None
