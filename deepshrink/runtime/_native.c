/* Inner loops of the sparse codebook kernels in C (an optional build; _kernels_jit.py has the numba
 * fallback and the threading). Layout as in kernels.py: columns in panels of 2048; in panel p, position i
 * holds row order[p * rows + i], its entries at [ptr[p * (rows + 1) + i], ptr[p * (rows + 1) + i + 1]);
 * positions permute rows only within blocks of 512 (ROW_BLOCK), so callers that split the rows at
 * multiples of 512 never write one output from two threads. Packed entries are code << 11 | column in
 * panel (uint16, codebook padded to 32 values), wide ones a uint16 column and a uint8 code.
 *
 * Why C: numba gives no control over register allocation, and without LLVM's SLP vectoriser (off in
 * numba) a 32-wide update per entry stays scalar; here the batch-64 update keeps a row's partial sums in
 * eight AVX2 registers (two sets, so consecutive entries do not wait on each other's FMA), chosen at run
 * time where the CPU has AVX2, FMA and BMI, and the batch-1 loop runs eight independent scalar sums.
 *
 * Every function works on rows [r0, r1) and touches only those outputs, so callers may run disjoint
 * row ranges on different threads. Nothing here allocates or calls back into Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DS_X86 1
#endif

#define PANEL_BITS 11
#define PANEL 2048
#define COL_MASK 2047
#define CHUNK 32

typedef int64_t i64;

#define DS_EXPORT __attribute__((visibility("default")))

/* ---- batch 1 ---------------------------------------------------------------------------------- */

/* The packed batch-1 walk shared by both bodies: every (panel, row) run of entries into eight sums
 * a0..a7 by BODY (which advances j to hi), then into the row's output. */
#define PACKED_ROWS(...)                                                                 \
    for (i64 r = r0; r < r1; r++) y[r] = bias[r];                                       \
    for (i64 p = 0; p < n_panels; p++) {                                                 \
        const float *xp = x + p * PANEL;                                                 \
        const int32_t *pp = ptr + p * (rows + 1), *op = order + p * rows;                \
        for (i64 r = r0; r < r1; r++) {                                                  \
            uint32_t j = (uint32_t)pp[r], hi = (uint32_t)pp[r + 1];                      \
            if (j == hi) continue;                                                       \
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;        \
            __VA_ARGS__                                                                  \
            y[op[r]] += ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));               \
        }                                                                                \
    }

static void spmv_packed_generic(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, const uint16_t *entries, const float *cb,
                                const float *x, const float *bias, float *y, i64 r0, i64 r1) {
    PACKED_ROWS({
        for (; j + 8 <= hi; j += 8) {
            uint32_t v0 = entries[j], v1 = entries[j + 1], v2 = entries[j + 2], v3 = entries[j + 3];
            uint32_t v4 = entries[j + 4], v5 = entries[j + 5], v6 = entries[j + 6], v7 = entries[j + 7];
            a0 += cb[v0 >> PANEL_BITS] * xp[v0 & COL_MASK];
            a1 += cb[v1 >> PANEL_BITS] * xp[v1 & COL_MASK];
            a2 += cb[v2 >> PANEL_BITS] * xp[v2 & COL_MASK];
            a3 += cb[v3 >> PANEL_BITS] * xp[v3 & COL_MASK];
            a4 += cb[v4 >> PANEL_BITS] * xp[v4 & COL_MASK];
            a5 += cb[v5 >> PANEL_BITS] * xp[v5 & COL_MASK];
            a6 += cb[v6 >> PANEL_BITS] * xp[v6 & COL_MASK];
            a7 += cb[v7 >> PANEL_BITS] * xp[v7 & COL_MASK];
        }
        for (; j < hi; j++) {
            uint32_t v = entries[j];
            a0 += cb[v >> PANEL_BITS] * xp[v & COL_MASK];
        }
    })
}

