/* test_backend_ops.c - every op of the CUDA backend against the CPU backend on random
 * inputs (in the manner of ggml's test-backend-ops), and with --bench a timing table.
 *
 *   build/tests/test_backend_ops            correctness; without a GPU it says it skipped
 *                                           and checks only the reason given (with
 *                                           LDM_REQUIRE_CUDA=1 a missing GPU fails)
 *   build/tests/test_backend_ops --bench [reps]
 *                                           Stable Diffusion sized ops: CPU ms, CUDA ms,
 *                                           speed-up, and the same error bounds
 *
 * Bounds (relative L2 of the CUDA result against the CPU result):
 *   linear, conv2d   2e-3.  The CUDA backend rounds the activations to fp16 for the
 *                    tensor cores (and cuDNN rounds the conv result to fp16): each
 *                    rounding is at most 2^-11 relative, about 2.8e-4 RMS for uniform
 *                    inputs, so two of them stay well under 1e-3; the weights are fp16
 *                    on both sides and accumulation is fp32 on both.
 *   attention, group_norm, layer_norm   2e-5.  Both compute in fp32 (the norms'
 *                    statistics in double); they differ by summation order and by a few
 *                    ulp of expf, amplified at most by the size of the scores.
 *   silu, gelu, quick_gelu, geglu       1e-6 (expf/erff differ by a few ulp).
 *   add, scale, channel bias, data movement, embedding, positions       exact.
 * Sizes are odd on purpose (K not a multiple of 8, sequence lengths not multiples of the
 * attention tiles, head dims 3..512, strided q/k/v as in a fused projection).
 */
#include "core/common.h"
#include "backend/ops.h"
#include "core/fp16.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static ldm_backend *cpu;
static ldm_backend *gpu;
static int bench_reps; /* > 0: bench mode */
/* 0 when LDM_TEST_CPU_AS_GPU=1 stands the CPU backend in for CUDA: that checks this
 * harness itself (e.g. under ASan) on a machine without a GPU. */
static int real_cuda = 1;

/* ---- random data ---- */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *rand_vec(size_t n, float amp, float offset) {
    float *v = ldm_xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = offset + amp * frand();
    return v;
}
/* An fp16 tensor of random values (host data; prepared for the GPU by the caller). */
static ldm_tensor rand_weight(int64_t n0, int64_t n1, int64_t n2, int64_t n3, float amp) {
    ldm_tensor t;
    memset(&t, 0, sizeof t);
    int64_t shape[4] = {n0, n1, n2, n3};
    t.name = "test.weight";
    t.numel = 1;
    for (int i = 0; i < 4 && shape[i] > 0; i++) {
        t.shape[i] = shape[i];
        t.ndim = i + 1;
        t.numel *= shape[i];
    }
    uint16_t *h = ldm_xmalloc((size_t)t.numel * sizeof(uint16_t));
    for (int64_t i = 0; i < t.numel; i++) h[i] = ldm_f32_to_f16(amp * frand());
    t.f16 = h;
    return t;
}
/* Weights prepared for the GPU one at a time (a model prepares all of its weights in
 * one call); released when the tensor is freed. */
#define MAX_PREPARED 64
static struct { const uint16_t *data; void *buf; } prepared_bufs[MAX_PREPARED];
static void prepare(ldm_tensor *t) {
    void *buf = NULL;
    ldm_tensor *one = t;
    int rc = ldm_be_prepare_weights(gpu, &one, 1, &buf);
    CHECK(rc == 0 && (buf != NULL || !real_cuda), "prepare_weights %s: %s", t->name, ldm_last_error());
    for (int i = 0; i < MAX_PREPARED; i++)
        if (!prepared_bufs[i].data) { prepared_bufs[i].data = t->f16; prepared_bufs[i].buf = buf; return; }
    CHECK(0, "more than %d prepared weights", MAX_PREPARED);
}
static void free_weight(ldm_tensor *t) {
    for (int i = 0; i < MAX_PREPARED; i++)
        if (prepared_bufs[i].data == t->f16) {
            ldm_be_release_weights(gpu, prepared_bufs[i].buf);
            prepared_bufs[i].data = NULL;
            prepared_bufs[i].buf = NULL;
        }
    free((void *)t->f16);
}

