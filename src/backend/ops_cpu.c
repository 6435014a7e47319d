/* ops_cpu.c - the CPU backend: every op of ops.h on host memory, in float32.
 *
 * Weights stay fp16 in the bundle's read-only mapping; an op widens the part it needs
 * into a scratch buffer (at most weight_chunk_floats floats at a time) and hands it to
 * OpenBLAS sgemm.  Nothing is cached between calls except the scratch buffers, which
 * grow to the largest request and are then reused, so memory stays near the fp16
 * size of the model plus the activation arena.
 *
 * Threads: OpenMP only (one pragma per hot loop).  OpenBLAS runs single-threaded
 * inside our threads: large products are split into slabs (see gemm), attention runs
 * one block per thread.  Two thread pools taking turns would spin against each other.
 *
 * State: the scratch buffers live in the handle (cpu_state), so two handles share
 * nothing; a handle runs one op at a time.
 */
#include "backend/ops.h"
#include "core/common.h"
#include "core/fp16.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_F16C_PATH 1
#endif

/* Chunk limits, in floats: widened weights and im2col columns (16 MiB each).
 * Variables only so that tests can shrink them to reach the chunked paths. */
static size_t weight_chunk_floats = (size_t)4 << 20;
static size_t cols_chunk_floats = (size_t)4 << 20;
/* Test hook (declared by tests/test_ops.c, not in ops.h): 0 keeps a limit. */
void ldm_cpu_set_chunk_limits(size_t weight_floats, size_t col_floats);
void ldm_cpu_set_chunk_limits(size_t weight_floats, size_t col_floats) {
    if (weight_floats) weight_chunk_floats = weight_floats;
    if (col_floats) cols_chunk_floats = col_floats;
}
/* Attention block sizes: BQ queries against BK keys at a time. */
#ifndef ATT_BQ
#define ATT_BQ 128
#endif
#ifndef ATT_BK
#define ATT_BK 512
#endif
/* Elementwise loops shorter than this run on one thread (fork/join costs more). */
#define PAR_MIN 32768

/* ------------------------------------------------------------------------------
 * Scratch: a few growable buffers per calling thread, reused across calls. */

enum { SCR_WEIGHT, SCR_COLS, SCR_ATT, SCR_COUNT };
typedef struct cpu_state {
    float *buf[SCR_COUNT];
    size_t cap[SCR_COUNT];
} cpu_state;

/* A scratch buffer of n floats in the handle; NULL (the handle failed) when memory
 * runs out. */
static float *scratch(ldm_backend *be, int slot, size_t n) {
    cpu_state *st = be->impl;
    if (n > st->cap[slot]) {
        free(st->buf[slot]);
        st->cap[slot] = 0;
        size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
        st->buf[slot] = aligned_alloc(64, bytes);
        if (!st->buf[slot]) {
            ldm_backend_fail(be, "out of memory allocating %zu bytes of scratch", bytes);
            return NULL;
        }
        st->cap[slot] = n;
    }
    return st->buf[slot];
}

static int cpu_init(ldm_backend *be) {
    be->impl = ldm_xcalloc(1, sizeof(cpu_state));
    if (be->opts.threads > 0) omp_set_num_threads(be->opts.threads);
    return 0;
}

static void cpu_destroy(ldm_backend *be) {
    cpu_state *st = be->impl;
    if (!st) return;
    for (int i = 0; i < SCR_COUNT; i++) free(st->buf[i]);
    free(st);
    be->impl = NULL;
}

/* ------------------------------------------------------------------------------
 * fp16 widening. */

#ifdef HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void widen_f16c(float *dst, const uint16_t *src,
                                                            size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    if (i < n) ldm_f16_to_f32_row(dst + i, src + i, n - i);
}
static int have_f16c(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    }
    return cached;
}
#endif

