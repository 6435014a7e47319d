/* test_ops.c - every CPU op against a naive double-precision loop on random inputs,
 * plus the dry backend and the activation arena.
 *
 * Bounds: the CPU ops compute in float32 (sgemm blocks, online softmax), so they
 * differ from an exact double result by accumulated rounding, about sqrt(K)*2^-24
 * relative for a K-term dot product: well under 1e-6 for the sizes here.  We require
 * relative L2 <= 1e-5 for the reductions (linear, conv, attention, norms), 1e-6 for
 * pointwise maths (expf/erff are accurate to a few ulp) and exact equality for pure
 * data movement.  Weights are fp16; the reference uses the same widened values.
 *
 * Sizes are odd on purpose: K not a multiple of 8, Tq/Tk not multiples of the
 * attention blocks, C with few channels per group, stride 2 with padding, and chunk
 * limits shrunk so the chunked conv/linear paths run too.
 */
#include "core/common.h"
#include "backend/ops.h"
#include "core/fp16.h"
#include "test.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/gemm_cpu.h"  /* test hooks: blocking limits, forced kernels */

static ldm_backend *be;
/* The products' bound: rel. L2 against the exact double result (bf16: 1e-2). */
static double prod_tol = 1e-5;

/* ---- random data ---- */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *rand_vec(size_t n, float amp) {
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = amp * frand();
    return v;
}

/* An fp16 tensor of random values; *wide gets the exact float values it holds. */
typedef struct { ldm_tensor t; uint16_t *h; float *f; } wtensor;
static wtensor rand_weight(int64_t n0, int64_t n1, int64_t n2, int64_t n3, float amp) {
    wtensor w;
    memset(&w, 0, sizeof w);
    int64_t shape[4] = {n0, n1, n2, n3};
    w.t.name = "test.weight";
    w.t.numel = 1;
    for (int i = 0; i < 4 && shape[i] > 0; i++) {
        w.t.shape[i] = shape[i];
        w.t.ndim = i + 1;
        w.t.numel *= shape[i];
    }
    w.h = malloc((size_t)w.t.numel * sizeof(uint16_t));
    w.f = malloc((size_t)w.t.numel * sizeof(float));
    for (int64_t i = 0; i < w.t.numel; i++) {
        w.h[i] = ldm_f32_to_f16(amp * frand());
        w.f[i] = ldm_f16_to_f32(w.h[i]);
    }
    w.t.f16 = w.h;
    return w;
}
static void free_weight(wtensor *w) { free(w->h); free(w->f); }

static float *to_float(const double *d, size_t n) {
    float *f = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

/* ---- linear ---- */
static void test_linear(int M, int K, int N, int with_bias) {
    float *x = rand_vec((size_t)M * K, 1.0f);
    wtensor w = rand_weight(N, K, 0, 0, 0.5f), b = rand_weight(N, 0, 0, 0, 0.5f);
    float *out = rand_vec((size_t)M * N, 1.0f); /* garbage: must be overwritten */
    double *ref = calloc((size_t)M * N, sizeof(double));
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = with_bias ? b.f[n] : 0.0;
            for (int k = 0; k < K; k++) s += (double)x[(size_t)m * K + k] * w.f[(size_t)n * K + k];
            ref[(size_t)m * N + n] = s;
        }
    ldm_op_linear(be, out, x, &w.t, with_bias ? &b.t : NULL, M, K, N);
    float *rf = to_float(ref, (size_t)M * N);
    double e = rel_l2(out, rf, (size_t)M * N);
    CHECK(e <= prod_tol, "linear M=%d K=%d N=%d bias=%d: rel_l2 %.3g", M, K, N, with_bias, e);
    free(x); free(out); free(ref); free(rf); free_weight(&w); free_weight(&b);
}

/* ---- conv2d ---- */
static void test_conv2d(int N, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                        int with_bias) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    size_t on = (size_t)N * Cout * Ho * Wo;
    float *x = rand_vec((size_t)N * Cin * H * W, 1.0f);
    wtensor w = rand_weight(Cout, Cin, k, k, 0.3f), b = rand_weight(Cout, 0, 0, 0, 0.5f);
    float *out = rand_vec(on, 1.0f);
    double *ref = calloc(on, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int co = 0; co < Cout; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double s = with_bias ? b.f[co] : 0.0;
                    for (int ci = 0; ci < Cin; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                s += (double)x[(((size_t)n * Cin + ci) * H + iy) * W + ix] *
                                     w.f[(((size_t)co * Cin + ci) * k + ky) * k + kx];
                            }
                    ref[(((size_t)n * Cout + co) * Ho + oy) * Wo + ox] = s;
                }
    ldm_op_conv2d(be, out, x, &w.t, with_bias ? &b.t : NULL, N, Cin, H, W, Cout, k, stride, pad);
    float *rf = to_float(ref, on);
    double e = rel_l2(out, rf, on);
    CHECK(e <= prod_tol, "conv2d N=%d Cin=%d %dx%d Cout=%d k=%d s=%d p=%d: rel_l2 %.3g", N, Cin, H,
          W, Cout, k, stride, pad, e);
    free(x); free(out); free(ref); free(rf); free_weight(&w); free_weight(&b);
}

/* ---- bf16 products (--precision bf16) ----
 * Bound: rel. L2 <= 1e-2 against the exact result (operands rounded to 8-bit mantissas,
 * error ~2^-8 per product, sums in fp32: about 3e-3 on these data).  AMX and AVX512_BF16
 * read the same rounded operands and sum in fp32: within 1e-5 of each other.  The same
 * bits with 1 and 2 threads.  Without either instruction set, bf16 runs fp32 exactly. */