DS_EXPORT void ds_spmv_wide(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, const uint16_t *cols, const uint8_t *codes,
                            const float *cb, const float *x, const float *bias, float *y, i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; r++) y[r] = bias[r];
    for (i64 p = 0; p < n_panels; p++) {
        const float *xp = x + p * PANEL;
        const int32_t *pp = ptr + p * (rows + 1), *op = order + p * rows;
        for (i64 r = r0; r < r1; r++) {
            uint32_t j = (uint32_t)pp[r], hi = (uint32_t)pp[r + 1];
            if (j == hi) continue;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (; j + 4 <= hi; j += 4) {
                a0 += cb[codes[j]] * xp[cols[j]];
                a1 += cb[codes[j + 1]] * xp[cols[j + 1]];
                a2 += cb[codes[j + 2]] * xp[cols[j + 2]];
                a3 += cb[codes[j + 3]] * xp[cols[j + 3]];
            }
            for (; j < hi; j++) a0 += cb[codes[j]] * xp[cols[j]];
            y[op[r]] += (a0 + a1) + (a2 + a3);
        }
    }
}

/* The byte layout: per row, one byte per entry, (gap - 1) << 5 | code, the column advancing by the gap
 * (1..8) from -1; code 31 is a filler (cb[31] is 0), so a longer gap costs a byte per 8 columns and no branch. */
#define BYTE_STEP(e) (((uint32_t)(e) >> 5) + 1)
#define BYTE_CODE(e) ((e) & 31)

static void spmv_bytes_generic(const int32_t *row_ptr, const uint8_t *ent, const float *cb, const float *x, const float *bias,
                               float *y, i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; r++) {
        uint32_t j = (uint32_t)row_ptr[r], hi = (uint32_t)row_ptr[r + 1];
        uint32_t c = 0; /* one past the previous column */
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        /* Four entries from one 32-bit load; their columns from the running one by a sum each, not a chain of four. */
        for (; j + 4 <= hi; j += 4) {
            uint32_t q;
            memcpy(&q, ent + j, 4);
            uint32_t s0 = (q >> 5) & 7, s1 = (q >> 13) & 7, s2 = (q >> 21) & 7, s3 = q >> 29;
            uint32_t c0 = c + s0, c1 = c0 + s1 + 1, c2 = c + s0 + s1 + s2 + 2, c3 = c + (s0 + s1) + (s2 + s3) + 3;
            a0 += cb[q & 31] * x[c0];
            a1 += cb[(q >> 8) & 31] * x[c1];
            a2 += cb[(q >> 16) & 31] * x[c2];
            a3 += cb[(q >> 24) & 31] * x[c3];
            c = c3 + 1;
        }
        for (; j < hi; j++) {
            c += BYTE_STEP(ent[j]);
            a0 += cb[BYTE_CODE(ent[j])] * x[c - 1];
        }
        y[r] = bias[r] + ((a0 + a1) + (a2 + a3));
    }
}

/* ---- batch > 1, in chunks of 32 inputs ------------------------------------------------------------ */

/* xc[k][col][t] = x[(k * 32 + t) * n_cols + col] for columns [c0, c1) of chunk k, zero past the batch. */
DS_EXPORT void ds_chunk_x(const float *x, i64 batch, i64 n_cols, float *xc, i64 k, i64 c0, i64 c1) {
    float *out = xc + k * n_cols * CHUNK;
    /* input by input: each reads a contiguous run of x, the strided writes stay in the block's
     * (c1 - c0) * 128 bytes of xc (column by column, every read would touch a new cache line) */
    for (i64 t = 0; t < CHUNK; t++) {
        i64 b = k * CHUNK + t;
        const float *src = x + b * n_cols;
        if (b < batch)
            for (i64 col = c0; col < c1; col++) out[col * CHUNK + t] = src[col];
        else
            for (i64 col = c0; col < c1; col++) out[col * CHUNK + t] = 0.0f;
    }
}

