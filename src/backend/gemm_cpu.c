/* gemm_cpu.c - the CPU backend's matrix product; see gemm_cpu.h.
 *
 * Structure (the BLIS/GotoBLAS scheme, on two cores):
 *   tasks   the weight operand's dimension is cut into tasks, shared by the threads
 *           dynamically (a thread that loses its core does not hold the others up);
 *   k       K is cut into blocks of KC (a function of K alone); for each block the task
 *           packs its slice of the weight once, converting fp16 to fp32 on the way;
 *   chunks  the other operand is packed chunk by chunk (MC rows or NC columns) into the
 *           micro-kernel's panels, straight from the activations (im2col is done here,
 *           a chunk at a time, never materialised);
 *   kernel  an MR x NR tile of C is summed in registers over the k block, then stored
 *           (first block) or added to C.
 * Panels: A is packed as [panel][k][MR] (MR rows of A side by side for each k), B as
 * [panel][k][NR].  Rows beyond the matrix are zero, so edge tiles run the same kernel
 * and store only their valid part.
 */
#include "backend/gemm_cpu.h"
#include "core/fp16.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define GEMM_X86 1
#endif

#define MR LDM_PANEL_MR
#define NR LDM_PANEL_NR
#define KC_MAX 256

static int kc_limit = KC_MAX, mc_limit = 0, nc_limit = 0, forced_isa = 0;
void ldm_gemm_set_blocking(int kc, int mc, int nc) {
    kc_limit = kc > 0 ? kc : KC_MAX;
    mc_limit = mc > 0 ? mc : 0;
    nc_limit = nc > 0 ? nc : 0;
}
void ldm_gemm_force_isa(int isa) { forced_isa = isa; }

/* ------------------------------------------------------------------------------
 * CPU features (once; called before any parallel region). */

enum { ISA_PORTABLE = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };
static int isa_fp32 = -1;

static void detect(void) {
    if (isa_fp32 >= 0) return;
    int isa = ISA_PORTABLE;
#ifdef GEMM_X86
    /* CPUID for the instructions, XCR0 for the OS saving their registers */
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && ((c >> 27) & 1) /* OSXSAVE */) {
        int fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        int ymm_os = (lo & 6) == 6, zmm_os = (lo & 0xe6) == 0xe6;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
            int avx2 = (b >> 5) & 1, f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
            if (avx && avx2 && fma && f16c && ymm_os) isa = ISA_AVX2;
            if (isa == ISA_AVX2 && f && bw && vl && zmm_os) isa = ISA_AVX512;
        }
    }
#endif
    isa_fp32 = isa;
}
static int cur_isa(void) {
    detect();
    if (forced_isa > 0 && forced_isa < isa_fp32) return forced_isa;
    return isa_fp32;
}

const char *ldm_gemm_fp32_isa(void) {
    switch (cur_isa()) {
    case ISA_AVX512: return "avx512";
    case ISA_AVX2: return "avx2";
    default: return "portable";
    }
}

/* ------------------------------------------------------------------------------
 * Micro-kernels: C[MR x NR] (ldc) = or += Ap[kc][MR] · Bp[kc][NR].
 * Every element is acc = fma(a[k], b[k], acc) for k = 0..kc-1 from acc = 0, then
 * C = acc or C = C + acc: the same bits in each kernel. */

static void ukr_portable(int kc, const float *Ap, const float *Bp, float *C, size_t ldc, int add) {
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float acc = 0.0f;
            for (int k = 0; k < kc; k++) acc = fmaf(Ap[(size_t)k * MR + i], Bp[(size_t)k * NR + j], acc);
            C[(size_t)i * ldc + j] = add ? C[(size_t)i * ldc + j] + acc : acc;
        }
}

#ifdef GEMM_X86
/* AVX2: the 14x32 tile as four 6x16 sub-tiles (12 ymm accumulators, 2 for B, 1
 * broadcast) and one 2x32 (8 accumulators: enough independent chains to hide the FMA
 * latency).  The loops are unrolled so that the accumulators stay in registers. */
#define AVX2_SUB(ROWS, NV)                                                                   \
    static __attribute__((target("avx2,fma"))) void ukr_avx2_##ROWS##x##NV(                  \
        int kc, const float *Ap, const float *Bp, float *C, size_t ldc, int add) {           \
        __m256 c[ROWS][NV];                                                                  \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                               \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) c[i][v] = _mm256_setzero_ps(); \
        for (int k = 0; k < kc; k++) {                                                       \
            __m256 b[NV];                                                                    \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) b[v] = _mm256_loadu_ps(Bp + 8 * v); \
            _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) {                         \
                __m256 a = _mm256_broadcast_ss(Ap + i);                                      \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                         \
                    c[i][v] = _mm256_fmadd_ps(a, b[v], c[i][v]);                             \
            }                                                                                \
            Ap += MR;                                                                        \
            Bp += NR;                                                                        \
        }                                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) {                             \
            float *cr = C + (size_t)i * ldc;                                                 \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                           \
                if (add) c[i][v] = _mm256_add_ps(_mm256_loadu_ps(cr + 8 * v), c[i][v]);      \
                _mm256_storeu_ps(cr + 8 * v, c[i][v]);                                       \
            }                                                                                \
        }                                                                                    \
    }
AVX2_SUB(6, 2)
AVX2_SUB(2, 4)
static void ukr_avx2(int kc, const float *Ap, const float *Bp, float *C, size_t ldc, int add) {
    for (int j = 0; j < NR; j += 16) {
        ukr_avx2_6x2(kc, Ap, Bp + j, C + j, ldc, add);
        ukr_avx2_6x2(kc, Ap + 6, Bp + j, C + 6 * ldc + j, ldc, add);
    }
    ukr_avx2_2x4(kc, Ap + 12, Bp, C + 12 * ldc, ldc, add);
}

/* C (ldc) = or += a 14x32 tile held in c0 (columns 0-15) and c1 (16-31). */
static __attribute__((target("avx512f"), always_inline)) inline void store_14x32(float *C, size_t ldc,
                                                                                __m512 *c0, __m512 *c1,
                                                                                int add) {
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        float *cr = C + (size_t)i * ldc;
        if (add) {
            c0[i] = _mm512_add_ps(_mm512_loadu_ps(cr), c0[i]);
            c1[i] = _mm512_add_ps(_mm512_loadu_ps(cr + 16), c1[i]);
        }
        _mm512_storeu_ps(cr, c0[i]);
        _mm512_storeu_ps(cr + 16, c1[i]);
    }
}

/* AVX-512: 14 x 32 = 28 zmm accumulators, 2 for B, 1 broadcast. */
static __attribute__((target("avx512f"))) void ukr_avx512(int kc, const float *Ap, const float *Bp,
                                                          float *C, size_t ldc, int add) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(Ap[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
        Ap += MR;
        Bp += NR;
    }
    store_14x32(C, ldc, c0, c1, add);
}
#endif

typedef void (*ukr_fn)(int, const float *, const float *, float *, size_t, int);
static ukr_fn pick_ukr(int isa) {
#ifdef GEMM_X86
    if (isa == ISA_AVX512) return ukr_avx512;
    if (isa == ISA_AVX2) return ukr_avx2;
#endif
    (void)isa;
    return ukr_portable;
}

/* ------------------------------------------------------------------------------
 * Packing.  pack_t: dst[(ip*kc + k)*P + i] = src[(r0 + ip*P + i)*ld + k0 + k] for
 * rows < nrows (else 0): P rows of a row-major matrix side by side, per k. */

static inline float ld_el(const void *src, int f16, size_t idx) {
    return f16 ? ldm_f16_to_f32(((const uint16_t *)src)[idx]) : ((const float *)src)[idx];
}