static void test_attention(int B, int heads, int Tq, int Tk, int D, int q_extra, int kv_extra,
                           int causal, float amp);
static void test_bf16(void) {
    ldm_backend *be32 = be;
    ldm_backend_opts o16 = {.precision = LDM_PRECISION_BF16};
    be = ldm_backend_new("cpu", &o16);
    const char *isa = ldm_gemm_bf16_isa();
    prod_tol = isa ? 1e-2 : 1e-5;
    for (int mode = 0; mode < 2; mode++) {
        ldm_gemm_force_bf16(mode == 0 ? 0 : 2); /* best (AMX here), then AVX512_BF16 */
        test_conv2d(2, 7, 13, 15, 11, 3, 1, 1, 1);
        test_conv2d(1, 40, 9, 9, 33, 3, 2, 1, 1);
        test_conv2d(2, 64, 20, 21, 40, 1, 1, 0, 1);
        test_linear(45, 100, 70, 1);
        test_linear(3, 520, 65, 0);
        ldm_gemm_set_blocking(32, 32, 32); /* several k blocks, tasks and chunks */
        test_conv2d(2, 30, 11, 12, 9, 1, 1, 0, 1);
        test_conv2d(1, 40, 9, 9, 70, 3, 1, 1, 1);
        test_linear(45, 300, 70, 1);
        ldm_gemm_set_blocking(0, 0, 0);
    }
    /* AMX against AVX512_BF16, bf16 against fp32, threads */
    int M = 77, K = 768, N = 96;
    float *x = rand_vec((size_t)M * K, 1.0f);
    wtensor w = rand_weight(N, K, 0, 0, 0.5f);
    float *o_amx = malloc(sizeof(float) * M * N), *o_avx = malloc(sizeof(float) * M * N);
    float *o_32 = malloc(sizeof(float) * M * N), *o_1t = malloc(sizeof(float) * M * N);
    ldm_gemm_force_bf16(0);
    ldm_op_linear(be, o_amx, x, &w.t, NULL, M, K, N);
    ldm_gemm_force_bf16(2);
    ldm_op_linear(be, o_avx, x, &w.t, NULL, M, K, N);
    ldm_gemm_force_bf16(0);
    ldm_op_linear(be32, o_32, x, &w.t, NULL, M, K, N);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    ldm_op_linear(be, o_1t, x, &w.t, NULL, M, K, N);
    omp_set_num_threads(nt < 2 ? 2 : nt);
    double e_isa = rel_l2(o_amx, o_avx, (size_t)M * N), e_32 = rel_l2(o_amx, o_32, (size_t)M * N);
    CHECK(e_isa <= 1e-5, "bf16 (%s) against avx512bf16: rel_l2 %.3g", isa ? isa : "none", e_isa);
    if (isa)
        CHECK(e_32 > 1e-4 && e_32 <= 1e-2, "bf16 (%s) differs from fp32 as bf16 does: rel_l2 %.3g", isa, e_32);
    else
        CHECK(e_32 == 0, "bf16 without bf16 instructions runs fp32: rel_l2 %.3g", e_32);
    CHECK(memcmp(o_amx, o_1t, sizeof(float) * M * N) == 0, "bf16: the same bits with 1 thread");
    /* a model's weights (registered by prepare_weights) are prepared once into the kernel's
     * panels: the same bits as packing them per call, for a linear layer and a convolution */
    {
        int Cout = 70, Cin = 40, HW = 9;
        wtensor cw = rand_weight(Cout, Cin, 3, 3, 0.3f);
        float *cx = rand_vec((size_t)2 * Cin * HW * HW, 1.0f);
        size_t on = (size_t)2 * Cout * HW * HW;
        float *c_pack = malloc(on * sizeof(float)), *c_prep = malloc(on * sizeof(float));
        ldm_op_conv2d(be, c_pack, cx, &cw.t, NULL, 2, Cin, HW, HW, Cout, 3, 1, 1);
        ldm_tensor *reg[2] = {&w.t, &cw.t};
        void *token = NULL;
        CHECK(ldm_be_prepare_weights(be, reg, 2, &token) == 0, "bf16: prepare_weights");
        ldm_op_linear(be, o_1t, x, &w.t, NULL, M, K, N);
        ldm_op_conv2d(be, c_prep, cx, &cw.t, NULL, 2, Cin, HW, HW, Cout, 3, 1, 1);
        ldm_op_linear(be, o_avx, x, &w.t, NULL, M, K, N); /* second use: the cached panels */
        CHECK(memcmp(o_amx, o_1t, sizeof(float) * M * N) == 0 &&
              memcmp(o_amx, o_avx, sizeof(float) * M * N) == 0,
              "bf16: prepared linear weight gives the same bits");
        CHECK(memcmp(c_pack, c_prep, on * sizeof(float)) == 0,
              "bf16: prepared convolution weight gives the same bits");
        ldm_be_release_weights(be, token);
        CHECK(ldm_backend_status(be) == 0, "bf16: backend status after the prepared products");
        free(cx); free(c_pack); free(c_prep); free_weight(&cw);
    }
    /* attention: its two products in bf16 where the CPU has AVX512_BF16 (the softmax in
     * fp32), within the products' bound of the exact result; the same bits with 1 and 2
     * threads; different from the fp32 attention (it did run in bf16) */
    test_attention(2, 3, 70, 300, 8, 5, 3, 0, 1.0f);
    test_attention(1, 2, 130, 300, 13, 7, 0, 1, 2.0f);
    test_attention(2, 2, 33, 77, 40, 40, 80, 0, 3.0f);
    test_attention(1, 1, 140, 260, 512, 0, 0, 0, 0.044f);
    {
        int B = 1, H = 2, T = 300, D = 40;
        size_t n = (size_t)B * T * H * D;
        float *aq = rand_vec(n, 1.0f), *ak = rand_vec(n, 1.0f), *av = rand_vec(n, 1.0f);
        float *a1 = malloc(n * sizeof(float)), *a2 = malloc(n * sizeof(float)), *a32 = malloc(n * sizeof(float));
        omp_set_num_threads(1);
        ldm_op_attention(be, a1, aq, ak, av, B, H, T, T, D, H * D, H * D, 0.158f, 0);
        omp_set_num_threads(nt < 2 ? 2 : nt);
        ldm_op_attention(be, a2, aq, ak, av, B, H, T, T, D, H * D, H * D, 0.158f, 0);
        ldm_op_attention(be32, a32, aq, ak, av, B, H, T, T, D, H * D, H * D, 0.158f, 0);
        CHECK(memcmp(a1, a2, n * sizeof(float)) == 0, "bf16 attention: the same bits with 1 and 2 threads");
        double ea = rel_l2(a2, a32, n);
        if (isa && ldm_panel_bf16_available())
            CHECK(ea > 1e-6 && ea <= 1e-2, "bf16 attention differs from fp32 as bf16 does: rel_l2 %.3g", ea);
        else
            CHECK(ea == 0, "attention without AVX512_BF16 runs fp32 in bf16 mode: rel_l2 %.3g", ea);
        free(aq); free(ak); free(av); free(a1); free(a2); free(a32);
    }
    omp_set_num_threads(nt);
    free(x); free(o_amx); free(o_avx); free(o_32); free(o_1t); free_weight(&w);
    ldm_backend_free(be);
    be = be32;
    prod_tol = 1e-5;
}