/* One chunk's code/column pair per entry: the weight and the offset of its row of xc. */
#define PACKED_W(j) (cb[entries[j] >> PANEL_BITS])
#define PACKED_X(j) (xp + (size_t)(entries[j] & COL_MASK) * CHUNK)
#define WIDE_W(j) (cb[codes[j]])
#define WIDE_X(j) (xp + (size_t)cols[j] * CHUNK)

static void write_out(const float *acc, const float *bias, float *y, i64 rows, i64 r0, i64 r1, i64 t0, i64 width) {
    /* output by output, so the writes to y are contiguous (row by row, each would touch 32 lines) */
    for (i64 t = 0; t < width; t++)
        for (i64 r = r0; r < r1; r++) y[(t0 + t) * rows + r] = acc[(r - r0) * CHUNK + t] + bias[r];
}

/* Portable body: GCC vectorises the fixed 32-wide loops with whatever the build target has. */
#define SPMM_GENERIC(NAME, W, X, ...)                                                                              \
    static void NAME(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, __VA_ARGS__, const float *cb, const float *xc,     \
                     i64 padded_cols, const float *bias, float *y, i64 r0, i64 r1, i64 k, i64 batch, float *acc) { \
        const float *xk = xc + k * padded_cols * CHUNK;                                                            \
        memset(acc, 0, sizeof(float) * (size_t)((r1 - r0) * CHUNK));                                               \
        for (i64 p = 0; p < n_panels; p++) {                                                                       \
            const float *xp = xk + p * PANEL * CHUNK;                                                              \
            const int32_t *pp = ptr + p * (rows + 1), *op = order + p * rows;                                                              \
            for (i64 r = r0; r < r1; r++) {                                                                        \
                float s[CHUNK];                                                                                    \
                float *a = acc + (op[r] - r0) * CHUNK;                                                             \
                memcpy(s, a, sizeof s);                                                                            \
                for (uint32_t j = (uint32_t)pp[r]; j < (uint32_t)pp[r + 1]; j++) {                                 \
                    const float w = W(j);                                                                          \
                    const float *xr = X(j);                                                                        \
                    for (int t = 0; t < CHUNK; t++) s[t] += w * xr[t];                                             \
                }                                                                                                  \
                memcpy(a, s, sizeof s);                                                                            \
            }                                                                                                      \
        }                                                                                                          \
        i64 width = batch - k * CHUNK < CHUNK ? batch - k * CHUNK : CHUNK;                                         \
        write_out(acc, bias, y, rows, r0, r1, k * CHUNK, width);                                                   \
    }

SPMM_GENERIC(spmm_packed_generic, PACKED_W, PACKED_X, const uint16_t *entries)
SPMM_GENERIC(spmm_wide_generic, WIDE_W, WIDE_X, const uint16_t *cols, const uint8_t *codes)

/* The byte layout at batch > 1 walks x's columns in panels of 2048 too, so that a panel of the chunk
 * (256 KB) stays in L2 while every row of the block reads it (a 4096-column chunk is 512 KB, L2's whole
 * size on Zen 3). The rows carry no panel pointers: each row's walk stops before the panel's end and
 * resumes there in the next pass, from ``state`` (per row, the next entry and one past its column). */
#define BYTES_PASSES(...)                                                                                    \
    for (i64 r = r0; r < r1; r++) {                                                                          \
        state[2 * (r - r0)] = (uint32_t)row_ptr[r];                                                          \
        state[2 * (r - r0) + 1] = 0;                                                                         \
    }                                                                                                        \
    memset(acc, 0, sizeof(float) * (size_t)((r1 - r0) * CHUNK));                                            \
    for (i64 end = PANEL;; end += PANEL) {                                                                   \
        const uint32_t limit = (uint32_t)(end < n_cols ? end : n_cols); /* one past the panel's last column */ \
        for (i64 r = r0; r < r1; r++) {                                                                      \
            uint32_t *st = state + 2 * (r - r0);                                                             \
            uint32_t j = st[0], c = st[1];                                                                   \
            const uint32_t hi = (uint32_t)row_ptr[r + 1];                                                    \
            if (j == hi) continue;                                                                           \
            float *a = acc + (r - r0) * CHUNK;                                                               \
            __VA_ARGS__                                                                                      \
            st[0] = j;                                                                                       \
            st[1] = c;                                                                                       \
        }                                                                                                    \
        if (end >= n_cols) break;                                                                            \
    }                                                                                                        \
    i64 width = batch - k * CHUNK < CHUNK ? batch - k * CHUNK : CHUNK;                                       \
    write_out(acc, bias, y, rows, r0, r1, k * CHUNK, width);