/* dst[i] = float(src[i]), i < n, on the calling thread. */
static void widen_serial(float *dst, const uint16_t *src, size_t n) {
#ifdef HAVE_F16C_PATH
    if (have_f16c()) { widen_f16c(dst, src, n); return; }
#endif
    ldm_f16_to_f32_row(dst, src, n);
}

/* The same, split across threads for large n (called outside parallel regions). */
static void widen(float *dst, const uint16_t *src, size_t n) {
#ifdef HAVE_F16C_PATH
    (void)have_f16c(); /* initialise before threads race on the cache */
#endif
    if (n < PAR_MIN) { widen_serial(dst, src, n); return; }
    size_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * chunk, e = s + chunk < n ? s + chunk : n;
        widen_serial(dst + s, src + s, e - s);
    }
}

/* ------------------------------------------------------------------------------
 * Vectorisable exp.  expf from libm is a scalar call; the softmax and the activations
 * spend most of their time in it.  exp_ps is Cephes' expf: x = n·ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for e^r, then 2^n through the exponent bits.
 * Error <= 2 ulp; below -87.3 it returns 0 (true value < 2^-126), above 88.3 +Inf
 * (so x/(1+exp(-x)) is a clean ±0 or x).
 * Hot loops using it are compiled for AVX-512, AVX2 and the baseline (target_clones),
 * so one binary runs anywhere and fast where it can; no-trapping-math lets the
 * compiler turn its clamps into vector selects (we never read the FP flags). */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LDM_CLONES                                                                          \
    __attribute__((target_clones("avx512f", "avx2", "default"), optimize("no-trapping-math")))
#define LDM_NO_TRAP __attribute__((optimize("no-trapping-math")))
#else
#define LDM_CLONES
#define LDM_NO_TRAP
#endif

LDM_NO_TRAP static inline float exp_ps(float x) {
    float xc = x < -87.3f ? -87.3f : x;
    xc = xc > 88.3f ? 88.3f : xc;
    float t = xc * 1.44269504088896341f + 12582912.0f; /* 1.5·2^23: rounds n to nearest */
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t tb, sb;
    memcpy(&tb, &t, sizeof tb);         /* low bits of t hold n + 0x400000 */
    sb = (tb - 0x4B400000 + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    float y = x < -87.3f ? 0.0f : p * scale;
    return x > 88.3f ? INFINITY : y;
}

/* out[i] = y / (1 + exp(-alpha·y)) with y = x[i]·a + b: SiLU (alpha 1) or
 * quick GELU (alpha 1.702), optionally after an affine map (group norm). */
LDM_CLONES static void silu_row(float *out, const float *x, size_t n, float a, float b,
                                float alpha) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float y = x[i] * a + b;
        out[i] = y / (1.0f + exp_ps(-alpha * y));
    }
}

/* max(init, s[0..n-1]) */
LDM_CLONES static float row_max(const float *s, int n, float init) {
    float mx = init;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    return mx;
}

/* s[j] = exp(s[j] - mx) for j < n; returns their sum. */
LDM_CLONES static float exp_shift_sum(float *s, int n, float mx) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        s[j] = exp_ps(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

/* ------------------------------------------------------------------------------
 * Memory. */

static void *cpu_alloc(ldm_backend *be, size_t bytes) {
    (void)be;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded ? rounded : 64);
}
static void cpu_free(ldm_backend *be, void *p) { (void)be; free(p); }
static int cpu_copy(ldm_backend *be, float *dst, const float *src, size_t n) {
    (void)be;
    if (n && dst != src) memmove(dst, src, n * sizeof(float));
    return 0;
}
static int cpu_fill(ldm_backend *be, float *dst, float value, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = value;
    return 0;
}

/* ------------------------------------------------------------------------------
 * Matrix product.  All threading is OpenMP: OpenBLAS is switched to one thread once
 * (its pthread pool would otherwise spin against ours between ops), and a large
 * product is split along the longer of M and N into slabs, each a single-threaded
 * sgemm.  OpenBLAS sums over K in the same order whatever the slab,
 * so results do not depend on the thread count.
 *   C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C     (row-major, ldc)        */

