/* test_threads.c - the CPU backend's results do not depend on the thread count.
 *
 * Each op that computes a product or a reduction runs on SD-1.5-sized shapes (the text
 * encoder's MLP, a UNet convolution at 32x32, the low-resolution attention projections,
 * the VAE's 512-channel convolution, group norm and attention) with 1, 2, 3 and 5 OpenMP
 * threads, inside and outside an enclosing parallel region of one thread (what the UNet's
 * own loops create), and every output must be bit-identical to the 1-thread one: an image
 * is then the same bytes on any machine, whatever its core count (tests/cli_threads.sh
 * checks whole images on the fixtures).
 */
#include "core/common.h"
#include "backend/ops.h"
#include "core/fp16.h"
#include "backend/gemm_cpu.h" /* test hook: force the AVX2 / portable kernels */
#include "test.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static ldm_backend *be;
static uint64_t rng_state = 0x243f6a8885a308d3ull;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *rand_vec(size_t n, float amp) {
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = amp * frand();
    return v;
}
typedef struct { ldm_tensor t; uint16_t *h; } wt;
static wt weight(int ndim, int64_t n0, int64_t n1, int64_t n2, int64_t n3, float amp) {
    wt w;
    memset(&w, 0, sizeof w);
    int64_t s[4] = {n0, n1, n2, n3};
    w.t.name = "w";
    w.t.ndim = ndim;
    w.t.numel = 1;
    for (int i = 0; i < ndim; i++) { w.t.shape[i] = s[i]; w.t.numel *= s[i]; }
    w.h = malloc((size_t)w.t.numel * 2);
    for (int64_t i = 0; i < w.t.numel; i++) w.h[i] = ldm_f32_to_f16(amp * frand());
    w.t.f16 = w.h;
    w.t.dtype = LDM_DT_F16;
    return w;
}

typedef enum { OP_LINEAR, OP_CONV, OP_GN, OP_ATT } op_kind;
typedef struct {
    const char *what;
    op_kind op;
    int a, b, c, d, e;   /* linear: M K N; conv: N Cin HW Cout k; gn: N C HW groups; att: B heads T D */
} op_case;

/* Run the case with `threads` threads; `nested`: inside a parallel region of one thread. */
static void run(const op_case *c, const float *x, const float *x2, const wt *w, const wt *bias,
                float *out, int threads, int nested) {
    omp_set_num_threads(threads);
#pragma omp parallel num_threads(1) if (nested)
    {
        switch (c->op) {
        case OP_LINEAR: ldm_op_linear(be, out, x, &w->t, &bias->t, c->a, c->b, c->c); break;
        case OP_CONV: ldm_op_conv2d(be, out, x, &w->t, &bias->t, c->a, c->b, c->c, c->c, c->d, c->e, 1, c->e / 2); break;
        case OP_GN: ldm_op_group_norm(be, out, x, &w->t, &bias->t, c->a, c->b, c->c, c->d, 1e-5f, 1); break;
        case OP_ATT: {
            const int D = c->d, HD = c->b * D;
            ldm_op_attention(be, out, x, x2, x2 + (size_t)c->a * c->c * HD, c->a, c->b, c->c, c->c, D, HD, HD,
                             0.125f, 0);
            break;
        }
        }
    }
}