/* ---- device buffers ---- */
static float *dev_alloc(size_t n) {
    float *d = ldm_be_alloc(gpu, (n ? n : 1) * sizeof(float));
    if (!d) {
        printf("FAIL: %s\n", ldm_last_error());
        exit(1);
    }
    return d;
}
static float *to_dev(const float *h, size_t n) {
    float *d = dev_alloc(n);
    ldm_be_upload(gpu, d, h, n);
    return d;
}
static float *from_dev(const float *d, size_t n) {
    float *h = ldm_xmalloc((n ? n : 1) * sizeof(float));
    ldm_be_download(gpu, h, d, n);
    return h;
}

/* ---- timing (bench mode) ---- */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double t_cpu, t_gpu; /* best seconds of the last RUN_BOTH */
static double gflop;        /* of the op being run, for the table */
/* Inside RUN_BOTH: the CPU-side or the GPU-side buffer. */
#define PICK(cpu_buf, gpu_buf) (on_cpu_ ? (cpu_buf) : (gpu_buf))
/* Run the statement with be = cpu once (twice in bench mode, best kept), then with
 * be = gpu (in bench mode after a warm-up, best of bench_reps, synchronized). */
#define RUN_BOTH(be, ...)                                                                   \
    do {                                                                                    \
        ldm_backend *be = cpu;                                                        \
        int on_cpu_ = 1;                                                                    \
        t_cpu = t_gpu = 1e30;                                                               \
        for (int r_ = 0; r_ < (bench_reps ? 2 : 1); r_++) {                                 \
            double t0_ = now();                                                             \
            __VA_ARGS__;                                                                    \
            double dt_ = now() - t0_;                                                       \
            if (dt_ < t_cpu) t_cpu = dt_;                                                   \
        }                                                                                   \
        be = gpu;                                                                           \
        on_cpu_ = 0;                                                                        \
        if (bench_reps) { __VA_ARGS__; gpu->ops->synchronize(gpu); } /* warm-up: cuDNN plans */    \
        for (int r_ = 0; r_ < (bench_reps ? bench_reps : 1); r_++) {                        \
            double t0_ = now();                                                             \
            __VA_ARGS__;                                                                    \
            gpu->ops->synchronize(gpu);                                                             \
            double dt_ = now() - t0_;                                                       \
            if (dt_ < t_gpu) t_gpu = dt_;                                                   \
        }                                                                                   \
    } while (0)

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}
/* Compare the downloaded CUDA result with the CPU result; print one line. */
static void compare(const char *what, const float *got, const float *ref, size_t n, double bound) {
    int rc = ldm_backend_status(gpu);
    CHECK(rc == 0, "%s: CUDA error: %s", what, ldm_last_error());
    double e = rel_l2(got, ref, n);
    int fin = all_finite(got, n) && all_finite(ref, n);
    int ok = rc == 0 && fin && e <= bound;
    CHECK(fin && e <= bound, "%s: relative L2 %.3g (bound %.3g)%s", what, e, bound,
          fin ? "" : ", non-finite values");
    if (bench_reps && t_gpu > 0)
        printf("%-46s %10.3f %10.3f %8.1fx %9.1f   %.2g\n", what, t_cpu * 1e3, t_gpu * 1e3,
               t_cpu / t_gpu, gflop > 0 ? gflop / t_gpu : 0.0, e);
    else if (bench_reps)
        printf("%-46s %10s %10s %9s %9s   %.2g\n", what, "-", "-", "-", "-", e);
    else
        printf("%-4s %-46s rel L2 %.3g (bound %.3g)\n", ok ? "ok" : "BAD", what, e, bound);
}

