/* gpu_fullsize.c - full-size numerics of the CUDA backend against the CPU backend, on a
 * bundle of real SD-1.x shapes (on the GPU machine: ldmpack --random-weights bench/sd15).
 * Not part of `make test` (it needs a GPU and a 2 GB bundle); scripts/gpu-check.sh runs it.
 *
 *   gpu_fullsize BUNDLE [LATENT]      LATENT: latent size, default 64 (512x512 images)
 *   gpu_fullsize --compare A.png B.png
 *                                     prints "MAX MEAN": the largest and the mean absolute
 *                                     difference of the 8-bit values (exit 2 if unreadable)
 *
 * 1. One UNet step (batch 2 as with guidance, t = 500, random latents and context, the
 *    same inputs on both backends): relative L2 and max abs of CUDA against the CPU, and
 *    the NaN/Inf count of each. Bound: relative L2 <= 1e-2, no NaN or Inf.
 * 2. A VAE decode at LATENT x 8 pixels of random latents (N(0,1) / scaling factor, as at
 *    the end of sampling) on CUDA: every value finite (fp16 overflows there unless the
 *    backend keeps the large activations in fp32), and against the CPU decode the same
 *    1e-2 bound.
 * Prints one line per check and "N passed, N failed". Exit status 0 when all passed.
 * LDM_TEST_CPU_AS_GPU=1 runs the CPU backend on both sides (to check this program here).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/ops.h"
#include "core/common.h"
#include "format/bundle.h"
#include "format/png_io.h"
#include "model/model.h"
#include "test.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Deterministic N(0,1) (Box-Muller on a 64-bit LCG). */
static uint64_t lcg = 0x9E3779B97F4A7C15ull;
static float randn(void) {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((lcg >> 11) + 1.0) / 9007199254740993.0;
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (lcg >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void compare(const char *what, const float *gpu, const float *cpu, size_t n) {
    double num = 0, den = 0, maxabs = 0;
    size_t bad_g = 0, bad_c = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(gpu[i])) { bad_g++; continue; }
        if (!isfinite(cpu[i])) { bad_c++; continue; }
        double d = (double)gpu[i] - cpu[i];
        num += d * d;
        den += (double)cpu[i] * cpu[i];
        if (fabs(d) > maxabs) maxabs = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("%s: rel L2 %.3g, max abs %.3g, NaN/Inf cuda %zu, cpu %zu (%zu values)\n", what, rel, maxabs,
           bad_g, bad_c, n);
    CHECK(bad_g == 0 && bad_c == 0, "%s: NaN/Inf: cuda %zu, cpu %zu", what, bad_g, bad_c);
    CHECK(rel <= 1e-2, "%s: rel L2 %.3g > 1e-2", what, rel);
}

typedef struct {
    ldm_backend *be;
    ldm_unet *unet;
    ldm_vae *vae;
} side;

static int open_side(side *s, const ldm_bundle *b, const char *name) {
    s->be = ldm_backend_new(name, NULL);
    CHECK(s->be != NULL, "%s backend: %s", name, ldm_last_error());
    if (!s->be) return -1;
    s->unet = ldm_unet_load(b, s->be);
    CHECK(s->unet != NULL, "%s: unet: %s", name, ldm_last_error());
    s->vae = ldm_vae_load(b, s->be);
    CHECK(s->vae != NULL, "%s: vae: %s", name, ldm_last_error());
    return s->unet && s->vae ? 0 : -1;
}

static void close_side(side *s) {
    ldm_unet_free(s->unet);
    ldm_vae_free(s->vae);
    ldm_backend_free(s->be);
}

static int unet_step(side *s, const float *x, const float *ctx, int B, int L, int T, float *out, double *sec) {
    ldm_arena a;
    size_t bytes = ldm_unet_arena_bytes(s->unet, B, L, L, T);
    if (!bytes || ldm_arena_init(&a, s->be, bytes)) return -1;
    double t0 = now_s();
    int rc = ldm_unet_forward(s->unet, &a, x, 500.0f, ctx, B, L, L, T, out);
    *sec = now_s() - t0;
    ldm_arena_free(&a);
    return rc;
}

static int vae_decode(side *s, const float *z, int L, float *img, double *sec) {
    ldm_arena a;
    size_t bytes = ldm_vae_arena_bytes(s->vae, 1, L, L);
    if (!bytes || ldm_arena_init(&a, s->be, bytes)) return -1;
    double t0 = now_s();
    int rc = ldm_vae_decode(s->vae, &a, z, 1, L, L, img);
    *sec = now_s() - t0;
    ldm_arena_free(&a);
    return rc;
}

static int compare_png(const char *pa, const char *pb) {
    uint8_t *a = NULL, *b = NULL;
    int aw, ah, bw, bh;
    if (ldm_png_read(pa, &a, &aw, &ah, NULL, NULL) || ldm_png_read(pb, &b, &bw, &bh, NULL, NULL)) {
        fprintf(stderr, "gpu_fullsize: %s\n", ldm_last_error());
        free(a);
        free(b);
        return 2;
    }
    if (aw != bw || ah != bh) {
        fprintf(stderr, "gpu_fullsize: %s is %dx%d, %s is %dx%d\n", pa, aw, ah, pb, bw, bh);
        free(a);
        free(b);
        return 2;
    }
    const size_t n = (size_t)aw * ah * 3;
    int mx = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > mx) mx = d;
        sum += d;
    }
    printf("%d %.3f\n", mx, n ? sum / n : 0.0);
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--compare")) return compare_png(argv[2], argv[3]);
    if (argc < 2) {
        fprintf(stderr, "usage: gpu_fullsize BUNDLE [LATENT]\n");
        return 2;
    }
    const int L = argc > 2 ? atoi(argv[2]) : 64;
    if (L < 8 || L > 256 || L % 8) {
        fprintf(stderr, "gpu_fullsize: latent size %s: expected a multiple of 8 from 8 to 256\n", argv[2]);
        return 2;
    }
    ldm_bundle *b = ldm_bundle_open(argv[1]);
    CHECK(b != NULL, "%s: %s", argv[1], ldm_last_error());
    if (!b) TEST_END();
    side cpu = {0}, gpu = {0};
    /* LDM_TEST_CPU_AS_GPU=1: the CPU backend stands in for CUDA (checks this program) */
    const char *as = getenv("LDM_TEST_CPU_AS_GPU");
    const char *gname = as && !strcmp(as, "1") ? "cpu" : "cuda";
    if (open_side(&gpu, b, gname) || open_side(&cpu, b, "cpu")) {
        close_side(&gpu);
        close_side(&cpu);
        ldm_bundle_close(b);
        TEST_END();
    }
    const int B = 2, C = ldm_unet_in_channels(cpu.unet), T = 77, D = ldm_unet_context_dim(cpu.unet);
    const size_t nx = (size_t)B * C * L * L, nc = (size_t)B * T * D;
    float *x = ldm_xmalloc(nx * sizeof *x), *ctx = ldm_xmalloc(nc * sizeof *ctx);
    float *og = ldm_xmalloc(nx * sizeof *og), *oc = ldm_xmalloc(nx * sizeof *oc);
    for (size_t i = 0; i < nx; i++) x[i] = randn();
    for (size_t i = 0; i < nc; i++) ctx[i] = randn();
    double sg = 0, sc = 0, sg2 = 0;
    int rg = unet_step(&gpu, x, ctx, B, L, T, og, &sg);
    CHECK(rg == 0, "cuda unet step: %s", ldm_last_error());
    int rg2 = rg == 0 ? unet_step(&gpu, x, ctx, B, L, T, og, &sg2) : -1; /* warm: plans, weights */
    CHECK(rg2 == 0, "cuda unet step (again): %s", ldm_last_error());
    int rc = unet_step(&cpu, x, ctx, B, L, T, oc, &sc);
    CHECK(rc == 0, "cpu unet step: %s", ldm_last_error());
    printf("unet step %dx%d latents, batch %d: cuda %.1f ms (first %.1f ms), cpu %.0f ms\n", L, L, B,
           sg2 * 1e3, sg * 1e3, sc * 1e3);
    if (rg == 0 && rg2 == 0 && rc == 0) compare("unet step", og, oc, nx);

    const int Z = ldm_vae_latent_channels(cpu.vae), f = ldm_vae_downscale(cpu.vae);
    const float sf = ldm_vae_scaling_factor(cpu.vae);
    const size_t nz = (size_t)Z * L * L, ni = (size_t)3 * (L * f) * (L * f);
    float *z = ldm_xmalloc(nz * sizeof *z), *ig = ldm_xmalloc(ni * sizeof *ig), *ic = ldm_xmalloc(ni * sizeof *ic);
    for (size_t i = 0; i < nz; i++) z[i] = randn() / sf;
    double vg = 0, vc = 0;
    rg = vae_decode(&gpu, z, L, ig, &vg);
    CHECK(rg == 0, "cuda vae decode: %s", ldm_last_error());
    rg2 = rg == 0 ? vae_decode(&gpu, z, L, ig, &vg) : -1;
    CHECK(rg2 == 0, "cuda vae decode (again): %s", ldm_last_error());
    rc = vae_decode(&cpu, z, L, ic, &vc);
    CHECK(rc == 0, "cpu vae decode: %s", ldm_last_error());
    printf("vae decode %dx%d: cuda %.1f ms, cpu %.0f ms\n", L * f, L * f, vg * 1e3, vc * 1e3);
    if (rg == 0 && rg2 == 0 && rc == 0) compare("vae decode", ig, ic, ni);

    free(x); free(ctx); free(og); free(oc); free(z); free(ig); free(ic);
    close_side(&gpu);
    close_side(&cpu);
    ldm_bundle_close(b);
    TEST_END();
}
