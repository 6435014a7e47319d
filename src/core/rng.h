/* rng.h - PyTorch's CPU random generator, so that `--seed S` draws the same initial
 * latents as diffusers with torch.Generator("cpu").manual_seed(S).
 *
 * torch.randn(shape, generator=g) on a CPU float32 tensor of n elements:
 *   n >= 16: n uniforms (24-bit floats) from MT19937, then Box–Muller in float over
 *            blocks of 16 (first 8 = radii source, last 8 = angles); when n % 16 != 0
 *            the last 16 values are redrawn and recomputed.  PyTorch x86 builds use
 *            the AVX2 kernel, whose log and sincos are the Cephes single-precision
 *            polynomials; we evaluate the same polynomials in scalar float, so the
 *            results are bit-identical to PyTorch's AVX2 path.
 *   n <  16: one double normal per element (53-bit uniforms, libm log/sin/cos); every
 *            second sample comes from a cache kept in the generator, across calls.
 * Seeds are uint64 but, as in PyTorch, MT19937 is seeded with the low 32 bits.
 */
#ifndef LDM_RNG_H
#define LDM_RNG_H

#include <stddef.h>
#include <stdint.h>

#define LDM_MT_N 624

typedef struct ldm_rng {
    uint64_t seed;
    uint32_t state[LDM_MT_N];
    int next;                 /* index of the next state word to temper */
    int left;                 /* words left before the state is regenerated (+1) */
    int has_cached_normal;    /* PyTorch's next_double_normal_sample */
    double cached_normal;
} ldm_rng;

void ldm_rng_seed(ldm_rng *rng, uint64_t seed);
uint32_t ldm_rng_u32(ldm_rng *rng);                     /* one MT19937 output */
void ldm_rng_randn(ldm_rng *rng, float *out, size_t n); /* == torch.randn(n, generator=g) */

#endif
