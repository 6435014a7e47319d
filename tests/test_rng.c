/* test_rng.c - ldm_rng_randn against torch.randn(generator=torch.Generator("cpu").manual_seed(S)).
 *
 * Reference tensors: tests/fixtures/expected/rng.safetensors (written by tests/gen_fixtures.py
 * with torch 1.13).  Our float path reproduces PyTorch's AVX2 kernel bit for bit, so we check
 * exact bits as well as the looser bound |diff| <= 1e-6 * max(1, |x|).
 */
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"
#include "format/safetensors.h"
#include "test.h"

#define RNG_FIXTURE "tests/fixtures/expected/rng.safetensors"

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Compare n values; returns the number outside the bound and counts bit differences. */
static void compare(const char *what, const float *got, const float *ref, size_t n) {
    size_t outside = 0, bitdiff = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        double bound = 1e-6 * fmax(1.0, fabs(ref[i]));
        if (d > bound) outside++;
        if (f2u(got[i]) != f2u(ref[i])) bitdiff++;
        if (d > worst) worst = d;
    }
    CHECK(outside == 0, "%s: %zu of %zu values beyond 1e-6*max(1,|x|), worst %g", what, outside, n, worst);
    CHECK(bitdiff == 0, "%s: %zu of %zu values differ in bits, worst %g", what, bitdiff, n, worst);
}

static void check_fixture_seed(ldm_safetensors *st, uint64_t seed, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "seed%llu_n%zu", (unsigned long long)seed, n);
    const ldm_st_tensor *t = ldm_st_find(st, name);
    CHECK(t != NULL, "%s missing from " RNG_FIXTURE, name);
    if (!t) return;
    CHECK(t->numel == (int64_t)n, "%s: %lld values, expected %zu", name, (long long)t->numel, n);
    float *ref = ldm_st_to_f32(t);
    float *got = ldm_xmalloc(n * sizeof(float));
    ldm_rng rng;
    ldm_rng_seed(&rng, seed);
    ldm_rng_randn(&rng, got, n);
    compare(name, got, ref, n);
    free(got);
    free(ref);
}

static void test_fixture(void) {
    ldm_safetensors *st = ldm_st_open(RNG_FIXTURE);
    CHECK(st != NULL, "open: %s", ldm_last_error());
    if (!st) return;
    check_fixture_seed(st, 0, 1);
    check_fixture_seed(st, 42, 7);
    check_fixture_seed(st, 42, 15);
    check_fixture_seed(st, 42, 16);
    check_fixture_seed(st, 42, 17);
    check_fixture_seed(st, 1, 100);
    check_fixture_seed(st, 123456789, 1000);
    check_fixture_seed(st, UINT64_MAX, 16);

    /* (1,4,8,8) twice from one generator: the second draw continues the stream */
    const ldm_st_tensor *t1 = ldm_st_find(st, "seed42_shape_1x4x8x8");
    const ldm_st_tensor *t2 = ldm_st_find(st, "seed42_second_1x4x8x8");
    CHECK(t1 && t2, "seed42_shape_1x4x8x8 / seed42_second_1x4x8x8 missing");
    if (t1 && t2) {
        float *r1 = ldm_st_to_f32(t1), *r2 = ldm_st_to_f32(t2);
        float got[256];
        ldm_rng rng;
        ldm_rng_seed(&rng, 42);
        ldm_rng_randn(&rng, got, 256);
        compare("seed42_shape_1x4x8x8", got, r1, 256);
        ldm_rng_randn(&rng, got, 256);
        compare("seed42_second_1x4x8x8", got, r2, 256);
        free(r1);
        free(r2);
    }
    ldm_st_close(st);
}

/* Values printed by torch 1.13 (float32 bit patterns). */
static void test_embedded(void) {
    ldm_rng rng;
    float v[16], w[1];

    /* Small draws use the double path; the second Box–Muller sample is cached in the
     * generator and survives a >=16 draw in between. */
    ldm_rng_seed(&rng, 5);
    ldm_rng_randn(&rng, w, 1);
    CHECK(f2u(w[0]) == 0xbef93b54u, "seed 5 first randn(1): %.9g", w[0]);
    ldm_rng_randn(&rng, v, 16);
    CHECK(f2u(v[0]) == 0x40013e2bu && f2u(v[15]) == 0xbf1ed4d7u, "seed 5 randn(16): %.9g %.9g", v[0], v[15]);
    ldm_rng_randn(&rng, w, 1);
    CHECK(f2u(w[0]) == 0xbf1a940du, "seed 5 cached sample: %.9g", w[0]);
    ldm_rng_randn(&rng, v, 3);
    CHECK(f2u(v[0]) == 0xbf0ecb8du && f2u(v[1]) == 0x3f30d2f2u && f2u(v[2]) == 0x3e63cc2fu,
          "seed 5 randn(3): %.9g %.9g %.9g", v[0], v[1], v[2]);

    /* Re-seeding drops the cache; only the low 32 bits of the seed count. */
    float a[3], b[3];
    ldm_rng_seed(&rng, 42);
    ldm_rng_randn(&rng, a, 3);
    ldm_rng_seed(&rng, (1ull << 32) + 42);
    ldm_rng_randn(&rng, b, 3);
    CHECK(memcmp(a, b, sizeof a) == 0, "seed 2^32+42 differs from seed 42");
    CHECK(fabsf(a[0] - 0.336690366f) < 1e-7f, "seed 42 randn(3)[0] = %.9g", a[0]);

    /* A typical latent: (1,4,64,64), seed 7. */
    size_t n = 4 * 64 * 64;
    float *x = ldm_xmalloc(n * sizeof(float));
    ldm_rng_seed(&rng, 7);
    ldm_rng_randn(&rng, x, n);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += x[i];
    CHECK(f2u(x[0]) == 0xbf51f456u && f2u(x[n - 1]) == 0xbe80c5dfu, "seed 7 latent ends: %.9g %.9g", x[0], x[n - 1]);
    CHECK(fabs(sum - 85.15984359715367) < 1e-9, "seed 7 latent sum %.17g", sum);
    free(x);

    /* n = 0 draws nothing and leaves the stream where it was. */
    ldm_rng_seed(&rng, 42);
    ldm_rng_randn(&rng, NULL, 0);
    ldm_rng_randn(&rng, b, 3);
    CHECK(memcmp(a, b, sizeof a) == 0, "randn(0) advanced the generator");
}

int main(void) {
    test_fixture();
    test_embedded();
    TEST_END();
}
