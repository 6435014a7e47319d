/* bench_gemm.c - the CPU backend's products on SD-1.5's real shapes, next to the
 * machine's GEMM ceiling measured in the same run.
 *
 *   make build/bench_gemm && build/bench_gemm [--threads N] [--precision fp32|bf16] [--reps R]
 *
 * Ceiling: OpenBLAS sgemm with its own threads on 2048^3 (the best of R runs); then
 * ldm's kernel on an in-cache product (its own peak); then each shape: convolutions of
 * the UNet at 256x256 (latents 32x32) and a few at 512x512, the attention and
 * feed-forward projections, each on the CFG batch of 2, GFLOP/s and the fraction of the
 * ceiling.  Weights are random fp16; only the speed is measured here (tests/test_ops.c
 * checks the results).
 */
#include "backend/gemm_cpu.h"
#include "backend/ops.h"
#include "core/fp16.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
/* The machine's fp32 FMA peak: every thread runs 12 independent chains of vector FMAs
 * on registers only (no memory, no dependency stalls: the bound no product can pass).
 * MKL and OpenBLAS take generic paths on some CPUs (AMD: AVX2 kernels), so their sgemm
 * can understate what the cores do; this line says what they can do. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEAK_BODY(VT, SET1, FMA, REDUCE_FIRST)                                              \
    double sink = 0;                                                                         \
    _Pragma("omp parallel reduction(+ : sink)") {                                            \
        VT a[12];                                                                            \
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = SET1(1.0f + i * 1e-3f); \
        VT b = SET1(0.99999f), c = SET1(1e-6f);                                              \
        for (long it = 0; it < iters; it++) {                                                \
            _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c);    \
        }                                                                                    \
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) sink += REDUCE_FIRST(a[i]);    \
    }                                                                                        \
    return sink;
static __attribute__((target("avx512f"))) float first512(__m512 v) { return _mm512_cvtss_f32(v); }
static __attribute__((target("avx512f"))) double peak512(long iters) {
    PEAK_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, first512)
}
static __attribute__((target("avx2,fma"))) float first256(__m256 v) { return _mm256_cvtss_f32(v); }
static __attribute__((target("avx2,fma"))) double peak256(long iters) {
    PEAK_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, first256)
}
#endif
/* GFLOP/s of the FMA peak with the kernel's instruction set, or 0 (portable kernel). */
static double fma_peak(int threads) {
#if defined(__x86_64__) && defined(__GNUC__)
    int lanes = !strcmp(ldm_gemm_fp32_isa(), "avx512") ? 16 : !strcmp(ldm_gemm_fp32_isa(), "avx2") ? 8 : 0;
    if (!lanes) return 0;
    long iters = 20000000;
    double best = 1e30, sink = 0;
    for (int r = 0; r < 4; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        sink += lanes == 16 ? peak512(iters) : peak256(iters);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (r && t < best) best = t;
    }
    if (sink == 12345.678) printf("(%g)\n", sink); /* keep the chains */
    return (double)threads * iters * 12 * lanes * 2 / best / 1e9;
#else
    (void)threads;
    return 0;
#endif
}

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *fvec(size_t n) {
    float *v = aligned_alloc(64, (n * 4 + 63) & ~(size_t)63);
    for (size_t i = 0; i < n; i++) v[i] = frand();
    return v;
}
static ldm_tensor tens(int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    ldm_tensor t;
    memset(&t, 0, sizeof t);
    int64_t s[4] = {a, b, c, d};
    t.name = "w";
    t.ndim = ndim;
    t.numel = 1;
    for (int i = 0; i < ndim; i++) { t.shape[i] = s[i]; t.numel *= s[i]; }
    uint16_t *h = aligned_alloc(64, ((size_t)t.numel * 2 + 63) & ~(size_t)63);
    for (int64_t i = 0; i < t.numel; i++) h[i] = ldm_f32_to_f16(0.05f * frand());
    t.f16 = h;
    return t;
}

typedef struct { const char *what; int conv; int a, b, c, d, e; } shape;
/* conv: N Cin HW Cout k ; linear: M K N */
static const shape shapes[] = {
    {"conv 320->320 3x3 32x32", 1, 2, 320, 32, 320, 3},
    {"conv 640->640 3x3 16x16", 1, 2, 640, 16, 640, 3},
    {"conv 1280->1280 3x3 8x8", 1, 2, 1280, 8, 1280, 3},
    {"conv 1280->1280 3x3 4x4", 1, 2, 1280, 4, 1280, 3},
    {"conv 2560->1280 3x3 4x4", 1, 2, 2560, 4, 1280, 3},
    {"conv 320->320 1x1 32x32", 1, 2, 320, 32, 320, 1},
    {"linear 2048x320->2560 (ff)", 0, 2048, 320, 2560, 0, 0},
    {"linear 2048x1280->320 (ff)", 0, 2048, 1280, 320, 0, 0},
    {"linear 2048x320->320 (qkv)", 0, 2048, 320, 320, 0, 0},
    {"linear 154x768->320 (k,v)", 0, 154, 768, 320, 0, 0},
    {"linear 128x1280->10240 (ff 8x8)", 0, 128, 1280, 10240, 0, 0},
    {"conv 320->320 3x3 64x64 (512)", 1, 2, 320, 64, 320, 3},
    {"conv 128->128 3x3 256x256 (vae)", 1, 1, 128, 256, 128, 3},
    {"conv 512->512 3x3 32x32 (vae)", 1, 1, 512, 32, 512, 3},
};