static void blas_single_thread(void) {
    static int done;
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

static void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc) {
    if (M <= 0 || N <= 0) return;
    blas_single_thread();
    int split_n = N >= M, len = split_n ? N : M;
    /* The slabs depend on the shape only, never on the thread count, so that an image is
     * the same bytes with 1, 2 or 16 threads (OpenBLAS picks its kernel by shape: the same
     * product in other slabs can round differently: M = 2 against slabs of 80 columns
     * differs in most values, tests/test_threads.c).  8 slabs, as many as 2 threads had
     * before (4 per thread), so the 2-core speed is unchanged; scheduled dynamically, so a
     * thread that loses its core for a while does not hold the others up; each slab >= 64
     * wide.  (Every slab re-packs op(A): the GEMM of issue 14 replaces this.) */
    int slabs = 8 < len / 64 ? 8 : len / 64;
    if (slabs <= 1 || (double)M * N * K < 2e6 || omp_get_level() > 0) {   /* level, not in_parallel: a team of 1 counts */
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < slabs; t++) {
        int s = t ? (int)((int64_t)len * t / slabs) & ~15 : 0;
        int e = t + 1 < slabs ? (int)((int64_t)len * (t + 1) / slabs) & ~15 : len;
        if (e <= s) continue;
        if (split_n) /* columns s..e-1 of op(B) and C */
            cblas_sgemm(CblasRowMajor, ta, tb, M, e - s, K, alpha, A, lda,
                        tb == CblasNoTrans ? B + s : B + (size_t)s * ldb, ldb, beta, C + s, ldc);
        else /* rows s..e-1 of op(A) and C */
            cblas_sgemm(CblasRowMajor, ta, tb, e - s, N, K, alpha,
                        ta == CblasNoTrans ? A + (size_t)s * lda : A + s, lda, B, ldb, beta,
                        C + (size_t)s * ldc, ldc);
    }
}

/* ------------------------------------------------------------------------------
 * Linear:  out[M,N] = x[M,K] · W[N,K]ᵀ + b[N].
 * W is widened weight_chunk_floats floats at a time (whole rows), each chunk one sgemm. */

static int add_row_bias(ldm_backend *be, float *out, const ldm_tensor *b, int M, int N) {
    float *bf = scratch(be, SCR_COLS, (size_t)N);
    if (!bf) return -1;
    widen_serial(bf, b->f16, (size_t)N);
#pragma omp parallel for schedule(static) if ((size_t)M * N >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        float *row = out + (size_t)m * N;
        for (int n = 0; n < N; n++) row[n] += bf[n];
    }
    return 0;
}

static int cpu_linear(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int M, int K, int N) {
    if (M <= 0 || N <= 0) return 0;
    size_t rows = weight_chunk_floats / (size_t)(K > 0 ? K : 1);
    if (rows < 1) rows = 1;
    if (rows > (size_t)N) rows = (size_t)N;
    float *wf = scratch(be, SCR_WEIGHT, rows * (size_t)K);
    if (!wf) return -1;
    for (int n0 = 0; n0 < N; n0 += (int)rows) {
        int nc = N - n0 < (int)rows ? N - n0 : (int)rows;
        widen(wf, w->f16 + (size_t)n0 * K, (size_t)nc * K);
        /* out[:, n0:n0+nc] = x · wf[nc,K]ᵀ */
        gemm(CblasNoTrans, CblasTrans, M, nc, K, 1.0f, x, K, wf, K, 0.0f, out + n0, N);
    }
    if (b) return add_row_bias(be, out, b, M, N);
    return 0;
}

/* ------------------------------------------------------------------------------
 * Conv2d (NCHW, square kernel k, zero padding).
 * 1x1 stride 1 no padding: out[n] = W[Cout,Cin] · x[n][Cin,HW], one sgemm.
 * Otherwise im2col on a tile of P output positions: cols[Cin*k*k, P], then
 * out[n][co0.., p0..] = W[co chunk, Cin*k*k] · cols.  Tiles bound the scratch; the
 * weight is widened in chunks of output channels (usually one chunk). */

