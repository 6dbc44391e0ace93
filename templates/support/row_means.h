/* derive (templates/support/row_means.h): the row reductions of layer normalisation,
   out[i] = (a[i][0] + ... + a[i][n-1]) / n for the m rows of a (leading dimension lda): a
   thread's batch rows, between two element-wise phases. OpenMP's simd reduction lets the
   compiler vectorise this one sum (several partial sums, added at the end) without
   -ffast-math for the whole kernel; without OpenMP the loop is serial. */
#define DERIVE_ROW_MEANS(T, S)                                                              \
static void derive_row_means_##S(Py_ssize_t m, Py_ssize_t n, const T* a, Py_ssize_t lda,  \
                                 T* out) {                                                  \
    for (Py_ssize_t i = 0; i < m; i++) {                                                    \
        const T* row = a + i * lda;                                                         \
        T s = 0;                                                                            \
        _Pragma("omp simd reduction(+:s)")                                                  \
        for (Py_ssize_t j = 0; j < n; j++)                                                  \
            s += row[j];                                                                    \
        out[i] = s / (T)n;                                                                  \
    }                                                                                       \
}