int main(void) {
    be = ldm_backend_new("cpu", NULL);
    CHECK(be != NULL, "cpu backend: %s", ldm_last_error());
    if (!be) TEST_END();
    static const op_case cases[] = {
        {"linear 154x768 -> 3072 (CLIP MLP)", OP_LINEAR, 154, 768, 3072, 0, 0},
        {"linear 128x1280 -> 1280 (8x8 attention, batch 2)", OP_LINEAR, 128, 1280, 1280, 0, 0},
        {"linear 2048x320 -> 320 (32x32 projection)", OP_LINEAR, 2048, 320, 320, 0, 0},
        {"conv 2x320x32x32 -> 320, 3x3", OP_CONV, 2, 320, 32, 320, 3},
        {"conv 1x512x32x32 -> 512, 3x3 (VAE)", OP_CONV, 1, 512, 32, 512, 3},
        {"conv 2x1280x8x8 -> 1280, 3x3", OP_CONV, 2, 1280, 8, 1280, 3},
        {"conv 1x128x128x128 -> 128, 3x3 (VAE, 128x128)", OP_CONV, 1, 128, 128, 128, 3},
        {"conv 1x4x32x32 -> 320, 3x3 (conv_in)", OP_CONV, 1, 4, 32, 320, 3},
        {"linear 2048x320 -> 2560 (GEGLU)", OP_LINEAR, 2048, 320, 2560, 0, 0},
        {"linear 154x768 -> 320 (cross-attention k, v)", OP_LINEAR, 154, 768, 320, 0, 0},
        {"linear 128x5120 -> 1280 (feed-forward out, 8x8)", OP_LINEAR, 128, 5120, 1280, 0, 0},
        {"linear 2x1280 -> 1280 (time embedding)", OP_LINEAR, 2, 1280, 1280, 0, 0},
        {"conv 2x2560x8x8 -> 1280, 1x1 (shortcut)", OP_CONV, 2, 2560, 8, 1280, 1},
        {"group norm 2x320x1024, 32 groups", OP_GN, 2, 320, 1024, 32, 0},
        {"attention 2x8 heads, 1024 tokens, 40", OP_ATT, 2, 8, 1024, 40, 0},
        {"attention 1x2 heads, 300 tokens, 40", OP_ATT, 1, 2, 300, 40, 0},
        {"attention 1 head, 300 tokens, 512 (VAE)", OP_ATT, 1, 1, 300, 512, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const op_case *c = &cases[i];
        size_t nx = 0, nout = 0, nx2 = 0;
        wt w = {0}, b = {0};
        switch (c->op) {
        case OP_LINEAR:
            nx = (size_t)c->a * c->b; nout = (size_t)c->a * c->c;
            w = weight(2, c->c, c->b, 0, 0, 0.05f); b = weight(1, c->c, 0, 0, 0, 0.1f);
            break;
        case OP_CONV:
            nx = (size_t)c->a * c->b * c->c * c->c; nout = (size_t)c->a * c->d * c->c * c->c;
            w = weight(4, c->d, c->b, c->e, c->e, 0.02f); b = weight(1, c->d, 0, 0, 0, 0.1f);
            break;
        case OP_GN:
            nx = nout = (size_t)c->a * c->b * c->c;
            w = weight(1, c->b, 0, 0, 0, 1.0f); b = weight(1, c->b, 0, 0, 0, 0.5f);
            break;
        case OP_ATT:
            nx = nout = (size_t)c->a * c->c * c->b * c->d; nx2 = 2 * nx;
            w = weight(1, 1, 0, 0, 0, 1.0f); b = weight(1, 1, 0, 0, 0, 1.0f);
            break;
        }
        float *x = rand_vec(nx, 1.0f), *x2 = nx2 ? rand_vec(nx2, 1.0f) : NULL;
        float *ref = malloc(nout * sizeof(float)), *got = malloc(nout * sizeof(float));
        run(c, x, x2, &w, &b, ref, 1, 0);
        CHECK(ldm_backend_status(be) == LDM_OK, "%s: %s", c->what, ldm_last_error());
        static const int threads[] = {2, 3, 5};
        for (int nested = 0; nested < 2; nested++)
            for (int t = nested ? 0 : -1; t < 3; t++) {
                int n = t < 0 ? 1 : threads[t];
                if (!nested && n == 1) continue;
                run(c, x, x2, &w, &b, got, n, nested);
                size_t diff = 0;
                for (size_t k = 0; k < nout; k++) diff += memcmp(&got[k], &ref[k], 4) != 0;
                CHECK(diff == 0, "%s: %d threads%s: %zu of %zu values differ from 1 thread", c->what, n,
                      nested ? " (in a region of one thread)" : "", diff, nout);
            }
        /* the products: the same bits from the AVX2 and the portable kernels (the same sum
         * order, fused multiply-adds everywhere), so images do not depend on the CPU's
         * vector width either.  Attention's two products go through the same kernels, and
         * its softmax sums each query's column in order (no sum across lanes). */
        if (c->op == OP_LINEAR || c->op == OP_CONV || c->op == OP_ATT) {
            static const char *const names[] = {"", "portable", "AVX2"};
            for (int isa = 2; isa >= 1; isa--) {
                double flops = c->op == OP_LINEAR ? 2.0 * c->a * c->b * c->c
                               : c->op == OP_ATT  ? 4.0 * c->a * c->b * c->c * c->c * c->d
                                                  : 2.0 * c->a * c->d * c->c * c->c * c->b * c->e * c->e;
                if (isa == 1 && flops > 3e8) continue; /* the portable kernel is slow */
                ldm_gemm_force_isa(isa);
                run(c, x, x2, &w, &b, got, 2, 0);
                ldm_gemm_force_isa(0);
                size_t diff = 0;
                for (size_t k = 0; k < nout; k++) diff += memcmp(&got[k], &ref[k], 4) != 0;
                CHECK(diff == 0, "%s: the %s kernel: %zu of %zu values differ from the %s one", c->what,
                      names[isa], diff, nout, ldm_gemm_fp32_isa());
            }
        }
        free(x); free(x2); free(ref); free(got); free(w.h); free(b.h);
    }
    omp_set_num_threads(1);
    ldm_backend_free(be);
    TEST_END();
}
