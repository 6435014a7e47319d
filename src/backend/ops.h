/* ops.h - the small set of tensor operations the models are written against, and the
 * backend handle that runs them.
 *
 * Model code (model/clip.c, unet.c, vae.c) is written once against the ldm_op_* calls
 * below; each backend (backend/ops_cpu.c, backend/ops_dry.c, cuda/ops_cuda.cu)
 * implements them.  Activations are float32 and live in backend memory (host RAM for
 * the CPU, device memory for CUDA): model code never dereferences an activation
 * pointer, it only passes it to ops or copies with upload/download.  Weights are the
 * bundle's fp16 tensors (ldm_tensor).
 *
 * Layouts: images are NCHW; token sequences are row-major [B, T, C].
 *
 * The handle.  An ldm_backend is one backend instance: its private state (CUDA: the
 * device, stream, cuBLAS/cuDNN handles, scratch buffers, convolution plans; CPU: the
 * scratch buffers), the weight buffers of the models loaded on it, and its status.
 * Every op receives it.  Two handles share nothing, so two pipelines in one process
 * do not meet.  A handle is used by one thread at a time.
 *
 * Status.  Ops return 0, or -1 after recording the failure in the handle: the FIRST
 * failure is kept (the op, the backend's message) and from then on every op and
 * every copy is a no-op returning -1 (download fills its host buffer with zeros), so a
 * forward pass can run to its end and ask once: ldm_backend_status() waits for the
 * device and returns 0, or -1 with ldm_last_error() set to the first failure.  The
 * failure stays: after a device fault the handle is not used again.
 *
 * The front.  ldm_op_NAME(be, ...) checks the arguments once for all backends (shapes
 * against the weights, positive sizes, no NULL), counts the call, runs the fault
 * injection and the optional per-op timing, and calls the backend's function.  The op
 * list is declared once (LDM_OPS below); the dry backend, the op names, the profile
 * and the op tests come from it.  A new op is one line there, a check in ops.c, its
 * kernels, and its tests.
 *
 * The "dry" backend implements every op as a no-op; running a forward pass on it with
 * a measuring arena gives the exact activation memory needed for a resolution, so the
 * real arena is allocated once, at that size.
 */
#ifndef LDM_OPS_H
#define LDM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"

typedef struct ldm_backend ldm_backend;

/* X(name, (parameters after the handle), (arguments after the handle))
 * Shapes are in the parameter names; see each op's comment.                          */
