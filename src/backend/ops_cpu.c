/* ops_cpu.c - the CPU backend: every op of ops.h on host memory, in float32.
 *
 * Weights stay fp16 in the bundle's read-only mapping.  Linear layers and convolutions
 * are one product each (backend/gemm_cpu.c), which reads the weight from the mapping
 * and packs it block by block into its panels; no fp32 copy of a weight is made and
 * nothing is cached between calls except the scratch buffers, so memory stays near the
 * activation arena (the mapping is page cache, not private memory).
 *
 * Threads: OpenMP only (one pragma per hot loop); attention's small products run on the
 * thread that owns the block (ldm_panel_gemm), so no second thread pool spins against
 * ours.
 *
 * State: the scratch buffers live in the handle (cpu_state), so two handles share
 * nothing; a handle runs one op at a time.
 */
#include "backend/ops.h"
#include "backend/gemm_cpu.h"
#include "core/common.h"
#include "core/fp16.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_F16C_PATH 1
#endif

/* Attention block sizes: BQ queries against BK keys at a time (126 queries: 4 panels of
 * 32, 98 % filled, in Vᵀ·Pᵀ; 252 keys: 18 whole 14-row panels of K, so that a block starts
 * on a panel of the keys packed once per head). */
#define ATT_BQ 126
#define ATT_BK 252
/* Elementwise loops shorter than this run on one thread (fork/join costs more). */
#define PAR_MIN 32768

/* ------------------------------------------------------------------------------
 * Scratch: a few growable buffers per calling thread, reused across calls. */

enum { SCR_COLS, SCR_ATT, SCR_KV, SCR_COUNT };
/* bf16: the weights of the models loaded on the handle (prepare_weights registers them)
 * are put once, on first use, into the product's panels (ldm_gemm_bf16_prepare), found
 * by the address of their fp16 data; released with the model's weights.  Only in bf16
 * (the fp32 path reads the mapping itself and keeps nothing); a tensor that was not
 * registered (a test's) is packed per call. */
typedef struct prep_entry {
    const uint16_t *key;
    uint16_t *prep;            /* NULL: registered, not prepared yet */
    int rows, K, as_b;
} prep_entry;
typedef struct cpu_state {
    float *buf[SCR_COUNT];
    size_t cap[SCR_COUNT];
    prep_entry *prep;          /* open addressing, prep_cap a power of two (or 0) */
    size_t prep_cap, prep_n;
} cpu_state;

static void prep_clear(cpu_state *st) {
    for (size_t i = 0; i < st->prep_cap; i++) free(st->prep[i].prep);
    free(st->prep);
    st->prep = NULL;
    st->prep_cap = st->prep_n = 0;
}
static size_t prep_slot(const prep_entry *t, size_t cap, const uint16_t *key) {
    size_t h = (size_t)(((uintptr_t)key >> 6) * 0x9e3779b97f4a7c15ull);
    size_t i = h & (cap - 1);
    while (t[i].key && t[i].key != key) i = (i + 1) & (cap - 1);
    return i;
}
/* Register key; -1 when memory runs out. */
static int prep_register(cpu_state *st, const uint16_t *key) {
    if (2 * (st->prep_n + 1) > st->prep_cap) { /* grow: keep the load under 1/2 */
        size_t cap = st->prep_cap ? 2 * st->prep_cap : 256;
        prep_entry *t = calloc(cap, sizeof *t);
        if (!t) return -1;
        for (size_t i = 0; i < st->prep_cap; i++)
            if (st->prep[i].key) t[prep_slot(t, cap, st->prep[i].key)] = st->prep[i];
        free(st->prep);
        st->prep = t;
        st->prep_cap = cap;
    }
    size_t i = prep_slot(st->prep, st->prep_cap, key);
    if (!st->prep[i].key) {
        st->prep[i].key = key;
        st->prep_n++;
    }
    return 0;
}
/* Make the panels of registered key as [rows][K] (as_b: a linear layer's B); safe to
 * call for different keys from several threads (the table does not change). */