/* ---- normalisation ---- */
static void test_group_norm(int N, int C, int HW, int G, int silu) {
    size_t n = (size_t)N * C * HW;
    float *x = rand_vec(n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] += 3.0f; /* a mean far from 0 tests the variance */
    wtensor g = rand_weight(C, 0, 0, 0, 1.0f), b = rand_weight(C, 0, 0, 0, 1.0f);
    float *out = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    int cpg = C / G;
    for (int i = 0; i < N; i++)
        for (int gr = 0; gr < G; gr++) {
            const float *xs = x + ((size_t)i * C + (size_t)gr * cpg) * HW;
            size_t cnt = (size_t)cpg * HW;
            double mean = 0, var = 0;
            for (size_t j = 0; j < cnt; j++) mean += xs[j];
            mean /= cnt;
            for (size_t j = 0; j < cnt; j++) var += (xs[j] - mean) * (xs[j] - mean);
            var /= cnt;
            for (size_t j = 0; j < cnt; j++) {
                int c = gr * cpg + (int)(j / HW);
                double y = (xs[j] - mean) / sqrt(var + 1e-5) * g.f[c] + b.f[c];
                if (silu) y = y / (1.0 + exp(-y));
                ref[((size_t)i * C + (size_t)gr * cpg) * HW + j] = y;
            }
        }
    ldm_op_group_norm(be, out, x, &g.t, &b.t, N, C, HW, G, 1e-5f, silu);
    float *rf = to_float(ref, n);
    double e = rel_l2(out, rf, n);
    CHECK(e <= 1e-5, "group_norm N=%d C=%d HW=%d G=%d silu=%d: rel_l2 %.3g", N, C, HW, G, silu,
          e);
    free(x); free(out); free(ref); free(rf); free_weight(&g); free_weight(&b);
}

static void test_layer_norm(int M, int C) {
    size_t n = (size_t)M * C;
    float *x = rand_vec(n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] -= 1.5f;
    wtensor g = rand_weight(C, 0, 0, 0, 1.0f), b = rand_weight(C, 0, 0, 0, 1.0f);
    float *out = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++) mean += xr[i];
        mean /= C;
        for (int i = 0; i < C; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= C;
        for (int i = 0; i < C; i++)
            ref[(size_t)m * C + i] = (xr[i] - mean) / sqrt(var + 1e-5) * g.f[i] + b.f[i];
    }
    ldm_op_layer_norm(be, out, x, &g.t, &b.t, M, C, 1e-5f);
    float *rf = to_float(ref, n);
    double e = rel_l2(out, rf, n);
    CHECK(e <= 1e-5, "layer_norm M=%d C=%d: rel_l2 %.3g", M, C, e);
    free(x); free(out); free(ref); free(rf); free_weight(&g); free_weight(&b);
}

/* ---- attention ---- */
static void test_attention(int B, int heads, int Tq, int Tk, int D, int q_extra, int kv_extra,
                           int causal, float amp) {
    /* amp < 0: the scale is negative (the op takes any finite scale) */
    float sgn = amp < 0 ? -1.0f : 1.0f;
    amp = fabsf(amp);
    int qs = heads * D + q_extra, ks = heads * D + kv_extra, os = heads * D;
    float *q = rand_vec((size_t)B * Tq * qs, amp), *k = rand_vec((size_t)B * Tk * ks, amp);
    float *v = rand_vec((size_t)B * Tk * ks, 1.0f);
    size_t on = (size_t)B * Tq * os;
    float *out = rand_vec(on, 1.0f);
    double *ref = calloc(on, sizeof(double)), *p = malloc((size_t)Tk * sizeof(double));
    float scale = sgn / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < Tq; i++) {
                const float *qi = q + ((size_t)b * Tq + i) * qs + (size_t)h * D;
                double mx = -INFINITY, sum = 0;
                int nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + ((size_t)b * Tk + j) * ks + (size_t)h * D;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                    p[j] = s * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < nk; j++) sum += (p[j] = exp(p[j] - mx));
                double *o = ref + ((size_t)b * Tq + i) * os + (size_t)h * D;
                for (int j = 0; j < nk; j++) {
                    const float *vj = v + ((size_t)b * Tk + j) * ks + (size_t)h * D;
                    for (int d = 0; d < D; d++) o[d] += p[j] / sum * vj[d];
                }
            }
    ldm_op_attention(be, out, q, k, v, B, heads, Tq, Tk, D, qs, ks, scale, causal);
    float *rf = to_float(ref, on);
    double e = rel_l2(out, rf, on);
    CHECK(e <= prod_tol, "attention B=%d h=%d Tq=%d Tk=%d D=%d qs=%d ks=%d causal=%d: rel_l2 %.3g",
          B, heads, Tq, Tk, D, qs, ks, causal, e);
    free(q); free(k); free(v); free(out); free(ref); free(p); free(rf);
}