#define LDM_OPS(X)                                                                                 \
    /* out[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N] if b)                  (torch.nn.Linear) */         \
    X(linear, (float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b, int M,        \
               int K, int N),                                                                      \
      (out, x, w, b, M, K, N))                                                                     \
    /* out[N,Cout,Ho,Wo] = conv2d(x[N,Cin,H,W], W[Cout,Cin,k,k]) + b,                          \
     * Ho = (H + 2*pad - k)/stride + 1.                                  (torch.nn.Conv2d) */     \
    X(conv2d, (float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b, int N,        \
               int Cin, int H, int W, int Cout, int k, int stride, int pad),                       \
      (out, x, w, b, N, Cin, H, W, Cout, k, stride, pad))                                          \
    /* GroupNorm over x[N,C,HW] with affine gamma/beta[C]; then SiLU if silu != 0. */            \
    X(group_norm, (float *out, const float *x, const ldm_tensor *gamma, const ldm_tensor *beta,    \
                   int N, int C, int HW, int groups, float eps, int silu),                         \
      (out, x, gamma, beta, N, C, HW, groups, eps, silu))                                          \
    /* LayerNorm over the last dim of x[M,C].                          (torch.nn.LayerNorm) */   \
    X(layer_norm, (float *out, const float *x, const ldm_tensor *gamma, const ldm_tensor *beta,    \
                   int M, int C, float eps),                                                       \
      (out, x, gamma, beta, M, C, eps))                                                            \
    /* Multi-head attention in blocks (memory does not grow with Tq*Tk).  q is             \
     * [B, Tq, q_stride], head h uses columns h*D .. h*D+D-1; k and v are [B, Tk,          \
     * kv_stride] likewise; out is [B, Tq, heads*D] and must not overlap q, k or v.        \
     * out = softmax(q kᵀ * scale [+ causal mask]) v per head; the causal mask hides key   \
     * j from query i when j > i.                                                       */ \
    X(attention, (float *out, const float *q, const float *k, const float *v, int B, int heads,    \
                  int Tq, int Tk, int D, int q_stride, int kv_stride, float scale, int causal),    \
      (out, q, k, v, B, heads, Tq, Tk, D, q_stride, kv_stride, scale, causal))                     \
    /* Elementwise: a + b, x * s, SiLU, GELU (erf form), x*σ(1.702x). */                          \
    X(add, (float *out, const float *a, const float *b, size_t n), (out, a, b, n))                 \
    X(scale, (float *out, const float *x, float s, size_t n), (out, x, s, n))                      \
    X(silu, (float *out, const float *x, size_t n), (out, x, n))                                   \
    X(gelu, (float *out, const float *x, size_t n), (out, x, n))                                   \
    X(quick_gelu, (float *out, const float *x, size_t n), (out, x, n))                             \
    /* GEGLU: x is [M, 2N]; out[M,N] = x[:, :N] * gelu(x[:, N:]). */                              \
    X(geglu, (float *out, const float *x, int M, int N), (out, x, M, N))                           \
    /* x[n,c,:] += v[n*C + c] for x[N,C,HW] (time-embedding broadcast). */                        \
    X(add_channel_bias, (float *x, const float *v, int N, int C, int HW), (x, v, N, C, HW))        \
    /* out[N,C,2H,2W] = nearest-neighbour upsample of x[N,C,H,W]. */                             \
    X(upsample_nearest2x, (float *out, const float *x, int N, int C, int H, int W),                \
      (out, x, N, C, H, W))                                                                        \
    /* out[N,C,Ho,Wo] = interpolate(x[N,C,H,W], size=(Ho, Wo), mode="nearest"): output row  \
     * y reads input row min(floor(y * s), H-1) with s = (float)H / Ho, in float32.      */ \
    X(upsample_nearest, (float *out, const float *x, int N, int C, int H, int W, int Ho, int Wo),  \
      (out, x, N, C, H, W, Ho, Wo))                                                                \
    /* out[N, Ca+Cb, HW] = cat(a[N,Ca,HW], b[N,Cb,HW]) along channels. */                        \
    X(concat_channels, (float *out, const float *a, int Ca, const float *b, int Cb, int N, int HW),\
      (out, a, Ca, b, Cb, N, HW))                                                                  \
    /* [N,C,HW] <-> [N,HW,C] */                                                                   \
    X(nchw_to_nhwc, (float *out, const float *x, int N, int C, int HW), (out, x, N, C, HW))        \
    X(nhwc_to_nchw, (float *out, const float *x, int N, int C, int HW), (out, x, N, C, HW))        \
    /* out[i, :] = table[ids[i], :] for a [V, C] table; ids are host int32 values in [0,V). */   \
    X(embedding, (float *out, const ldm_tensor *table, const int32_t *ids, int n, int C),          \
      (out, table, ids, n, C))                                                                     \
    /* out[b,T,C] += table[0..T-1, :] for each of B sequences (learned positions). */            \
    X(add_positional, (float *out, const ldm_tensor *table, int B, int T, int C),                  \
      (out, table, B, T, C))                                                                       \
    /* out[N,C,H+top+bottom,W+left+right] = x[N,C,H,W] with zeros around it (F.pad). */        \
    X(pad2d, (float *out, const float *x, int N, int C, int H, int W, int top, int bottom,         \
              int left, int right),                                                                \
      (out, x, N, C, H, W, top, bottom, left, right))                                              \
    /* Backend memory: dst[n] = src[n]; dst[n] = value. */                                      \
    X(copy, (float *dst, const float *src, size_t n), (dst, src, n))                               \
    X(fill, (float *dst, float value, size_t n), (dst, value, n))

/* Op numbers, for the profile and the tests: LDM_OP_linear, ..., LDM_OP_COUNT. */
enum {
#define LDM_X(name, params, args) LDM_OP_##name,
    LDM_OPS(LDM_X)
#undef LDM_X
    LDM_OP_COUNT
};
/* "linear", "conv2d", ... by op number. */
extern const char *const ldm_op_names[LDM_OP_COUNT];

/* What a backend implements (its "vtable").  Every function returns 0, or -1 after
 * calling ldm_backend_fail.  Backends see only arguments the front has checked. */
typedef struct ldm_backend_ops {
    const char *name; /* "cpu", "cuda", "dry" */
    /* 1 for the dry backend: its pointers are fake and a model planned from a config
     * alone has no weights, so the front does not check arguments (nothing is read) */
    int no_data;
    /* Set up be->impl; -1 with ldm_error when the backend cannot be used here. */
    int (*init)(ldm_backend *be);
    void (*destroy)(ldm_backend *be);
    /* 64-byte aligned backend memory, NULL (after ldm_backend_fail) on failure. */
    void *(*alloc)(ldm_backend *be, size_t bytes);
    void (*free)(ldm_backend *be, void *p);
    int (*upload)(ldm_backend *be, float *dst, const float *host_src, size_t n);
    int (*download)(ldm_backend *be, float *host_dst, const float *src, size_t n);
    /* Wait for queued work; report an asynchronous failure through ldm_backend_fail. */
    int (*synchronize)(ldm_backend *be);
    /* Make a model's weights usable: w[0..n-1] are every tensor the model will pass to
     * ops.  CUDA copies them into ONE device allocation; *model_buf receives what
     * release_weights frees (NULL when nothing was allocated, as on the CPU). */
    int (*prepare_weights)(ldm_backend *be, ldm_tensor *const *w, size_t n, void **model_buf);
    void (*release_weights)(ldm_backend *be, void *model_buf);
    /* For the record (optional; NULL: "fp32" and the backend's name): the precision the
     * products run in, "fp32" or "bf16" (what runs: bf16 asked of a CPU without bf16
     * instructions runs fp32), and the instruction set, e.g. "avx512", "amx". */
    const char *(*precision_name)(ldm_backend *be);
    const char *(*isa_name)(ldm_backend *be);
#define LDM_X(name, params, args) int(*name) LDM_BE_PARAMS params;
#define LDM_BE_PARAMS(...) (ldm_backend * be, __VA_ARGS__)
    LDM_OPS(LDM_X)
#undef LDM_X
} ldm_backend_ops;