static void prep_fill(cpu_state *st, const uint16_t *key, int rows, int K, int as_b) {
    prep_entry *e = &st->prep[prep_slot(st->prep, st->prep_cap, key)];
    if (!e->key || e->prep) return;
    size_t n = ldm_gemm_bf16_prep_elems(rows, K);
    uint16_t *p = aligned_alloc(64, (n * sizeof(uint16_t) + 63) & ~(size_t)63);
    if (!p) return;
    ldm_gemm_bf16_prepare(p, key, rows, K, as_b);
    e->rows = rows;
    e->K = K;
    e->as_b = as_b;
    e->prep = p;
}
/* The prepared panels of a registered weight w used as [rows][K], made on first use if
 * the load did not; NULL when it is not registered, is used with another shape, or memory
 * runs out (the product then packs it per call). */
static const uint16_t *prepared(ldm_backend *be, const ldm_tensor *w, int rows, int K, int as_b) {
    cpu_state *st = be->impl;
    if (!st->prep_cap) return NULL;
    prep_entry *e = &st->prep[prep_slot(st->prep, st->prep_cap, w->f16)];
    if (!e->key) return NULL;
    if (!e->prep) prep_fill(st, w->f16, rows, K, as_b);
    if (e->prep) return e->rows == rows && e->K == K && e->as_b == as_b ? e->prep : NULL;
    return NULL;
}

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


static int cpu_precision(const ldm_backend *be) {
    return be->opts.precision == LDM_PRECISION_BF16 ? LDM_GEMM_BF16 : LDM_GEMM_FP32;
}

static const uint16_t *prepared_if_bf16(ldm_backend *be, const ldm_tensor *w, int rows, int K,
                                        int as_b) {
    if (cpu_precision(be) != LDM_GEMM_BF16 || !ldm_gemm_bf16_isa()) return NULL;
    return prepared(be, w, rows, K, as_b);
}

/* A model's weights: nothing to copy (the mapping is used in place); the token lets the
 * release drop the bf16 panels made from them. */
static int cpu_prepare_weights(ldm_backend *be, ldm_tensor *const *w, size_t n, void **buf) {
    *buf = NULL;
    if (cpu_precision(be) != LDM_GEMM_BF16 || !ldm_gemm_bf16_isa()) return 0;
    cpu_state *st = be->impl;
    for (size_t i = 0; i < n; i++)
        if (w[i] && w[i]->f16 && (w[i]->ndim == 2 || w[i]->ndim == 4) &&
            prep_register(st, w[i]->f16) != 0)
            break; /* no memory: the rest is packed per call */
    /* Prepare them now, at load, in parallel: a convolution's weight [Cout][Cin*k*k] as A,
     * a 2-D weight [N][K] as a linear layer's B (its first use in an op with another
     * shape makes it be packed per call instead).  A tensor that no product uses (an
     * embedding table) costs its panels' memory only: the text encoder is loaded in fp32
     * (pipeline.c), so its tables are not registered. */
    ldm_tensor *const *wt = w;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++) {
        const ldm_tensor *t = wt[i];
        if (!t || !t->f16 || (t->ndim != 2 && t->ndim != 4) || t->shape[0] <= 0) continue;
        int rows = (int)t->shape[0], K = (int)(t->numel / t->shape[0]);
        prep_fill(st, t->f16, rows, K, t->ndim == 2);
    }
    *buf = malloc(1);  /* the token that makes the release drop the panels */
    return 0;
}
static void cpu_release_weights(ldm_backend *be, void *buf) {
    prep_clear(be->impl);   /* all of them: the next use prepares again */
    free(buf);
}

static int cpu_init(ldm_backend *be) {
    be->impl = ldm_xcalloc(1, sizeof(cpu_state));
    if (be->opts.threads > 0) omp_set_num_threads(be->opts.threads);
    return 0;
}