static void spmm_bytes_generic(const int32_t *row_ptr, const uint8_t *ent, const float *cb, const float *xc, i64 n_cols,
                               const float *bias, float *y, i64 rows, i64 r0, i64 r1, i64 k, i64 batch, float *acc,
                               uint32_t *state) {
    const float *xm = xc + k * n_cols * CHUNK - CHUNK; /* the column starts at -1 */
    BYTES_PASSES({
        float s[CHUNK];
        memcpy(s, a, sizeof s);
        for (; j < hi && c + BYTE_STEP(ent[j]) <= limit; j++) {
            c += BYTE_STEP(ent[j]);
            const float w = cb[BYTE_CODE(ent[j])];
            const float *xr = xm + (size_t)c * CHUNK;
            for (int t = 0; t < CHUNK; t++) s[t] += w * xr[t];
        }
        memcpy(a, s, sizeof s);
    })
}

#ifdef DS_X86
/* AVX2 + FMA body: a row's 32 partial sums in two sets of four registers, alternate entries to each. */
#define FMA4(S0, S1, S2, S3, w, xr)                                 \
    S0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr), S0);               \
    S1 = _mm256_fmadd_ps(w, _mm256_loadu_ps((xr) + 8), S1);         \
    S2 = _mm256_fmadd_ps(w, _mm256_loadu_ps((xr) + 16), S2);        \
    S3 = _mm256_fmadd_ps(w, _mm256_loadu_ps((xr) + 24), S3);

#define SPMM_AVX2(NAME, W, X, ...)                                                                                 \
    __attribute__((target("avx2,fma"))) static void NAME(                                                          \
        const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, __VA_ARGS__, const float *cb, const float *xc, i64 padded_cols, \
        const float *bias, float *y, i64 r0, i64 r1, i64 k, i64 batch, float *acc) {                               \
        const float *xk = xc + k * padded_cols * CHUNK;                                                            \
        memset(acc, 0, sizeof(float) * (size_t)((r1 - r0) * CHUNK));                                               \
        for (i64 p = 0; p < n_panels; p++) {                                                                       \
            const float *xp = xk + p * PANEL * CHUNK;                                                              \
            const int32_t *pp = ptr + p * (rows + 1), *op = order + p * rows;                                                              \
            for (i64 r = r0; r < r1; r++) {                                                                        \
                uint32_t j = (uint32_t)pp[r], hi = (uint32_t)pp[r + 1];                                            \
                if (j == hi) continue;                                                                             \
                float *a = acc + (op[r] - r0) * CHUNK;                                                             \
                __m256 s0 = _mm256_loadu_ps(a), s1 = _mm256_loadu_ps(a + 8);                                       \
                __m256 s2 = _mm256_loadu_ps(a + 16), s3 = _mm256_loadu_ps(a + 24);                                 \
                __m256 u0 = _mm256_setzero_ps(), u1 = u0, u2 = u0, u3 = u0;                                        \
                for (; j + 2 <= hi; j += 2) {                                                                      \
                    __m256 w0 = _mm256_set1_ps(W(j)), w1 = _mm256_set1_ps(W(j + 1));                               \
                    const float *x0 = X(j), *x1 = X(j + 1);                                                        \
                    FMA4(s0, s1, s2, s3, w0, x0)                                                                   \
                    FMA4(u0, u1, u2, u3, w1, x1)                                                                   \
                }                                                                                                  \
                if (j < hi) {                                                                                      \
                    __m256 w0 = _mm256_set1_ps(W(j));                                                              \
                    const float *x0 = X(j);                                                                        \
                    FMA4(s0, s1, s2, s3, w0, x0)                                                                   \
                }                                                                                                  \
                _mm256_storeu_ps(a, _mm256_add_ps(s0, u0));                                                        \
                _mm256_storeu_ps(a + 8, _mm256_add_ps(s1, u1));                                                    \
                _mm256_storeu_ps(a + 16, _mm256_add_ps(s2, u2));                                                   \
                _mm256_storeu_ps(a + 24, _mm256_add_ps(s3, u3));                                                   \
            }                                                                                                      \
        }                                                                                                          \
        i64 width = batch - k * CHUNK < CHUNK ? batch - k * CHUNK : CHUNK;                                         \
        write_out(acc, bias, y, rows, r0, r1, k * CHUNK, width);                                                   \
    }