/* ---- memory ops ---- */
static void test_memory(void) {
    size_t n = 100003;
    float *h = rand_vec(n, 3.0f, 0.0f), *d = to_dev(h, n);
    float *back = from_dev(d, n);
    CHECK(memcmp(back, h, n * sizeof(float)) == 0, "upload/download round trip");
    /* copy, disjoint and overlapping both ways (memmove semantics) */
    float *d2 = dev_alloc(n);
    ldm_op_copy(gpu, d2, d, n);
    float *c = from_dev(d2, n);
    CHECK(memcmp(c, h, n * sizeof(float)) == 0, "copy");
    ldm_op_copy(gpu, d + 100, d, n - 100);
    float *ref = ldm_xmalloc(n * sizeof(float));
    memcpy(ref, h, n * sizeof(float));
    memmove(ref + 100, ref, (n - 100) * sizeof(float));
    free(c);
    c = from_dev(d, n);
    CHECK(memcmp(c, ref, n * sizeof(float)) == 0, "overlapping copy forward");
    ldm_op_copy(gpu, d, d + 7, n - 7);
    memmove(ref, ref + 7, (n - 7) * sizeof(float));
    free(c);
    c = from_dev(d, n);
    CHECK(memcmp(c, ref, n * sizeof(float)) == 0, "overlapping copy backward");
    ldm_op_fill(gpu, d2, -2.5f, n);
    free(c);
    c = from_dev(d2, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= c[i] == -2.5f;
    CHECK(ok, "fill");
    gpu->ops->synchronize(gpu);
    CHECK(ldm_backend_status(gpu) == 0, "memory ops: %s", ldm_last_error());
    ldm_be_free(gpu, d);
    ldm_be_free(gpu, d2);
    free(h); free(back); free(c); free(ref);
}

/* ---- linear ---- */
static void test_linear(int M, int K, int N, int with_bias, int prepared) {
    float *x = rand_vec((size_t)M * K, 1.0f, 0.0f);
    ldm_tensor w = rand_weight(N, K, 0, 0, 0.5f), b = rand_weight(N, 0, 0, 0, 0.5f);
    if (prepared) { prepare(&w); prepare(&b); }
    float *ref = ldm_xmalloc((size_t)M * N * sizeof(float));
    float *dx = to_dev(x, (size_t)M * K), *dout = dev_alloc((size_t)M * N);
    gflop = 2.0 * M * K * N * 1e-9;
    RUN_BOTH(be, ldm_op_linear(be, PICK(ref, dout), PICK(x, dx), &w, with_bias ? &b : NULL,
                            M, K, N));
    float *got = from_dev(dout, (size_t)M * N);
    char what[96];
    snprintf(what, sizeof what, "linear %dx%d -> %d%s%s", M, K, N, with_bias ? " +b" : "",
             prepared ? "" : " (lazy)");
    compare(what, got, ref, (size_t)M * N, 2e-3);
    ldm_be_free(gpu, dx); ldm_be_free(gpu, dout);
    free(x); free(ref); free(got);
    free_weight(&w); free_weight(&b);
}

/* ---- conv2d ---- */
static void test_conv(int N, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                      int with_bias) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    size_t nx = (size_t)N * Cin * H * W, ny = (size_t)N * Cout * Ho * Wo;
    float *x = rand_vec(nx, 1.0f, 0.0f);
    ldm_tensor w = rand_weight(Cout, Cin, k, k, 0.3f), b = rand_weight(Cout, 0, 0, 0, 0.5f);
    prepare(&w); prepare(&b);
    float *ref = ldm_xmalloc(ny * sizeof(float));
    float *dx = to_dev(x, nx), *dout = dev_alloc(ny);
    gflop = 2.0 * N * Cout * Ho * Wo * Cin * k * k * 1e-9;
    RUN_BOTH(be, ldm_op_conv2d(be, PICK(ref, dout), PICK(x, dx), &w, with_bias ? &b : NULL, N,
                            Cin, H, W, Cout, k, stride, pad));
    float *got = from_dev(dout, ny);
    char what[96];
    snprintf(what, sizeof what, "conv2d [%d,%d,%d,%d] -> %d k%d s%d p%d%s", N, Cin, H, W, Cout, k,
             stride, pad, with_bias ? " +b" : "");
    compare(what, got, ref, ny, 2e-3);
    ldm_be_free(gpu, dx); ldm_be_free(gpu, dout);
    free(x); free(ref); free(got);
    free_weight(&w); free_weight(&b);
}