/* cols[(c*k+ky)*k+kx][p - p0] = x[c, oy*stride-pad+ky, ox*stride-pad+kx] (0 outside),
 * for output positions p = oy*Wo+ox in [p0, p0+P). */
static void im2col(float *cols, const float *x, int Cin, int H, int W, int k, int stride,
                   int pad, int Wo, int p0, int P) {
    int rows = Cin * k * k;
#pragma omp parallel for schedule(static) if ((size_t)rows * P >= PAR_MIN)
    for (int r = 0; r < rows; r++) {
        int c = r / (k * k), ky = (r / k) % k, kx = r % k;
        const float *xc = x + (size_t)c * H * W;
        float *dst = cols + (size_t)r * P;
        int p = 0;
        while (p < P) {
            int oy = (p0 + p) / Wo, ox = (p0 + p) % Wo;
            int run = Wo - ox; /* positions left in this output row */
            if (run > P - p) run = P - p;
            int iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= H) {
                memset(dst + p, 0, (size_t)run * sizeof(float));
            } else {
                const float *src = xc + (size_t)iy * W;
                int ix = ox * stride - pad + kx;
                if (stride == 1) { /* zeros left of the image, a copy, zeros right */
                    int lo = ix < 0 ? -ix : 0, hi = W - ix;
                    if (lo > run) lo = run;
                    if (hi > run) hi = run;
                    if (hi < lo) hi = lo;
                    for (int i = 0; i < lo; i++) dst[p + i] = 0.0f;
                    memcpy(dst + p + lo, src + ix + lo, (size_t)(hi - lo) * sizeof(float));
                    for (int i = hi; i < run; i++) dst[p + i] = 0.0f;
                } else {
                    for (int i = 0; i < run; i++, ix += stride)
                        dst[p + i] = (ix >= 0 && ix < W) ? src[ix] : 0.0f;
                }
            }
            p += run;
        }
    }
}

static int add_channel_bias_f16(ldm_backend *be, float *out, const ldm_tensor *b, int N, int C, int HW) {
    float *bf = scratch(be, SCR_COLS, (size_t)C); /* cols are no longer needed here */
    if (!bf) return -1;
    widen_serial(bf, b->f16, (size_t)C);
#pragma omp parallel for schedule(static) if ((size_t)N * C * HW >= PAR_MIN)
    for (int nc = 0; nc < N * C; nc++) {
        float v = bf[nc % C], *row = out + (size_t)nc * HW;
        for (int i = 0; i < HW; i++) row[i] += v;
    }
    return 0;
}

static int cpu_conv2d(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int N, int Cin, int H, int W, int Cout, int k, int stride, int pad) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    if (N <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0) return 0;
    int HWo = Ho * Wo, Kd = Cin * k * k;
    size_t co_chunk = weight_chunk_floats / (size_t)Kd;
    if (co_chunk < 1) co_chunk = 1;
    if (co_chunk > (size_t)Cout) co_chunk = (size_t)Cout;
    float *wf = scratch(be, SCR_WEIGHT, co_chunk * (size_t)Kd);
    if (!wf) return -1;
    int direct = (k == 1 && stride == 1 && pad == 0);
    int P = HWo;
    if (!direct) {
        size_t tile = cols_chunk_floats / (size_t)Kd;
        if (tile < 64) tile = 64;
        if (tile < (size_t)P) P = (int)tile;
    }
    float *cols = direct ? NULL : scratch(be, SCR_COLS, (size_t)Kd * P);
    if (!direct && !cols) return -1;
    for (int co0 = 0; co0 < Cout; co0 += (int)co_chunk) {
        int nco = Cout - co0 < (int)co_chunk ? Cout - co0 : (int)co_chunk;
        widen(wf, w->f16 + (size_t)co0 * Kd, (size_t)nco * Kd);
        for (int n = 0; n < N; n++) {
            const float *xn = x + (size_t)n * Cin * H * W;
            float *on = out + ((size_t)n * Cout + co0) * HWo;
            if (direct) {
                gemm(CblasNoTrans, CblasNoTrans, nco, HWo, Cin, 1.0f, wf, Kd, xn, HWo, 0.0f, on,
                     HWo);
                continue;
            }
            for (int p0 = 0; p0 < HWo; p0 += P) {
                int np = HWo - p0 < P ? HWo - p0 : P;
                im2col(cols, xn, Cin, H, W, k, stride, pad, Wo, p0, np);
                gemm(CblasNoTrans, CblasNoTrans, nco, np, Kd, 1.0f, wf, Kd, cols, np, 0.0f,
                     on + p0, HWo);
            }
        }
    }
    if (b) return add_channel_bias_f16(be, out, b, N, Cout, HWo);
    return 0;
}