int main(int argc, char **argv) {
    int threads = 0, reps = 3, precision = LDM_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc)
            precision = !strcmp(argv[++i], "bf16") ? LDM_PRECISION_BF16 : LDM_PRECISION_FP32;
        else { fprintf(stderr, "usage: %s [--threads N] [--reps R] [--precision fp32|bf16]\n", argv[0]); return 2; }
    }
    if (threads <= 0) threads = omp_get_max_threads();
    omp_set_num_threads(threads);
    ldm_backend_opts o = {.threads = threads, .precision = precision};
    ldm_backend *be = ldm_backend_new("cpu", &o);
    if (!be) { fprintf(stderr, "no cpu backend\n"); return 1; }

    /* ceiling: OpenBLAS's own threads (measured again next to every shape: the speed of a
     * shared machine drifts from minute to minute) */
    int n = 1024;
    float *A = fvec((size_t)n * n), *B = fvec((size_t)n * n), *C = fvec((size_t)n * n);
    openblas_set_num_threads(threads);
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        double t = now() - t0;
        if (r && t < best) best = t;
    }
    openblas_set_num_threads(1);
    double ceiling = 2.0 * n * n * n / best / 1e9;
    printf("threads %d, precision %s, fp32 kernel %s, bf16 kernel %s\n", threads,
           precision ? "bf16" : "fp32", ldm_gemm_fp32_isa(),
           ldm_gemm_bf16_isa() ? ldm_gemm_bf16_isa() : "none");
    printf("%-34s %9s %9s %7s\n", "shape", "ms", "GFLOP/s", "ceiling");
    double peak = fma_peak(threads);
    if (peak > 0)
        printf("%-34s %9s %9.1f %6.0f%%%s\n", "FMA peak (fp32), registers only", "", peak,
               100.0 * peak / ceiling,
               precision == LDM_PRECISION_FP32 ? "  (the shapes' share of it: the last line)" : "");
    printf("%-34s %9.2f %9.1f %6.0f%%\n", "OpenBLAS sgemm 1024^3 (ceiling)", best * 1e3, ceiling, 100.0);

    double tot_fl = 0, tot_t = 0, tot_c = 0;
    int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const shape *sh = &shapes[s];
        double fl;
        float *x, *out;
        ldm_tensor w, b;
        if (sh->conv) {
            int N = sh->a, Cin = sh->b, HW = sh->c, Cout = sh->d, k = sh->e;
            x = fvec((size_t)N * Cin * HW * HW);
            out = fvec((size_t)N * Cout * HW * HW);
            w = tens(4, Cout, Cin, k, k);
            b = tens(1, Cout, 0, 0, 0);
            fl = 2.0 * N * Cout * (double)Cin * k * k * HW * HW;
        } else {
            int M = sh->a, K = sh->b, N = sh->c;
            x = fvec((size_t)M * K);
            out = fvec((size_t)M * N);
            w = tens(2, N, K, 0, 0);
            b = tens(1, N, 0, 0, 0);
            fl = 2.0 * M * K * (double)N;
        }
        /* registered as a model's weight: bf16 prepares it once (the first, untimed run) */
        ldm_tensor *reg[1] = {&w};
        void *token = NULL;
        ldm_be_prepare_weights(be, reg, 1, &token);
        double tb = 1e30, tc = 1e30;
        for (int r = 0; r < reps + 1; r++) {
            openblas_set_num_threads(threads);
            double t0 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
            double t1 = now() - t0;
            if (r && t1 < tc) tc = t1;
            openblas_set_num_threads(1);
            /* OpenBLAS's threads spin for a while after a call: let them go to sleep
             * before timing ldm, or they take its cores */
            usleep(300000);
            t0 = now();
            if (sh->conv)
                ldm_op_conv2d(be, out, x, &w, &b, sh->a, sh->b, sh->c, sh->c, sh->d, sh->e, 1, sh->e / 2);
            else
                ldm_op_linear(be, out, x, &w, &b, sh->a, sh->b, sh->c);
            double t = now() - t0;
            if (r && t < tb) tb = t;
        }
        double g = fl / tb / 1e9, cl = 2.0 * n * n * n / tc / 1e9;
        tot_fl += fl;
        tot_t += tb;
        tot_c += cl;
        printf("%-34s %9.2f %9.1f %6.0f%%  (ceiling now %.0f)\n", sh->what, tb * 1e3, g, 100.0 * g / cl, cl);
        ldm_be_release_weights(be, token);
        free(x); free(out); free((void *)w.f16); free((void *)b.f16);
    }
    printf("%-34s %9.2f %9.1f %6.0f%%  (mean ceiling %.0f)\n", "all shapes", tot_t * 1e3,
           tot_fl / tot_t / 1e9, 100.0 * tot_fl / tot_t / 1e9 / (tot_c / nshapes), tot_c / nshapes);
    if (peak > 0 && precision == LDM_PRECISION_FP32)
        printf("%-34s %9s %9.1f %6.0f%%  of the FMA peak\n", "all shapes", "", tot_fl / tot_t / 1e9,
               100.0 * tot_fl / tot_t / 1e9 / peak);
    free(A); free(B); free(C);
    if (ldm_backend_status(be) != 0) { fprintf(stderr, "backend failed\n"); return 1; }
    ldm_backend_free(be);
    return 0;
}
