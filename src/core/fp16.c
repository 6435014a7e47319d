/* fp16.c - IEEE 754 binary16 <-> binary32 conversion (round to nearest even).
 *
 * The weights in a bundle are fp16; the CPU backend widens them row by row with
 * ldm_f16_to_f32_row, and ldmpack narrows fp32/bf16 sources with ldm_f32_to_f16.
 * Both are exact bit manipulations, no lookup table and no dependence on the
 * compiler's _Float16 support.
 */
#include "core/fp16.h"

#include <string.h>

static inline float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Half -> float: shift exponent and mantissa into place, rebias the exponent,
 * then fix up Inf/NaN (exponent all ones) and subnormals (exponent zero; these are
 * renormalised by a float subtraction, which is exact). */
static inline float h2f(uint16_t h) {
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;     /* exponent + mantissa */
    uint32_t exp = o & 0x0f800000u;                 /* exponent bits, shifted */
    o += (uint32_t)(127 - 15) << 23;                /* rebias */
    if (exp == 0x0f800000u) {
        o += (uint32_t)(128 - 16) << 23;            /* Inf/NaN: exponent to 255 */
    } else if (exp == 0) {
        o += 1u << 23;                              /* subnormal: renormalise */
        o = f32_to_bits(bits_to_f32(o) - bits_to_f32(113u << 23));
    }
    return bits_to_f32(o | ((uint32_t)(h & 0x8000u) << 16));
}

float ldm_f16_to_f32(uint16_t h) { return h2f(h); }

uint16_t ldm_f32_to_f16(float f) {
    uint32_t x = f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {                        /* Inf or NaN */
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x1ffu);   /* quiet NaN */
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00u;   /* >= 65520 rounds to Inf */
    if (ax < 0x38800000u) {                         /* below 2^-14: half subnormal */
        uint32_t e = ax >> 23;
        if (e < 102) return sign;                   /* < 2^-25: rounds to zero */
        uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                   /* 14..24 */
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return sign | (uint16_t)r;                  /* may carry into the smallest normal */
    }
    uint32_t h = (ax - 0x38000000u) >> 13;          /* rebias 127 -> 15 */
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;   /* carry may bump exponent */
    return sign | (uint16_t)h;
}

void ldm_f16_to_f32_row(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = h2f(src[i]);
}

void ldm_f32_to_f16_row(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ldm_f32_to_f16(src[i]);
}
