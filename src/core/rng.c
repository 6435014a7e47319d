/* rng.c - MT19937 and torch.randn for float32 on the CPU (see rng.h).
 *
 * Bit-exactness with PyTorch's AVX2 Box–Muller: its Cephes log/sincos are written
 * as separate multiply and add intrinsics, but the compiler that built PyTorch fused
 * each multiply into the add that consumes it (FMA).  We write those fusions out with
 * fmaf() at the same places and let the compiler fuse nothing else: the Makefile
 * builds with -std=c11, where GCC keeps -ffp-contract=off; clang is told so by the
 * pragma below.  Checked bit for bit against torch 1.13 on 1.2 M values.
 */
#include "core/rng.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void ldm_rng_seed(ldm_rng *rng, uint64_t seed) {
    memset(rng, 0, sizeof *rng);
    rng->seed = seed;
    rng->state[0] = (uint32_t)(seed & 0xffffffffu); /* PyTorch keeps only the low 32 bits */
    for (int j = 1; j < LDM_MT_N; j++) {
        uint32_t prev = rng->state[j - 1];
        rng->state[j] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)j;
    }
    rng->left = 1;
    rng->next = 0;
}

static uint32_t twist(uint32_t u, uint32_t v) {
    uint32_t mix = (u & MT_UPPER) | (v & MT_LOWER);
    return (mix >> 1) ^ ((v & 1u) ? MT_MATRIX_A : 0u);
}

static void regenerate(ldm_rng *rng) {
    uint32_t *s = rng->state;
    int k = 0;
    for (; k < LDM_MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ twist(s[k], s[k + 1]);
    for (; k < LDM_MT_N - 1; k++) s[k] = s[k + MT_M - LDM_MT_N] ^ twist(s[k], s[k + 1]);
    s[LDM_MT_N - 1] = s[MT_M - 1] ^ twist(s[LDM_MT_N - 1], s[0]);
    rng->left = LDM_MT_N;
    rng->next = 0;
}

uint32_t ldm_rng_u32(ldm_rng *rng) {
    if (--rng->left == 0) regenerate(rng);
    uint32_t y = rng->state[rng->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0,1): 24 random bits / 2^24, in [0, 1). */
static float uniform_f32(ldm_rng *rng) {
    return (float)(ldm_rng_u32(rng) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0,1): 53 bits of random64() = (first << 32) | second. */
static double uniform_f64(ldm_rng *rng) {
    uint64_t hi = ldm_rng_u32(rng);
    uint64_t lo = ldm_rng_u32(rng);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* ---- Cephes single-precision log and sincos, rounded as PyTorch's AVX2 build ----- */

static float bits_to_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Natural log for x > 0 (PyTorch only calls it with x in [2^-24, 1]). */
static float cephes_logf(float x) {
    const float one = 1.0f;
    if (x < bits_to_f(0x00800000u)) x = bits_to_f(0x00800000u); /* no denormals */
    uint32_t bits = f_to_bits(x);
    int32_t exponent = (int32_t)(bits >> 23) - 0x7f;
    x = bits_to_f((bits & ~0x7f800000u) | f_to_bits(0.5f)); /* mantissa in [0.5, 1) */
    float e = (float)exponent + one;
    float tmp = 0.0f;
    if (x < (float)0.707106781186547524) { tmp = x; e = e - one; }
    x = x - one;
    x = x + tmp;
    float z = x * x;
    float y = (float)7.0376836292E-2;
    y = fmaf(y, x, (float)-1.1514610310E-1);
    y = fmaf(y, x, (float)1.1676998740E-1);
    y = fmaf(y, x, (float)-1.2420140846E-1);
    y = fmaf(y, x, (float)1.4249322787E-1);
    y = fmaf(y, x, (float)-1.6668057665E-1);
    y = fmaf(y, x, (float)2.0000714765E-1);
    y = fmaf(y, x, (float)-2.4999993993E-1);
    y = fmaf(y, x, (float)3.3333331174E-1);
    y = y * x;
    y = fmaf(y, z, e * (float)-2.12194440e-4);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, (float)0.693359375, x);
    return x;
}

/* sin and cos of x >= 0 (x < 8192 for full precision). */
static void cephes_sincosf(float x, float *s, float *c) {
    const float one = 1.0f;
    uint32_t sign_sin = 0;
    if (x < 0) { x = -x; sign_sin = 0x80000000u; }
    float y = x * (float)1.27323954473516; /* 4/pi */
    int32_t j = (int32_t)y;
    j = (j + 1) & ~1;
    y = (float)j;
    if (j & 4) sign_sin ^= 0x80000000u;
    uint32_t sign_cos = ((~(j - 2)) & 4) ? 0x80000000u : 0u;
    int poly_is_cos = (j & 2) == 0; /* then sin uses the sine polynomial, cos the cosine one */

    /* extended precision modular arithmetic: x - y*pi/4 in three parts */
    x = fmaf(y, (float)-0.78515625, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);

    float z = x * x;
    float yc = (float)2.443315711809948E-005;
    yc = fmaf(yc, z, (float)-1.388731625493765E-003);
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + one;

    float ys = (float)-1.9515295891E-4;
    ys = fmaf(ys, z, (float)8.3321608736E-3);
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* the AVX code selects with masks and adds +0.0f, which turns -0 into +0 */
    float sv = (poly_is_cos ? ys : yc) + 0.0f;
    float cv = (poly_is_cos ? yc : ys) + 0.0f;
    *s = bits_to_f(f_to_bits(sv) ^ sign_sin);
    *c = bits_to_f(f_to_bits(cv) ^ sign_cos);
}

/* Box–Muller over 16 uniforms in place: data[0..7] give radii, data[8..15] angles. */
static void normal_fill_16(float *data) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - data[j]; /* (0, 1] for the log */
        float u2 = data[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float theta = two_pi * u2;
        float s, c;
        cephes_sincosf(theta, &s, &c);
        data[j] = radius * c + 0.0f; /* fma(n, std=1, mean=0) */
        data[j + 8] = radius * s + 0.0f;
    }
}

/* at::normal_distribution<double> with the generator's cached second sample. */
static double normal_f64(ldm_rng *rng) {
    if (rng->has_cached_normal) {
        rng->has_cached_normal = 0;
        return rng->cached_normal;
    }
    double u1 = uniform_f64(rng);
    double u2 = uniform_f64(rng);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    rng->cached_normal = r * sin(theta);
    rng->has_cached_normal = 1;
    return r * cos(theta);
}

void ldm_rng_randn(ldm_rng *rng, float *out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_f64(rng);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(rng);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16; /* redraw and recompute the last 16 values */
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(rng);
        normal_fill_16(tail);
    }
}