__attribute__((target("avx2,fma"))) static void spmm_bytes_avx2(const int32_t *row_ptr, const uint8_t *ent, const float *cb,
                                                                 const float *xc, i64 n_cols, const float *bias, float *y, i64 rows,
                                                                 i64 r0, i64 r1, i64 k, i64 batch, float *acc, uint32_t *state) {
    const float *xm = xc + k * n_cols * CHUNK - CHUNK;
    BYTES_PASSES({
        __m256 s0 = _mm256_loadu_ps(a), s1 = _mm256_loadu_ps(a + 8), s2 = _mm256_loadu_ps(a + 16), s3 = _mm256_loadu_ps(a + 24);
        __m256 u0 = _mm256_setzero_ps(), u1 = u0, u2 = u0, u3 = u0;
        for (; j + 2 <= hi; j += 2) {
            uint32_t c0 = c + BYTE_STEP(ent[j]), c1 = c0 + BYTE_STEP(ent[j + 1]);
            if (c1 > limit) break;
            __m256 w0 = _mm256_set1_ps(cb[BYTE_CODE(ent[j])]), w1 = _mm256_set1_ps(cb[BYTE_CODE(ent[j + 1])]);
            const float *x0 = xm + (size_t)c0 * CHUNK, *x1 = xm + (size_t)c1 * CHUNK;
            FMA4(s0, s1, s2, s3, w0, x0)
            FMA4(u0, u1, u2, u3, w1, x1)
            c = c1;
        }
        /* one more entry may end inside the panel: the last of the row, or the first of a pair that crossed */
        if (j < hi && c + BYTE_STEP(ent[j]) <= limit) {
            c += BYTE_STEP(ent[j]);
            __m256 w0 = _mm256_set1_ps(cb[BYTE_CODE(ent[j])]);
            const float *x0 = xm + (size_t)c * CHUNK;
            FMA4(s0, s1, s2, s3, w0, x0)
            j++;
        }
        _mm256_storeu_ps(a, _mm256_add_ps(s0, u0));
        _mm256_storeu_ps(a + 8, _mm256_add_ps(s1, u1));
        _mm256_storeu_ps(a + 16, _mm256_add_ps(s2, u2));
        _mm256_storeu_ps(a + 24, _mm256_add_ps(s3, u3));
    })
}

SPMM_AVX2(spmm_packed_avx2, PACKED_W, PACKED_X, const uint16_t *entries)
SPMM_AVX2(spmm_wide_avx2, WIDE_W, WIDE_X, const uint16_t *cols, const uint8_t *codes)


/* Batch-1 bodies for machines with AVX2, FMA and BMI. Packed: scalar, eight independent sums, every
 * field taken out of a 64-bit word of four entries by one BEXTR, so an entry costs about four
 * instructions: two extracts, the codebook load and a fused multiply-add that loads x. Faster than
 * gathering (on Zen 3 a gather of eight costs more than eight scalar loads: this body ran 10-30%
 * faster than an AVX2 one with the codebook in registers and x gathered). */