/* ------------------------------------------------------------------------------
 * Normalisation.  Statistics are accumulated in double (two passes), which is at
 * least as accurate as PyTorch's float kernels. */

static int cpu_group_norm(ldm_backend *be, float *out, const float *x, const ldm_tensor *gamma,
                           const ldm_tensor *beta, int N, int C, int HW, int groups, float eps,
                           int silu) {
    int cpg = C / groups;
    float *gb = scratch(be, SCR_COLS, 2 * (size_t)C);
    if (!gb) return -1;
    widen_serial(gb, gamma->f16, (size_t)C);
    widen_serial(gb + C, beta->f16, (size_t)C);
    size_t gsize = (size_t)cpg * HW;
#pragma omp parallel for schedule(dynamic, 1)
    for (int ng = 0; ng < N * groups; ng++) {
        int n = ng / groups, g = ng % groups;
        const float *xs = x + ((size_t)n * C + (size_t)g * cpg) * HW;
        float *os = out + ((size_t)n * C + (size_t)g * cpg) * HW;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (size_t i = 0; i < gsize; i++) sum += xs[i];
        double mean = sum / (double)gsize, var = 0;
#pragma omp simd reduction(+ : var)
        for (size_t i = 0; i < gsize; i++) {
            double d = xs[i] - mean;
            var += d * d;
        }
        var /= (double)gsize;
        float rstd = (float)(1.0 / sqrt(var + eps)), meanf = (float)mean;
        for (int c = 0; c < cpg; c++) {
            int ch = g * cpg + c;
            float a = rstd * gb[ch], sh = gb[C + ch] - meanf * a;
            const float *xr = xs + (size_t)c * HW;
            float *orow = os + (size_t)c * HW;
            if (silu) {
                silu_row(orow, xr, (size_t)HW, a, sh, 1.0f);
            } else {
                for (int i = 0; i < HW; i++) orow[i] = xr[i] * a + sh;
            }
        }
    }
    return 0;
}

static int cpu_layer_norm(ldm_backend *be, float *out, const float *x, const ldm_tensor *gamma,
                           const ldm_tensor *beta, int M, int C, float eps) {
    float *gb = scratch(be, SCR_COLS, 2 * (size_t)C);
    if (!gb) return -1;
    widen_serial(gb, gamma->f16, (size_t)C);
    widen_serial(gb + C, beta->f16, (size_t)C);
#pragma omp parallel for schedule(static) if ((size_t)M * C >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *orow = out + (size_t)m * C;
        double sum = 0, var = 0;
        for (int i = 0; i < C; i++) sum += xr[i];
        double mean = sum / C;
        for (int i = 0; i < C; i++) {
            double d = xr[i] - mean;
            var += d * d;
        }
        float rstd = (float)(1.0 / sqrt(var / C + eps)), meanf = (float)mean;
        for (int i = 0; i < C; i++) orow[i] = (xr[i] - meanf) * rstd * gb[i] + gb[C + i];
    }
    return 0;
}