static void pack_t_portable(float *dst, int P, const void *src, int f16, size_t ld, int nrows,
                            int k0, int kc) {
    int panels = (nrows + P - 1) / P;
    for (int ip = 0; ip < panels; ip++)
        for (int i = 0; i < P; i++) {
            int r = ip * P + i;
            float *d = dst + (size_t)ip * kc * P + i;
            if (r >= nrows) {
                for (int k = 0; k < kc; k++) d[(size_t)k * P] = 0.0f;
                continue;
            }
            size_t base = (size_t)r * ld + (size_t)k0;
            for (int k = 0; k < kc; k++) d[(size_t)k * P] = ld_el(src, f16, base + k);
        }
}

#ifdef GEMM_X86
/* In-register transpose of 16 rows of 16 floats: r[i][j] -> r[j][i]. */
static __attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* u[4g + c], lane L: column 4L + c of rows 4g..4g+3 */
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[0 + c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}

/* The same packing, 16 rows x 16 k at a time through registers (f16 a constant in each
 * copy; rows beyond the matrix are masked loads of nothing, so the loop has no branch). */
static __attribute__((target("avx512f,avx512bw,avx512vl,f16c"), always_inline)) inline void
pack_t_avx512_body(float *dst, int P, const void *src, const int f16, size_t ld, int nrows, int k0,
                   int kc) {
    int panels = (nrows + P - 1) / P;
    const size_t esz = f16 ? 2 : 4;
    for (int ip = 0; ip < panels; ip++) {
        float *dp = dst + (size_t)ip * kc * P;
        for (int i0 = 0; i0 < P; i0 += 16) {
            int ni = P - i0 < 16 ? P - i0 : 16;          /* lanes stored (14 or 16) */
            int rbase = ip * P + i0;
            int valid = nrows - rbase;                   /* rows that exist */
            if (valid > ni) valid = ni;
            __mmask16 smask = (__mmask16)((1u << ni) - 1);
            int nxt = nrows - (rbase + P); /* rows of the next panel to prefetch */
            nxt = nxt < 0 ? 0 : nxt > ni ? ni : nxt;
            const char *rows[16];
            for (int i = 0; i < 16; i++) /* a missing row points at row 0 (never read) */
                rows[i] = (const char *)src + (size_t)(i < valid ? rbase + i : rbase) * ld * esz;
            for (int k = 0; k < kc; k += 16) {
                int nk = kc - k < 16 ? kc - k : 16;
                __mmask16 kmask = (__mmask16)((1u << nk) - 1);
                size_t koff = (size_t)(k0 + k) * esz;
                /* the same k of the next panel's rows, fetched while this one is
                 * transposed: one row's run per block is a few cache lines, too short
                 * for the hardware prefetcher, and a weight comes from DRAM */
                for (int i = 0; i < nxt; i++)
                    _mm_prefetch(rows[0] + ((size_t)(P + i) * ld) * esz + koff, _MM_HINT_T0);
                __m512 r[16];
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++) {
                    __mmask16 m = i < valid ? kmask : 0;
                    if (f16)
                        r[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, rows[i] + koff));
                    else
                        r[i] = _mm512_maskz_loadu_ps(m, rows[i] + koff);
                }
                transpose16(r);
                if (nk == 16) {
#pragma GCC unroll 16
                    for (int kk = 0; kk < 16; kk++)
                        _mm512_mask_storeu_ps(dp + (size_t)(k + kk) * P + i0, smask, r[kk]);
                } else {
                    for (int kk = 0; kk < nk; kk++)
                        _mm512_mask_storeu_ps(dp + (size_t)(k + kk) * P + i0, smask, r[kk]);
                }
            }
        }
    }
}
static __attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) void pack_t_avx512(
    float *dst, int P, const void *src, int f16, size_t ld, int nrows, int k0, int kc) {
    if (f16) pack_t_avx512_body(dst, P, src, 1, ld, nrows, k0, kc);
    else pack_t_avx512_body(dst, P, src, 0, ld, nrows, k0, kc);
}
#endif

#ifdef GEMM_X86
/* AVX2 + F16C: the same packing, 8 rows x 8 k at a time through registers; a k tail under
 * 8 goes element by element, missing rows are zero. */
static __attribute__((target("avx2,f16c"), always_inline)) inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 2; g++) {
        u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

static __attribute__((target("avx2,f16c"), always_inline)) inline void
pack_t_avx2_body(float *dst, int P, const void *src, const int f16, size_t ld, int nrows, int k0,
                 int kc) {
    int panels = (nrows + P - 1) / P;
    const size_t esz = f16 ? 2 : 4;
    const int kfull = kc & ~7;
    for (int ip = 0; ip < panels; ip++) {
        float *dp = dst + (size_t)ip * kc * P;
        for (int i0 = 0; i0 < P; i0 += 8) {
            int ni = P - i0 < 8 ? P - i0 : 8;            /* lanes stored (6 or 8) */
            int rbase = ip * P + i0;
            int valid = nrows - rbase;                   /* rows that exist */
            if (valid > ni) valid = ni;
            if (valid < 0) valid = 0;
            int nxt = nrows - (rbase + P);
            nxt = nxt < 0 ? 0 : nxt > ni ? ni : nxt;
            const char *rows[8];
            for (int i = 0; i < 8; i++) /* a missing row points at a real one (never used) */
                rows[i] = (const char *)src + (size_t)(i < valid ? rbase + i : 0) * ld * esz;
            __m256i smask = _mm256_cmpgt_epi32(_mm256_set1_epi32(ni), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            for (int k = 0; k < kfull; k += 8) {
                size_t koff = (size_t)(k0 + k) * esz;
                for (int i = 0; i < nxt; i++)
                    _mm_prefetch(rows[0] + ((size_t)(P + i) * ld) * esz + koff, _MM_HINT_T0);
                __m256 r[8];
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) {
                    if (f16)
                        r[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rows[i] + koff)));
                    else
                        r[i] = _mm256_loadu_ps((const float *)(rows[i] + koff));
                    if (i >= valid) r[i] = _mm256_setzero_ps();
                }
                transpose8(r);
                if (ni == 8) {
#pragma GCC unroll 8
                    for (int kk = 0; kk < 8; kk++) _mm256_storeu_ps(dp + (size_t)(k + kk) * P + i0, r[kk]);
                } else {
#pragma GCC unroll 8
                    for (int kk = 0; kk < 8; kk++)
                        _mm256_maskstore_ps(dp + (size_t)(k + kk) * P + i0, smask, r[kk]);
                }
            }
            for (int k = kfull; k < kc; k++)
                for (int i = 0; i < ni; i++)
                    dp[(size_t)k * P + i0 + i] =
                        i < valid ? ld_el(src, f16, (size_t)(rbase + i) * ld + (size_t)(k0 + k)) : 0.0f;
        }
    }
}
static __attribute__((target("avx2,f16c"))) void pack_t_avx2(float *dst, int P, const void *src,
                                                            int f16, size_t ld, int nrows, int k0,
                                                            int kc) {
    if (f16) pack_t_avx2_body(dst, P, src, 1, ld, nrows, k0, kc);
    else pack_t_avx2_body(dst, P, src, 0, ld, nrows, k0, kc);
}
#endif

static void pack_t(int isa, float *dst, int P, const void *src, int f16, size_t ld, int nrows,
                   int k0, int kc) {
#ifdef GEMM_X86
    if (isa == ISA_AVX512) { pack_t_avx512(dst, P, src, f16, ld, nrows, k0, kc); return; }
    if (isa == ISA_AVX2) { pack_t_avx2(dst, P, src, f16, ld, nrows, k0, kc); return; }
#endif
    (void)isa;
    pack_t_portable(dst, P, src, f16, ld, nrows, k0, kc);
}

/* The B packers fill columns [doff, doff + ncols) of a chunk's panels (the columns of
 * one batch item; a chunk may hold several items when an image is smaller than a panel):
 * column d of the chunk is dst[((d / NR)*kc + k)*NR + d % NR]. */