/* ---- norms ---- */
static void test_group_norm(int N, int C, int HW, int groups, float eps, int silu) {
    size_t n = (size_t)N * C * HW;
    float *x = rand_vec(n, 2.0f, 3.0f); /* an offset makes the variance the hard part */
    ldm_tensor g = rand_weight(C, 0, 0, 0, 1.0f), b = rand_weight(C, 0, 0, 0, 0.5f);
    prepare(&g); prepare(&b);
    float *ref = ldm_xmalloc(n * sizeof(float));
    float *dx = to_dev(x, n), *dout = dev_alloc(n);
    gflop = 8.0 * n * 1e-9;
    RUN_BOTH(be, ldm_op_group_norm(be, PICK(ref, dout), PICK(x, dx), &g, &b, N, C, HW, groups,
                                eps, silu));
    float *got = from_dev(dout, n);
    char what[96];
    snprintf(what, sizeof what, "group_norm [%d,%d,%d] g%d%s", N, C, HW, groups, silu ? " silu" : "");
    compare(what, got, ref, n, 2e-5);
    /* in place, as the models may call it */
    ldm_op_group_norm(gpu, dx, dx, &g, &b, N, C, HW, groups, eps, silu);
    t_cpu = t_gpu = 0; /* not timed */
    free(got);
    got = from_dev(dx, n);
    compare("group_norm in place", got, ref, n, 2e-5);
    ldm_be_free(gpu, dx); ldm_be_free(gpu, dout);
    free(x); free(ref); free(got);
    free_weight(&g); free_weight(&b);
}

static void test_layer_norm(int M, int C) {
    size_t n = (size_t)M * C;
    float *x = rand_vec(n, 2.0f, -1.5f);
    ldm_tensor g = rand_weight(C, 0, 0, 0, 1.0f), b = rand_weight(C, 0, 0, 0, 0.5f);
    prepare(&g); prepare(&b);
    float *ref = ldm_xmalloc(n * sizeof(float));
    float *dx = to_dev(x, n), *dout = dev_alloc(n);
    gflop = 8.0 * n * 1e-9;
    RUN_BOTH(be, ldm_op_layer_norm(be, PICK(ref, dout), PICK(x, dx), &g, &b, M, C, 1e-5f));
    float *got = from_dev(dout, n);
    char what[96];
    snprintf(what, sizeof what, "layer_norm [%d,%d]", M, C);
    compare(what, got, ref, n, 2e-5);
    ldm_be_free(gpu, dx); ldm_be_free(gpu, dout);
    free(x); free(ref); free(got);
    free_weight(&g); free_weight(&b);
}

/* ---- attention ---- */
/* q, k, v live in one [B, T, stride] buffer each; heads use columns h*D.. of it (as with
 * a fused projection when stride > heads*D). */
static void test_attention(int B, int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                           int causal, float amp) {
    size_t nq = (size_t)B * Tq * q_stride, nk = (size_t)B * Tk * kv_stride;
    size_t no = (size_t)B * Tq * heads * D;
    float *q = rand_vec(nq, amp, 0.0f), *k = rand_vec(nk, amp, 0.0f), *v = rand_vec(nk, 1.0f, 0.0f);
    float *ref = ldm_xmalloc(no * sizeof(float));
    float *dq = to_dev(q, nq), *dk = to_dev(k, nk), *dv = to_dev(v, nk), *dout = dev_alloc(no);
    float scale = 1.0f / sqrtf((float)D);
    gflop = 4.0 * B * heads * (double)Tq * Tk * D * (causal ? 0.5 : 1.0) * 1e-9;
    RUN_BOTH(be, ldm_op_attention(be, PICK(ref, dout), PICK(q, dq), PICK(k, dk),
                               PICK(v, dv), B, heads, Tq, Tk, D, q_stride, kv_stride, scale,
                               causal));
    float *got = from_dev(dout, no);
    char what[96];
    snprintf(what, sizeof what, "attention B%d h%d %dx%d D%d%s%s", B, heads, Tq, Tk, D,
             q_stride != heads * D || kv_stride != heads * D ? " strided" : "",
             causal ? " causal" : "");
    compare(what, got, ref, no, 2e-5);
    ldm_be_free(gpu, dq); ldm_be_free(gpu, dk); ldm_be_free(gpu, dv); ldm_be_free(gpu, dout);
    free(q); free(k); free(v); free(ref); free(got);
}