static void cpu_destroy(ldm_backend *be) {
    cpu_state *st = be->impl;
    if (!st) return;
    prep_clear(st);
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
static int have_f16c(void) { /* the product's detection: F16C comes with its AVX2 level */
    static int cached = -1;
    if (cached < 0) cached = strcmp(ldm_gemm_fp32_isa(), "portable") != 0;
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
#pragma omp parallel for schedule(dynamic, 8192) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = value;
    return 0;
}

/* ------------------------------------------------------------------------------
 * Linear and convolution: one product each (backend/gemm_cpu.c), the weight read from
 * the bundle's mapping and packed block by block, the convolution's im2col implicit,
 * the bias added by the product.
 *   linear:  out[M,N] = x[M,K] · W[N,K]ᵀ + b[N]
 *   conv2d:  out[n][Cout, HWo] = W[Cout, Cin·k·k] · im2col(x[n]) + b[Cout], all n at once */

static int cpu_linear(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int M, int K, int N) {
    gemm_job j = {.M = M, .N = N, .K = K,
                  .a = {.kind = GEMM_A_ROWS_F32, .p = x, .ld = (size_t)K},
                  .b = {.kind = GEMM_B_NK_F16, .p = w->f16, .ld = (size_t)K},
                  .c = out, .ldc = (size_t)N, .batch = 1,
                  .bias = b ? b->f16 : NULL, .bias_per_row = 0, .weight_is_a = 0,
                  .wprep = prepared_if_bf16(be, w, N, K, 1)};
    if (ldm_gemm(&j, cpu_precision(be)) != 0)
        return ldm_backend_fail(be, "out of memory for the matrix product's panels");
    return 0;
}

static int cpu_conv2d(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int N, int Cin, int H, int W, int Cout, int k, int stride, int pad) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    if (N <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0) return 0;
    int HWo = Ho * Wo, Kd = Cin * k * k;
    int direct = (k == 1 && stride == 1 && pad == 0);
    gemm_job j = {.M = Cout, .N = HWo, .K = Kd,
                  .a = {.kind = GEMM_A_ROWS_F16, .p = w->f16, .ld = (size_t)Kd},
                  .b = {.kind = direct ? GEMM_B_KN_F32 : GEMM_B_IM2COL, .p = x, .ld = (size_t)HWo,
                        .Cin = Cin, .H = H, .W = W, .ksize = k, .stride = stride, .pad = pad, .Wo = Wo},
                  .c = out, .ldc = (size_t)HWo, .batch = N,
                  .b_batch_stride = (size_t)Cin * H * W, .c_batch_stride = (size_t)Cout * HWo,
                  .bias = b ? b->f16 : NULL, .bias_per_row = 1, .weight_is_a = 1,
                  .wprep = prepared_if_bf16(be, w, Cout, Kd, 0)};
    if (ldm_gemm(&j, cpu_precision(be)) != 0)
        return ldm_backend_fail(be, "out of memory for the convolution's panels");
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
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)M * C >= PAR_MIN)
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
 * walks the keys BK at a time, with the products on its own panels (gemm_cpu.c):
 *   Sᵀ = K Qᵀ                  [bk, bq], written straight into the 32-query panels that
 *                              the second product reads (no transpose)
 *   (Q scaled as it is packed), then per query (a column, so the softmax runs across the
 *   panel's 32 lanes):  m' = max(m, max S);  P = exp(S - m');  l = l·exp(m-m') + sum P
 *   Oᵀ = Oᵀ·exp(m-m') + Vᵀ Pᵀ  [D, bq]   (D as the rows: a head of 40 fills 14-row panels)
 * and finally out = O / l.  Everything a block sums is in a fixed order: the same bits
 * whatever the thread count. */

typedef struct att_buf {
    float *Qp, *Pp, *OT, *m, *l, *corr;
    uint16_t *Qb, *Pb; /* bf16: Qp and Pp in pairs of k */
} att_buf;

/* The floats of one thread's block buffers; with base, b's parts are set inside it. */
static size_t att_floats(int D, att_buf *b, float *base) {
    size_t sz[8] = {ldm_panel_b_floats(ATT_BQ, D), ldm_panel_b_floats(ATT_BQ, ATT_BK),
                    (size_t)D * ATT_BQ, ATT_BQ + 32, ATT_BQ + 32, ATT_BQ + 32,
                    (ldm_panel_bf_b_elems(ATT_BQ, D) + 1) / 2, (ldm_panel_bf_b_elems(ATT_BQ, ATT_BK) + 1) / 2};
    float *parts[8];
    size_t off = 0;
    for (int i = 0; i < 8; i++) {
        parts[i] = base ? base + off : NULL;
        off += (sz[i] + 15) & ~(size_t)15; /* each part 64-byte aligned */
    }
    if (base) {
        b->Qp = parts[0]; b->Pp = parts[1]; b->OT = parts[2];
        b->m = parts[3]; b->l = parts[4]; b->corr = parts[5];
        b->Qb = (uint16_t *)parts[6]; b->Pb = (uint16_t *)parts[7];
    }
    return off;
}

/* The softmax step of one panel P[bk][32] (32 queries, each a column) in place: m, l and
 * corr are the panel's 32 running maxima (scaled), sums and rescale factors. */
LDM_CLONES static void att_panel_softmax(float *P, int bk, float *m, float *l, float *corr) {
    float mx[32], shift[32], sum[32];
    for (int j = 0; j < 32; j++) { mx[j] = -INFINITY; sum[j] = 0.0f; }
    for (int k = 0; k < bk; k++) {
        const float *row = P + (size_t)k * 32;
#pragma omp simd
        for (int j = 0; j < 32; j++) mx[j] = row[j] > mx[j] ? row[j] : mx[j];
    }
    for (int j = 0; j < 32; j++) {
        float nm = mx[j];
        if (m[j] > nm) nm = m[j];
        /* a query that sees no key yet keeps a zero row, sum and output */
        shift[j] = nm == -INFINITY ? 0.0f : nm;
        corr[j] = nm == -INFINITY ? 1.0f : expf(m[j] - nm);
        m[j] = nm;
    }
    for (int k = 0; k < bk; k++) {
        float *row = P + (size_t)k * 32;
#pragma omp simd
        for (int j = 0; j < 32; j++) {
            float e = exp_ps(row[j] - shift[j]);
            row[j] = e;
            sum[j] += e;
        }
    }
    for (int j = 0; j < 32; j++) l[j] = l[j] * corr[j] + sum[j];
}

/* One block of queries of one head.  Kp: the head's keys as A panels ([Tk/14][D][14]);
 * Vp: its values transposed as A panels ([D/14][Tk][14]); Kb, Vb: the same in bf16 pairs
 * (NULL: the products in fp32). */
static void attention_block(float *out, const float *q, const float *Kp, const float *Vp,
                            const uint16_t *Kb, const uint16_t *Vb, int heads, int Tk, int D,
                            int q_stride, float scale, int causal, int q0, int bq,
                            const att_buf *w) {
    float *OT = w->OT, *m = w->m, *l = w->l, *corr = w->corr;
    const int npan = (bq + 31) / 32, bf = Kb != NULL;
    const size_t D2 = (size_t)((D + 1) & ~1), Tk2 = (size_t)((Tk + 1) & ~1);
    for (int i = 0; i < npan * 32; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
    ldm_panel_pack_b(w->Qp, q + (size_t)q0 * q_stride, (size_t)q_stride, bq, D);
    { /* the scale on Q (any sign: the maximum below is then that of the scaled scores) */
        float *qp = w->Qp;
        size_t nq = ldm_panel_b_floats(bq, D);
#pragma omp simd
        for (size_t i = 0; i < nq; i++) qp[i] *= scale;
    }
    if (bf) ldm_panel_bf_from_b(w->Qb, w->Qp, 0, bq, D);
    int kend = Tk;
    if (causal && q0 + bq < kend) kend = q0 + bq; /* keys beyond the last query are masked */
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        int bk = kend - k0 < ATT_BK ? kend - k0 : ATT_BK;
        const size_t kpan = (size_t)(k0 / LDM_PANEL_MR); /* the block's first panel of keys */
        int rescale = 0;
        for (int jp = 0; jp < npan; jp++) {
            float *P = w->Pp + (size_t)jp * bk * 32;
            int nq = bq - jp * 32 < 32 ? bq - jp * 32 : 32;
            if (nq < 32) memset(P, 0, (size_t)bk * 32 * sizeof(float)); /* the columns past bq */
            if (bf)
                ldm_panel_bf_gemm(bk, nq, D, Kb + kpan * D2 * LDM_PANEL_MR, 0, w->Qb + (size_t)jp * D2 * 32, 0,
                                  P, 32, 0);
            else
                ldm_panel_gemm(bk, nq, D, Kp + kpan * D * LDM_PANEL_MR, 0, w->Qp + (size_t)jp * D * 32, 0,
                               P, 32, 0);
            if (causal) /* key k0+r is visible to query q0+jp*32+j when k0+r <= q0+jp*32+j */
                for (int r = 0; r < bk; r++)
                    for (int j = 0; j < nq; j++)
                        if (k0 + r > q0 + jp * 32 + j) P[(size_t)r * 32 + j] = -INFINITY;
            att_panel_softmax(P, bk, m + jp * 32, l + jp * 32, corr + jp * 32);
            for (int j = 0; j < nq && !rescale; j++) rescale = corr[jp * 32 + j] != 1.0f;
        }
        if (k0 > 0 && rescale)
            for (int d = 0; d < D; d++) {
                float *o = OT + (size_t)d * ATT_BQ;
#pragma omp simd
                for (int i = 0; i < bq; i++) o[i] *= corr[i];
            }
        if (bf) {
            ldm_panel_bf_from_b(w->Pb, w->Pp, (size_t)bk * 32, bq, bk);
            ldm_panel_bf_gemm(D, bq, bk, Vb + (size_t)k0 * LDM_PANEL_MR, Tk2 * LDM_PANEL_MR, w->Pb, 0, OT,
                              ATT_BQ, k0 > 0);
        } else {
            ldm_panel_gemm(D, bq, bk, Vp + (size_t)k0 * LDM_PANEL_MR, (size_t)Tk * LDM_PANEL_MR, w->Pp, 0,
                           OT, ATT_BQ, k0 > 0);
        }
    }
    int ostride = heads * D;
    for (int i = 0; i < bq; i++) l[i] = l[i] > 0 ? 1.0f / l[i] : 0.0f;
    for (int i = 0; i < bq; i++) {
        float *dst = out + (size_t)(q0 + i) * ostride;
        for (int d = 0; d < D; d++) dst[d] = OT[(size_t)d * ATT_BQ + i] * l[i];
    }
}

/* Attention in bf16 mode: its two products in bf16 where the CPU has AVX512_BF16 (the
 * softmax and the sums stay fp32), else fp32. */
static int att_bf16(ldm_backend *be) {
    return cpu_precision(be) == LDM_GEMM_BF16 && ldm_gemm_bf16_isa() && ldm_panel_bf16_available();
}

static int cpu_attention(ldm_backend *be, float *out, const float *q, const float *k, const float *v, int B,
                          int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                          float scale, int causal) {
    if (B <= 0 || heads <= 0 || Tq <= 0 || D <= 0) return 0;
    /* every head's keys and values in panels, once for all its blocks of queries */
    const int bf = att_bf16(be);
    const size_t kfl = (ldm_panel_a_floats(Tk, D) + 15) & ~(size_t)15;
    const size_t vfl = (ldm_panel_a_floats(D, Tk) + 15) & ~(size_t)15;
    const size_t kbl = bf ? ((ldm_panel_bf_a_elems(Tk, D) + 1) / 2 + 15) & ~(size_t)15 : 0;
    const size_t vbl = bf ? ((ldm_panel_bf_a_elems(D, Tk) + 1) / 2 + 15) & ~(size_t)15 : 0;
    const size_t per_head = kfl + vfl + kbl + vbl;
    const int nbh = B * heads;
    float *kv = scratch(be, SCR_KV, (size_t)nbh * per_head);
    if (!kv) return -1;
#pragma omp parallel for schedule(dynamic, 1) if (2.0 * nbh * Tk * D >= PAR_MIN)
    for (int t = 0; t < 2 * nbh; t++) {
        int bh = t / 2, b = bh / heads, h = bh % heads;
        const float *src = (t % 2 ? v : k) + (size_t)b * Tk * kv_stride + (size_t)h * D;
        float *head = kv + (size_t)bh * per_head;
        if (t % 2) {
            ldm_panel_pack_a(head + kfl, src, (size_t)kv_stride, D, Tk, 1);
            if (bf) ldm_panel_bf_from_a((uint16_t *)(head + kfl + vfl + kbl), head + kfl, 0, D, Tk);
        } else {
            ldm_panel_pack_a(head, src, (size_t)kv_stride, Tk, D, 0);
            if (bf) ldm_panel_bf_from_a((uint16_t *)(head + kfl + vfl), head, 0, Tk, D);
        }
    }
    int nqb = (Tq + ATT_BQ - 1) / ATT_BQ;
    int ntasks = nbh * nqb;
    int nthreads = omp_get_max_threads();
    if (nthreads > ntasks) nthreads = ntasks;
    size_t per = att_floats(D, NULL, NULL);
    float *buf = scratch(be, SCR_ATT, per * (size_t)nthreads);
    if (!buf) return -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int t = 0; t < ntasks; t++) {
        int qb = t % nqb, bh = t / nqb, h = bh % heads, b = bh / heads;
        att_buf w;
        att_floats(D, &w, buf + per * (size_t)omp_get_thread_num());
        int q0 = qb * ATT_BQ, bq = Tq - q0 < ATT_BQ ? Tq - q0 : ATT_BQ;
        const float *head = kv + (size_t)bh * per_head;
        const uint16_t *kb = bf ? (const uint16_t *)(head + kfl + vfl) : NULL;
        const uint16_t *vb = bf ? (const uint16_t *)(head + kfl + vfl + kbl) : NULL;
        attention_block(out + (size_t)b * Tq * heads * D + (size_t)h * D,
                        q + (size_t)b * Tq * q_stride + (size_t)h * D, head, head + kfl, kb, vb, heads,
                        Tk, D, q_stride, scale, causal, q0, bq, &w);
    }
    return 0;
}

/* ------------------------------------------------------------------------------
 * Elementwise and data movement. */

static int cpu_add(ldm_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(dynamic, 8192) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return 0;
}
static int cpu_scale(ldm_backend *be, float *out, const float *x, float s, size_t n) {
    (void)be;
#pragma omp parallel for simd schedule(dynamic, 8192) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = x[i] * s;
    return 0;
}
/* Elementwise maps over large n: split into chunks, one per OpenMP iteration. */
#define ELEM_CHUNK ((size_t)16384)
static int cpu_silu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    size_t nchunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) if (n >= PAR_MIN)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * ELEM_CHUNK, len = n - s < ELEM_CHUNK ? n - s : ELEM_CHUNK;
        silu_row(out + s, x + s, len, 1.0f, 0.0f, 1.0f);
    }
    return 0;
}
/* GELU as 0.5·x·erfc(-x/√2), which equals 0.5·x·(1 + erf(x/√2)) without the
 * cancellation in 1 + erf for negative x.  erfc_ps is the Chebyshev fit of Numerical
 * Recipes' erfcc (fractional error < 1.2e-7 in exact arithmetic; about 4e-7 here with
 * exp_ps in float), vectorisable where libm's erfcf is a scalar call. */