/* From rows [K][N]: column d = doff + j holds src[(k0+k)*ld + n0 + j]. */
static void pack_kn(float *dst, int doff, const float *src, size_t ld, int k0, int kc, int n0,
                    int ncols) {
    for (int k = 0; k < kc; k++) {
        const float *srow = src + (size_t)(k0 + k) * ld + n0;
        for (int j = 0; j < ncols;) {
            int d = doff + j, run = NR - d % NR;
            if (run > ncols - j) run = ncols - j;
            memcpy(dst + ((size_t)(d / NR) * kc + k) * NR + d % NR, srow + j, (size_t)run * sizeof(float));
            j += run;
        }
    }
}

/* The implicit im2col of x[Cin][H][W]: row k = (c*ks + ky)*ks + kx, column p = oy*Wo + ox
 * holds x[c][oy*stride - pad + ky][ox*stride - pad + kx] (0 outside). */
static void pack_im2col(float *dst, int doff, const gemm_b *b, const float *x, int k0, int kc,
                        int n0, int ncols) {
    const int ks = b->ksize, st = b->stride, pad = b->pad, H = b->H, W = b->W, Wo = b->Wo;
    const int oy0 = n0 / Wo, ox0 = n0 % Wo;
    int c = k0 / (ks * ks), ky = (k0 / ks) % ks, kx = k0 % ks;
    for (int k = 0; k < kc; k++) {
        const float *xc = x + (size_t)c * H * W;
        int oy = oy0, ox = ox0;
        for (int j = 0; j < ncols;) {
            int d = doff + j;
            int run = Wo - ox;                          /* the rest of this output row, */
            if (run > ncols - j) run = ncols - j;
            if (run > NR - d % NR) run = NR - d % NR;   /* of this panel */
            float *dr = dst + ((size_t)(d / NR) * kc + k) * NR + d % NR;
            int iy = oy * st - pad + ky;
            if (iy < 0 || iy >= H) {
                memset(dr, 0, (size_t)run * sizeof(float));
            } else {
                const float *srow = xc + (size_t)iy * W;
                int ix = ox * st - pad + kx;
                if (st == 1) {
                    int lo = ix < 0 ? -ix : 0, hi = W - ix;
                    if (lo > run) lo = run;
                    if (hi > run) hi = run;
                    if (hi < lo) hi = lo;
                    for (int i = 0; i < lo; i++) dr[i] = 0.0f;
                    memcpy(dr + lo, srow + ix + lo, (size_t)(hi - lo) * sizeof(float));
                    for (int i = hi; i < run; i++) dr[i] = 0.0f;
                } else {
                    for (int i = 0; i < run; i++, ix += st)
                        dr[i] = (ix >= 0 && ix < W) ? srow[ix] : 0.0f;
                }
            }
            j += run;
            ox += run;
            if (ox == Wo) { ox = 0; oy++; }
        }
        if (++kx == ks) { kx = 0; if (++ky == ks) { ky = 0; c++; } }
    }
}

/* Zero the columns [from, to) of the last panel (to = a multiple of NR). */
static void pack_zero_tail(float *dst, int kc, int from, int to) {
    if (from >= to) return;
    int jp = from / NR, j0 = from % NR;
    for (int k = 0; k < kc; k++)
        memset(dst + ((size_t)jp * kc + k) * NR + j0, 0, (size_t)(to - from) * sizeof(float));
}

/* ------------------------------------------------------------------------------
 * bfloat16.  Both operands are rounded to bf16 (nearest even; the same bits on every
 * CPU) and the products accumulate in fp32.  Panels, 32 x 32 elements per k step of 32:
 *   A  [panel of 32 rows][k step][2 tiles of 16 rows][16 rows][32 k]          (AMX A tiles)
 *   B  [panel of 32 cols][k step][2 tiles of 16 cols][16 k pairs][16 cols][2] (VNNI B tiles)
 * AMX multiplies them as 16x16 tiles; AVX512_BF16 (no AMX: AMD Zen 4/5) reads the same
 * panels with vdpbf16ps.  A k block is a multiple of 32 (zeros pad the last). */

#define BT 32   /* rows of an A panel, columns of a B panel, k per step */

enum { BF_NONE = 0, BF_AVX512 = 1, BF_AMX = 2 };
static int bf_isa = -1, forced_bf = 0, has_avx512bf16 = 0;
void ldm_gemm_force_bf16(int mode) { forced_bf = mode; }

static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#ifdef GEMM_X86
#include <sys/syscall.h>
#include <unistd.h>
static void detect_bf16(void) {
    if (bf_isa >= 0) return;
    detect();
    bf_isa = BF_NONE;
    if (isa_fp32 != ISA_AVX512) return;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return;
    int avx512bf16 = (a >> 5) & 1;
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    int amx = ((d >> 22) & 1) && ((d >> 24) & 1);   /* AMX-BF16, AMX-TILE */
    if (amx) { /* the OS must save the tile state (XCR0 bits 17, 18) and let us use it */
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        if (((lo >> 17) & 3) != 3) amx = 0;
#ifdef SYS_arch_prctl
        else if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0)
            amx = 0;
#else
        else amx = 0;
#endif
    }
    has_avx512bf16 = avx512bf16;
    bf_isa = amx ? BF_AMX : avx512bf16 ? BF_AVX512 : BF_NONE;
}
#else
static void detect_bf16(void) { if (bf_isa < 0) { detect(); bf_isa = BF_NONE; } }
#endif

static int cur_bf(void) {
    detect_bf16();
    if (forced_bf > 0) return forced_bf - 1 < bf_isa ? forced_bf - 1 : bf_isa;
    return bf_isa;
}

const char *ldm_gemm_bf16_isa(void) {
    switch (cur_bf()) {
    case BF_AMX: return "amx";
    case BF_AVX512: return "avx512bf16";
    default: return NULL;
    }
}

#ifdef GEMM_X86
/* The two conversions of a 16-value run with AVX-512: the same bits as bf16_round. */
static __attribute__((target("avx512f,avx512bw"))) inline __m512i bf16_lo(__m512 x) {
    /* round to nearest even, result in the low 16 bits of each 32-bit lane; a NaN stays a
     * (quiet) NaN, as in bf16_round */
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}
/* d[0..31] = bf16 of src[0..n-1] (fp16 or fp32), zeros after. */
static __attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) void bf16_row32_avx512(
    uint16_t *d, const void *src, int f16, int n) {
    int n0 = n < 16 ? n : 16, n1 = n - 16 > 0 ? n - 16 : 0;
    __mmask16 m0 = (__mmask16)((1u << n0) - 1), m1 = (__mmask16)((1u << n1) - 1);
    __m512 x0, x1;
    if (f16) {
        const uint16_t *h = src;
        x0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, h));
        x1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, h + 16));
    } else {
        const float *f = src;
        x0 = _mm512_maskz_loadu_ps(m0, f);
        x1 = _mm512_maskz_loadu_ps(m1, f + 16);
    }
    _mm256_storeu_si256((__m256i *)d, _mm512_cvtepi32_epi16(bf16_lo(x0)));
    _mm256_storeu_si256((__m256i *)(d + 16), _mm512_cvtepi32_epi16(bf16_lo(x1)));
}
/* d[2c] = bf16(r0[c]), d[2c+1] = bf16(r1[c]), c < 16; a NULL row is zeros. */
static __attribute__((target("avx512f,avx512bw"))) void vnni16_avx512(uint16_t *d, const float *r0,
                                                                     const float *r1) {
    __m512 a = r0 ? _mm512_loadu_ps(r0) : _mm512_setzero_ps();
    __m512 b = r1 ? _mm512_loadu_ps(r1) : _mm512_setzero_ps();
    _mm512_storeu_si512(d, _mm512_or_si512(bf16_lo(a), _mm512_slli_epi32(bf16_lo(b), 16)));
}
#endif