#define PK(q, k, acc) acc += cb[_bextr_u64(q, 16 * (k) + PANEL_BITS, 5)] * xp[_bextr_u64(q, 16 * (k), PANEL_BITS)];

__attribute__((target("avx2,fma,bmi"))) static void spmv_packed_bmi(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows,
                                                                     const uint16_t *entries, const float *cb, const float *x,
                                                                     const float *bias, float *y, i64 r0, i64 r1) {
    PACKED_ROWS({
        for (; j + 8 <= hi; j += 8) {
            uint64_t q0, q1;
            memcpy(&q0, entries + j, 8);
            memcpy(&q1, entries + j + 4, 8);
            PK(q0, 0, a0) PK(q0, 1, a1) PK(q0, 2, a2) PK(q0, 3, a3)
            PK(q1, 0, a4) PK(q1, 1, a5) PK(q1, 2, a6) PK(q1, 3, a7)
        }
        if (j + 4 <= hi) {
            uint64_t q0;
            memcpy(&q0, entries + j, 8);
            PK(q0, 0, a0) PK(q0, 1, a1) PK(q0, 2, a2) PK(q0, 3, a3)
            j += 4;
        }
        for (; j < hi; j++) {
            uint32_t v = entries[j];
            a4 += cb[v >> PANEL_BITS] * xp[v & COL_MASK];
        }
    })
}

/* The byte layout, one 64-bit word of eight entries at a time: their eight columns from one multiply
 * (the gaps' byte-wise prefix sums, each at most 64, so no byte carries into the next), their inputs
 * loaded one by one into a vector (a gather costs more on Zen 3), their weights from the codebook held
 * in four registers (permutes and blends), one vector FMA.
 *
 * In assembly because GCC, given the same steps as intrinsics, spilled registers and rebuilt the
 * 64-bit constants in every iteration (about 7.4 instructions a byte, and at 5.5 per cycle the core's
 * front end was the limit): this is about 5, and ran 16% faster on VGG-16 fc8 (C harness, min of 500).
 * The columns come out two at a time, as the low and high bytes of one register (%b and %h of a
 * register of constraint Q, which is why t and i use it), the last one as the word's advance u. The
 * permutes read only the low three bits of each index, so the code needs no mask; bits 3 and 4 choose
 * among the four registers by the blends, shifted to each lane's sign bit. ymm8..ymm14 are scratch. */