/* ------------------------------------------------------------------------------
 * Attention, flash style.  For each (batch, head, block of BQ queries) one thread
 * walks the keys BK at a time:
 *   S = Q Kᵀ·scale            [bq, bk]   (sgemm)
 *   m' = max(m, rowmax S);  P = exp(S - m');  l = l·exp(m-m') + rowsum P
 *   O = O·exp(m-m') + P V     [bq, D]    (sgemm)
 * and finally out = O / l.  Memory per thread: BQ*BK + BQ*D + 2*BQ floats. */

static void attention_block(float *out, const float *q, const float *k, const float *v,
                            int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                            float scale, int causal, int q0, int bq, float *S, float *O,
                            float *m, float *l) {
    for (int i = 0; i < bq; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
    memset(O, 0, (size_t)bq * D * sizeof(float));
    int kend = Tk;
    if (causal && q0 + bq < kend) kend = q0 + bq; /* keys beyond the last query are masked */
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        int bk = kend - k0 < ATT_BK ? kend - k0 : ATT_BK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, D, scale,
                    q + (size_t)q0 * q_stride, q_stride, k + (size_t)k0 * kv_stride, kv_stride,
                    0.0f, S, ATT_BK);
        for (int i = 0; i < bq; i++) {
            float *s = S + (size_t)i * ATT_BK;
            int valid = bk; /* keys k0 .. k0+valid-1 are visible to query q0+i */
            if (causal) {
                int lim = q0 + i + 1 - k0;
                valid = lim < 0 ? 0 : (lim < bk ? lim : bk);
            }
            float mx = row_max(s, valid, m[i]);
            float *o = O + (size_t)i * D;
            if (mx == -INFINITY) { /* nothing visible yet: P row is zero */
                memset(s, 0, (size_t)bk * sizeof(float));
                continue;
            }
            float corr = expf(m[i] - mx), sum = exp_shift_sum(s, valid, mx);
            for (int j = valid; j < bk; j++) s[j] = 0.0f;
            l[i] = l[i] * corr + sum;
            m[i] = mx;
            if (corr != 1.0f)
                for (int d = 0; d < D; d++) o[d] *= corr;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, D, bk, 1.0f, S, ATT_BK,
                    v + (size_t)k0 * kv_stride, kv_stride, 1.0f, O, D);
    }
    int ostride = heads * D;
    for (int i = 0; i < bq; i++) {
        float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;
        float *dst = out + (size_t)(q0 + i) * ostride;
        const float *o = O + (size_t)i * D;
        for (int d = 0; d < D; d++) dst[d] = o[d] * inv;
    }
    (void)Tq;
}

static int cpu_attention(ldm_backend *be, float *out, const float *q, const float *k, const float *v, int B,
                          int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                          float scale, int causal) {
    if (B <= 0 || heads <= 0 || Tq <= 0 || D <= 0) return 0;
    int nqb = (Tq + ATT_BQ - 1) / ATT_BQ;
    int ntasks = B * heads * nqb;
    int nthreads = omp_get_max_threads();
    if (nthreads > ntasks) nthreads = ntasks;
    size_t per = (size_t)ATT_BQ * ATT_BK + (size_t)ATT_BQ * D + 2 * ATT_BQ;
    per = (per + 15) & ~(size_t)15; /* keep each thread's slice 64-byte aligned */
    float *buf = scratch(be, SCR_ATT, per * (size_t)nthreads);
    if (!buf) return -1;
    blas_single_thread(); /* the sgemm calls below run inside an OpenMP region */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int t = 0; t < ntasks; t++) {
        int qb = t % nqb, h = (t / nqb) % heads, b = t / (nqb * heads);
        float *S = buf + per * (size_t)omp_get_thread_num();
        float *O = S + (size_t)ATT_BQ * ATT_BK, *m = O + (size_t)ATT_BQ * D, *l = m + ATT_BQ;
        int q0 = qb * ATT_BQ, bq = Tq - q0 < ATT_BQ ? Tq - q0 : ATT_BQ;
        attention_block(out + (size_t)b * Tq * heads * D + (size_t)h * D,
                        q + (size_t)b * Tq * q_stride + (size_t)h * D,
                        k + (size_t)b * Tk * kv_stride + (size_t)h * D,
                        v + (size_t)b * Tk * kv_stride + (size_t)h * D, heads, Tq, Tk, D,
                        q_stride, kv_stride, scale, causal, q0, bq, S, O, m, l);
    }
    return 0;
}