static void bf16_row32(uint16_t *d, const void *src, int f16, int n) {
#ifdef GEMM_X86
    if (isa_fp32 == ISA_AVX512) { bf16_row32_avx512(d, src, f16, n); return; }
#endif
    for (int i = 0; i < n; i++)
        d[i] = bf16_round(f16 ? ldm_f16_to_f32(((const uint16_t *)src)[i]) : ((const float *)src)[i]);
    for (int i = n; i < BT; i++) d[i] = 0;
}
static void vnni16(uint16_t *d, const float *r0, const float *r1) {
#ifdef GEMM_X86
    if (isa_fp32 == ISA_AVX512) { vnni16_avx512(d, r0, r1); return; }
#endif
    for (int c = 0; c < 16; c++) {
        d[2 * c] = r0 ? bf16_round(r0[c]) : 0;
        d[2 * c + 1] = r1 ? bf16_round(r1[c]) : 0;
    }
}

/* A panels from rows (fp16 or fp32): rows < nrows, k < kc of the block (else 0). */
static void pack_a_bf(uint16_t *dst, const void *src, int f16, size_t ld, int nrows, int k0, int kc) {
    int panels = (nrows + BT - 1) / BT, nks = (kc + BT - 1) / BT;
    const size_t esize = f16 ? sizeof(uint16_t) : sizeof(float);
    for (int ip = 0; ip < panels; ip++)
        for (int s = 0; s < nks; s++)
            for (int r = 0; r < BT; r++) {
                uint16_t *d = dst + (((size_t)ip * nks + s) * 2 + r / 16) * 512 + (size_t)(r % 16) * 32;
                int row = ip * BT + r, kb = s * BT, n = kc - kb < BT ? kc - kb : BT;
                if (row >= nrows) { memset(d, 0, BT * sizeof *d); continue; }
                bf16_row32(d, (const char *)src + ((size_t)row * ld + (size_t)(k0 + kb)) * esize, f16, n);
            }
}

/* B panels (VNNI) from the fp32 panels [jp][k][32] of pack_b_block. */
static void vnni_from_panels(uint16_t *dst, const float *P, int ncols, int kc) {
    int panels = (ncols + BT - 1) / BT, nks = (kc + BT - 1) / BT;
    for (int jp = 0; jp < panels; jp++)
        for (int s = 0; s < nks; s++)
            for (int t = 0; t < 2; t++)
                for (int r = 0; r < 16; r++) {
                    int k = s * BT + 2 * r;
                    const float *r0 = P + ((size_t)jp * kc + k) * NR + 16 * t;
                    vnni16(dst + (((size_t)jp * nks + s) * 2 + t) * 512 + r * 32, k < kc ? r0 : NULL,
                           k + 1 < kc ? r0 + NR : NULL);
                }
}

#ifdef GEMM_X86
/* AMX: C tile 32x32 = 2x2 tiles of 16x16 fp32 (tmm0-3), A tiles tmm4-5, B tiles tmm6-7. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) amx_cfg;
/* A static object: GCC 12's _tile_loadconfig does not tell the compiler that it reads
 * memory, so the stores that fill a local configuration are dropped as dead. */
static const amx_cfg amx_tiles = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};
static __attribute__((target("amx-tile"))) void amx_config(void) { _tile_loadconfig(&amx_tiles); }
static __attribute__((target("amx-tile"))) void amx_release(void) { _tile_release(); }
/* C (ldc floats) = [C +] A . B over nks k steps: 32x32 floats, the accumulators loaded
 * from C when load_c (the sum continues in the tiles: no round trip through memory). */
