/* bench_ops.c - times the hot CPU ops at Stable Diffusion sizes against naive loops.
 *
 * Build and run from the repository root (after `make`); optional argument: repetitions.
 * Set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to compare thread counts.
 *   cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Isrc bench/bench_ops.c build/libldm.a \
 *      $(pkg-config --libs openblas) -lm -o build/bench_ops && build/bench_ops
 *
 * Sizes: conv2d 320->320 3x3 at 64x64, linear 4096x320 -> 1280, attention over 4096
 * tokens with 8 heads of 40 (SD 1.x at 512x512, first UNet level).  The naive
 * baselines compute only a slice of the output (they are slow) and are scaled to the
 * same GFLOP/s measure; they also give a spot check of the fast results.
 */
#include "ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static float *rand_vec(size_t n, float amp) {
    float *v = malloc(n * sizeof(float));
    uint64_t s = 12345 + n;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = amp * ((float)((s >> 40) * (1.0 / 8388608.0)) - 1.0f);
    }
    return v;
}
static ldm_tensor rand_weight(int64_t numel, float amp) {
    ldm_tensor t;
    memset(&t, 0, sizeof t);
    float *f = rand_vec((size_t)numel, amp);
    uint16_t *h = malloc((size_t)numel * sizeof(uint16_t));
    for (int64_t i = 0; i < numel; i++) h[i] = ldm_f32_to_f16(f[i]);
    free(f);
    t.name = "bench";
    t.ndim = 1;
    t.shape[0] = t.numel = numel;
    t.f16 = h;
    return t;
}
/* Best of `reps` runs, in seconds. */
#define TIME_BEST(reps, stmt)                                                             \
    ({                                                                                    \
        double best_ = 1e30;                                                              \
        for (int r_ = 0; r_ < (reps); r_++) {                                             \
            double t0_ = now();                                                           \
            stmt;                                                                         \
            double dt_ = now() - t0_;                                                     \
            if (dt_ < best_) best_ = dt_;                                                 \
        }                                                                                 \
        best_;                                                                            \
    })

static void report(const char *what, double flops, double fast_s, double naive_flops,
                   double naive_s, double maxdiff) {
    printf("%-34s fast %8.2f ms %7.1f GFLOP/s | naive %7.2f GFLOP/s | speedup %6.1fx | "
           "max|diff| %.2g\n",
           what, fast_s * 1e3, flops / fast_s * 1e-9, naive_flops / naive_s * 1e-9,
           (flops / fast_s) / (naive_flops / naive_s), maxdiff);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    const ldm_backend *be = &ldm_backend_cpu;

    { /* conv2d 320 -> 320, 3x3, pad 1, 64x64 */
        int C = 320, H = 64, W = 64, k = 3;
        float *x = rand_vec((size_t)C * H * W, 1.0f), *out = malloc((size_t)C * H * W * 4);
        ldm_tensor w = rand_weight((int64_t)C * C * k * k, 0.05f), b = rand_weight(C, 0.1f);
        be->conv2d(out, x, &w, &b, 1, C, H, W, C, k, 1, 1); /* warm-up */
        double t = TIME_BEST(reps, be->conv2d(out, x, &w, &b, 1, C, H, W, C, k, 1, 1));
        int nco = 4; /* naive: 4 output channels */
        double md = 0, t0 = now();
        for (int co = 0; co < nco; co++)
            for (int oy = 0; oy < H; oy++)
                for (int ox = 0; ox < W; ox++) {
                    float s = ldm_f16_to_f32(b.f16[co]);
                    for (int ci = 0; ci < C; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy - 1 + ky, ix = ox - 1 + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                s += x[((size_t)ci * H + iy) * W + ix] *
                                     ldm_f16_to_f32(w.f16[(((size_t)co * C + ci) * k + ky) * k + kx]);
                            }
                    double d = fabs(s - out[((size_t)co * H + oy) * W + ox]);
                    if (d > md) md = d;
                }
        double tn = now() - t0;
        double fl = 2.0 * C * C * k * k * H * W;
        report("conv2d 320->320 3x3 64x64", fl, t, fl * nco / C, tn, md);
        free(x); free(out); free((void *)w.f16); free((void *)b.f16);
    }
    { /* linear [4096,320] x [1280,320]^T */
        int M = 4096, K = 320, N = 1280;
        float *x = rand_vec((size_t)M * K, 1.0f), *out = malloc((size_t)M * N * 4);
        ldm_tensor w = rand_weight((int64_t)N * K, 0.05f), b = rand_weight(N, 0.1f);
        be->linear(out, x, &w, &b, M, K, N);
        double t = TIME_BEST(reps, be->linear(out, x, &w, &b, M, K, N));
        int nm = 32;
        double md = 0, t0 = now();
        for (int m = 0; m < nm; m++)
            for (int n = 0; n < N; n++) {
                float s = ldm_f16_to_f32(b.f16[n]);
                for (int kk = 0; kk < K; kk++)
                    s += x[(size_t)m * K + kk] * ldm_f16_to_f32(w.f16[(size_t)n * K + kk]);
                double d = fabs(s - out[(size_t)m * N + n]);
                if (d > md) md = d;
            }
        double tn = now() - t0;
        double fl = 2.0 * M * K * N;
        report("linear 4096x320 -> 1280", fl, t, fl * nm / M, tn, md);
        free(x); free(out); free((void *)w.f16); free((void *)b.f16);
    }
    { /* self-attention 4096 tokens, 8 heads x 40, q/k/v packed in one [T, 3*320] tensor */
        int T = 4096, heads = 8, D = 40, C = heads * D, st = 3 * C;
        float *qkv = rand_vec((size_t)T * st, 1.0f), *out = malloc((size_t)T * C * 4);
        float scale = 1.0f / sqrtf((float)D);
        const float *q = qkv, *k = qkv + C, *v = qkv + 2 * C;
        be->attention(out, q, k, v, 1, heads, T, T, D, st, st, scale, 0);
        double t = TIME_BEST(reps, be->attention(out, q, k, v, 1, heads, T, T, D, st, st, scale, 0));
        /* naive: full score row, softmax, weighted sum; 16 queries of head 0 */
        int nq = 16;
        float *p = malloc((size_t)T * sizeof(float));
        double md = 0, t0 = now();
        for (int i = 0; i < nq; i++) {
            float mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                float s = 0;
                for (int d = 0; d < D; d++) s += q[(size_t)i * st + d] * k[(size_t)j * st + d];
                p[j] = s * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j < T; j++) sum += (p[j] = expf(p[j] - mx));
            for (int d = 0; d < D; d++) {
                float o = 0;
                for (int j = 0; j < T; j++) o += p[j] * v[(size_t)j * st + d];
                double diff = fabs(o / sum - out[(size_t)i * C + d]);
                if (diff > md) md = diff;
            }
        }
        double tn = now() - t0;
        double fl = 4.0 * heads * (double)T * T * D;
        report("attention 4096x4096 8x40", fl, t, fl * nq / (heads * (double)T), tn, md);
        free(qkv); free(out); free(p);
    }
    return 0;
}