/* ------------------------------------------------------------------------------
 * Elementwise and data movement. */

static int cpu_add(ldm_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return 0;
}
static int cpu_scale(ldm_backend *be, float *out, const float *x, float s, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = x[i] * s;
    return 0;
}
/* Elementwise maps over large n: split into chunks, one per OpenMP iteration. */
#define ELEM_CHUNK ((size_t)16384)
static int cpu_silu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    size_t nchunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * ELEM_CHUNK, len = n - s < ELEM_CHUNK ? n - s : ELEM_CHUNK;
        silu_row(out + s, x + s, len, 1.0f, 0.0f, 1.0f);
    }
    return 0;
}
/* GELU as 0.5·x·erfc(-x/√2), which equals 0.5·x·(1 + erf(x/√2)) without the
 * cancellation in 1 + erf for negative x. */
static inline float gelu1(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }
static int cpu_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = gelu1(x[i]);
    return 0;
}
static int cpu_quick_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    size_t nchunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * ELEM_CHUNK, len = n - s < ELEM_CHUNK ? n - s : ELEM_CHUNK;
        silu_row(out + s, x + s, len, 1.0f, 0.0f, 1.702f);
    }
    return 0;
}
static int cpu_geglu(ldm_backend *be, float *out, const float *x, int M, int N) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)M * N >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *h = x + (size_t)m * 2 * N, *g = h + N;
        float *o = out + (size_t)m * N;
        for (int j = 0; j < N; j++) o[j] = h[j] * gelu1(g[j]);
    }
    return 0;
}
static int cpu_add_channel_bias(ldm_backend *be, float *x, const float *v, int N, int C, int HW) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * C * HW >= PAR_MIN)
    for (int nc = 0; nc < N * C; nc++) {
        float b = v[nc], *row = x + (size_t)nc * HW;
        for (int i = 0; i < HW; i++) row[i] += b;
    }
    return 0;
}
static int cpu_upsample_nearest2x(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * C * H * W >= PAR_MIN / 4)
    for (int r = 0; r < N * C * H; r++) { /* one input row -> two output rows */
        const float *src = x + (size_t)r * W;
        float *dst = out + (size_t)r * 4 * W;
        for (int i = 0; i < W; i++) dst[2 * i] = dst[2 * i + 1] = src[i];
        memcpy(dst + 2 * W, dst, (size_t)2 * W * sizeof(float));
    }
    return 0;
}
/* PyTorch's nearest source index for an explicit output size (UpSample.h nearest_idx):
 * min(floor(dst * (in / out)), in - 1), the scale and the product in float32. */