static __attribute__((target("amx-tile,amx-bf16"))) void ukr_amx(int nks, const uint16_t *A,
                                                                 const uint16_t *B, float *C,
                                                                 size_t ldc, int load_c) {
    const size_t stride = ldc * sizeof(float);
    if (load_c) {
        _tile_loadd(0, C, stride);
        _tile_loadd(1, C + 16, stride);
        _tile_loadd(2, C + 16 * ldc, stride);
        _tile_loadd(3, C + 16 * ldc + 16, stride);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int s = 0; s < nks; s++) {
        _tile_loadd(4, A, 64);
        _tile_loadd(6, B, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, B + 512, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, A + 512, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        A += 1024;
        B += 1024;
    }
    _tile_stored(0, C, stride);
    _tile_stored(1, C + 16, stride);
    _tile_stored(2, C + 16 * ldc, stride);
    _tile_stored(3, C + 16 * ldc + 16, stride);
}
/* AVX512_BF16 on the same panels: 8 rows x 32 columns at a time. */
static __attribute__((target("avx512f,avx512bf16"))) void ukr_dpbf16(int nks, const uint16_t *A,
                                                                     const uint16_t *B, float *C,
                                                                     size_t ldc, int load_c) {
    for (int i0 = 0; i0 < BT; i0 += 8) {
        __m512 c0[8], c1[8];
        for (int i = 0; i < 8; i++) {
            float *cr = C + (size_t)(i0 + i) * ldc;
            c0[i] = load_c ? _mm512_loadu_ps(cr) : _mm512_setzero_ps();
            c1[i] = load_c ? _mm512_loadu_ps(cr + 16) : _mm512_setzero_ps();
        }
        const uint16_t *a = A + (size_t)(i0 / 16) * 512 + (size_t)(i0 % 16) * 32, *b = B;
        for (int s = 0; s < nks; s++, a += 1024, b += 1024)
            for (int r = 0; r < 16; r++) {
                __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + r * 32);
                __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 512 + r * 32);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) {
                    uint32_t pair;
                    memcpy(&pair, a + i * 32 + 2 * r, 4);
                    __m512bh av = (__m512bh)_mm512_set1_epi32((int)pair);
                    c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
                    c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
                }
            }
        for (int i = 0; i < 8; i++) {
            float *cr = C + (size_t)(i0 + i) * ldc;
            _mm512_storeu_ps(cr, c0[i]);
            _mm512_storeu_ps(cr + 16, c1[i]);
        }
    }
}
/* T (32x32) added to (or stored in) C rows of nj floats. */
static __attribute__((target("avx512f"))) void tile_to_c(float *C, size_t ldc, const float *T,
                                                        int mi, int nj, int add) {
    __mmask16 m0 = (__mmask16)(nj >= 16 ? 0xffff : (1u << nj) - 1);
    __mmask16 m1 = (__mmask16)(nj >= 32 ? 0xffff : nj > 16 ? (1u << (nj - 16)) - 1 : 0);
    for (int i = 0; i < mi; i++) {
        float *cr = C + (size_t)i * ldc;
        __m512 t0 = _mm512_load_ps(T + i * BT), t1 = _mm512_load_ps(T + i * BT + 16);
        if (add) {
            t0 = _mm512_add_ps(t0, _mm512_maskz_loadu_ps(m0, cr));
            t1 = _mm512_add_ps(t1, _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, t0);
        _mm512_mask_storeu_ps(cr + 16, m1, t1);
    }
}
#endif

size_t ldm_gemm_bf16_prep_elems(int rows, int K) {
    return (size_t)((rows + BT - 1) / BT) * BT * (size_t)((K + BT - 1) / BT) * BT;
}

void ldm_gemm_bf16_prepare(uint16_t *dst, const uint16_t *w, int rows, int K, int as_b) {
    detect();
    if (!as_b) { /* A panels for k0 = 0, kc = K: [panel][all k steps][1024] */
        pack_a_bf(dst, w, 1, (size_t)K, rows, 0, K);
        return;
    }
    /* B panels, one panel of 32 rows (= columns of B) at a time through fp32 */
    int nks = (K + BT - 1) / BT;
    float *tmp = aligned_alloc(64, ((size_t)NR * K * sizeof(float) + 63) & ~(size_t)63);
    if (!tmp) { /* no memory: the portable path, element by element */
        for (int jp = 0; jp * BT < rows; jp++)
            for (int s = 0; s < nks; s++)
                for (int t = 0; t < 2; t++)
                    for (int r = 0; r < 16; r++)
                        for (int c = 0; c < 16; c++)
                            for (int e = 0; e < 2; e++) {
                                int n = jp * BT + 16 * t + c, k = s * BT + 2 * r + e;
                                dst[(((size_t)jp * nks + s) * 2 + t) * 512 + r * 32 + c * 2 + e] =
                                    n < rows && k < K ? bf16_round(ldm_f16_to_f32(w[(size_t)n * K + k])) : 0;
                            }
        return;
    }
    for (int jp = 0; jp * BT < rows; jp++) {
        int nr = rows - jp * BT < BT ? rows - jp * BT : BT;
        pack_t(isa_fp32, tmp, NR, w + (size_t)jp * BT * K, 1, (size_t)K, nr, 0, K);
        vnni_from_panels(dst + (size_t)jp * nks * 1024, tmp, nr, K);
    }
    free(tmp);
}

/* ------------------------------------------------------------------------------
 * The driver. */

/* The k block: a function of K only (never of the threads): K split into equal blocks
 * of at most kc_limit (bf16: 512), rounded up to 16 (bf16: 32). */
static int kc_for(int K, int bf) {
    int lim = bf ? (kc_limit == KC_MAX ? 512 : (kc_limit + 31) & ~31) : kc_limit;
    int round = bf ? 31 : 15;
    int nb = (K + lim - 1) / lim;
    int kc = (K + nb - 1) / nb;
    kc = (kc + round) & ~round;
    return kc < K ? kc : K;
}

/* How one product runs: the instruction sets and panel sizes. */
typedef struct gctx {
    const gemm_job *j;
    int isa;      /* fp32 kernels and packing */
    int bf;       /* BF_NONE: fp32 products; else bf16 with AMX or AVX512_BF16 */
    ukr_fn ukr;
    int amr;      /* rows of an A panel: MR, or BT in bf16 */
} gctx;

/* Floats of a packed A block of `rows` rows, a B block of `cols` columns (bf16: plus the
 * fp32 panels it is made from), k block kc. */
static size_t a_floats(const gctx *g, int rows, int kc) {
    if (!g->bf) return (size_t)((rows + MR - 1) / MR) * MR * kc;
    return (size_t)((rows + BT - 1) / BT) * BT * ((kc + BT - 1) / BT * BT) / 2;
}
static size_t b_floats(const gctx *g, int cols, int kc) {
    size_t f = (size_t)((cols + NR - 1) / NR) * NR * kc;
    if (!g->bf) return f;
    return f + (size_t)((cols + BT - 1) / BT) * BT * ((kc + BT - 1) / BT * BT) / 2 + 16;
}

static void pack_a_block(const gctx *g, float *Ap, int m0, int mrows, int k0, int kc) {
    const gemm_a *a = &g->j->a;
    int f16 = a->kind == GEMM_A_ROWS_F16;
    const void *base = f16 ? (const void *)((const uint16_t *)a->p + (size_t)m0 * a->ld)
                           : (const void *)((const float *)a->p + (size_t)m0 * a->ld);
    if (g->bf)
        pack_a_bf((uint16_t *)Ap, base, f16, a->ld, mrows, k0, kc);
    else
        pack_t(g->isa, Ap, MR, base, f16, a->ld, mrows, k0, kc);
}

/* B block of the columns [j0, j0+ncols) of the whole column space (batch items side by
 * side, each N wide), k rows [k0, k0+kc).  bf16: the VNNI panels start after the fp32
 * ones (b_floats); *out points at what the kernels read. */
/* Two k rows of B (buf: [panel][rows][32] fp32, rows 0..2; missing rows are zero) into the
 * VNNI panels at k step kk/32, pair (kk%32)/2. */
static void vnni_rows(uint16_t *V, const float *buf, int panels, int nks, int kk, int rows) {
    int s = kk / BT, r = (kk % BT) / 2;
    for (int jp = 0; jp < panels; jp++)
        for (int t = 0; t < 2; t++) {
            const float *r0 = buf + ((size_t)jp * rows) * NR + 16 * t;
            vnni16(V + (((size_t)jp * nks + s) * 2 + t) * 512 + (size_t)r * 32, rows > 0 ? r0 : NULL,
                   rows > 1 ? r0 + NR : NULL);
        }
}

/* bf16: B's columns [j0, j0+ncols) straight into VNNI panels, two k rows at a time through
 * a buffer in L1 (no fp32 copy of the block). */
static void pack_b_vnni(const gctx *g, uint16_t *V, int j0, int ncols, int k0, int kc) {
    const gemm_job *j = g->j;
    const gemm_b *b = &j->b;
    const int N = j->N, panels = (ncols + NR - 1) / NR, nks = (kc + BT - 1) / BT;
    float buf[16 * 2 * NR] __attribute__((aligned(64)));
    for (int kk = 0; kk < nks * BT; kk += 2) {
        int rows = kc - kk < 0 ? 0 : kc - kk > 2 ? 2 : kc - kk;
        if (rows) {
            for (int d = 0; d < ncols;) {
                int item = (j0 + d) / N, n0 = (j0 + d) % N, nn = N - n0;
                if (nn > ncols - d) nn = ncols - d;
                const float *src = (const float *)b->p + (size_t)item * j->b_batch_stride;
                if (b->kind == GEMM_B_KN_F32)
                    pack_kn(buf, d, src, b->ld, k0 + kk, rows, n0, nn);
                else
                    pack_im2col(buf, d, b, src, k0 + kk, rows, n0, nn);
                d += nn;
            }
            pack_zero_tail(buf, rows, ncols, panels * NR);
        }
        vnni_rows(V, buf, panels, nks, kk, rows);
    }
}

static void pack_b_block(const gctx *g, float *Bp, int j0, int ncols, int k0, int kc,
                         const void **out) {
    const gemm_job *j = g->j;
    const gemm_b *b = &j->b;
    if (g->bf && b->kind != GEMM_B_NK_F16 && (ncols + NR - 1) / NR <= 16) {
        uint16_t *V = (uint16_t *)(Bp + (size_t)((ncols + NR - 1) / NR) * NR * kc);
        pack_b_vnni(g, V, j0, ncols, k0, kc);
        *out = V;
        return;
    }
    if (b->kind == GEMM_B_NK_F16) { /* a linear layer's weight (batch 1) */
        pack_t(g->isa, Bp, NR, (const uint16_t *)b->p + (size_t)j0 * b->ld, 1, b->ld, ncols, k0, kc);
    } else {
        const int N = j->N;
        for (int d = 0; d < ncols;) {
            int item = (j0 + d) / N, n0 = (j0 + d) % N, nn = N - n0;
            if (nn > ncols - d) nn = ncols - d;
            const float *src = (const float *)b->p + (size_t)item * j->b_batch_stride;
            if (b->kind == GEMM_B_KN_F32)
                pack_kn(Bp, d, src, b->ld, k0, kc, n0, nn);
            else
                pack_im2col(Bp, d, b, src, k0, kc, n0, nn);
            d += nn;
        }
        int padded = (ncols + NR - 1) / NR * NR;
        pack_zero_tail(Bp, kc, ncols, padded);
    }
    if (!g->bf) { *out = Bp; return; }
    uint16_t *V = (uint16_t *)(Bp + (size_t)((ncols + NR - 1) / NR) * NR * kc);
    vnni_from_panels(V, Bp, ncols, kc);
    *out = V;
}

/* C at column jc of the column space, row m: items are N columns wide. */
static inline float *c_at(const gemm_job *j, int m, int jc) {
    int item = jc / j->N, n = jc % j->N;
    return j->c + (size_t)item * j->c_batch_stride + (size_t)m * j->ldc + n;
}

/* A tile T (mi x nj, row stride ldt) to C at row m, column jc of the column space, in
 * runs that stay inside one item (a tile across the images of a small convolution). */
static void tile_segments(const gemm_job *j, int m, int jc, int mi, int nj, const float *T,
                          int ldt, int add) {
    for (int jj = 0; jj < nj;) {
        int item = (jc + jj) / j->N, n = (jc + jj) % j->N, len = j->N - n;
        if (len > nj - jj) len = nj - jj;
        float *c0 = j->c + (size_t)item * j->c_batch_stride + (size_t)m * j->ldc + n;
        for (int i = 0; i < mi; i++) {
            float *cp = c0 + (size_t)i * j->ldc;
            const float *t = T + (size_t)i * ldt + jj;
            if (add) {
#pragma omp simd
                for (int q = 0; q < len; q++) cp[q] += t[q];
            }
            else memcpy(cp, t, (size_t)len * sizeof(float));
        }
        jj += len;
    }
}

/* C block rows [m0, m0+mrows) x columns [j0, j0+ncols) (= or += Ap · Bp). A tile inside
 * one item is written in place; one across items (or at an edge) through tmp. */
static void compute_block(const gctx *g, const void *Ap_, const void *Bp_, int m0, int mrows,
                          int j0, int ncols, int kc, int add, size_t a_stride, size_t b_stride) {
    const gemm_job *j = g->j;
    if (g->bf) {
#ifdef GEMM_X86
        /* a_stride, b_stride: elements from one 32-wide panel to the next (0: packed for
         * this block alone, nks*1024).  The B panel (kc/32 x 2 KiB) stays in L1 while the
         * A panels stream from L2. */
        float T[BT * BT] __attribute__((aligned(64)));
        int nks = (kc + BT - 1) / BT;
        if (!a_stride) a_stride = (size_t)nks * 1024;
        if (!b_stride) b_stride = (size_t)nks * 1024;
        const uint16_t *Ap = Ap_, *Bp = Bp_;
        for (int jp = 0; jp * BT < ncols; jp++) {
            int nj = ncols - jp * BT < BT ? ncols - jp * BT : BT;
            for (int ip = 0; ip * BT < mrows; ip++) {
                int mi = mrows - ip * BT < BT ? mrows - ip * BT : BT;
                const uint16_t *ap = Ap + (size_t)ip * a_stride, *bp = Bp + (size_t)jp * b_stride;
                int jc = j0 + jp * BT, m = m0 + ip * BT;
                if (mi == BT && nj == BT && jc / j->N == (jc + BT - 1) / j->N) {
                    /* a whole tile inside one item: the sum goes on in C itself */
                    float *cp = c_at(j, m, jc);
                    if (g->bf == BF_AMX) ukr_amx(nks, ap, bp, cp, j->ldc, add);
                    else ukr_dpbf16(nks, ap, bp, cp, j->ldc, add);
                    continue;
                }
                if (g->bf == BF_AMX) ukr_amx(nks, ap, bp, T, BT, 0);
                else ukr_dpbf16(nks, ap, bp, T, BT, 0);
                if (jc / j->N == (jc + nj - 1) / j->N) /* inside one item: rows at once */
                    tile_to_c(c_at(j, m, jc), j->ldc, T, mi, nj, add);
                else
                    tile_segments(j, m, jc, mi, nj, T, BT, add);
            }
        }
#endif
        return;
    }
    const float *Ap = Ap_, *Bp = Bp_;
    float tmp[MR * NR];
    /* A micro-panel (kc x MR, <= 14 KiB) stays in L1 while the B panels stream from L2 */
    for (int ip = 0; ip * MR < mrows; ip++) {
        int mi = mrows - ip * MR < MR ? mrows - ip * MR : MR;
        const float *ap = Ap + (size_t)ip * kc * MR;
        for (int jp = 0; jp * NR < ncols; jp++) {
            int nj = ncols - jp * NR < NR ? ncols - jp * NR : NR;
            const float *bp = Bp + (size_t)jp * kc * NR;
            int jc = j0 + jp * NR, m = m0 + ip * MR;
            if (mi == MR && nj == NR && jc / j->N == (jc + NR - 1) / j->N) {
                g->ukr(kc, ap, bp, c_at(j, m, jc), j->ldc, add);
                continue;
            }
            g->ukr(kc, ap, bp, tmp, NR, 0);
            tile_segments(j, m, jc, mi, nj, tmp, NR, add);
        }
    }
}

/* The bias (converted to fp32 once per call, bf[m] or bf[n]) added to C's block. */
static void add_bias(const gemm_job *j, const float *bf, float *C, int m0, int mrows, int n0,
                     int ncols) {
    for (int i = 0; i < mrows; i++) {
        float *row = C + (size_t)(m0 + i) * j->ldc + n0;
        if (j->bias_per_row) {
            float v = bf[m0 + i];
#pragma omp simd
            for (int n = 0; n < ncols; n++) row[n] += v;
        } else {
            const float *b = bf + n0;
#pragma omp simd
            for (int n = 0; n < ncols; n++) row[n] += b[n];
        }
    }
}

/* Split `units` panels into at most `want` contiguous ranges; range t is
 * [units*t/want, units*(t+1)/want). */
static int range_lo(int units, int tasks, int t) { return (int)((int64_t)units * t / tasks); }

int ldm_gemm(const gemm_job *j, int precision) {
    const int M = j->M, N = j->N, K = j->K;
    if (M <= 0 || N <= 0) return 0;
    gctx g = {.j = j, .isa = cur_isa(), .bf = precision == LDM_GEMM_BF16 ? cur_bf() : BF_NONE};
    /* Products with a dimension under 32 stay fp32 in bf16 mode: they are the models' first
     * and last layers (conv_in: K = 4*9; conv_out: 3 or 4 output channels; the VAE's 4x4
     * 1x1 convolutions), where rounding costs the most and the time is nothing; and a bf16
     * tile would be mostly padding. */
    const int batch = j->batch > 0 ? j->batch : 1;
    /* (a convolution's columns are those of all its images: the 4x4 layers of a batch of
     * two have 32) */
    if (g.bf && (M < BT || (j->weight_is_a ? N * batch : N) < BT || K < BT)) g.bf = BF_NONE;
    g.ukr = pick_ukr(g.isa);
    g.amr = g.bf ? BT : MR;
    float *bf = NULL; /* the bias in fp32 */
    if (j->bias) {
        int nb = j->bias_per_row ? M : N;
        bf = malloc((size_t)nb * sizeof *bf);
        if (!bf) return -1;
        for (int i = 0; i < nb; i++) bf[i] = ldm_f16_to_f32(j->bias[i]);
    }
    if (K <= 0) { /* empty sum: C = bias or 0 */
        for (int it = 0; it < batch; it++) {
            float *C = j->c + (size_t)it * j->c_batch_stride;
            for (int m = 0; m < M; m++) memset(C + (size_t)m * j->ldc, 0, (size_t)N * sizeof(float));
            if (bf) add_bias(j, bf, C, 0, M, 0, N);
        }
        free(bf);
        return 0;
    }
    const int kc_max = kc_for(K, g.bf);
    const int nested = omp_get_level() > 0;
    const int nth = nested ? 1 : omp_get_max_threads();
    /* Columns: the batch items side by side (a convolution's images), NT in all. */
    const int NT = j->weight_is_a ? N * batch : N;
    /* Tasks: a grid of weight ranges x ranges of the other dimension, about 4 per thread
     * (dynamically shared: a thread that loses its core does not hold the others up).
     * The weight's ranges hold about 8 panels where there are enough, so that each packed
     * chunk of the other operand is used by many rows. */
    const int wdim = j->weight_is_a ? M : N, wunit = j->weight_is_a ? g.amr : NR;
    const int odim = j->weight_is_a ? NT : M, ounit = j->weight_is_a ? NR : g.amr;
    const int wunits = (wdim + wunit - 1) / wunit, ounits = (odim + ounit - 1) / ounit;
    const int target = nth > 1 ? 4 * nth : 1;
    /* the other operand in chunks of 8 panels (fp32 with the weight as B: 16 panels) */
    int chunk = j->weight_is_a ? 8 * NR : (g.bf ? 8 : 16) * g.amr;
    int lim = j->weight_is_a ? nc_limit : mc_limit;
    if (lim > 0 && lim < chunk) chunk = (lim + ounit - 1) / ounit * ounit;
    /* When the other operand fits one chunk (small images, few tokens), it is packed once
     * for the whole K, shared by the tasks, instead of once per task. */
    const int shared = odim <= chunk && target > 1;
    int tw = 1, tn = 1;
    if (shared) {
        tw = wunits < target ? wunits : target;
    } else {
        /* Each task packs its weight range once per k block and each chunk of its other
         * range: over all tasks tn copies of the weight and tw of the other operand.  Take
         * the grid of about `target` tasks that packs least (a transposing pack counts
         * twice), with a task's weight block within 1 MiB (L2). */
        double wsize = (double)wdim * K, osize = (double)odim * K;
        double cw = 2.0, co = j->weight_is_a && j->b.kind != GEMM_B_NK_F16 ? 1.0 : 2.0;
        double best = -1;
        int tmax = wunits < target ? wunits : target;
        for (int a = 1; a <= tmax; a++) {
            int b = (target + a - 1) / a;
            if (b > ounits) b = ounits;
            double rows = (double)wdim / a;
            if (a < tmax && rows * kc_max * 4.0 > 1048576.0) continue;
            double cost = b * wsize * cw + a * osize * co;
            if (best < 0 || cost < best) { best = cost; tw = a; tn = b; }
        }
    }
    lim = j->weight_is_a ? mc_limit : nc_limit;
    if (lim > 0) {
        int per = (lim + wunit - 1) / wunit, need = (wunits + per - 1) / per;
        if (need > tw) tw = need;
    }
    /* bf16 with the weight prepared: nothing of it is packed per call; the tasks cut the
     * other operand only, so that each of its chunks is packed once */
    const int wready = g.bf && j->wprep;
    if (wready && !shared) {
        tw = 1;
        tn = ounits < target ? ounits : target;
    }
    const int tasks = tw * tn;
    const int nks_all = (K + BT - 1) / BT;
    const size_t wstride = wready ? (size_t)nks_all * 1024 : 0;
    int wrows = ((wunits + tw - 1) / tw + 1) * wunit;
    size_t wfloats = wready ? 0 : j->weight_is_a ? a_floats(&g, wrows, kc_max) : b_floats(&g, wrows, kc_max);
    size_t ofloats = j->weight_is_a ? b_floats(&g, chunk, kc_max) : a_floats(&g, chunk, kc_max);
    wfloats = (wfloats + 15) & ~(size_t)15;
    size_t per_thread = (wfloats + ofloats + 15) & ~(size_t)15;
    /* shared: the packed other operand for all of K (k block b at odim_pad * b * kc_max) */
    const int nkb = (K + kc_max - 1) / kc_max;
    size_t sblock = j->weight_is_a ? b_floats(&g, odim, kc_max) : a_floats(&g, odim, kc_max);
    sblock = (sblock + 15) & ~(size_t)15;
    size_t shared_floats = shared ? sblock * (size_t)nkb : 0;
    float *scratch = aligned_alloc(64, (per_thread * (size_t)nth + shared_floats) * sizeof(float));
    if (!scratch) { free(bf); return -1; }
    float *S = scratch + per_thread * (size_t)nth;
    const void **sptr = NULL;
    if (shared) {
        sptr = malloc((size_t)nkb * sizeof *sptr);
        if (!sptr) { free(scratch); free(bf); return -1; }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth) if (nth > 1 && nkb > 1 && 2.0 * M * NT * K >= 4e6)
        for (int kb = 0; kb < nkb; kb++) {
            int k0 = kb * kc_max, kc = K - k0 < kc_max ? K - k0 : kc_max;
            float *dst = S + sblock * (size_t)kb;
            if (j->weight_is_a)
                pack_b_block(&g, dst, 0, NT, k0, kc, &sptr[kb]);
            else {
                pack_a_block(&g, dst, 0, M, k0, kc);
                sptr[kb] = dst;
            }
        }
    }

    /* a small product runs on the calling thread: waking the others costs more */
    const int par = nth > 1 && tasks > 1 && 2.0 * M * NT * K >= 4e6;
    (void)par; /* unused when built without OpenMP (the fuzzers) */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth) if (par)
    for (int t = 0; t < tasks; t++) {
        float *W = scratch + per_thread * (size_t)omp_get_thread_num(), *O = W + wfloats;
        int ti = t / tn, tj = t % tn;
        int u0 = range_lo(wunits, tw, ti), u1 = range_lo(wunits, tw, ti + 1);
        int w0 = u0 * wunit, w1 = u1 * wunit < wdim ? u1 * wunit : wdim;
        int v0 = range_lo(ounits, tn, tj) * ounit, v1 = range_lo(ounits, tn, tj + 1) * ounit;
        if (v1 > odim) v1 = odim;
        if (w1 <= w0 || v1 <= v0) continue;
#ifdef GEMM_X86
        if (g.bf == BF_AMX) amx_config();
#endif
        for (int k0 = 0, kb = 0; k0 < K; k0 += kc_max, kb++) {
            int kc = K - k0 < kc_max ? K - k0 : kc_max, add = k0 > 0;
            const void *wp = W, *op = O;
            if (wready) /* panel w0/32, k step k0/32 of the prepared weight */
                wp = j->wprep + (size_t)(w0 / BT) * wstride + (size_t)(k0 / BT) * 1024;
            if (j->weight_is_a) {
                if (!wready) pack_a_block(&g, W, w0, w1 - w0, k0, kc);
                for (int j0 = v0; j0 < v1; j0 += chunk) {
                    int nn = v1 - j0 < chunk ? v1 - j0 : chunk;
                    if (shared) op = sptr[kb];
                    else pack_b_block(&g, O, j0, nn, k0, kc, &op);
                    compute_block(&g, wp, op, w0, w1 - w0, j0, nn, kc, add, wstride, 0);
                }
            } else {
                if (!wready) pack_b_block(&g, W, w0, w1 - w0, k0, kc, &wp);
                for (int m0 = v0; m0 < v1; m0 += chunk) {
                    int mm = v1 - m0 < chunk ? v1 - m0 : chunk;
                    if (shared) op = sptr[kb];
                    else pack_a_block(&g, O, m0, mm, k0, kc);
                    compute_block(&g, op, wp, m0, mm, w0, w1 - w0, kc, add, 0, wstride);
                }
            }
        }
#ifdef GEMM_X86
        if (g.bf == BF_AMX) amx_release();
#endif
        if (bf) {
            if (j->weight_is_a)
                for (int jc = v0; jc < v1;) { /* the columns of each item in [v0, v1) */
                    int it = jc / N, n0 = jc % N, nn = N - n0 < v1 - jc ? N - n0 : v1 - jc;
                    add_bias(j, bf, j->c + (size_t)it * j->c_batch_stride, w0, w1 - w0, n0, nn);
                    jc += nn;
                }
            else
                add_bias(j, bf, j->c, v0, v1 - v0, w0, w1 - w0);
        }
    }
    free(sptr);
    free(scratch);
    free(bf);
    return 0;
}


