/* gemm_cpu.h - the CPU backend's matrix product (backend-internal; used by ops_cpu.c).
 *
 *   C[M,N] = A[M,K] · B[K,N]  (+ bias),   float32 accumulation,
 *
 * with each operand read straight from where it lives, converted and packed block by
 * block into the micro-kernel's panels (no materialised im2col, no fp32 copy of a
 * weight, nothing kept between calls):
 *   A: rows [M][K] (fp16 weights of a convolution, or fp32 activations of a linear layer);
 *   B: rows [N][K] read transposed (fp16 weights of a linear layer), rows [K][N] (fp32:
 *      the input of a 1x1 convolution), or the implicit im2col of an NCHW image.
 *
 * Exactness.  Every element of C is summed over k in the same order whatever the
 * thread count, the instruction set and the tile it falls in: k blocks of a size that
 * depends on K only, each summed in order with fused multiply-adds into a register,
 * then added to C.  The AVX-512, AVX2 and portable kernels therefore give the same
 * bits, and an image is the same bytes with 1, 2 or 16 threads (tests/test_threads.c).
 *
 * Precision LDM_GEMM_BF16 rounds both operands to bfloat16 (round to nearest even) and
 * accumulates in float32 with AMX tiles or AVX512_BF16 dot products where the CPU has
 * them; without either it says so (ldm_gemm_bf16_isa) and runs float32.
 */
#ifndef LDM_GEMM_CPU_H
#define LDM_GEMM_CPU_H

#include <stddef.h>
#include <stdint.h>

typedef enum { GEMM_A_ROWS_F16, GEMM_A_ROWS_F32 } gemm_a_kind;
typedef enum { GEMM_B_NK_F16, GEMM_B_KN_F32, GEMM_B_IM2COL } gemm_b_kind;

typedef struct gemm_a {
    gemm_a_kind kind;
    const void *p;          /* element (m, k) at p[m*ld + k] */
    size_t ld;
} gemm_a;

typedef struct gemm_b {
    gemm_b_kind kind;
    const void *p;          /* NK: (k, n) at p[n*ld + k]; KN: p[k*ld + n]; IM2COL: x[Cin][H][W] */
    size_t ld;
    int Cin, H, W, ksize, stride, pad, Wo;   /* IM2COL: K = Cin*ksize², N = Ho*Wo */
} gemm_b;

typedef struct gemm_job {
    int M, N, K;
    gemm_a a;
    gemm_b b;
    float *c;               /* C[m][n] at c[m*ldc + n] */
    size_t ldc;
    /* batch: `batch` products sharing A; item i reads B at b.p + i*b_batch_stride
     * elements and writes C at c + i*c_batch_stride (the images of a convolution) */
    int batch;
    size_t b_batch_stride, c_batch_stride;
    const uint16_t *bias;   /* fp16 bias, or NULL */
    int bias_per_row;       /* 1: bias[m] (convolution), 0: bias[n] (linear) */
    int weight_is_a;        /* which operand is the weight: the one packed once per task */
    /* bf16 only: the weight already in the kernel's panels for all of K
     * (ldm_gemm_bf16_prepare), or NULL to pack it from a.p / b.p per call */
    const uint16_t *wprep;
} gemm_job;

enum { LDM_GEMM_FP32 = 0, LDM_GEMM_BF16 = 1 };

/* Run the product with the handle's threads; -1 only when scratch memory runs out. */
int ldm_gemm(const gemm_job *job, int precision);

/* bf16: a weight [rows][K] (fp16) in the kernel's panels for all of K, prepared once so
 * that no call packs it again: as A (a convolution's weight) or as B (a linear layer's).
 * ldm_gemm_bf16_prep_elems gives the uint16 elements of dst. */
size_t ldm_gemm_bf16_prep_elems(int rows, int K);
void ldm_gemm_bf16_prepare(uint16_t *dst, const uint16_t *w, int rows, int K, int as_b);

/* The instruction sets in use, for the record: "avx512", "avx2", "portable"; and for
 * bf16 "amx", "avx512bf16" or NULL (the CPU has neither; bf16 then runs fp32). */
const char *ldm_gemm_fp32_isa(void);
const char *ldm_gemm_bf16_isa(void);

/* Panel products, single-threaded, for code already inside a parallel region (the
 * attention blocks): each operand packed once by the caller and reused.
 *   A (M x K) from src[m*ld + k] (km 0) or src[k*ld + m] (km 1), ldm_panel_a_floats floats;
 *   B (K x N) from src[n*ld + k] (rows of N), ldm_panel_b_floats floats;
 *   C[m*ldc + n] = (add ? C : 0) + A·B, each element summed over k in order (any kernel:
 *   the same bits).  a_pstride, b_pstride: floats from one panel to the next (0: K*14 and
 *   K*32, panels packed for this K alone; more: a k range of panels packed for a longer K). */
#define LDM_PANEL_MR 14 /* rows of an A panel */
#define LDM_PANEL_NR 32 /* columns of a B panel */
size_t ldm_panel_a_floats(int M, int K);
size_t ldm_panel_b_floats(int N, int K);
void ldm_panel_pack_a(float *Ap, const float *src, size_t ld, int M, int K, int km);
void ldm_panel_pack_b(float *Bp, const float *src, size_t ld, int N, int K);
void ldm_panel_gemm(int M, int N, int K, const float *Ap, size_t a_pstride, const float *Bp,
                    size_t b_pstride, float *C, size_t ldc, int add);

/* The same products in bf16 (attention in bf16 mode), where ldm_panel_bf16_available()
 * (the CPU has AVX512_BF16; whether bf16 is wanted, and not forced off, is ldm_gemm_bf16_isa's):
 * the fp32 panels above (panel strides as above, 0 = packed for this K) rounded to bf16
 * with k in pairs (ldm_panel_bf_a_elems / _b_elems uint16 each, panel strides then in
 * uint16: 0 = for this K), and C = (add ? C : 0) + A·B summed in fp32. */
int ldm_panel_bf16_available(void);
size_t ldm_panel_bf_a_elems(int M, int K);
size_t ldm_panel_bf_b_elems(int N, int K);
void ldm_panel_bf_from_a(uint16_t *dst, const float *Ap, size_t a_pstride, int M, int K);
void ldm_panel_bf_from_b(uint16_t *dst, const float *Bp, size_t b_pstride, int N, int K);
void ldm_panel_bf_gemm(int M, int N, int K, const uint16_t *Ap, size_t a_pstride, const uint16_t *Bp,
                       size_t b_pstride, float *C, size_t ldc, int add);

/* Test hook: blocking limits (0 keeps the default): the k block, and the rows/columns of
 * one task, so that tests reach the multi-block paths on small shapes. */
void ldm_gemm_set_blocking(int kc, int mc, int nc);
/* Test hook: force the portable (1), AVX2 (2) or best (0) fp32 kernel. */
void ldm_gemm_force_isa(int isa);
/* Test hook: bf16 kernels: 0 best, 1 none (fp32), 2 AVX512_BF16 even with AMX. */
void ldm_gemm_force_bf16(int mode);

#endif