static inline int nearest_src(int dst, int in, int out) {
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}
static int cpu_upsample_nearest(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W, int Ho,
                                 int Wo) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * C * Ho * Wo >= PAR_MIN / 4)
    for (int r = 0; r < N * C * Ho; r++) { /* one output row */
        int nc = r / Ho, oy = r % Ho;
        const float *src = x + ((size_t)nc * H + nearest_src(oy, H, Ho)) * W;
        float *dst = out + (size_t)r * Wo;
        for (int i = 0; i < Wo; i++) dst[i] = src[nearest_src(i, W, Wo)];
    }
    return 0;
}
static int cpu_concat_channels(ldm_backend *be, float *out, const float *a, int Ca, const float *b, int Cb,
                                int N, int HW) {
    (void)be;
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * (Ca + Cb) * HW;
        memcpy(o, a + (size_t)n * Ca * HW, (size_t)Ca * HW * sizeof(float));
        memcpy(o + (size_t)Ca * HW, b + (size_t)n * Cb * HW, (size_t)Cb * HW * sizeof(float));
    }
    return 0;
}
/* out[n][j][i] = x[n][i][j] for x[N,R,Ccols]; tiled for the caches. */
static void transpose(float *out, const float *x, int N, int R, int Ccols) {
    enum { T = 32 };
    int tr = (R + T - 1) / T, tc = (Ccols + T - 1) / T;
#pragma omp parallel for schedule(static) if ((size_t)N * R * Ccols >= PAR_MIN)
    for (int t = 0; t < N * tr * tc; t++) {
        int n = t / (tr * tc), r0 = (t / tc) % tr * T, c0 = t % tc * T;
        const float *xs = x + (size_t)n * R * Ccols;
        float *os = out + (size_t)n * R * Ccols;
        int r1 = r0 + T < R ? r0 + T : R, c1 = c0 + T < Ccols ? c0 + T : Ccols;
        for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++) os[(size_t)c * R + r] = xs[(size_t)r * Ccols + c];
    }
}
static int cpu_nchw_to_nhwc(ldm_backend *be, float *out, const float *x, int N, int C, int HW) {
    (void)be;
    transpose(out, x, N, C, HW);
    return 0;
}
static int cpu_nhwc_to_nchw(ldm_backend *be, float *out, const float *x, int N, int C, int HW) {
    (void)be;
    transpose(out, x, N, HW, C);
    return 0;
}
static int cpu_embedding(ldm_backend *be, float *out, const ldm_tensor *table, const int32_t *ids, int n,
                          int C) {
    (void)be;
    int64_t V = table->ndim >= 1 ? table->shape[0] : 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V)   /* the front checks; kept for direct callers */
            return ldm_backend_fail(be, "table %s: id %d outside [0, %lld)",
                                    table->name ? table->name : "?", (int)ids[i], (long long)V);
        widen_serial(out + (size_t)i * C, table->f16 + (size_t)ids[i] * C, (size_t)C);
    }
    return 0;
}
static int cpu_add_positional(ldm_backend *be, float *out, const ldm_tensor *table, int B, int T, int C) {
    float *pos = scratch(be, SCR_COLS, (size_t)T * C);
    if (!pos) return -1;
    widen_serial(pos, table->f16, (size_t)T * C);
    size_t tc = (size_t)T * C;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * tc;
        for (size_t i = 0; i < tc; i++) o[i] += pos[i];
    }
    return 0;
}

static int cpu_pad2d(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W, int top,
                     int bottom, int left, int right) {
    (void)be;
    const int Ho = H + top + bottom, Wo = W + left + right;
#pragma omp parallel for schedule(static) if ((size_t)N * C * Ho * Wo >= PAR_MIN)
    for (int nc = 0; nc < N * C; nc++) {
        float *o = out + (size_t)nc * Ho * Wo;
        const float *xi = x + (size_t)nc * H * W;
        memset(o, 0, (size_t)top * Wo * sizeof(float));
        for (int r = 0; r < H; r++) {
            float *orow = o + (size_t)(top + r) * Wo;
            memset(orow, 0, (size_t)left * sizeof(float));
            memcpy(orow + left, xi + (size_t)r * W, (size_t)W * sizeof(float));
            memset(orow + left + W, 0, (size_t)right * sizeof(float));
        }
        memset(o + (size_t)(top + H) * Wo, 0, (size_t)bottom * Wo * sizeof(float));
    }
    return 0;
}

static int cpu_synchronize(ldm_backend *be) { (void)be; return 0; }

const ldm_backend_ops ldm_backend_ops_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = cpu_synchronize,
#define LDM_X(name, params, args) .name = cpu_##name,
    LDM_OPS(LDM_X)
#undef LDM_X
};
