/* derive (templates/support/small_gemm.h): the per-step recurrent products,
   C (m x n) (=|+=) A (m x k) . B, row-major, m small (a thread's batch rows). B (the weights) is packed once per call into panels of 2 vectors of
   columns, Bp[(p*k + kk)*PW + j] = B[kk][p*PW + j] (zero past n), so that every step streams it
   contiguously; a block of 4 rows x 2 vectors of C stays in registers over the whole k loop. */
#include <string.h>
#define DERIVE_SMALL_GEMM(T, S, VL)                                                             \
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
static void derive_small_gemm_##S(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const T* A,       \
                                  Py_ssize_t lda, const T* Bp, T* C, Py_ssize_t ldc, int add) { \
    Py_ssize_t panels = derive_panels_##S(n);                                                   \
    for (Py_ssize_t p = 0; p < panels; p++) {                                                   \
        const T* b = Bp + p * k * 2 * (VL);                                                     \
        Py_ssize_t c0 = p * 2 * (VL), w = n - c0 < 2 * (VL) ? n - c0 : 2 * (VL);                \
        Py_ssize_t r = 0;                                                                       \
        for (; r + 4 <= m; r += 4) {                                                            \
            const T *a0 = A + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;          \
            derive_vec_##S s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0};                          \
            derive_vec_##S s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};                          \
            for (Py_ssize_t kk = 0; kk < k; kk++) {                                             \
                derive_vec_##S lo = *(const derive_vec_##S*)(b + kk * 2 * (VL));                \
                derive_vec_##S hi = *(const derive_vec_##S*)(b + kk * 2 * (VL) + (VL));         \
                s00 += a0[kk] * lo; s01 += a0[kk] * hi;                                         \
                s10 += a1[kk] * lo; s11 += a1[kk] * hi;                                         \
                s20 += a2[kk] * lo; s21 += a2[kk] * hi;                                         \
                s30 += a3[kk] * lo; s31 += a3[kk] * hi;                                         \
            }                                                                                   \
            derive_put_##S(C + r * ldc + c0, s00, s01, w, add);                                 \
            derive_put_##S(C + (r + 1) * ldc + c0, s10, s11, w, add);                           \
            derive_put_##S(C + (r + 2) * ldc + c0, s20, s21, w, add);                           \
            derive_put_##S(C + (r + 3) * ldc + c0, s30, s31, w, add);                           \
        }                                                                                       \
        for (; r < m; r++) {                                                                    \
            const T* a0 = A + r * lda;                                                          \
            derive_vec_##S s00 = {0}, s01 = {0};                                                \
            for (Py_ssize_t kk = 0; kk < k; kk++) {                                             \
                derive_vec_##S lo = *(const derive_vec_##S*)(b + kk * 2 * (VL));                \
                derive_vec_##S hi = *(const derive_vec_##S*)(b + kk * 2 * (VL) + (VL));         \
                s00 += a0[kk] * lo; s01 += a0[kk] * hi;                                         \
            }                                                                                   \
            derive_put_##S(C + r * ldc + c0, s00, s01, w, add);                                 \
        }                                                                                       \
    }                                                                                           \
}
/* instantiated once per C type by the kernel template, with the lanes of the level the
   compiler targets (derive.kernel.lower.TILES): DERIVE_SMALL_GEMM(float, f32, 16) … */
