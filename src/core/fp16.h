/* fp16.h - IEEE half <-> float conversion in bulk.
 *
 * Rounding float -> half is round-to-nearest-even; values beyond the half range
 * become ±Inf and NaN stays NaN (quiet).  Half -> float is exact.
 */
#ifndef LDM_FP16_H
#define LDM_FP16_H

#include <stddef.h>
#include <stdint.h>

#define LDM_F16_MAX 65504.0f

/* One value: half -> float (exact), float -> half (round to nearest even; overflow
 * gives ±Inf). */
float ldm_f16_to_f32(uint16_t h);
uint16_t ldm_f32_to_f16(float f);

/* dst[i] = float(src[i]) for i < n.  Branch-free, so the compiler vectorises it. */
void ldm_f16_to_f32_row(float *dst, const uint16_t *src, size_t n);
/* dst[i] = half(src[i]), round to nearest even. */
void ldm_f32_to_f16_row(uint16_t *dst, const float *src, size_t n);
/* bfloat16 -> float is exact (the top 16 bits of a float). */
static inline float ldm_bf16_to_f32(uint16_t b) {
    union { uint32_t u; float f; } v = { (uint32_t)b << 16 };
    return v.f;
}

#endif