/* ---- elementwise ---- */
enum { OP_ADD, OP_SCALE, OP_SILU, OP_GELU, OP_QUICK_GELU };
static void test_unary(int op, size_t n) {
    static const char *names[] = {"add", "scale", "silu", "gelu", "quick_gelu"};
    float *a = rand_vec(n, 6.0f, 0.0f), *b = rand_vec(n, 6.0f, 0.0f);
    float *ref = ldm_xmalloc(n * sizeof(float));
    float *da = to_dev(a, n), *db = to_dev(b, n), *dout = dev_alloc(n);
    gflop = 0;
    RUN_BOTH(be, {
        float *o_ = PICK(ref, dout);
        const float *a_ = PICK(a, da), *b_ = PICK(b, db);
        switch (op) {
        case OP_ADD: ldm_op_add(be, o_, a_, b_, n); break;
        case OP_SCALE: ldm_op_scale(be, o_, a_, -0.18215f, n); break;
        case OP_SILU: ldm_op_silu(be, o_, a_, n); break;
        case OP_GELU: ldm_op_gelu(be, o_, a_, n); break;
        default: ldm_op_quick_gelu(be, o_, a_, n); break;
        }
    });
    float *got = from_dev(dout, n);
    char what[96];
    snprintf(what, sizeof what, "%s n=%zu", names[op], n);
    compare(what, got, ref, n, op <= OP_SCALE ? 0.0 : 1e-6);
    ldm_be_free(gpu, da); ldm_be_free(gpu, db); ldm_be_free(gpu, dout);
    free(a); free(b); free(ref); free(got);
}

static void test_geglu(int M, int N) {
    size_t nx = (size_t)M * 2 * N, no = (size_t)M * N;
    float *x = rand_vec(nx, 4.0f, 0.0f), *ref = ldm_xmalloc(no * sizeof(float));
    float *dx = to_dev(x, nx), *dout = dev_alloc(no);
    gflop = 0;
    RUN_BOTH(be, ldm_op_geglu(be, PICK(ref, dout), PICK(x, dx), M, N));
    float *got = from_dev(dout, no);
    char what[96];
    snprintf(what, sizeof what, "geglu [%d,%d]", M, 2 * N);
    compare(what, got, ref, no, 1e-6);
    ldm_be_free(gpu, dx); ldm_be_free(gpu, dout);
    free(x); free(ref); free(got);
}