LDM_NO_TRAP static inline float erfc_ps(float x) {
    float z = fabsf(x), t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float r = t * exp_ps(p - z * z);
    return x >= 0.0f ? r : 2.0f - r;
}
LDM_CLONES static void gelu_row(float *out, const float *x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * erfc_ps(-x[i] * 0.70710678118654752f);
}
LDM_CLONES static void geglu_row(float *out, const float *h, const float *g, int n) {
#pragma omp simd
    for (int j = 0; j < n; j++) out[j] = h[j] * (0.5f * g[j] * erfc_ps(-g[j] * 0.70710678118654752f));
}
static int cpu_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    size_t nchunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) if (n >= PAR_MIN)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * ELEM_CHUNK, len = n - s < ELEM_CHUNK ? n - s : ELEM_CHUNK;
        gelu_row(out + s, x + s, len);
    }
    return 0;
}
static int cpu_quick_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    size_t nchunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) if (n >= PAR_MIN)
    for (size_t c = 0; c < nchunks; c++) {
        size_t s = c * ELEM_CHUNK, len = n - s < ELEM_CHUNK ? n - s : ELEM_CHUNK;
        silu_row(out + s, x + s, len, 1.0f, 0.0f, 1.702f);
    }
    return 0;
}
static int cpu_geglu(ldm_backend *be, float *out, const float *x, int M, int N) {
    (void)be;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)M * N >= PAR_MIN)
    for (int m = 0; m < M; m++) {
        const float *h = x + (size_t)m * 2 * N;
        geglu_row(out + (size_t)m * N, h, h + N, N);
    }
    return 0;
}
static int cpu_add_channel_bias(ldm_backend *be, float *x, const float *v, int N, int C, int HW) {
    (void)be;
#pragma omp parallel for schedule(dynamic, 4) if ((size_t)N * C * HW >= PAR_MIN)
    for (int nc = 0; nc < N * C; nc++) {
        float b = v[nc], *row = x + (size_t)nc * HW;
        for (int i = 0; i < HW; i++) row[i] += b;
    }
    return 0;
}
static int cpu_upsample_nearest2x(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W) {
    (void)be;
#pragma omp parallel for schedule(dynamic, 4) if ((size_t)N * C * H * W >= PAR_MIN / 4)
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
#pragma omp parallel for schedule(dynamic, 4) if ((size_t)N * C * Ho * Wo >= PAR_MIN / 4)
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
#pragma omp parallel for schedule(dynamic, 4) if ((size_t)N * R * Ccols >= PAR_MIN)
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
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)N * C * Ho * Wo >= PAR_MIN)
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

static const char *cpu_precision_name(ldm_backend *be) {
    return cpu_precision(be) == LDM_GEMM_BF16 && ldm_gemm_bf16_isa() ? "bf16" : "fp32";
}
static const char *cpu_isa_name(ldm_backend *be) {
    if (cpu_precision(be) == LDM_GEMM_BF16 && ldm_gemm_bf16_isa()) return ldm_gemm_bf16_isa();
    return ldm_gemm_fp32_isa();
}

const ldm_backend_ops ldm_backend_ops_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = cpu_synchronize,
    .prepare_weights = cpu_prepare_weights,
    .release_weights = cpu_release_weights,
    .precision_name = cpu_precision_name,
    .isa_name = cpu_isa_name,
#define LDM_X(name, params, args) .name = cpu_##name,
    LDM_OPS(LDM_X)
#undef LDM_X
};
