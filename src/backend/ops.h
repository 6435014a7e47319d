/* ops.h - the small set of tensor operations the models are written against.
 *
 * Model code (clip.c, unet.c, vae.c) is written once against this interface; each
 * backend (ops_cpu.c, cuda/ops_cuda.cu) implements it.  Activations are float32 and
 * live in backend memory (host RAM for the CPU, device memory for CUDA): model code
 * never dereferences an activation pointer, it only passes it to ops or copies with
 * upload/download.  Weights are the bundle's fp16 tensors (ldm_tensor); the CPU
 * backend widens them to float32 as it goes, CUDA uses them as fp16.
 *
 * Layouts: images are NCHW; token sequences are row-major [B, T, C].
 *
 * A "dry" backend implements every op as a no-op; running a forward pass on it with
 * a measuring arena gives the exact activation memory needed for a resolution, so
 * the real arena is allocated once, at that size.
 */
#ifndef LDM_OPS_H
#define LDM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "format/bundle.h"

typedef struct ldm_backend {
    const char *name; /* "cpu", "cuda", "dry" */

    /* Memory.  alloc returns 64-byte aligned backend memory, NULL on failure. */
    void *(*alloc)(size_t bytes);
    void (*free)(void *p);
    void (*upload)(float *dst, const float *host_src, size_t n);
    void (*download)(float *host_dst, const float *src, size_t n);
    void (*copy)(float *dst, const float *src, size_t n);
    void (*fill)(float *dst, float value, size_t n);
    void (*synchronize)(void);

    /* Prepare a weight for use (CUDA: upload it).  Called once per tensor at load. */
    int (*prepare_weight)(ldm_tensor *w);

    /* out[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N] if b)          (torch.nn.Linear)   */
    void (*linear)(float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                   int M, int K, int N);
    /* out[N,Cout,Ho,Wo] = conv2d(x[N,Cin,H,W], W[Cout,Cin,k,k]) + b,
     * Ho = (H + 2*pad - k)/stride + 1.                           (torch.nn.Conv2d) */
    void (*conv2d)(float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                   int N, int Cin, int H, int W, int Cout, int k, int stride, int pad);
    /* GroupNorm over x[N,C,HW] with affine gamma/beta[C]; then SiLU if silu != 0. */
    void (*group_norm)(float *out, const float *x, const ldm_tensor *gamma,
                       const ldm_tensor *beta, int N, int C, int HW, int groups,
                       float eps, int silu);
    /* LayerNorm over the last dim of x[M,C].                    (torch.nn.LayerNorm) */
    void (*layer_norm)(float *out, const float *x, const ldm_tensor *gamma,
                       const ldm_tensor *beta, int M, int C, float eps);
    /* Multi-head attention, computed in blocks (memory does not grow with Tq*Tk).
     * q is [B, Tq, q_stride] and head h uses columns h*D .. h*D+D-1; k and v are
     * [B, Tk, kv_stride] likewise; out is [B, Tq, heads*D].
     * out = softmax(q kᵀ * scale [+ causal mask]) v per head; the causal mask hides
     * key j from query i when j > i.  out must not overlap q, k or v.            */
    void (*attention)(float *out, const float *q, const float *k, const float *v,
                      int B, int heads, int Tq, int Tk, int D, int q_stride,
                      int kv_stride, float scale, int causal);

    /* Elementwise. */
    void (*add)(float *out, const float *a, const float *b, size_t n);       /* a + b      */
    void (*scale)(float *out, const float *x, float s, size_t n);            /* x * s      */
    void (*silu)(float *out, const float *x, size_t n);
    void (*gelu)(float *out, const float *x, size_t n);                      /* erf form   */
    void (*quick_gelu)(float *out, const float *x, size_t n);                /* x*σ(1.702x) */
    /* GEGLU: x is [M, 2N]; out[M,N] = x[:, :N] * gelu(x[:, N:]). */
    void (*geglu)(float *out, const float *x, int M, int N);
    /* x[n,c,:] += v[n*C + c] for x[N,C,HW] (time-embedding broadcast). */
    void (*add_channel_bias)(float *x, const float *v, int N, int C, int HW);
    /* out[N,C,2H,2W] = nearest-neighbour upsample of x[N,C,H,W]. */
    void (*upsample_nearest2x)(float *out, const float *x, int N, int C, int H, int W);
    /* out[N,C,Ho,Wo] = nearest-neighbour resize of x[N,C,H,W] to an explicit size, as
     * torch.nn.functional.interpolate(x, size=(Ho, Wo), mode="nearest"): output row y reads
     * input row min(floor(y * s), H-1) with s = (float)H / Ho, in float32 (columns alike). */
    void (*upsample_nearest)(float *out, const float *x, int N, int C, int H, int W, int Ho,
                             int Wo);
    /* out[N, Ca+Cb, HW] = cat(a[N,Ca,HW], b[N,Cb,HW]) along channels. */
    void (*concat_channels)(float *out, const float *a, int Ca, const float *b, int Cb,
                            int N, int HW);
    /* [N,C,HW] <-> [N,HW,C] */
    void (*nchw_to_nhwc)(float *out, const float *x, int N, int C, int HW);
    void (*nhwc_to_nchw)(float *out, const float *x, int N, int C, int HW);
    /* out[i, :] = table[ids[i], :] for a [V, C] fp16 table; ids are host int32 values. */
    void (*embedding)(float *out, const ldm_tensor *table, const int32_t *ids, int n, int C);
    /* out[T,C] += table[0..T-1, :] for each of B sequences (learned positions). */
    void (*add_positional)(float *out, const ldm_tensor *table, int B, int T, int C);
} ldm_backend;

extern const ldm_backend ldm_backend_cpu;
extern const ldm_backend ldm_backend_dry;
/* NULL when ldm was built without CUDA or no GPU is usable (see ldm_last_error). */
const ldm_backend *ldm_backend_cuda(void);

/* ---- Activation arena: a stack of float buffers in backend memory. ---- */
typedef struct ldm_arena {
    const ldm_backend *be;
    char *base;        /* NULL in measuring mode */
    size_t cap, used, peak;
} ldm_arena;

/* Measuring arena: allocations only count bytes (use with ldm_backend_dry). */
void ldm_arena_measure(ldm_arena *a);
/* Real arena of `bytes` in be's memory.  Returns -1 on failure. */
int ldm_arena_init(ldm_arena *a, const ldm_backend *be, size_t bytes);
void ldm_arena_free(ldm_arena *a);
/* n floats, 64-byte aligned.  Aborts with a message if the arena is too small
 * (a bug: the arena is sized by a measuring pass over the same code). */
float *ldm_arena_alloc(ldm_arena *a, size_t n);
static inline size_t ldm_arena_mark(const ldm_arena *a) { return a->used; }
static inline void ldm_arena_reset(ldm_arena *a, size_t mark) { a->used = mark; }

/* fp16 <-> fp32.  f32_to_f16 rounds to nearest even; overflow gives ±Inf. */
float ldm_f16_to_f32(uint16_t h);
uint16_t ldm_f32_to_f16(float f);

#endif