/* add_channel_bias, both upsamples, concat and both transposes on one shape: exact. */
static void test_layout(int N, int C, int H, int W) {
    int HW = H * W, Cb = C / 2 + 1;
    size_t n = (size_t)N * C * HW, nb = (size_t)N * Cb * HW;
    float *x = rand_vec(n, 1.0f, 0.0f), *y = rand_vec(nb, 1.0f, 0.0f), *v = rand_vec((size_t)N * C, 1.0f, 0.0f);
    float *dx = to_dev(x, n), *dy = to_dev(y, nb), *dv = to_dev(v, (size_t)N * C);
    float *ref = ldm_xmalloc(4 * n * sizeof(float)), *dout = dev_alloc(4 * n);
    char what[96];
    gflop = 0;

    /* channel bias (in place) */
    float *xc = ldm_xmalloc(n * sizeof(float));
    memcpy(xc, x, n * sizeof(float));
    float *dxc = to_dev(x, n);
    ldm_op_add_channel_bias(cpu, xc, v, N, C, HW);
    ldm_op_add_channel_bias(gpu, dxc, dv, N, C, HW);
    t_cpu = t_gpu = 0; /* not timed */
    float *got = from_dev(dxc, n);
    snprintf(what, sizeof what, "add_channel_bias [%d,%d,%d]", N, C, HW);
    compare(what, got, xc, n, 0.0);
    free(got);

    RUN_BOTH(be, ldm_op_upsample_nearest2x(be, PICK(ref, dout), PICK(x, dx), N, C, H, W));
    got = from_dev(dout, 4 * n);
    snprintf(what, sizeof what, "upsample_nearest2x [%d,%d,%d,%d]", N, C, H, W);
    compare(what, got, ref, 4 * n, 0.0);
    free(got);

    /* zero padding (the VAE encoder's downsampler pads right and bottom by one) */
    size_t np_ = (size_t)N * C * (H + 1) * (W + 1);
    RUN_BOTH(be, ldm_op_pad2d(be, PICK(ref, dout), PICK(x, dx), N, C, H, W, 0, 1, 0, 1));
    got = from_dev(dout, np_);
    snprintf(what, sizeof what, "pad2d [%d,%d,%d,%d] (0,1,0,1)", N, C, H, W);
    compare(what, got, ref, np_, 0.0);
    free(got);

    /* explicit size, odd in both directions (the UNet's up path at odd latent sizes) */
    int Ho = 2 * H - 1, Wo = 2 * W - 1;
    size_t nu = (size_t)N * C * Ho * Wo;
    RUN_BOTH(be, ldm_op_upsample_nearest(be, PICK(ref, dout), PICK(x, dx), N, C, H, W, Ho, Wo));
    got = from_dev(dout, nu);
    snprintf(what, sizeof what, "upsample_nearest [%d,%d,%d,%d] -> %dx%d", N, C, H, W, Ho, Wo);
    compare(what, got, ref, nu, 0.0);
    free(got);

    RUN_BOTH(be, ldm_op_concat_channels(be, PICK(ref, dout), PICK(x, dx), C,
                                     PICK(y, dy), Cb, N, HW));
    got = from_dev(dout, n + nb);
    snprintf(what, sizeof what, "concat_channels %d+%d [%d,%d]", C, Cb, N, HW);
    compare(what, got, ref, n + nb, 0.0);
    free(got);

    RUN_BOTH(be, ldm_op_nchw_to_nhwc(be, PICK(ref, dout), PICK(x, dx), N, C, HW));
    got = from_dev(dout, n);
    snprintf(what, sizeof what, "nchw_to_nhwc [%d,%d,%d]", N, C, HW);
    compare(what, got, ref, n, 0.0);
    free(got);

    RUN_BOTH(be, ldm_op_nhwc_to_nchw(be, PICK(ref, dout), PICK(x, dx), N, C, HW));
    got = from_dev(dout, n);
    snprintf(what, sizeof what, "nhwc_to_nchw [%d,%d,%d]", N, C, HW);
    compare(what, got, ref, n, 0.0);
    free(got);

    ldm_be_free(gpu, dx); ldm_be_free(gpu, dy); ldm_be_free(gpu, dv); ldm_be_free(gpu, dout); ldm_be_free(gpu, dxc);
    free(x); free(y); free(v); free(ref); free(xc);
}

/* An out-of-range embedding id: the failure is recorded, later ops are skipped, it is
 * reported once by ldm_cuda_check, and the backend works again after. */
static void test_bad_id(float *dout, const ldm_tensor *tab, int32_t *ids, int n, int C) {
    size_t no = (size_t)n * C;
    int32_t saved = ids[1];
    ids[1] = (int32_t)tab->shape[0];
    ldm_op_embedding(gpu, dout, tab, ids, n, C);
    ids[1] = saved;
    ldm_op_fill(gpu, dout, 1.0f, no); /* skipped: a failure is pending */
    int rc = ldm_backend_status(gpu);
    CHECK(rc == -1 && strstr(ldm_last_error(), "token_embedding") && strstr(ldm_last_error(), "outside"),
          "bad id reported by ldm_cuda_check: rc %d, %s", rc, ldm_last_error());
    CHECK(ldm_backend_status(gpu) == 0, "failure cleared after it was reported: %s", ldm_last_error());
    ldm_op_fill(gpu, dout, 1.0f, no);
    float *got = from_dev(dout, no);
    int ok = 1;
    for (size_t i = 0; i < no; i++) ok &= got[i] == 1.0f;
    CHECK(ok && ldm_backend_status(gpu) == 0, "backend usable after a reported failure");
    free(got);
}