/* Options of a new handle (zero = defaults). */
typedef struct ldm_backend_opts {
    int threads;      /* CPU threads (0 = as OpenMP decides) */
    long fail_op;     /* fault injection: the fail_op-th op call fails (0 = never) */
    int profile;      /* time every op (ldm_backend_profile) */
    int verbose;      /* the backend may ldm_log details (device, algorithms) */
    int precision;    /* LDM_PRECISION_FP32 (0, exact) or LDM_PRECISION_BF16 (products in bf16) */
} ldm_backend_opts;
enum { LDM_PRECISION_FP32 = 0, LDM_PRECISION_BF16 = 1 };

struct ldm_backend {
    const ldm_backend_ops *ops;
    void *impl;                 /* the backend's private state */
    ldm_backend_opts opts;
    /* status: the first failure */
    int failed;
    int failed_op;              /* op number, or -1 when not inside an op */
    char error[1024];
    /* counters */
    long op_calls;              /* ops called through the front */
    double op_seconds[LDM_OP_COUNT];
    long op_count[LDM_OP_COUNT];
    double op_flops[LDM_OP_COUNT];  /* floating-point operations of the products (always counted) */
};

/* Backends by name: "cpu", "cuda", "dry".  NULL with ldm_error (naming why, e.g. no
 * GPU or a build without CUDA).  opts may be NULL. */
ldm_backend *ldm_backend_new(const char *name, const ldm_backend_opts *opts);
void ldm_backend_free(ldm_backend *be);
const char *ldm_backend_name(const ldm_backend *be);
/* "fp32" or "bf16", and the instruction set (see precision_name, isa_name). */
const char *ldm_backend_precision_name(ldm_backend *be);
const char *ldm_backend_isa_name(ldm_backend *be);
/* 1 if ldm was built with the CUDA backend. */
int ldm_backend_have_cuda(void);

/* Wait for the backend, then 0 if nothing failed, else -1 with ldm_last_error() set to
 * the first failure (kind LDM_RUNTIME). */
int ldm_backend_status(ldm_backend *be);
/* Record a failure (the first one wins; fmt is the backend's message).  Returns -1. */
int ldm_backend_fail(ldm_backend *be, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Per-op totals since the handle was made: calls and seconds (profile on). */
typedef struct ldm_op_stat { const char *name; long calls; double seconds, gflop; } ldm_op_stat;
int ldm_backend_profile(const ldm_backend *be, ldm_op_stat out[LDM_OP_COUNT]);
/* GFLOP of the products (linear, conv2d, attention) run since the handle was made. */
double ldm_backend_gflop(const ldm_backend *be);

/* ---- the front: one checked call per op ---- */
#define LDM_X(name, params, args) int ldm_op_##name LDM_BE_PARAMS params;
LDM_OPS(LDM_X)
#undef LDM_X

/* Memory through the handle (no-ops returning NULL / -1 once the handle failed). */
void *ldm_be_alloc(ldm_backend *be, size_t bytes);
void ldm_be_free(ldm_backend *be, void *p);
int ldm_be_upload(ldm_backend *be, float *dst, const float *host_src, size_t n);
int ldm_be_download(ldm_backend *be, float *host_dst, const float *src, size_t n);
/* A model's weights (see prepare_weights); *buf is released with ldm_be_release_weights. */
int ldm_be_prepare_weights(ldm_backend *be, ldm_tensor *const *w, size_t n, void **buf);
void ldm_be_release_weights(ldm_backend *be, void *buf);

/* ---- Activation arena: a stack of float buffers in backend memory. ---- */
typedef struct ldm_arena {
    ldm_backend *be;
    char *base;        /* NULL in measuring mode */
    size_t cap, used, peak;
} ldm_arena;

/* Measuring arena: allocations only count bytes (use with a dry backend). */
void ldm_arena_measure(ldm_arena *a);
/* Real arena of `bytes` in be's memory.  Returns -1 on failure. */
int ldm_arena_init(ldm_arena *a, ldm_backend *be, size_t bytes);
void ldm_arena_free(ldm_arena *a);
/* n floats, 64-byte aligned.  Aborts if the arena is too small (a bug: the arena is
 * sized by a measuring pass over the same code). */
float *ldm_arena_alloc(ldm_arena *a, size_t n);
static inline size_t ldm_arena_mark(const ldm_arena *a) { return a->used; }
static inline void ldm_arena_reset(ldm_arena *a, size_t mark) { a->used = mark; }

#endif