/* ------------------------------------------------------------------------------
 * Panel products for code already inside a parallel region (the attention blocks): the
 * caller packs each operand once and multiplies on its own thread.  The whole K is one
 * k block, summed in order with fused multiply-adds: the same bits with every kernel. */

size_t ldm_panel_a_floats(int M, int K) { return (size_t)((M + MR - 1) / MR) * MR * (size_t)K; }
size_t ldm_panel_b_floats(int N, int K) { return (size_t)((N + NR - 1) / NR) * NR * (size_t)K; }

/* P-wide panels [p][k][P] from src[k*ld + r] (r < rows, else 0): runs copied as they are. */
static void pack_runs(float *dst, int P, const float *src, size_t ld, int rows, int K) {
    int panels = (rows + P - 1) / P;
    for (int ip = 0; ip < panels; ip++) {
        int r0 = ip * P, n = rows - r0 < P ? rows - r0 : P;
        float *d = dst + (size_t)ip * K * P;
        for (int k = 0; k < K; k++, d += P) {
            memcpy(d, src + (size_t)k * ld + r0, (size_t)n * sizeof(float));
            for (int i = n; i < P; i++) d[i] = 0.0f;
        }
    }
}

void ldm_panel_pack_a(float *Ap, const float *src, size_t ld, int M, int K, int km) {
    if (km) pack_runs(Ap, MR, src, ld, M, K);
    else pack_t(cur_isa(), Ap, MR, src, 0, ld, M, 0, K);
}

