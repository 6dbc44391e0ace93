# derive (templates/support/kernel.pyx): the static part of every kernel module, inlined
# by derive.kernel.emit: element-wise functions, BLAS, the small product's declarations,
# argument checks.

from libc.math cimport expf, exp, tanhf, tanh, logf, log, powf, pow, sqrtf, sqrt, log1pf, log1p
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport parallel, threadid


# --- threads -----------------------------------------------------------------------------
# Each pass is one OpenMP parallel region (`with parallel()`), its phases separated by
# barriers: starting a region wakes the team's sleeping threads, which costs a
# scheduler wake-up per region (milliseconds on a loaded machine), while a barrier
# between running threads costs microseconds. derive_team() is the size of the team
# OpenMP actually started (at most the threads asked for); every thread of it reaches
# every barrier. derive_claim(&next) returns *next and increments it, atomically: the
# team's threads claim the parts of shared work one at a time, each as soon as it is
# free. Without OpenMP (the fallback build) the region runs once, serially.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static void derive_barrier(void) { _Pragma("omp barrier") }
    static Py_ssize_t derive_team(void) { return omp_get_num_threads(); }
    static Py_ssize_t derive_claim(Py_ssize_t* next) {
        Py_ssize_t v;
        _Pragma("omp atomic capture")
        v = (*next)++;
        return v;
    }
    #else
    static void derive_barrier(void) {}
    static Py_ssize_t derive_team(void) { return 1; }
    static Py_ssize_t derive_claim(Py_ssize_t* next) { return (*next)++; }
    #endif
    """
    void derive_barrier() nogil
    Py_ssize_t derive_team() nogil
    Py_ssize_t derive_claim(Py_ssize_t* next) nogil


# --- element-wise functions -------------------------------------------------------------
# glibc declares its vector math (libmvec) only under -ffast-math, which would also let
# the compiler assume there is no NaN. Declaring the functions SIMD-enabled ourselves
# lets gcc vectorize the element-wise loops with vector expf/tanhf/logf/log1pf while IEEE
# semantics (NaN and infinities propagate) stay guaranteed. DERIVE_LIBMVEC is defined
# by the build where libmvec is linked (x86-64 with AVX2).

cdef extern from *:
    """
    #if defined(DERIVE_LIBMVEC)
    #include <math.h>
    __attribute__((simd("notinbranch"))) float expf(float);
    __attribute__((simd("notinbranch"))) double exp(double);
    __attribute__((simd("notinbranch"))) float tanhf(float);
    __attribute__((simd("notinbranch"))) double tanh(double);
    __attribute__((simd("notinbranch"))) float logf(float);
    __attribute__((simd("notinbranch"))) double log(double);
    __attribute__((simd("notinbranch"))) float log1pf(float);
    __attribute__((simd("notinbranch"))) double log1p(double);
    #endif
    """


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # numbers cast to the type: Cython writes a bare 1 beside a float as the C double 1.0,
    # and C then computes the float32 sigmoid in double precision
    if floating is float:
        return (<floating>1) / ((<floating>1) + expf(-v))
    else:
        return (<floating>1) / ((<floating>1) + exp(-v))


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _log(floating v) noexcept nogil:
    if floating is float:
        return logf(v)
    else:
        return log(v)


cdef inline floating _relu(floating v) noexcept nogil:
    # max(v, 0); NaN stays NaN (numbers cast: see _sigmoid)
    return (<floating>0) if v < (<floating>0) else v


cdef inline floating _step(floating v) noexcept nogil:
    # [v > 0]: relu' from relu's output (0 at the kink); NaN stays NaN
    if v > (<floating>0):
        return (<floating>1)
    return (<floating>0) if v <= (<floating>0) else v


cdef inline floating _softplus(floating v) noexcept nogil:
    # log(1 + e^v) = max(v, 0) + log(1 + e^-|v|): no overflow for large v
    cdef bint positive = v > (<floating>0)
    cdef floating m = v if positive else (<floating>0)       # max(v, 0)
    cdef floating a = -v if positive else v                   # -|v| (NaN stays NaN)
    if floating is float:
        return m + log1pf(expf(a))
    else:
        return m + log1p(exp(a))


cdef inline floating _pow(floating v, floating e) noexcept nogil:
    if floating is float:
        return powf(v, e)
    else:
        return pow(v, e)


cdef inline floating _sqrt(floating v) noexcept nogil:
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


# --- BLAS --------------------------------------------------------------------------------
# The private OpenBLAS of the scipy-openblas32 wheel (CBLAS, symbols prefixed scipy_),
# held at one thread: the threads are ours (see the module docstring).

cdef extern from "cblas.h" nogil:
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int,
                           float, const float*, int, const float*, int, float, float*, int)
    void scipy_cblas_dgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int,
                           double, const double*, int, const double*, int, double, double*,
                           int)
    void scipy_openblas_set_num_threads(int)

scipy_openblas_set_num_threads(1)


cdef inline void _gemm(bint ta, bint tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       floating alpha, const floating* a, Py_ssize_t lda,
                       const floating* b, Py_ssize_t ldb, floating beta,
                       floating* c, Py_ssize_t ldc) noexcept nogil:
    # row-major C (m × n) = alpha op(A) op(B) + beta C
    if m <= 0 or n <= 0:
        return
    if floating is float:
        scipy_cblas_sgemm(CblasRowMajor, CblasTrans if ta else CblasNoTrans,
                          CblasTrans if tb else CblasNoTrans, <int>m, <int>n, <int>k, alpha,
                          a, <int>lda, b, <int>ldb, beta, c, <int>ldc)
    else:
        scipy_cblas_dgemm(CblasRowMajor, CblasTrans if ta else CblasNoTrans,
                          CblasTrans if tb else CblasNoTrans, <int>m, <int>n, <int>k, alpha,
                          a, <int>lda, b, <int>ldb, beta, c, <int>ldc)


# --- the per-step recurrent products (C: templates/support/small_gemm.h) -----------------
# C (m × n) (=|+=) A (m × k) · B with m a thread's few batch rows: BLAS would pack the
# weights B at every step, so they are packed once per call into column panels and a
# register-blocked loop streams them. The C code is inlined above, instantiated with
# the vector width of each C type (the tiles of derive.kernel.lower).

cdef extern from *:
    Py_ssize_t derive_packed_f32(Py_ssize_t k, Py_ssize_t n) nogil
    Py_ssize_t derive_packed_f64(Py_ssize_t k, Py_ssize_t n) nogil
    void derive_pack_f32(Py_ssize_t k, Py_ssize_t n, const float* B, Py_ssize_t rs,
                         Py_ssize_t cs, float* Bp, Py_ssize_t part, Py_ssize_t parts) nogil
    void derive_pack_f64(Py_ssize_t k, Py_ssize_t n, const double* B, Py_ssize_t rs,
                         Py_ssize_t cs, double* Bp, Py_ssize_t part, Py_ssize_t parts) nogil
    void derive_small_gemm_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A,
                               Py_ssize_t lda, const float* Bp, float* C, Py_ssize_t ldc,
                               int add) nogil
    void derive_small_gemm_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* A,
                               Py_ssize_t lda, const double* Bp, double* C, Py_ssize_t ldc,
                               int add) nogil


cdef void* _packed(Py_ssize_t k, Py_ssize_t n, floating zero) noexcept nogil:
    # a zeroed buffer for the panels of a k × n matrix (NULL when out of memory)
    if floating is float:
        return calloc(derive_packed_f32(k, n), sizeof(float))
    else:
        return calloc(derive_packed_f64(k, n), sizeof(double))


cdef inline Py_ssize_t _finish_parts(Py_ssize_t rows, Py_ssize_t team, Py_ssize_t most,
                                     Py_ssize_t least) noexcept nogil:
    # the parts of a product of `rows` rows after the loop: one per thread, and up to `most`
    # per thread while each part keeps at least `least` rows (BLAS packs the other operand
    # once per call: thin parts pay that again and again)
    if team <= 1:
        return 1
    return max(team, min(most * team, rows // least))


cdef inline Py_ssize_t _claimed_part(Py_ssize_t task, const Py_ssize_t* rows,
                                     Py_ssize_t products, Py_ssize_t team, Py_ssize_t most,
                                     Py_ssize_t least, Py_ssize_t* part,
                                     Py_ssize_t* nparts) noexcept nogil:
    # part `task` of the products' parts, counted product after product (each in
    # _finish_parts of its `rows`): returns its product w and puts its index among w's
    # parts in *part and their number in *nparts; returns `products` past the last part
    cdef Py_ssize_t w
    for w in range(products):
        nparts[0] = _finish_parts(rows[w], team, most, least)
        if task < nparts[0]:
            part[0] = task
            return w
        task -= nparts[0]
    return products


cdef void _sum_parts(floating* parts, Py_ssize_t stride, Py_ssize_t nt, Py_ssize_t N,
                     floating* out) noexcept nogil:
    # the vector gradients: the sum of the threads' partial sums
    cdef Py_ssize_t c, j
    for j in range(N):
        out[j] = parts[j]
    for c in range(1, nt):
        for j in range(N):
            out[j] += parts[c * stride + j]


# --- one step, element-wise ----------------------------------------------------------
# One version per C type: the pointers are `restrict` (the buffers never overlap), so
# gcc vectorizes the loops without run-time alias checks; rows are read and written
# through pointers derived from them.

cdef extern from *:
    ctypedef float* float_rp "float * __restrict__"
    ctypedef double* double_rp "double * __restrict__"


# --- argument checks -------------------------------------------------------------------
# derive.kernel.runtime validates every argument (shapes, dtypes, contiguity) before it
# calls a kernel; these checks only keep a direct caller from reading out of bounds.

def _check(name, arrays, shapes):
    """`arrays` (one argument: a tuple) holds arrays of exactly these shapes."""
    if len(arrays) != len(shapes):
        raise ValueError(f"{name} must hold {len(shapes)} arrays, not {len(arrays)}")
    for k, (a, want) in enumerate(zip(arrays, shapes)):
        if tuple(a.shape) != want:
            raise ValueError(f"{name}[{k}] must have shape {want}, not {tuple(a.shape)}")


def _first(X):
    """The first input's array (the one the typed entry points dispatch on)."""
    if not isinstance(X, tuple) or len(X) < 1:
        raise ValueError("X must be a tuple of the inputs, one (T, B, size) array each")
    return X[0]


def _sizes(X, S, max_k):
    """(T, B, N): the sizes of a call, from the first input and the first state."""
    if len(S) < 1 or len(S[0].shape) != 3:
        raise ValueError("S must hold the states, each of shape (T + 1, B, N)")
    if len(X[0].shape) != 3:
        raise ValueError("X must hold the inputs, each of shape (T, B, size)")
    T, B, N = X[0].shape[0], X[0].shape[1], S[0].shape[2]
    if T < 1 or B < 1 or N < 1:
        raise ValueError(f"sizes must be at least 1, not T={T}, B={B}, N={N}")
    if T * B > 2147483647 or max_k * N > 2147483647:
        raise ValueError("arrays too large for 32-bit BLAS indices")
    return T, B, N


def _width(X, k):
    """The size of input k (its last dimension), for an input of size M."""
    if len(X) <= k or len(X[k].shape) != 3:
        raise ValueError(f"X[{k}] must be an input of shape (T, B, size)")
    M = X[k].shape[2]
    if M < 1 or M > 2147483647:
        raise ValueError(f"X[{k}]: its size must be between 1 and 2**31 - 1, not {M}")
    return M