/* embedding and add_positional: exact. */
static void test_embedding(int V, int C, int B, int T) {
    ldm_tensor tab = rand_weight(V, C, 0, 0, 1.0f), pos = rand_weight(T, C, 0, 0, 1.0f);
    tab.name = "text_encoder.text_model.embeddings.token_embedding.weight";
    prepare(&tab); prepare(&pos);
    int n = B * T;
    int32_t *ids = ldm_xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919u + 13u) % (unsigned)V);
    ids[0] = 0;
    ids[n - 1] = V - 1;
    size_t no = (size_t)n * C;
    float *ref = ldm_xmalloc(no * sizeof(float)), *dout = dev_alloc(no);
    ldm_op_embedding(cpu, ref, &tab, ids, n, C);
    ldm_op_embedding(gpu, dout, &tab, ids, n, C);
    float *got = from_dev(dout, no);
    char what[96];
    snprintf(what, sizeof what, "embedding V%d C%d n%d", V, C, n);
    compare(what, got, ref, no, 0.0);
    free(got);
    ldm_op_add_positional(cpu, ref, &pos, B, T, C);
    ldm_op_add_positional(gpu, dout, &pos, B, T, C);
    got = from_dev(dout, no);
    snprintf(what, sizeof what, "add_positional B%d T%d C%d", B, T, C);
    compare(what, got, ref, no, 0.0);
    free(got);

    if (real_cuda) test_bad_id(dout, &tab, ids, n, C); /* the CPU backend aborts instead */
    ldm_be_free(gpu, dout);
    free(ids); free(ref);
    free_weight(&tab); free_weight(&pos);
}

static void run_tests(void) {
    test_memory();
    test_linear(1, 1, 1, 1, 1);
    test_linear(7, 33, 19, 1, 1);
    test_linear(77, 768, 768, 1, 0);
    test_linear(2, 320, 1280, 0, 1);
    test_linear(300, 320, 640, 1, 1);
    test_conv(1, 3, 8, 8, 5, 3, 1, 1, 1);
    test_conv(2, 4, 17, 13, 8, 3, 2, 1, 1);
    test_conv(1, 16, 9, 9, 32, 1, 1, 0, 0);
    test_conv(2, 64, 16, 16, 64, 3, 1, 1, 1);
    test_conv(1, 320, 12, 12, 320, 3, 2, 1, 1);
    test_group_norm(2, 64, 50, 32, 1e-5f, 0);
    test_group_norm(1, 96, 1000, 32, 1e-6f, 1);
    test_group_norm(1, 64, 40000, 32, 1e-6f, 1); /* 80000 values a group: several chunks */
    test_layer_norm(5, 7);
    test_layer_norm(77, 768);
    test_layer_norm(300, 1280);
    test_attention(2, 8, 100, 77, 40, 320, 320, 0, 2.0f);       /* SD1 cross attention */
    test_attention(1, 12, 77, 77, 64, 768, 768, 1, 2.0f);       /* CLIP, causal */
    test_attention(2, 5, 130, 130, 80, 1200, 1200, 0, 2.0f);    /* fused qkv stride */
    test_attention(1, 2, 33, 200, 160, 320, 320, 0, 2.0f);
    test_attention(1, 1, 300, 300, 512, 512, 512, 0, 1.0f);     /* VAE mid-block */
    test_attention(1, 3, 5, 9, 3, 9, 11, 1, 2.0f);              /* tiny, Tq < Tk causal */
    test_attention(1, 2, 40, 10, 24, 48, 48, 1, 2.0f);          /* Tq > Tk causal */
    test_attention(1, 1, 70, 70, 64, 64, 64, 0, 8.0f);          /* peaked softmax */
    for (int op = OP_ADD; op <= OP_QUICK_GELU; op++) test_unary(op, 100003);
    test_geglu(7, 33);
    test_geglu(64, 1280);
    test_layout(1, 3, 5, 7);
    test_layout(2, 37, 33, 35);
    test_embedding(1000, 64, 2, 77);
}