/* ---- elementwise ---- */
static double silu_d(double x) { return x / (1 + exp(-x)); }
static double gelu_d(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double qgelu_d(double x) { return x / (1 + exp(-1.702 * x)); }

static void test_unary(const char *name, int (*op)(ldm_backend *, float *, const float *, size_t),
                       double (*f)(double), size_t n) {
    float *x = rand_vec(n, 6.0f), *out = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = f(x[i]);
    op(be, out, x, n);
    float *rf = to_float(ref, n);
    double e = rel_l2(out, rf, n);
    CHECK(e <= 1e-6, "%s n=%zu: rel_l2 %.3g", name, n, e);
    op(be, x, x, n); /* in place must give the same */
    CHECK(memcmp(x, out, n * sizeof(float)) == 0, "%s n=%zu in place differs", name, n);
    free(x); free(out); free(ref); free(rf);
}

/* Large magnitudes: the fast exp saturates; results must stay finite and correct.
 * 1e-5 relative: in float, the rounding of 1.702*x alone moves exp(-1.702x) by
 * |1.702x|·2^-24, about 1.5e-6 relative at x = -30 (PyTorch rounds the same way). */
static void test_unary_extremes(const char *name, int (*op)(ldm_backend *, float *, const float *, size_t),
                                double (*f)(double)) {
    float x[] = {-1000.0f, -120.0f, -88.5f, -87.0f, -30.0f, -1e-20f, 0.0f, 1e-20f,
                 30.0f, 87.0f, 88.5f, 120.0f, 1000.0f, 3.4e38f, -3.4e38f};
    size_t n = sizeof x / sizeof x[0];
    float out[sizeof x / sizeof x[0]];
    op(be, out, x, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double want = f(x[i]);
        if (isnan(want)) want = x[i] < 0 ? 0.0 : x[i]; /* inf/inf in the double formula */
        int good = isfinite(out[i]) && fabs(out[i] - want) <= 1e-5 * fabs(want) + 1e-30;
        if (!good) printf("  %s(%g) = %g, want %g\n", name, x[i], out[i], want);
        ok &= good;
    }
    CHECK(ok, "%s at extreme inputs", name);
}

static void test_elementwise(size_t n) {
    float *a = rand_vec(n, 3.0f), *b = rand_vec(n, 3.0f), *out = malloc(n * sizeof(float));
    int ok = 1;
    ldm_op_add(be, out, a, b, n);
    for (size_t i = 0; i < n; i++) ok &= out[i] == a[i] + b[i];
    CHECK(ok, "add n=%zu", n);
    ldm_op_scale(be, out, a, -0.37f, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= out[i] == a[i] * -0.37f;
    CHECK(ok, "scale n=%zu", n);
    ldm_op_fill(be, out, 2.5f, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= out[i] == 2.5f;
    CHECK(ok, "fill n=%zu", n);
    ldm_op_copy(be, out, a, n);
    CHECK(memcmp(out, a, n * sizeof(float)) == 0, "copy n=%zu", n);
    ldm_be_upload(be, out, b, n);
    CHECK(memcmp(out, b, n * sizeof(float)) == 0, "upload n=%zu", n);
    ldm_be_download(be, out, a, n);
    CHECK(memcmp(out, a, n * sizeof(float)) == 0, "download n=%zu", n);
    test_unary("silu", ldm_op_silu, silu_d, n);
    test_unary("gelu", ldm_op_gelu, gelu_d, n);
    test_unary("quick_gelu", ldm_op_quick_gelu, qgelu_d, n);
    free(a); free(b); free(out);
}

static void test_geglu(int M, int N) {
    float *x = rand_vec((size_t)M * 2 * N, 4.0f), *out = malloc((size_t)M * N * sizeof(float));
    double *ref = malloc((size_t)M * N * sizeof(double));
    for (int m = 0; m < M; m++)
        for (int j = 0; j < N; j++)
            ref[(size_t)m * N + j] =
                x[(size_t)m * 2 * N + j] * gelu_d(x[(size_t)m * 2 * N + N + j]);
    ldm_op_geglu(be, out, x, M, N);
    float *rf = to_float(ref, (size_t)M * N);
    double e = rel_l2(out, rf, (size_t)M * N);
    CHECK(e <= 1e-6, "geglu M=%d N=%d: rel_l2 %.3g", M, N, e);
    free(x); free(out); free(ref); free(rf);
}

/* Naive PyTorch nearest index for an explicit size: min(floor(dst * (float)in/out), in-1). */
static int nearest_ref(int dst, int in, int out) {
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

/* upsample_nearest to an explicit size against the naive rule (exact). */
static void test_upsample_nearest(int N, int C, int H, int W, int Ho, int Wo) {
    size_t n = (size_t)N * C * H * W, no = (size_t)N * C * Ho * Wo;
    float *x = rand_vec(n, 1.0f), *out = malloc(no * sizeof(float));
    ldm_op_upsample_nearest(be, out, x, N, C, H, W, Ho, Wo);
    int ok = 1;
    for (size_t nc = 0; nc < (size_t)N * C; nc++)
        for (int yy = 0; yy < Ho; yy++)
            for (int xx = 0; xx < Wo; xx++)
                ok &= out[(nc * Ho + yy) * Wo + xx] ==
                      x[(nc * H + nearest_ref(yy, H, Ho)) * W + nearest_ref(xx, W, Wo)];
    CHECK(ok, "upsample_nearest N=%d C=%d %dx%d -> %dx%d", N, C, H, W, Ho, Wo);
    free(x);
    free(out);
}

/* Cases checked against torch 1.13's F.interpolate(size=..., mode="nearest"): the float32
 * scale makes some indices one less than the exact floor(dst * in / out). */
static void test_upsample_nearest_torch(void) {
    float x[3] = {10.0f, 20.0f, 30.0f}, out[82];
    ldm_op_upsample_nearest(be, out, x, 1, 1, 1, 2, 1, 82);       /* 2 -> 82: dst 41 reads 0 */
    CHECK(out[40] == 10.0f && out[41] == 10.0f && out[42] == 20.0f && out[81] == 20.0f,
          "2 -> 82: %g %g %g %g", out[40], out[41], out[42], out[81]);
    ldm_op_upsample_nearest(be, out, x, 1, 1, 1, 3, 1, 5);        /* 3 -> 5: 0 0 1 1 2 */
    CHECK(out[0] == 10 && out[1] == 10 && out[2] == 20 && out[3] == 20 && out[4] == 30,
          "3 -> 5: %g %g %g %g %g", out[0], out[1], out[2], out[3], out[4]);
    ldm_op_upsample_nearest(be, out, x, 1, 1, 3, 1, 2, 1);        /* 3 -> 2 (down): 0 1 */
    CHECK(out[0] == 10 && out[1] == 20, "3 -> 2: %g %g", out[0], out[1]);
}

static void test_layout(int N, int C, int H, int W) {
    int HW = H * W;
    size_t n = (size_t)N * C * HW;
    float *x = rand_vec(n, 1.0f), *v = rand_vec((size_t)N * C, 1.0f);
    float *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
    int ok = 1;

    memcpy(y, x, n * sizeof(float));
    ldm_op_add_channel_bias(be, y, v, N, C, HW);
    for (size_t i = 0; i < n; i++) ok &= y[i] == x[i] + v[i / HW];
    CHECK(ok, "add_channel_bias N=%d C=%d HW=%d", N, C, HW);

    ldm_op_nchw_to_nhwc(be, y, x, N, C, HW);
    ok = 1;
    for (int b = 0; b < N; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++)
                ok &= y[((size_t)b * HW + p) * C + c] == x[((size_t)b * C + c) * HW + p];
    CHECK(ok, "nchw_to_nhwc N=%d C=%d HW=%d", N, C, HW);
    ldm_op_nhwc_to_nchw(be, z, y, N, C, HW);
    CHECK(memcmp(z, x, n * sizeof(float)) == 0, "nhwc_to_nchw round trip N=%d C=%d HW=%d", N,
          C, HW);

    float *up = malloc(4 * n * sizeof(float));
    ldm_op_upsample_nearest2x(be, up, x, N, C, H, W);
    ok = 1;
    for (size_t nc = 0; nc < (size_t)N * C; nc++)
        for (int yy = 0; yy < 2 * H; yy++)
            for (int xx = 0; xx < 2 * W; xx++)
                ok &= up[(nc * 2 * H + yy) * 2 * W + xx] == x[(nc * H + yy / 2) * W + xx / 2];
    CHECK(ok, "upsample_nearest2x N=%d C=%d %dx%d", N, C, H, W);
    free(up);

    int Cb = C + 3;
    float *b2 = rand_vec((size_t)N * Cb * HW, 1.0f);
    float *cat = malloc((size_t)N * (C + Cb) * HW * sizeof(float));
    ldm_op_concat_channels(be, cat, x, C, b2, Cb, N, HW);
    ok = 1;
    for (int b = 0; b < N; b++)
        for (int c = 0; c < C + Cb; c++)
            for (int p = 0; p < HW; p++) {
                float want = c < C ? x[((size_t)b * C + c) * HW + p]
                                   : b2[((size_t)b * Cb + c - C) * HW + p];
                ok &= cat[((size_t)b * (C + Cb) + c) * HW + p] == want;
            }
    CHECK(ok, "concat_channels N=%d Ca=%d Cb=%d HW=%d", N, C, Cb, HW);
    free(b2); free(cat); free(x); free(v); free(y); free(z);
}

static void test_embedding(void) {
    int V = 50, C = 19, T = 7, B = 2;
    wtensor tab = rand_weight(V, C, 0, 0, 1.0f), pos = rand_weight(T, C, 0, 0, 1.0f);
    int32_t ids[14];
    for (int i = 0; i < B * T; i++) ids[i] = (i * 17 + 3) % V;
    ids[0] = 0;
    ids[1] = V - 1;
    float *out = malloc((size_t)B * T * C * sizeof(float));
    ldm_op_embedding(be, out, &tab.t, ids, B * T, C);
    int ok = 1;
    for (int i = 0; i < B * T; i++)
        for (int c = 0; c < C; c++) ok &= out[(size_t)i * C + c] == tab.f[(size_t)ids[i] * C + c];
    CHECK(ok, "embedding V=%d C=%d n=%d", V, C, B * T);
    ldm_op_add_positional(be, out, &pos.t, B, T, C);
    ok = 1;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                size_t i = ((size_t)b * T + t) * C + c;
                ok &= out[i] == tab.f[(size_t)ids[b * T + t] * C + c] + pos.f[(size_t)t * C + c];
            }
    CHECK(ok, "add_positional B=%d T=%d C=%d", B, T, C);
    free(out); free_weight(&tab); free_weight(&pos);
}

/* ---- pad2d against the rule ---- */
static void test_pad2d(int N, int C, int H, int W, int t, int b, int l, int r) {
    const int Ho = H + t + b, Wo = W + l + r;
    float *x = rand_vec((size_t)N * C * H * W, 1.0f), *out = rand_vec((size_t)N * C * Ho * Wo, 1.0f);
    ldm_op_pad2d(be, out, x, N, C, H, W, t, b, l, r);
    int ok = ldm_backend_status(be) == 0;
    for (int nc = 0; nc < N * C && ok; nc++)
        for (int y = 0; y < Ho; y++)
            for (int xx = 0; xx < Wo; xx++) {
                int iy = y - t, ix = xx - l;
                float want = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((size_t)nc * H + iy) * W + ix] : 0.0f;
                if (out[((size_t)nc * Ho + y) * Wo + xx] != want) ok = 0;
            }
    CHECK(ok, "pad2d %dx%dx%dx%d pad %d %d %d %d", N, C, H, W, t, b, l, r);
    free(x);
    free(out);
}

/* ---- dry backend, the front (checks, status, fault injection, profile) and arena ---- */
static void test_dry(void) {
    ldm_backend *d = ldm_backend_new("dry", NULL);
    CHECK(d && strcmp(ldm_backend_name(d), "dry") == 0, "dry backend");
    float *p = ldm_be_alloc(d, 1 << 20);
    CHECK(p != NULL, "dry alloc returned NULL");
    wtensor w = rand_weight(4, 4, 0, 0, 1.0f), v = rand_weight(4, 0, 0, 0, 1.0f);
    wtensor cw = rand_weight(4, 4, 3, 3, 1.0f);
    int32_t ids[1] = {0};
    /* Every op must do nothing with the (fake) pointers it is given: touching one would
     * crash this test; nor may it write to a weight. */
    float *fake = (float *)(uintptr_t)0x100040;
    size_t wbytes = (size_t)w.t.numel * sizeof(uint16_t);
    uint16_t *wcopy = malloc(wbytes);
    memcpy(wcopy, w.t.f16, wbytes);
    int rc = 0;
    rc |= ldm_be_upload(d, fake, fake, 10);
    rc |= ldm_be_download(d, fake, fake, 10);
    rc |= ldm_op_copy(d, fake, fake, 10);
    rc |= ldm_op_fill(d, fake, 1.0f, 10);
    rc |= ldm_op_linear(d, fake, fake, &w.t, &v.t, 4, 4, 4);
    rc |= ldm_op_conv2d(d, fake, fake, &cw.t, NULL, 1, 4, 8, 8, 4, 3, 1, 1);
    rc |= ldm_op_group_norm(d, fake, fake, &v.t, &v.t, 1, 4, 64, 2, 1e-5f, 1);
    rc |= ldm_op_layer_norm(d, fake, fake, &v.t, &v.t, 4, 4, 1e-5f);
    rc |= ldm_op_attention(d, fake, fake + 64, fake + 128, fake + 192, 1, 2, 9, 9, 4, 8, 8, 0.5f, 1);
    rc |= ldm_op_add(d, fake, fake, fake, 10);
    rc |= ldm_op_scale(d, fake, fake, 2.0f, 10);
    rc |= ldm_op_silu(d, fake, fake, 10);
    rc |= ldm_op_gelu(d, fake, fake, 10);
    rc |= ldm_op_quick_gelu(d, fake, fake, 10);
    rc |= ldm_op_geglu(d, fake, fake, 2, 5);
    rc |= ldm_op_add_channel_bias(d, fake, fake, 1, 4, 9);
    rc |= ldm_op_upsample_nearest2x(d, fake, fake, 1, 4, 3, 3);
    rc |= ldm_op_upsample_nearest(d, fake, fake, 1, 4, 3, 3, 5, 5);
    rc |= ldm_op_concat_channels(d, fake, fake, 2, fake, 2, 1, 9);
    rc |= ldm_op_nchw_to_nhwc(d, fake + 64, fake, 1, 4, 9);
    rc |= ldm_op_nhwc_to_nchw(d, fake + 64, fake, 1, 4, 9);
    rc |= ldm_op_embedding(d, fake, &w.t, ids, 1, 4);
    rc |= ldm_op_add_positional(d, fake, &w.t, 1, 4, 4);
    rc |= ldm_op_pad2d(d, fake + 64, fake, 1, 4, 3, 3, 0, 1, 0, 1);
    CHECK(rc == 0 && ldm_backend_status(d) == 0, "dry ops succeed: %s", d->error);
    ldm_be_free(d, p);
    CHECK(memcmp(wcopy, w.t.f16, wbytes) == 0, "dry ops left the weight untouched");
    /* the op list: one name per op, in order */
    CHECK(LDM_OP_COUNT == 22 && !strcmp(ldm_op_names[LDM_OP_linear], "linear") &&
          !strcmp(ldm_op_names[LDM_OP_fill], "fill"), "op names (%d ops)", (int)LDM_OP_COUNT);
    ldm_backend_free(d);
    free(wcopy);
    free_weight(&w);
    free_weight(&v);
    free_weight(&cw);
}

/* The front: a bad argument fails the handle with the op and tensor named; a failure
 * is sticky (later ops do nothing); the fault injection fails the K-th call; the
 * profile counts calls; two handles share nothing. */
static void test_front(void) {
    ldm_backend *c = ldm_backend_new("cpu", NULL), *c2 = ldm_backend_new("cpu", NULL);
    wtensor w = rand_weight(6, 5, 0, 0, 1.0f);
    float x[5 * 3], out[6 * 3], keep[6 * 3];
    for (int i = 0; i < 15; i++) x[i] = (float)i;
    CHECK(ldm_op_linear(c, out, x, &w.t, NULL, 3, 5, 6) == 0 && ldm_backend_status(c) == 0, "linear ok");
    /* K = 4 does not match the weight [6, 5] */
    CHECK(ldm_op_linear(c, out, x, &w.t, NULL, 3, 4, 6) == -1, "bad K refused");
    CHECK(ldm_backend_status(c) == -1 && strstr(ldm_last_error(), "op linear") &&
          strstr(ldm_last_error(), "shape [6, 5], expected [6, 4]"), "message names op and shape: %s",
          ldm_last_error());
    memcpy(keep, out, sizeof out);
    CHECK(ldm_op_scale(c, out, out, 2.0f, 18) == -1 && !memcmp(keep, out, sizeof out),
          "after a failure ops do nothing");
    float host[4] = {1, 2, 3, 4};
    CHECK(ldm_be_download(c, host, out, 4) == -1 && host[0] == 0 && host[3] == 0,
          "download after a failure gives zeros");
    CHECK(ldm_op_scale(c2, out, out, 2.0f, 18) == 0 && ldm_backend_status(c2) == 0,
          "another handle is not affected");
    ldm_backend_free(c);
    ldm_backend_free(c2);

    ldm_backend_opts o = {0};
    o.fail_op = 3;
    o.profile = 1;
    ldm_backend *f = ldm_backend_new("cpu", &o);
    int r1 = ldm_op_scale(f, out, out, 1.0f, 18), r2 = ldm_op_linear(f, out, x, &w.t, NULL, 3, 5, 6);
    int r3 = ldm_op_add(f, out, out, out, 18), r4 = ldm_op_scale(f, out, out, 1.0f, 18);
    CHECK(r1 == 0 && r2 == 0 && r3 == -1 && r4 == -1, "fault injection: call 3 fails (%d %d %d %d)", r1, r2, r3, r4);
    CHECK(ldm_backend_status(f) == -1 && strstr(ldm_last_error(), "op add") &&
          strstr(ldm_last_error(), "LDM_TEST_FAIL_OP"), "injected failure named: %s", ldm_last_error());
    ldm_op_stat st[LDM_OP_COUNT];
    ldm_backend_profile(f, st);
    CHECK(st[LDM_OP_scale].calls == 1 && st[LDM_OP_linear].calls == 1 && st[LDM_OP_add].calls == 0,
          "profile: scale %ld linear %ld add %ld", st[LDM_OP_scale].calls, st[LDM_OP_linear].calls,
          st[LDM_OP_add].calls);
    ldm_backend_free(f);
    free_weight(&w);
    CHECK(ldm_backend_new("tpu", NULL) == NULL && ldm_last_status() == LDM_USAGE, "unknown backend refused");
}

/* The same allocation pattern, run on a measuring arena and then on a real one. */
static void arena_pattern(ldm_arena *a, float **ptrs) {
    ptrs[0] = ldm_arena_alloc(a, 3);
    size_t mark = ldm_arena_mark(a);
    ptrs[1] = ldm_arena_alloc(a, 1000);
    ptrs[2] = ldm_arena_alloc(a, 17);
    ldm_arena_reset(a, mark);
    ptrs[3] = ldm_arena_alloc(a, 5);
    ptrs[4] = ldm_arena_alloc(a, 0);
}

static void test_arena(void) {
    ldm_arena m;
    ldm_arena_measure(&m);
    float *mp[5], *rp[5];
    arena_pattern(&m, mp);
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= mp[i] != NULL && ((uintptr_t)mp[i] & 63) == 0;
    CHECK(ok, "measuring arena pointers non-NULL and 64-byte aligned");
    /* 3 floats -> 64 bytes, 1000 -> 4032, 17 -> 128: peak 64+4032+128. */
    CHECK(m.peak == 64 + 4032 + 128, "measuring peak %zu, expected %d", m.peak, 64 + 4032 + 128);
    CHECK(mp[3] == mp[1], "reset to a mark reuses the space");
    CHECK(m.used == 64 + 64 + 0, "used after reset %zu", m.used);

    ldm_arena r;
    CHECK(ldm_arena_init(&r, be, m.peak) == 0, "arena init: %s", ldm_last_error());
    arena_pattern(&r, rp);
    ok = 1;
    for (int i = 0; i < 5; i++) {
        ok &= ((uintptr_t)rp[i] & 63) == 0;
        ok &= (char *)rp[i] >= r.base && (char *)rp[i] <= r.base + r.cap;
        ok &= (char *)rp[i] - r.base == (char *)mp[i] - (char *)mp[0];
    }
    CHECK(ok, "real arena: aligned, inside the buffer, same offsets as measured");
    CHECK(r.peak == m.peak, "real peak %zu == measured %zu", r.peak, m.peak);
    /* The memory is usable. */
    rp[1] = ldm_arena_alloc(&r, 1000);
    for (int i = 0; i < 1000; i++) rp[1][i] = (float)i;
    CHECK(rp[1][999] == 999.0f, "arena memory writable");
    ldm_arena_free(&r);
    CHECK(r.base == NULL, "arena freed");

    ldm_arena e;
    CHECK(ldm_arena_init(&e, be, 0) == 0, "empty arena init");
    ldm_arena_free(&e);
}

int main(void) {
    /* Three threads whatever the machine: the products split into uneven slabs. */
    omp_set_num_threads(3);
    be = ldm_backend_new("cpu", NULL);
    /* linear */
    test_linear(1, 1, 1, 1);
    test_linear(7, 13, 5, 0);
    test_linear(33, 67, 129, 1);
    test_linear(77, 320, 96, 1);
    test_linear(3, 768, 1, 1);
    test_linear(300, 100, 40, 1); /* split along M */
    test_linear(40, 100, 300, 0); /* split along N */
    /* conv2d: 1x1, 3x3 pad 1, stride 2 with and without padding, k=4/5 odd shapes */
    test_conv2d(2, 5, 7, 6, 3, 1, 1, 0, 1);
    test_conv2d(1, 4, 9, 11, 6, 3, 1, 1, 1);
    test_conv2d(2, 3, 9, 8, 5, 3, 2, 1, 1);
    test_conv2d(1, 3, 10, 10, 4, 3, 2, 0, 0);
    test_conv2d(1, 2, 6, 7, 3, 5, 1, 2, 1);
    test_conv2d(1, 3, 5, 5, 2, 1, 2, 0, 1);
    test_conv2d(1, 1, 1, 1, 1, 3, 1, 1, 1);
    test_conv2d(1, 16, 32, 32, 8, 3, 1, 1, 1);
    test_conv2d(1, 32, 6, 6, 300, 3, 1, 1, 1);  /* product split along output channels */
    test_conv2d(2, 64, 20, 21, 40, 1, 1, 0, 1); /* 1x1, split along positions */
    /* blocked paths: several k blocks (kc 16), weight tasks of one panel, the other
     * operand in chunks of one panel; then the same with the AVX2 and portable kernels */
    for (int isa = 0; isa <= 2; isa++) {
        ldm_gemm_force_isa(isa == 0 ? 0 : 3 - isa);
        ldm_gemm_set_blocking(16, 14, 32);
        test_conv2d(2, 7, 13, 15, 11, 3, 1, 1, 1);
        test_conv2d(1, 5, 17, 9, 9, 3, 2, 1, 1);
        test_conv2d(2, 30, 11, 12, 9, 1, 1, 0, 1);
        test_conv2d(1, 40, 9, 9, 33, 3, 1, 1, 1);
        test_linear(9, 37, 23, 1);
        test_linear(45, 100, 70, 1);
        ldm_gemm_set_blocking(0, 0, 0);
        test_conv2d(2, 7, 13, 15, 11, 3, 1, 1, 1);
        test_linear(45, 300, 70, 1);
        test_linear(3, 520, 65, 0);
    }
    ldm_gemm_force_isa(0);
    test_bf16();
    /* normalisation */
    test_group_norm(1, 6, 17, 3, 0);
    test_group_norm(2, 6, 17, 3, 1);
    test_group_norm(1, 64, 100, 32, 1);
    test_group_norm(2, 5, 9, 1, 0);
    test_layer_norm(5, 37);
    test_layer_norm(77, 768);
    test_layer_norm(1, 1);
    /* attention: odd block remainders, strided heads, causal, long and short rows */
    test_attention(1, 1, 1, 1, 8, 0, 0, 0, 1.0f);
    test_attention(2, 3, 70, 300, 8, 5, 3, 0, 1.0f);
    test_attention(1, 2, 77, 77, 16, 0, 0, 1, 2.0f);
    test_attention(1, 2, 130, 300, 12, 7, 0, 1, 2.0f);
    test_attention(2, 2, 33, 77, 40, 40, 80, 0, 3.0f);
    test_attention(1, 1, 300, 530, 5, 1, 2, 0, 4.0f);
    test_attention(1, 8, 64, 256, 40, 0, 0, 1, 1.0f);
    test_attention(1, 1, 140, 260, 512, 0, 0, 0, 0.044f); /* the VAE's single head */
    test_attention(1, 2, 40, 300, 8, 0, 0, 0, -1.0f);     /* a negative scale (amp < 0) */
    /* elementwise, in serial and parallel sizes */
    test_elementwise(1);
    test_elementwise(1001);
    test_elementwise(100003);
    test_unary_extremes("silu", ldm_op_silu, silu_d);
    test_unary_extremes("gelu", ldm_op_gelu, gelu_d);
    test_unary_extremes("quick_gelu", ldm_op_quick_gelu, qgelu_d);
    test_geglu(3, 17);
    test_geglu(64, 640);
    test_layout(1, 3, 5, 7);
    test_layout(2, 37, 33, 35);
    test_upsample_nearest(1, 1, 1, 1, 1, 1);
    test_upsample_nearest(2, 3, 2, 3, 3, 5);   /* the UNet's odd sizes: 2 -> 3, 3 -> 5 */
    test_upsample_nearest(1, 4, 5, 4, 9, 8);   /* one side odd, the other exactly 2x */
    test_upsample_nearest(1, 2, 4, 4, 4, 4);   /* same size */
    test_upsample_nearest(1, 1, 2, 2, 82, 123);
    test_upsample_nearest(2, 64, 37, 29, 74, 57); /* parallel size */
    test_upsample_nearest_torch();
    test_embedding();
    test_pad2d(1, 3, 4, 5, 0, 1, 0, 1);   /* the VAE encoder's downsampler: (0, 1, 0, 1) */
    test_pad2d(2, 7, 9, 3, 2, 0, 3, 1);
    test_pad2d(1, 64, 100, 90, 0, 1, 0, 1);   /* parallel size */
    /* dry backend, arena, CUDA fallback */
    test_dry();
    test_front();
    test_arena();
#ifndef LDM_CUDA
    CHECK(ldm_backend_new("cuda", NULL) == NULL && strstr(ldm_last_error(), "without CUDA"),
          "cuda backend without CUDA: %s", ldm_last_error());
#endif
    ldm_backend_free(be);
    TEST_END();
}