#define BYTES_WORD(qp, A_)                                                                                     \
    {                                                                                                          \
        uint64_t t, i, u;                                                                                      \
        const float *xb = x + base;                                                                            \
        __asm__("movq %[q], %[t]\n\t"                                                                          \
                "shrq $5, %[t]\n\t"                                                                            \
                "andq %[m7], %[t]\n\t"                                                                         \
                "imulq %[m1], %[t]\n\t"                                                                        \
                "addq %[mp], %[t]\n\t"                                                                         \
                "movq %[t], %[u]\n\t"                                                                          \
                "shrq $56, %[u]\n\t"                                                                           \
                "movzbl %b[t], %k[i]\n\t"                                                                      \
                "vmovss (%[xb],%q[i],4), %%xmm8\n\t"                                                           \
                "movzbl %h[t], %k[i]\n\t"                                                                      \
                "vinsertps $0x10, (%[xb],%q[i],4), %%xmm8, %%xmm8\n\t"                                         \
                "shrq $16, %[t]\n\t"                                                                           \
                "movzbl %b[t], %k[i]\n\t"                                                                      \
                "vinsertps $0x20, (%[xb],%q[i],4), %%xmm8, %%xmm8\n\t"                                         \
                "movzbl %h[t], %k[i]\n\t"                                                                      \
                "vinsertps $0x30, (%[xb],%q[i],4), %%xmm8, %%xmm8\n\t"                                         \
                "shrq $16, %[t]\n\t"                                                                           \
                "movzbl %b[t], %k[i]\n\t"                                                                      \
                "vmovss (%[xb],%q[i],4), %%xmm9\n\t"                                                           \
                "movzbl %h[t], %k[i]\n\t"                                                                      \
                "vinsertps $0x10, (%[xb],%q[i],4), %%xmm9, %%xmm9\n\t"                                         \
                "shrq $16, %[t]\n\t"                                                                           \
                "movzbl %b[t], %k[i]\n\t"                                                                      \
                "vinsertps $0x20, (%[xb],%q[i],4), %%xmm9, %%xmm9\n\t"                                         \
                "vinsertps $0x30, (%[xb],%[u],4), %%xmm9, %%xmm9\n\t"                                          \
                "vinsertf128 $1, %%xmm9, %%ymm8, %%ymm8\n\t"                                                   \
                "vpmovzxbd %[q], %%ymm10\n\t"                                                                  \
                "vpslld $28, %%ymm10, %%ymm11\n\t"                                                             \
                "vpslld $27, %%ymm10, %%ymm12\n\t"                                                             \
                "vpermps %[c0], %%ymm10, %%ymm13\n\t"                                                          \
                "vpermps %[c1], %%ymm10, %%ymm14\n\t"                                                          \
                "vblendvps %%ymm11, %%ymm14, %%ymm13, %%ymm13\n\t"                                             \
                "vpermps %[c2], %%ymm10, %%ymm14\n\t"                                                          \
                "vpermps %[c3], %%ymm10, %%ymm10\n\t"                                                          \
                "vblendvps %%ymm11, %%ymm10, %%ymm14, %%ymm14\n\t"                                             \
                "vblendvps %%ymm12, %%ymm14, %%ymm13, %%ymm13\n\t"                                             \
                "vfmadd231ps %%ymm8, %%ymm13, %[acc]\n\t"                                                      \
                : [t] "=&Q"(t), [i] "=&Q"(i), [u] "=&r"(u), [acc] "+x"(A_)                                     \
                : [q] "m"(*(const uint64_t *)(qp)), [xb] "r"(xb), [m7] "rm"(M7), [m1] "rm"(M1), [mp] "rm"(MP), \
                  [c0] "x"(c0), [c1] "x"(c1), [c2] "x"(c2), [c3] "x"(c3)                                       \
                : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");                                \
        base += (i64)u;                                                                                        \
    }

__attribute__((target("avx2,fma,bmi"))) static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2,fma,bmi"))) static void spmv_bytes_bmi(const int32_t *row_ptr, const uint8_t *ent, const float *cb,
                                                                    const float *x, const float *bias, float *y, i64 r0, i64 r1) {
    const __m256 c0 = _mm256_loadu_ps(cb), c1 = _mm256_loadu_ps(cb + 8), c2 = _mm256_loadu_ps(cb + 16), c3 = _mm256_loadu_ps(cb + 24);
    /* the gaps' mask; the prefix multiplier; the +1 of every gap, summed byte by byte (1, 2, .., 8) */
    const uint64_t M7 = 0x0707070707070707ull, M1 = 0x0101010101010101ull, MP = 0x0807060504030201ull;
    for (i64 r = r0; r < r1; r++) {
        uint32_t j = (uint32_t)row_ptr[r], hi = (uint32_t)row_ptr[r + 1];
        i64 base = -1;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (; j + 16 <= hi; j += 16) {
            BYTES_WORD(ent + j, a0)
            BYTES_WORD(ent + j + 8, a1)
        }
        if (j + 8 <= hi) {
            BYTES_WORD(ent + j, a0)
            j += 8;
        }
        float s = hsum(_mm256_add_ps(a0, a1));
        base++;
        for (; j < hi; j++) {
            base += BYTE_STEP(ent[j]);
            s += cb[BYTE_CODE(ent[j])] * x[base - 1];
        }
        y[r] = bias[r] + s;
    }
}

static int simd = -1; /* -1: not asked yet */

static int has_simd(void) {
    if (simd < 0) {
        __builtin_cpu_init();
        simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi");
    }
    return simd;
}

/* Tests run the portable bodies too: 0 turns the AVX2 ones off, 1 turns them back on where the CPU has them. */
DS_EXPORT void ds_use_simd(i64 on) {
    simd = -1;
    simd = on && has_simd();
}

DS_EXPORT i64 ds_simd(void) { return has_simd(); }
#else
static int has_simd(void) { return 0; }
DS_EXPORT void ds_use_simd(i64 on) { (void)on; }
DS_EXPORT i64 ds_simd(void) { return 0; }
#endif

DS_EXPORT void ds_spmv_packed(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, const uint16_t *entries, const float *cb,
                              const float *x, const float *bias, float *y, i64 r0, i64 r1) {
#ifdef DS_X86
    if (has_simd()) {
        spmv_packed_bmi(ptr, order, n_panels, rows, entries, cb, x, bias, y, r0, r1);
        return;
    }
#endif
    spmv_packed_generic(ptr, order, n_panels, rows, entries, cb, x, bias, y, r0, r1);
}

DS_EXPORT void ds_spmv_bytes(const int32_t *row_ptr, const uint8_t *ent, const float *cb, const float *x, const float *bias,
                             float *y, i64 r0, i64 r1) {
#ifdef DS_X86
    if (has_simd()) {
        spmv_bytes_bmi(row_ptr, ent, cb, x, bias, y, r0, r1);
        return;
    }
#endif
    spmv_bytes_generic(row_ptr, ent, cb, x, bias, y, r0, r1);
}

/* rows [r0, r1) of y (batch x rows, row-major) for chunk k (inputs 32k .. 32k+31); acc: (r1 - r0) * 32 floats. */
DS_EXPORT void ds_spmm_packed(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, const uint16_t *entries, const float *cb,
                              const float *xc, i64 padded_cols, const float *bias, float *y, i64 r0, i64 r1, i64 k,
                              i64 batch, float *acc) {
#ifdef DS_X86
    if (has_simd()) {
        spmm_packed_avx2(ptr, order, n_panels, rows, entries, cb, xc, padded_cols, bias, y, r0, r1, k, batch, acc);
        return;
    }
#endif
    spmm_packed_generic(ptr, order, n_panels, rows, entries, cb, xc, padded_cols, bias, y, r0, r1, k, batch, acc);
}

DS_EXPORT void ds_spmm_wide(const int32_t *ptr, const int32_t *order, i64 n_panels, i64 rows, const uint16_t *cols, const uint8_t *codes,
                            const float *cb, const float *xc, i64 padded_cols, const float *bias, float *y, i64 r0, i64 r1,
                            i64 k, i64 batch, float *acc) {
#ifdef DS_X86
    if (has_simd()) {
        spmm_wide_avx2(ptr, order, n_panels, rows, cols, codes, cb, xc, padded_cols, bias, y, r0, r1, k, batch, acc);
        return;
    }
#endif
    spmm_wide_generic(ptr, order, n_panels, rows, cols, codes, cb, xc, padded_cols, bias, y, r0, r1, k, batch, acc);
}

/* acc: (r1 - r0) * 32 floats; state: 2 * (r1 - r0) uint32 (scratch). */
DS_EXPORT void ds_spmm_bytes(const int32_t *row_ptr, const uint8_t *ent, const float *cb, const float *xc, i64 n_cols,
                             const float *bias, float *y, i64 rows, i64 r0, i64 r1, i64 k, i64 batch, float *acc,
                             uint32_t *state) {
#ifdef DS_X86
    if (has_simd()) {
        spmm_bytes_avx2(row_ptr, ent, cb, xc, n_cols, bias, y, rows, r0, r1, k, batch, acc, state);
        return;
    }
#endif
    spmm_bytes_generic(row_ptr, ent, cb, xc, n_cols, bias, y, rows, r0, r1, k, batch, acc, state);
}

/* The module itself is empty: _kernels_jit.py finds the functions above by name in this file's symbols. */
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_native", .m_doc = "C inner loops of deepshrink's sparse kernels", .m_size = -1};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