/* Stable Diffusion sizes (SD 1.x at 512x512: latents 64x64, 8 heads of 40). */
static void run_bench(void) {
    printf("%-46s %10s %10s %9s %9s   %s\n", "op", "cpu ms", "cuda ms", "speedup", "GFLOP/s",
           "rel L2");
    test_conv(2, 320, 64, 64, 320, 3, 1, 1, 1);
    test_conv(2, 1280, 8, 8, 1280, 3, 1, 1, 1);
    test_conv(2, 640, 32, 32, 640, 1, 1, 0, 1);
    test_conv(1, 128, 512, 512, 128, 3, 1, 1, 1); /* VAE decoder, last level */
    test_linear(8192, 320, 320, 1, 1);
    test_linear(8192, 320, 2560, 1, 1);
    test_linear(2, 1280, 1280, 1, 1);
    test_attention(2, 8, 4096, 4096, 40, 320, 320, 0, 1.0f);
    test_attention(2, 8, 4096, 77, 40, 320, 320, 0, 1.0f);
    test_attention(2, 8, 1024, 1024, 80, 640, 640, 0, 1.0f);
    test_attention(2, 5, 4096, 4096, 64, 320, 320, 0, 1.0f); /* SD2: heads of 64 */
    test_attention(1, 1, 4096, 4096, 512, 512, 512, 0, 0.5f); /* VAE mid-block */
    test_attention(2, 12, 77, 77, 64, 768, 768, 1, 1.0f);
    test_group_norm(2, 320, 4096, 32, 1e-5f, 1);
    test_group_norm(1, 128, 262144, 32, 1e-6f, 1);
    test_layer_norm(8192, 320);
    test_geglu(8192, 1280);
    test_unary(OP_SILU, (size_t)2 * 320 * 4096);
    test_layout(2, 320, 64, 64);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) bench_reps = argc > 2 ? atoi(argv[2]) : 5;
    if (bench_reps < 0) bench_reps = 1;
    cpu = ldm_backend_new("cpu", NULL);
    ldm_backend_opts gopts = {0};
    gopts.verbose = bench_reps > 0; /* the backend logs the device and conv algorithms */
    gpu = ldm_backend_new("cuda", &gopts);
    const char *cpu_as_gpu = getenv("LDM_TEST_CPU_AS_GPU");
    if (cpu_as_gpu && strcmp(cpu_as_gpu, "1") == 0) {
        printf("test_backend_ops: LDM_TEST_CPU_AS_GPU=1: the CPU backend stands in for CUDA\n");
        ldm_backend_free(gpu);
        gpu = ldm_backend_new("cpu", NULL);
        real_cuda = 0;
    }
    if (!gpu) {
        const char *msg = ldm_last_error();
        printf("test_backend_ops: skipped, no CUDA backend: %s\n", msg);
        CHECK(msg[0] != '\0' && strstr(msg, "CUDA") != NULL, "no CUDA backend, and no reason");
        CHECK(ldm_backend_new("cuda", NULL) == NULL && strstr(ldm_last_error(), "CUDA"), "second call: %s",
              ldm_last_error());
        const char *req = getenv("LDM_REQUIRE_CUDA"); /* set by scripts/gpu-check.sh run */
        CHECK(!req || strcmp(req, "1") != 0, "LDM_REQUIRE_CUDA=1 but no CUDA backend");
        ldm_backend_free(cpu);
        TEST_END();
    }
    if (real_cuda) {
        CHECK(strcmp(ldm_backend_name(gpu), "cuda") == 0, "backend name %s", ldm_backend_name(gpu));
    }
    if (bench_reps)
        run_bench();
    else
        run_tests();
    ldm_backend_free(gpu);
    ldm_backend_free(cpu);
    TEST_END();
}
