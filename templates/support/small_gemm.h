/* derive (templates/support/small_gemm.h): the per-step recurrent products,
   C (m x n) (=|+=) A (m x k) . B, row-major, m small (a thread's batch rows). B (the weights) is packed once per call into panels of 2 vectors of
   columns, Bp[(p*k + kk)*PW + j] = B[kk][p*PW + j] (zero past n), so that every step streams it
   contiguously; a block of ROWS rows x 2 vectors of C stays in registers over the whole k loop
   (ROWS per level: 2*ROWS accumulators out of the level's 16 or 32 vector registers), then
   blocks of 4 rows and single rows take the remainder. AHEAD > 0: the k loop prefetches the
   panel AHEAD rows of k ahead of the loads (a level's choice, derive.kernel.lower.AHEAD). */
#include <string.h>
#define DERIVE_SMALL_GEMM(T, S, VL, ROWS, AHEAD)                                                     \
typedef T derive_vec_##S __attribute__((vector_size((VL) * sizeof(T)), aligned(sizeof(T))));   \
static Py_ssize_t derive_panels_##S(Py_ssize_t n) { return (n + 2 * (VL) - 1) / (2 * (VL)); } \
/* elements of the panels of a k x n matrix */                                                    \
static Py_ssize_t derive_packed_##S(Py_ssize_t k, Py_ssize_t n) {                                   \
    return derive_panels_##S(n) * k * 2 * (VL);                                                     \
}                                                                                                   \
/* part `part` of `parts` of the panels; B[kk][c] = B[kk*rs + c*cs]: (rs, cs) = (ld, 1) for a       \
   matrix, (1, ld) for its transpose */                                                             \
static void derive_pack_##S(Py_ssize_t k, Py_ssize_t n, const T* B, Py_ssize_t rs,                 \
                            Py_ssize_t cs, T* Bp, Py_ssize_t part, Py_ssize_t parts) {             \
    Py_ssize_t p0 = derive_panels_##S(n) * part / parts;                                            \
    Py_ssize_t p1 = derive_panels_##S(n) * (part + 1) / parts;                                      \
    for (Py_ssize_t p = p0; p < p1; p++)                                                            \
        for (Py_ssize_t kk = 0; kk < k; kk++) {                                                     \
            T* dst = Bp + (p * k + kk) * 2 * (VL);                                                  \
            for (Py_ssize_t j = 0; j < 2 * (VL); j++) {                                             \
                Py_ssize_t c = p * 2 * (VL) + j;                                                    \
                dst[j] = c < n ? B[kk * rs + c * cs] : (T)0;                                        \
            }                                                                                       \
        }                                                                                           \
}                                                                                                   \
static inline void derive_put_##S(T* c, const derive_vec_##S lo, const derive_vec_##S hi,      \
                                  Py_ssize_t w, int add) {                                      \
    if (w == 2 * (VL)) {                                                                        \
        derive_vec_##S* out = (derive_vec_##S*)c;                                               \
        if (add) { out[0] += lo; out[1] += hi; } else { out[0] = lo; out[1] = hi; }             \
        return;                                                                                 \
    }                                                                                           \
    T t[2 * (VL)];                                                                              \
    *(derive_vec_##S*)t = lo;                                                                   \
    *(derive_vec_##S*)(t + (VL)) = hi;                                                          \
    if (add) for (Py_ssize_t j = 0; j < w; j++) c[j] += t[j];                                   \
    else memcpy(c, t, (size_t)w * sizeof(T));                                                   \
}                                                                                               \
/* a block of `rows` rows x 2 vectors of C, kept in registers over the whole k loop  \
   (inlined with a constant `rows`: 2*rows accumulators, as many as the level's     \
   registers allow) */                                                              \
static inline __attribute__((always_inline)) void derive_block_##S(                \
        const int rows, Py_ssize_t k, const T* A, Py_ssize_t lda, const T* b,       \
        T* C, Py_ssize_t ldc, Py_ssize_t w, int add) {                              \
    derive_vec_##S lo_acc[16], hi_acc[16];                                          \
    _Pragma("GCC unroll 16")                                                        \
    for (int i = 0; i < rows; i++) { lo_acc[i] = (derive_vec_##S){0}; hi_acc[i] = (derive_vec_##S){0}; } \
    for (Py_ssize_t kk = 0; kk < k; kk++) {                                         \
        derive_vec_##S lo = *(const derive_vec_##S*)(b + kk * 2 * (VL));            \
        derive_vec_##S hi = *(const derive_vec_##S*)(b + kk * 2 * (VL) + (VL));     \
        if (AHEAD) {                                                                  \
            __builtin_prefetch(b + (kk + (AHEAD)) * 2 * (VL));                        \
            __builtin_prefetch(b + (kk + (AHEAD)) * 2 * (VL) + (VL));                 \
        }                                                                             \
        _Pragma("GCC unroll 16")                                                    \
        for (int i = 0; i < rows; i++) {                                            \
            T a = A[i * lda + kk];                                                  \
            lo_acc[i] += a * lo; hi_acc[i] += a * hi;                               \
        }                                                                           \
    }                                                                               \
    _Pragma("GCC unroll 16")                                                        \
    for (int i = 0; i < rows; i++) derive_put_##S(C + i * ldc, lo_acc[i], hi_acc[i], w, add); \
}                                                                                   \
static void derive_small_gemm_##S(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T* A,       \
                                  Py_ssize_t lda, const T* Bp, T* C, Py_ssize_t ldc, int add) { \
    Py_ssize_t panels = derive_panels_##S(n);                                                   \
    for (Py_ssize_t p = 0; p < panels; p++) {                                                   \
        const T* b = Bp + p * k * 2 * (VL);                                                     \
        Py_ssize_t c0 = p * 2 * (VL), w = n - c0 < 2 * (VL) ? n - c0 : 2 * (VL);                \
        Py_ssize_t r = 0;                                                                       \
        for (; r + (ROWS) <= m; r += (ROWS))                                                    \
            derive_block_##S((ROWS), k, A + r * lda, lda, b, C + r * ldc + c0, ldc, w, add);   \
        if ((ROWS) > 4) for (; r + 4 <= m; r += 4)                                              \
            derive_block_##S(4, k, A + r * lda, lda, b, C + r * ldc + c0, ldc, w, add);        \
        for (; r < m; r++)                                                                      \
            derive_block_##S(1, k, A + r * lda, lda, b, C + r * ldc + c0, ldc, w, add);        \
    }                                                                                           \
}
/* instantiated once per C type by the kernel template, with the lanes of the level the
   compiler targets (derive.kernel.lower.TILES): DERIVE_SMALL_GEMM(float, f32, 16, 8, 16) … */