void ldm_panel_pack_b(float *Bp, const float *src, size_t ld, int N, int K) {
    pack_t(cur_isa(), Bp, NR, src, 0, ld, N, 0, K);
}

/* The tiles of a panel product: fp32 panels (bf 0) or bf16 pair panels (bf 1); panel
 * strides in elements of the panels' type. */
static void panel_tiles(int bf, int M, int N, int K, const void *Ap, size_t a_pstride, const void *Bp,
                        size_t b_pstride, float *C, size_t ldc, int add);

void ldm_panel_gemm(int M, int N, int K, const float *Ap, size_t a_pstride, const float *Bp,
                    size_t b_pstride, float *C, size_t ldc, int add) {
    if (!a_pstride) a_pstride = (size_t)K * MR;
    if (!b_pstride) b_pstride = (size_t)K * NR;
    panel_tiles(0, M, N, K, Ap, a_pstride, Bp, b_pstride, C, ldc, add);
}
/* ------------------------------------------------------------------------------
 * bf16 panel products (attention in bf16 mode, on CPUs with AVX512_BF16): the fp32 panels
 * above with k taken in pairs, each element rounded to bf16 (nearest even):
 *   A  [panel][k pair][14 rows][2]     B  [panel][k pair][32 columns][2]
 * (an odd K ends with a zero), multiplied by a 14x32 kernel of vdpbf16ps: the fp32 kernel's
 * shape, two products per lane and instruction. */

int ldm_panel_bf16_available(void) {
    detect_bf16();
    return has_avx512bf16;
}
size_t ldm_panel_bf_a_elems(int M, int K) { return (size_t)((M + MR - 1) / MR) * MR * (size_t)((K + 1) & ~1); }
size_t ldm_panel_bf_b_elems(int N, int K) { return (size_t)((N + NR - 1) / NR) * NR * (size_t)((K + 1) & ~1); }

#ifdef GEMM_X86
/* vnni16_avx512 for a 14-row panel: d[2c] = bf16(r0[c]), d[2c+1] = bf16(r1[c]), c < 14. */
static __attribute__((target("avx512f,avx512bw"))) void vnni14_avx512(uint16_t *d, const float *r0,
                                                                     const float *r1) {
    __m512 a = _mm512_maskz_loadu_ps(0x3fff, r0);
    __m512 b = r1 ? _mm512_maskz_loadu_ps(0x3fff, r1) : _mm512_setzero_ps();
    _mm512_mask_storeu_epi32(d, 0x3fff, _mm512_or_si512(bf16_lo(a), _mm512_slli_epi32(bf16_lo(b), 16)));
}
#endif

/* P-wide fp32 panels (panel stride src_ps floats) to pair panels (stride dst_ps elements). */
static void pairs_from_panels(uint16_t *dst, size_t dst_ps, const float *src, size_t src_ps, int P,
                              int panels, int K) {
    const int kp = (K + 1) / 2;
    for (int ip = 0; ip < panels; ip++) {
        const float *sp = src + (size_t)ip * src_ps;
        uint16_t *dp = dst + (size_t)ip * dst_ps;
        for (int q = 0; q < kp; q++, dp += 2 * P) {
            const float *r0 = sp + (size_t)(2 * q) * P, *r1 = 2 * q + 1 < K ? r0 + P : NULL;
#ifdef GEMM_X86
            if (isa_fp32 == ISA_AVX512 && P % 16 == 0) {
                for (int c = 0; c < P; c += 16) vnni16_avx512(dp + 2 * c, r0 + c, r1 ? r1 + c : NULL);
                continue;
            }
            if (isa_fp32 == ISA_AVX512 && P == 14) { vnni14_avx512(dp, r0, r1); continue; }
#endif
            for (int c = 0; c < P; c++) {
                dp[2 * c] = bf16_round(r0[c]);
                dp[2 * c + 1] = r1 ? bf16_round(r1[c]) : 0;
            }
        }
    }
}
void ldm_panel_bf_from_a(uint16_t *dst, const float *Ap, size_t a_pstride, int M, int K) {
    if (!a_pstride) a_pstride = (size_t)K * MR;
    pairs_from_panels(dst, (size_t)((K + 1) & ~1) * MR, Ap, a_pstride, MR, (M + MR - 1) / MR, K);
}
void ldm_panel_bf_from_b(uint16_t *dst, const float *Bp, size_t b_pstride, int N, int K) {
    if (!b_pstride) b_pstride = (size_t)K * NR;
    pairs_from_panels(dst, (size_t)((K + 1) & ~1) * NR, Bp, b_pstride, NR, (N + NR - 1) / NR, K);
}

#ifdef GEMM_X86
static __attribute__((target("avx512f,avx512bf16"))) void ukr_bf16p(int kp, const uint16_t *Ap,
                                                                    const uint16_t *Bp, float *C,
                                                                    size_t ldc, int add) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int q = 0; q < kp; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp), b1 = (__m512bh)_mm512_loadu_si512(Bp + 32);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            uint32_t pair;
            memcpy(&pair, Ap + 2 * i, 4);
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
        }
        Ap += 2 * MR;
        Bp += 2 * NR;
    }
    store_14x32(C, ldc, c0, c1, add);
}
#endif

void ldm_panel_bf_gemm(int M, int N, int K, const uint16_t *Ap, size_t a_pstride, const uint16_t *Bp,
                       size_t b_pstride, float *C, size_t ldc, int add) {
    const size_t k2 = (size_t)((K + 1) & ~1);
    if (!a_pstride) a_pstride = k2 * MR;
    if (!b_pstride) b_pstride = k2 * NR;
    panel_tiles(1, M, N, K, Ap, a_pstride, Bp, b_pstride, C, ldc, add);
}

static void panel_tiles(int bf, int M, int N, int K, const void *Ap, size_t a_pstride, const void *Bp,
                        size_t b_pstride, float *C, size_t ldc, int add) {
    if (M <= 0 || N <= 0) return;
    const size_t esz = bf ? sizeof(uint16_t) : sizeof(float);
    ukr_fn ukr = pick_ukr(cur_isa());
    float tmp[MR * NR];
    for (int ip = 0; ip * MR < M; ip++) {
        int mi = M - ip * MR < MR ? M - ip * MR : MR;
        const char *ap = (const char *)Ap + (size_t)ip * a_pstride * esz;
        for (int jp = 0; jp * NR < N; jp++) {
            int nj = N - jp * NR < NR ? N - jp * NR : NR;
            const char *bp = (const char *)Bp + (size_t)jp * b_pstride * esz;
            float *c = C + (size_t)ip * MR * ldc + (size_t)jp * NR;
            int whole = mi == MR && nj == NR;
            float *dst = whole ? c : tmp;
            size_t ld = whole ? ldc : NR;
            int acc = whole ? add : 0;
            if (K <= 0) { /* the empty sum */
                if (acc) continue; /* C + 0 */
                for (int i = 0; i < MR; i++) memset(dst + (size_t)i * ld, 0, NR * sizeof(float));
            } else if (bf) {
#ifdef GEMM_X86
                ukr_bf16p((K + 1) / 2, (const uint16_t *)ap, (const uint16_t *)bp, dst, ld, acc);
#endif
            } else {
                ukr(K, (const float *)ap, (const float *)bp, dst, ld, acc);
            }
            if (whole) continue;
            for (int i = 0; i < mi; i++) {
                float *cr = c + (size_t)i * ldc;
                const float *t = tmp + (size_t)i * NR;
                if (add) {
#pragma omp simd
                    for (int q = 0; q < nj; q++) cr[q] += t[q];
                } else {
                    memcpy(cr, t, (size_t)nj * sizeof(float));
                }
            }
        }
    }
}
