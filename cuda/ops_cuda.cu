/* ops_cuda.cu - the CUDA backend: every op of ops.h on device memory.
 *
 * Memory: activations are float32 in device memory (alloc = cudaMalloc); weights are
 * the bundle's fp16 tensors, copied by prepare_weights into ONE device allocation per
 * model (released with the model).  An op finds a weight's device copy by the host
 * address of its data (a sorted table per model).  A weight an op meets unprepared is
 * uploaded at first use into a buffer of its own, freed with the handle.
 *
 * Precision.  The two matrix ops run on tensor cores in fp16 with fp32 accumulation:
 *   linear  x is rounded to fp16 into a scratch buffer, then cublasGemmEx(fp16 W,
 *           fp16 x -> fp32 out, CUBLAS_COMPUTE_32F); the bias is added in fp32.
 *   conv2d  cuDNN "pseudo half": x rounded to fp16, fp16 filter, fp32 compute, fp16
 *           result, widened to fp32 while the bias is added.
 * Rounding x (and the conv result) to fp16 costs about 2^-12 relative per value,
 * which is what diffusers' own fp16 pipelines do; values beyond ±65504 saturate to
 * ±65504 instead of becoming Inf (NaN stays NaN).  We chose this over widening the
 * weights to fp32 so the weights stay at 2 bytes in device memory and the GEMMs use
 * the fp16 tensor-core rate.  Everything else (norms, attention, elementwise) is
 * float32 throughout; statistics of the norms are combined in double.
 *
 * Attention is a flash-style kernel: a block of ATT_NW warps owns ATT_NW*QPW query
 * rows of one (batch, head); it walks the keys BK at a time through shared memory
 * with an online softmax, so memory does not grow with Tq*Tk.
 *
 * State: everything lives in the handle (cuda_state: cuBLAS and cuDNN handles,
 * convolution plans, scratch buffers, weight tables), so two handles share nothing.
 * Streams: everything runs on the legacy default stream, so cudaMemcpy and kernels
 * are ordered; download waits for the work before it.  Scratch buffers (fp16 copies,
 * cuDNN workspace, norm statistics) grow to the largest request and are reused.
 * A handle runs one op at a time.
 *
 * Errors: every CUDA, cuBLAS and cuDNN call goes through a check macro naming the
 * file, line and call; a failure is recorded in the handle (ldm_backend_fail, the
 * first one wins), the op returns -1, and the front makes every later op a no-op
 * until ldm_backend_status() reports it (backend/ops.h).
 */
#ifndef LDM_CUDA
#define LDM_CUDA 1
#endif

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend/ops.h"
#include "core/common.h"
}

/* ------------------------------------------------------------------------------
 * Sticky error record and the check macros. */

static void record_failure(ldm_backend *be, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void record_failure(ldm_backend *be, const char *file, int line, const char *fmt, ...) {
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    ldm_backend_fail(be, "%s:%d: %s", file, line, what);
}

static bool cuda_ok(ldm_backend *be, cudaError_t e, const char *file, int line, const char *call) {
    if (e == cudaSuccess) return true;
    (void)cudaGetLastError(); /* clear it, so later launch checks do not see it again */
    record_failure(be, file, line, "%s: %s (%s)", call, cudaGetErrorString(e), cudaGetErrorName(e));
    return false;
}
static bool cublas_ok(ldm_backend *be, cublasStatus_t s, const char *file, int line, const char *call) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    record_failure(be, file, line, "%s: %s", call, cublasGetStatusString(s));
    return false;
}
static bool cudnn_ok(ldm_backend *be, cudnnStatus_t s, const char *file, int line, const char *call) {
    if (s == CUDNN_STATUS_SUCCESS) return true;
    record_failure(be, file, line, "%s: %s", call, cudnnGetErrorString(s));
    return false;
}
/* Each is true on success; on failure it records the error and is false. */
/* (They record into `be`, the handle in scope.) */
#define cudaCheck(call) cuda_ok(be, (call), __FILE__, __LINE__, #call)
#define cublasCheck(call) cublas_ok(be, (call), __FILE__, __LINE__, #call)
#define cudnnCheck(call) cudnn_ok(be, (call), __FILE__, __LINE__, #call)
/* After a kernel launch: launch-configuration errors show up here. */
#define launchCheck(kernel) cuda_ok(be, cudaGetLastError(), __FILE__, __LINE__, "launch of " kernel)
/* The value an op returns: -1 once the handle failed. */
#define DONE (be->failed ? -1 : 0)

/* ------------------------------------------------------------------------------
 * Device state: handles and scratch buffers. */

typedef struct {
    void *p;
    size_t cap;
} dev_scratch;

/* One model's weights in one device allocation: host data address -> device copy. */
typedef struct {
    const uint16_t *host;  /* ldm_tensor.f16 */
    const __half *dev;
    int64_t numel;
} weight_entry;
typedef struct weight_set {
    void *dev;             /* the one allocation */
    weight_entry *e;       /* sorted by host */
    size_t n;
    struct weight_set *next;
} weight_set;

#define CONV_PLANS 128
typedef struct {
    int used;
    int N, Cin, H, W, Cout, k, stride, pad;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws_bytes;
} conv_plan;

typedef struct cuda_state {
    cublasHandle_t cublas;
    cudnnHandle_t cudnn;
    cudaDeviceProp prop;
    char isa[256]; /* "NVIDIA H200 (sm_90)": the record's isa */
    size_t smem_optin;   /* largest dynamic shared memory a block may opt in to */
    dev_scratch xh;      /* fp16 copy of a linear/conv input */
    dev_scratch yh;      /* fp16 conv result */
    dev_scratch ws;      /* cuDNN workspace */
    dev_scratch stats;   /* group-norm partial and final statistics */
    dev_scratch ids;     /* embedding ids */
    dev_scratch overlap; /* copy between overlapping ranges */
    weight_set *models;  /* prepare_weights, newest first */
    weight_set *loose;   /* weights uploaded at first use, one allocation each */
    conv_plan plans[CONV_PLANS];
    int plan_next;       /* slot the next new plan takes */
} cuda_state;
#define G(be) ((cuda_state *)(be)->impl)

/* cuDNN workspace cap: algorithms that need more are not considered. */
#define CONV_WORKSPACE_MAX ((size_t)256 << 20)

/* A device buffer of at least `bytes`, grown (never shrunk) as needed; NULL on failure. */
static void *scratch(ldm_backend *be, dev_scratch *s, size_t bytes, const char *what) {
    if (bytes <= s->cap && s->p) return s->p;
    if (s->p) {
        /* queued kernels may still read the old buffer */
        if (!cudaCheck(cudaDeviceSynchronize())) return NULL;
        if (!cudaCheck(cudaFree(s->p))) return NULL;
        s->p = NULL;
        s->cap = 0;
    }
    size_t want = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps */
    if (want == 0) want = (size_t)1 << 20;
    cudaError_t e = cudaMalloc(&s->p, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        s->p = NULL;
        record_failure(be, __FILE__, __LINE__, "cudaMalloc of %zu bytes for the %s scratch buffer: %s",
                       want, what, cudaGetErrorString(e));
        return NULL;
    }
    s->cap = want;
    return s->p;
}

/* Launch shape for n independent elements with a grid-stride loop. */
#define EW_THREADS 256
static unsigned ew_blocks(size_t n) {
    size_t b = (n + EW_THREADS - 1) / EW_THREADS;
    if (b > ((size_t)1 << 20)) b = (size_t)1 << 20;
    return b ? (unsigned)b : 1u;
}
/* Launch shape for `rows` rows of `cols` elements: grid.y walks rows, grid.x columns. */
static dim3 row_grid(size_t rows, size_t cols) {
    size_t bx = (cols + EW_THREADS - 1) / EW_THREADS, by = rows;
    if (bx > 1024) bx = 1024;
    if (by > 65535) by = 65535;
    return dim3(bx ? (unsigned)bx : 1u, by ? (unsigned)by : 1u);
}

/* ------------------------------------------------------------------------------
 * Weights. */

static int cmp_entry(const void *a, const void *b) {
    const uint16_t *x = ((const weight_entry *)a)->host, *y = ((const weight_entry *)b)->host;
    return x < y ? -1 : x > y;
}

/* Copy w[0..n-1] into one device allocation (each tensor 256-byte aligned). */
static weight_set *upload_set(ldm_backend *be, ldm_tensor *const *w, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += ((size_t)w[i]->numel * sizeof(uint16_t) + 255) & ~(size_t)255;
    weight_set *ws = (weight_set *)ldm_xcalloc(1, sizeof *ws);
    ws->e = (weight_entry *)ldm_xcalloc(n ? n : 1, sizeof *ws->e);
    cudaError_t e = cudaMalloc(&ws->dev, total ? total : 256);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        record_failure(be, __FILE__, __LINE__, "cudaMalloc of %zu bytes for %zu weights: %s", total, n,
                       cudaGetErrorString(e));
        free(ws->e);
        free(ws);
        return NULL;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t bytes = (size_t)w[i]->numel * sizeof(uint16_t);
        char *dst = (char *)ws->dev + off;
        if (bytes && !cudaCheck(cudaMemcpy(dst, w[i]->f16, bytes, cudaMemcpyHostToDevice))) {
            (void)cudaFree(ws->dev); /* cleanup after the recorded failure */
            free(ws->e);
            free(ws);
            return NULL;
        }
        ws->e[ws->n++] = weight_entry{w[i]->f16, (const __half *)dst, w[i]->numel};
        off += (bytes + 255) & ~(size_t)255;
    }
    qsort(ws->e, ws->n, sizeof *ws->e, cmp_entry);
    return ws;
}

static void free_set(ldm_backend *be, weight_set *ws) {
    cudaCheck(cudaDeviceSynchronize()); /* a queued kernel may still read it */
    cudaCheck(cudaFree(ws->dev));
    free(ws->e);
    free(ws);
}

static int cuda_prepare_weights(ldm_backend *be, ldm_tensor *const *w, size_t n, void **buf) {
    weight_set *ws = upload_set(be, w, n);
    if (!ws) return -1;
    ws->next = G(be)->models;
    G(be)->models = ws;
    *buf = ws;
    return 0;
}

static void cuda_release_weights(ldm_backend *be, void *buf) {
    for (weight_set **p = &G(be)->models; *p; p = &(*p)->next)
        if (*p == buf) {
            weight_set *ws = *p;
            *p = ws->next;
            free_set(be, ws);
            return;
        }
}

static const weight_entry *find_in(const weight_set *ws, const uint16_t *host) {
    size_t lo = 0, hi = ws->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ws->e[mid].host < host) lo = mid + 1;
        else hi = mid;
    }
    return lo < ws->n && ws->e[lo].host == host ? &ws->e[lo] : NULL;
}

/* The device copy of w, which must hold at least `need` values; NULL (failure
 * recorded) otherwise.  `op` names the op for the message. */
static const __half *dev_weight(ldm_backend *be, const ldm_tensor *w, int64_t need, const char *op) {
    const char *name = w && w->name ? w->name : "?";
    if (!w || !w->f16) {
        record_failure(be, __FILE__, __LINE__, "%s: missing weight tensor", op);
        return NULL;
    }
    if (w->numel < need) {
        record_failure(be, __FILE__, __LINE__, "%s: weight %s has %lld values, expected at least %lld",
                       op, name, (long long)w->numel, (long long)need);
        return NULL;
    }
    for (int pass = 0; pass < 2; pass++)
        for (const weight_set *ws = pass ? G(be)->loose : G(be)->models; ws; ws = ws->next) {
            const weight_entry *e = find_in(ws, w->f16);
            if (e && e->numel >= need) return e->dev;
        }
    /* Unprepared (tests, or a caller that skipped prepare_weights): upload now. */
    ldm_tensor *one = (ldm_tensor *)w;
    weight_set *ws = upload_set(be, &one, 1);
    if (!ws) return NULL;
    ws->next = G(be)->loose;
    G(be)->loose = ws;
    return ws->e[0].dev;
}

/* ------------------------------------------------------------------------------
 * Reductions shared by the kernels (blockDim.x a multiple of 32, at most 1024). */

template <typename T> __device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the block, returned to every thread.  Every thread must call it. */
template <typename T> __device__ T block_sum(T v) {
    __shared__ T part[32];
    __shared__ T total;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* readers of a previous call's part/total are done */
    if (lane == 0) part[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T t = lane < nw ? part[lane] : (T)0;
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    return total;
}

/* ------------------------------------------------------------------------------
 * Elementwise kernels (grid-stride loops over size_t n). */

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                \
         i += (size_t)gridDim.x * blockDim.x)

/* fp32 -> fp16, saturating at ±65504 (NaN stays NaN). */
__global__ void k_to_half(__half *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) {
        float v = src[i];
        if (!isnan(v)) v = fminf(fmaxf(v, -65504.0f), 65504.0f);
        dst[i] = __float2half_rn(v);
    }
}
__global__ void k_fill(float *dst, float value, size_t n) {
    GRID_STRIDE(i, n) dst[i] = value;
}
__global__ void k_add(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void k_scale(float *out, const float *x, float s, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] * s;
}
__global__ void k_silu(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] / (1.0f + expf(-x[i]));
}
__device__ float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__global__ void k_gelu(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = gelu1(x[i]);
}
__global__ void k_quick_gelu(float *out, const float *x, size_t n) {
    GRID_STRIDE(i, n) out[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}
/* Row kernels: x is [rows, cols]; grid.y walks rows, grid.x the columns of a row. */
#define ROW_LOOP(r, rows) for (size_t r = blockIdx.y; r < (rows); r += gridDim.y)
#define COL_LOOP(c, cols)                                                                  \
    for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < (cols);             \
         c += (size_t)gridDim.x * blockDim.x)

/* out[m, j] = x[m, j] * gelu(x[m, N + j]) for x[M, 2N]. */
__global__ void k_geglu(float *out, const float *x, size_t M, size_t N) {
    ROW_LOOP(m, M) {
        const float *h = x + m * 2 * N;
        COL_LOOP(j, N) out[m * N + j] = h[j] * gelu1(h[N + j]);
    }
}
/* x[r, :] += v[r] for x[N*C, HW]. */
__global__ void k_add_row_value(float *x, const float *v, size_t rows, size_t cols) {
    ROW_LOOP(r, rows) {
        float b = v[r];
        COL_LOOP(c, cols) x[r * cols + c] += b;
    }
}
/* out[m, :] += bias[:] for out[M, N] (fp16 bias). */
__global__ void k_add_bias_cols(float *out, const __half *bias, size_t rows, size_t cols) {
    ROW_LOOP(r, rows) {
        COL_LOOP(c, cols) out[r * cols + c] += __half2float(bias[c]);
    }
}
/* out[n, c, p] = float(y[n, c, p]) + bias[c] for y[N*C, HW] (bias may be NULL). */
__global__ void k_conv_epilogue(float *out, const __half *y, const __half *bias, size_t rows,
                                size_t cols, int C) {
    ROW_LOOP(r, rows) {
        float b = bias ? __half2float(bias[r % C]) : 0.0f;
        COL_LOOP(c, cols) out[r * cols + c] = __half2float(y[r * cols + c]) + b;
    }
}
/* out[nc, 2y+dy, 2x+dx] = x[nc, y, x]: one thread per output element of a row. */
__global__ void k_upsample2x(float *out, const float *x, size_t rows, int H, int W) {
    /* rows = N*C*2H output rows of 2W values */
    ROW_LOOP(r, rows) {
        size_t nc = r / (2 * (size_t)H);
        int oy = (int)(r % (2 * (size_t)H));
        const float *src = x + (nc * H + oy / 2) * (size_t)W;
        COL_LOOP(c, 2 * (size_t)W) out[r * 2 * W + c] = src[c / 2];
    }
}
/* out[nc, oy, ox] = x[nc, sy, sx] with PyTorch's nearest rule for an explicit size:
 * sy = min(floor(oy * sh), H-1), sh = (float)H / Ho, in float32 (sx alike).  rows = N*C*Ho. */
__global__ void k_upsample_nearest(float *out, const float *x, size_t rows, int H, int W, int Ho,
                                   int Wo, float sh, float sw) {
    ROW_LOOP(r, rows) {
        size_t nc = r / (size_t)Ho;
        int oy = (int)(r % (size_t)Ho);
        int sy = min((int)floorf((float)oy * sh), H - 1);
        const float *src = x + (nc * H + sy) * (size_t)W;
        COL_LOOP(c, (size_t)Wo) out[r * Wo + c] = src[min((int)floorf((float)c * sw), W - 1)];
    }
}
/* out[n, j, i] = x[n, i, j] for x[N, R, Cc]; 32x32 tiles through shared memory.
 * grid = (tiles along Cc, min(tiles along R, 65535), N), block = (32, 8). */
__global__ void k_transpose(float *out, const float *x, int R, int Cc) {
    __shared__ float tile[32][33];
    size_t base = (size_t)blockIdx.z * R * Cc;
    int c0 = blockIdx.x * 32;
    for (int r0 = blockIdx.y * 32; r0 < R; r0 += gridDim.y * 32) {
        for (int i = threadIdx.y; i < 32; i += 8) {
            int r = r0 + i, c = c0 + threadIdx.x;
            if (r < R && c < Cc) tile[i][threadIdx.x] = x[base + (size_t)r * Cc + c];
        }
        __syncthreads();
        for (int i = threadIdx.y; i < 32; i += 8) {
            int c = c0 + i, r = r0 + threadIdx.x;
            if (r < R && c < Cc) out[base + (size_t)c * R + r] = tile[threadIdx.x][i];
        }
        __syncthreads();
    }
}
/* out[i, :] = table[ids[i], :] (ids checked on the host). */
__global__ void k_embedding(float *out, const __half *table, const int32_t *ids, size_t rows,
                            size_t C) {
    ROW_LOOP(r, rows) {
        const __half *src = table + (size_t)ids[r] * C;
        COL_LOOP(c, C) out[r * C + c] = __half2float(src[c]);
    }
}
/* out[b, :] += table[:] for out[B, TC]. */
__global__ void k_add_positional(float *out, const __half *table, size_t B, size_t TC) {
    ROW_LOOP(b, B) {
        COL_LOOP(c, TC) out[b * TC + c] += __half2float(table[c]);
    }
}

/* ------------------------------------------------------------------------------
 * Normalisation. */

#define NORM_THREADS 256

/* LayerNorm: one block per row of x[M, C]; mean, then variance about the mean. */
__global__ void k_layer_norm(float *out, const float *x, const __half *gamma,
                             const __half *beta, int C, float eps) {
    size_t row = blockIdx.x;
    const float *xr = x + row * C;
    float *orow = out + row * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    float mean = (float)(block_sum<double>(s) / C);
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    double var = block_sum<double>(v) / C;
    float rstd = (float)(1.0 / sqrt(var + eps));
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        orow[i] = (xr[i] - mean) * rstd * __half2float(gamma[i]) + __half2float(beta[i]);
}

/* GroupNorm statistics in two steps.  Step 1: each block takes a chunk of one group
 * (grid = (chunks, N*groups)) and writes the chunk's count, mean and sum of squared
 * deviations (two passes over the chunk, the second from cache).  Step 2: one thread
 * per group merges its chunks (Chan et al.) and writes mean and 1/sqrt(var + eps). */
#define GN_CHUNK 16384
struct gn_part {
    double n, mean, m2;
};
__global__ void k_gn_partial(gn_part *part, const float *x, size_t gsize) {
    size_t ng = blockIdx.y, chunk = blockIdx.x;
    size_t s = chunk * GN_CHUNK, e = s + GN_CHUNK < gsize ? s + GN_CHUNK : gsize;
    const float *xs = x + ng * gsize;
    float acc = 0.0f;
    for (size_t i = s + threadIdx.x; i < e; i += blockDim.x) acc += xs[i];
    double cnt = (double)(e - s);
    double mean = block_sum<double>(acc) / cnt;
    float mf = (float)mean, acc2 = 0.0f;
    for (size_t i = s + threadIdx.x; i < e; i += blockDim.x) {
        float d = xs[i] - mf;
        acc2 += d * d;
    }
    double m2 = block_sum<double>(acc2);
    /* the deviations were taken about mf, not mean: correct the sum of squares */
    double off = mean - (double)mf;
    m2 -= cnt * off * off;
    if (m2 < 0) m2 = 0;
    if (threadIdx.x == 0) {
        gn_part p = {cnt, mean, m2};
        part[ng * gridDim.x + chunk] = p;
    }
}
__global__ void k_gn_finalize(float2 *stats, const gn_part *part, int nchunks, int ngroups,
                              float eps) {
    int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= ngroups) return;
    const gn_part *p = part + (size_t)ng * nchunks;
    double n = p[0].n, mean = p[0].mean, m2 = p[0].m2;
    for (int c = 1; c < nchunks; c++) {
        double nb = p[c].n, tot = n + nb, d = p[c].mean - mean;
        mean += d * nb / tot;
        m2 += p[c].m2 + d * d * n * nb / tot;
        n = tot;
    }
    double var = m2 / n;
    stats[ng] = make_float2((float)mean, (float)(1.0 / sqrt(var + eps)));
}
/* y = (x - mean) * rstd * gamma + beta, then SiLU if silu; rows are (n, c). */
__global__ void k_gn_apply(float *out, const float *x, const float2 *stats, const __half *gamma,
                           const __half *beta, size_t rows, size_t HW, int C, int cpg,
                           int silu) {
    ROW_LOOP(r, rows) {
        int c = (int)(r % C);
        size_t n = r / C;
        float2 st = stats[n * (C / cpg) + c / cpg];
        float a = st.y * __half2float(gamma[c]);
        float sh = __half2float(beta[c]) - st.x * a;
        const float *xr = x + r * HW;
        float *orow = out + r * HW;
        if (silu) {
            COL_LOOP(i, HW) {
                float y = xr[i] * a + sh;
                orow[i] = y / (1.0f + expf(-y));
            }
        } else {
            COL_LOOP(i, HW) orow[i] = xr[i] * a + sh;
        }
    }
}

/* ------------------------------------------------------------------------------
 * Attention.
 *
 * Block: ATT_NW warps; warp w owns query rows q0 + w*QPW .. + QPW-1 of one (b, h).
 * Shared memory per block (floats), DQ = D rounded up to a multiple of 4:
 *   Qs [ATT_NW*QPW][DQ]   the block's queries (zero past D)
 *   Kt [DQ][BK+1]         the key tile, transposed (zero rows past D)
 *   Vs [BK][D]            the value tile
 * Scores: lane j % BK computes key j's dot product over one of 32/BK slices of DQ,
 * and the slices are summed with shuffles, so all 32 lanes work for any BK <= 32.
 * Online softmax per row (m: running max, l: running sum); the output accumulator
 * o[r][i] holds dims lane + 32*i of row r in registers (D <= 32*DPT). */

#define ATT_NW 4

template <int DPT, int QPW>
__global__ void __launch_bounds__(ATT_NW * 32)
k_attention(float *out, const float *q, const float *k, const float *v, int heads, int Tq,
            int Tk, int D, int DQ, int q_stride, int kv_stride, float scale, int causal,
            int BK) {
    extern __shared__ float4 smem4[];
    float *Qs = (float *)smem4;
    float *Kt = Qs + ATT_NW * QPW * DQ;
    float *Vs = Kt + DQ * (BK + 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, rows = ATT_NW * QPW;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads, q0 = blockIdx.x * rows;
    q += (size_t)b * Tq * q_stride + (size_t)h * D;
    k += (size_t)b * Tk * kv_stride + (size_t)h * D;
    v += (size_t)b * Tk * kv_stride + (size_t)h * D;
    out += (size_t)b * Tq * heads * D + (size_t)h * D;

    for (int r = warp; r < rows; r += ATT_NW) {
        int qi = q0 + r;
        for (int d = lane; d < DQ; d += 32)
            Qs[r * DQ + d] = (qi < Tq && d < D) ? q[(size_t)qi * q_stride + d] : 0.0f;
    }
    for (int i = threadIdx.x; i < (DQ - D) * (BK + 1); i += blockDim.x) Kt[D * (BK + 1) + i] = 0.0f;

    /* This lane's key and slice of the head dimension for the scores. */
    const int split = 32 / BK, j = lane % BK, g = lane / BK;
    const int seg = ((DQ / 4 + split - 1) / split) * 4;
    const int d_lo = g * seg < DQ ? g * seg : DQ, d_hi = d_lo + seg < DQ ? d_lo + seg : DQ;

    float o[QPW][DPT], m[QPW], l[QPW];
#pragma unroll
    for (int r = 0; r < QPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPT; i++) o[r][i] = 0.0f;
    }
    int kend = Tk;
    if (causal && q0 + rows < kend) kend = q0 + rows; /* later keys are masked for every row */

    for (int k0 = 0; k0 < kend; k0 += BK) {
        const int bk = kend - k0 < BK ? kend - k0 : BK;
        __syncthreads(); /* the previous tile is no longer read */
        for (int jj = warp; jj < bk; jj += ATT_NW) {
            const float *kr = k + (size_t)(k0 + jj) * kv_stride, *vr = v + (size_t)(k0 + jj) * kv_stride;
            for (int d = lane; d < D; d += 32) {
                Kt[d * (BK + 1) + jj] = kr[d];
                Vs[jj * D + d] = vr[d];
            }
        }
        __syncthreads();

        /* s[r] = q_r · k_j over this lane's slice, then summed over the slices */
        float s[QPW];
#pragma unroll
        for (int r = 0; r < QPW; r++) s[r] = 0.0f;
        for (int d = d_lo; d < d_hi; d += 4) {
            float k0v = Kt[d * (BK + 1) + j], k1v = Kt[(d + 1) * (BK + 1) + j];
            float k2v = Kt[(d + 2) * (BK + 1) + j], k3v = Kt[(d + 3) * (BK + 1) + j];
#pragma unroll
            for (int r = 0; r < QPW; r++) {
                float4 qv = *(const float4 *)&Qs[(warp * QPW + r) * DQ + d];
                s[r] += qv.x * k0v + qv.y * k1v + qv.z * k2v + qv.w * k3v;
            }
        }
        for (int off = BK; off < 32; off <<= 1) {
#pragma unroll
            for (int r = 0; r < QPW; r++) s[r] += __shfl_xor_sync(0xffffffffu, s[r], off);
        }

        /* online softmax; afterwards s[r] holds p = exp(score - m) for key j */
#pragma unroll
        for (int r = 0; r < QPW; r++) {
            const int qi = q0 + warp * QPW + r;
            const bool vis = j < bk && (!causal || k0 + j <= qi);
            const float sc = vis ? s[r] * scale : -INFINITY;
            const float mnew = fmaxf(m[r], warp_max(sc));
            if (mnew == -INFINITY) { /* nothing visible to this row yet */
                s[r] = 0.0f;
                continue;
            }
            const float corr = expf(m[r] - mnew);
            const float p = vis ? expf(sc - mnew) : 0.0f;
            l[r] = l[r] * corr + warp_sum(lane < BK ? p : 0.0f);
            m[r] = mnew;
#pragma unroll
            for (int i = 0; i < DPT; i++) o[r][i] *= corr;
            s[r] = p;
        }

        /* o[r] += sum_j p[r][j] * V[j] */
        for (int jj = 0; jj < bk; jj++) {
            float p[QPW];
#pragma unroll
            for (int r = 0; r < QPW; r++) p[r] = __shfl_sync(0xffffffffu, s[r], jj);
            const float *vr = Vs + jj * D;
#pragma unroll
            for (int i = 0; i < DPT; i++) {
                const int d = lane + 32 * i;
                const float vv = d < D ? vr[d] : 0.0f;
#pragma unroll
                for (int r = 0; r < QPW; r++) o[r][i] += p[r] * vv;
            }
        }
    }

#pragma unroll
    for (int r = 0; r < QPW; r++) {
        const int qi = q0 + warp * QPW + r;
        if (qi >= Tq) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        float *dst = out + (size_t)qi * heads * D;
#pragma unroll
        for (int i = 0; i < DPT; i++) {
            const int d = lane + 32 * i;
            if (d < D) dst[d] = o[r][i] * inv;
        }
    }
}

/* ------------------------------------------------------------------------------
 * Memory ops. */

static void *cuda_alloc(ldm_backend *be, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 64); /* cudaMalloc aligns to 256 bytes */
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        record_failure(be, __FILE__, __LINE__, "cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}
static void cuda_free(ldm_backend *be, void *p) {
    if (p) cudaCheck(cudaFree(p));
}
static int cuda_upload(ldm_backend *be, float *dst, const float *host_src, size_t n) {
    if (n) cudaCheck(cudaMemcpy(dst, host_src, n * sizeof(float), cudaMemcpyHostToDevice));
    return DONE;
}
static int cuda_download(ldm_backend *be, float *host_dst, const float *src, size_t n) {
    if (n) cudaCheck(cudaMemcpy(host_dst, src, n * sizeof(float), cudaMemcpyDeviceToHost));
    return DONE;
}
static int cuda_copy(ldm_backend *be, float *dst, const float *src, size_t n) {
    if (n == 0 || dst == src) return DONE;
    size_t bytes = n * sizeof(float);
    if ((dst < src && dst + n > src) || (src < dst && src + n > dst)) { /* overlap: memmove */
        void *tmp = scratch(be, &G(be)->overlap, bytes, "overlapping copy");
        if (!tmp) return DONE;
        if (!cudaCheck(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, 0))) return DONE;
        cudaCheck(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, 0));
        return DONE;
    }
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
    return DONE;
}
static int cuda_fill(ldm_backend *be, float *dst, float value, size_t n) {
    if (n == 0) return DONE;
    k_fill<<<ew_blocks(n), EW_THREADS>>>(dst, value, n);
    launchCheck("k_fill");
    return DONE;
}
static int cuda_synchronize(ldm_backend *be) {
    cudaCheck(cudaDeviceSynchronize()); /* surfaces asynchronous faults */
    return DONE;
}

/* fp16 copy of x[n] in the xh scratch; NULL on failure. */
static const __half *to_half_scratch(ldm_backend *be, const float *x, size_t n) {
    __half *xh = (__half *)scratch(be, &G(be)->xh, n * sizeof(__half), "fp16 input");
    if (!xh) return NULL;
    k_to_half<<<ew_blocks(n), EW_THREADS>>>(xh, x, n);
    if (!launchCheck("k_to_half")) return NULL;
    return xh;
}

/* ------------------------------------------------------------------------------
 * Linear:  out[M,N] = x[M,K] · W[N,K]ᵀ + b[N].
 * Row-major out[M,N] is column-major outᵀ[N,M] = W·xᵀ: cuBLAS sees W (column-major
 * [K,N], ld K) transposed times x (column-major [K,M], ld K), result ld N. */

static int cuda_linear(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                        int M, int K, int N) {
    if (M <= 0 || N <= 0) return DONE;
    const __half *wd = dev_weight(be, w, (int64_t)N * K, "linear");
    const __half *bd = b ? dev_weight(be, b, N, "linear bias") : NULL;
    if (!wd || (b && !bd)) return DONE;
    if (K <= 0) { /* empty sum: out = bias (or 0) */
        cuda_fill(be, out, 0.0f, (size_t)M * N);
    } else {
        const __half *xh = to_half_scratch(be, x, (size_t)M * K);
        if (!xh) return DONE;
        const float alpha = 1.0f, beta = 0.0f;
        if (!cublasCheck(cublasGemmEx(G(be)->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, wd,
                                      CUDA_R_16F, K, xh, CUDA_R_16F, K, &beta, out, CUDA_R_32F, N,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)))
            return DONE;
    }
    if (bd) {
        k_add_bias_cols<<<row_grid((size_t)M, (size_t)N), EW_THREADS>>>(out, bd, (size_t)M, (size_t)N);
        launchCheck("k_add_bias_cols");
    }
    return DONE;
}

/* ------------------------------------------------------------------------------
 * Conv2d with cuDNN.  A plan per shape holds the descriptors and the algorithm that
 * cudnnFindConvolutionForwardAlgorithmEx measured fastest within the workspace cap;
 * plans are kept (up to CONV_PLANS, then the oldest is replaced). */



static void plan_destroy(conv_plan *p) { /* cleanup: a failure here changes nothing */
    if (p->xd) (void)cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) (void)cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) (void)cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) (void)cudnnDestroyConvolutionDescriptor(p->cd);
    memset(p, 0, sizeof *p);
}

/* The plan for this shape; x/w/y are the real buffers, used to time the algorithms. */
static conv_plan *conv_plan_get(ldm_backend *be, const __half *xh, const __half *wd, __half *yh, int N, int Cin,
                                int H, int W, int Cout, int k, int stride, int pad, int Ho,
                                int Wo) {
    for (int i = 0; i < CONV_PLANS; i++) {
        conv_plan *p = &G(be)->plans[i];
        if (p->used && p->N == N && p->Cin == Cin && p->H == H && p->W == W && p->Cout == Cout &&
            p->k == k && p->stride == stride && p->pad == pad)
            return p;
    }
    conv_plan *p = &G(be)->plans[G(be)->plan_next];
    G(be)->plan_next = (G(be)->plan_next + 1) % CONV_PLANS;
    plan_destroy(p);
    if (!cudnnCheck(cudnnCreateTensorDescriptor(&p->xd)) ||
        !cudnnCheck(cudnnCreateTensorDescriptor(&p->yd)) ||
        !cudnnCheck(cudnnCreateFilterDescriptor(&p->wd)) ||
        !cudnnCheck(cudnnCreateConvolutionDescriptor(&p->cd)) ||
        !cudnnCheck(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, N, Cin, H, W)) ||
        !cudnnCheck(cudnnSetFilter4dDescriptor(p->wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NCHW, Cout, Cin, k, k)) ||
        !cudnnCheck(cudnnSetConvolution2dDescriptor(p->cd, pad, pad, stride, stride, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
        !cudnnCheck(cudnnSetConvolutionMathType(p->cd, CUDNN_TENSOR_OP_MATH)) ||
        !cudnnCheck(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, N, Cout, Ho, Wo))) {
        plan_destroy(p);
        return NULL;
    }
    int on, oc, oh, ow;
    if (!cudnnCheck(cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &on, &oc, &oh, &ow))) {
        plan_destroy(p);
        return NULL;
    }
    if (on != N || oc != Cout || oh != Ho || ow != Wo) {
        record_failure(be, __FILE__, __LINE__, "conv2d: cuDNN output shape [%d,%d,%d,%d], expected [%d,%d,%d,%d]",
                       on, oc, oh, ow, N, Cout, Ho, Wo);
        plan_destroy(p);
        return NULL;
    }
    /* Workspace: the most any algorithm needs, within the cap (unsupported ones fail here,
     * which is expected and not an error). */
    size_t ws_max = 0;
    for (int a = 0; a < CUDNN_CONVOLUTION_FWD_ALGO_COUNT; a++) {
        size_t sz = 0;
        if (cudnnGetConvolutionForwardWorkspaceSize(G(be)->cudnn, p->xd, p->wd, p->cd, p->yd,
                                                    (cudnnConvolutionFwdAlgo_t)a, &sz) ==
                CUDNN_STATUS_SUCCESS &&
            sz <= CONV_WORKSPACE_MAX && sz > ws_max)
            ws_max = sz;
    }
    void *ws = ws_max ? scratch(be, &G(be)->ws, ws_max, "cuDNN workspace") : NULL;
    if (ws_max && !ws) {
        plan_destroy(p);
        return NULL;
    }
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int found = 0;
    if (!cudnnCheck(cudnnFindConvolutionForwardAlgorithmEx(G(be)->cudnn, p->xd, xh, p->wd, wd, p->cd, p->yd,
                                                           yh, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                           &found, perf, ws, ws_max))) {
        plan_destroy(p);
        return NULL;
    }
    int pick = -1;
    for (int i = 0; i < found && pick < 0; i++) /* sorted fastest first */
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= ws_max) pick = i;
    if (pick < 0) {
        record_failure(be, __FILE__, __LINE__,
                       "conv2d [%d,%d,%d,%d] * [%d,%d,%d,%d] stride %d pad %d: cuDNN found no "
                       "forward algorithm within %zu bytes of workspace",
                       N, Cin, H, W, Cout, Cin, k, k, stride, pad, ws_max);
        plan_destroy(p);
        return NULL;
    }
    if (!cudnnCheck(cudnnSetConvolutionMathType(p->cd, perf[pick].mathType))) {
        plan_destroy(p);
        return NULL;
    }
    p->algo = perf[pick].algo;
    p->ws_bytes = perf[pick].memory;
    p->N = N, p->Cin = Cin, p->H = H, p->W = W, p->Cout = Cout, p->k = k, p->stride = stride,
    p->pad = pad;
    p->used = 1;
    ldm_log(2, "CUDA backend: conv2d [%d,%d,%d,%d] k%d s%d p%d -> %d: cuDNN algo %d, %zu bytes workspace\n",
            N, Cin, H, W, k, stride, pad, Cout, (int)p->algo, p->ws_bytes);
    return p;
}

static int cuda_conv2d(ldm_backend *be, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                        int N, int Cin, int H, int W, int Cout, int k, int stride, int pad) {
        int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    if (N <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0) return DONE;
    const __half *wd = dev_weight(be, w, (int64_t)Cout * Cin * k * k, "conv2d");
    const __half *bd = b ? dev_weight(be, b, Cout, "conv2d bias") : NULL;
    if (!wd || (b && !bd)) return DONE;
    size_t ny = (size_t)N * Cout * Ho * Wo;
    const __half *xh = to_half_scratch(be, x, (size_t)N * Cin * H * W);
    __half *yh = (__half *)scratch(be, &G(be)->yh, ny * sizeof(__half), "fp16 conv output");
    if (!xh || !yh) return DONE;
    conv_plan *p = conv_plan_get(be, xh, wd, yh, N, Cin, H, W, Cout, k, stride, pad, Ho, Wo);
    if (!p) return DONE;
    void *ws = p->ws_bytes ? scratch(be, &G(be)->ws, p->ws_bytes, "cuDNN workspace") : NULL;
    if (p->ws_bytes && !ws) return DONE;
    const float alpha = 1.0f, beta = 0.0f;
    if (!cudnnCheck(cudnnConvolutionForward(G(be)->cudnn, &alpha, p->xd, xh, p->wd, wd, p->cd, p->algo,
                                            ws, p->ws_bytes, &beta, p->yd, yh)))
        return DONE;
    size_t rows = (size_t)N * Cout, cols = (size_t)Ho * Wo;
    k_conv_epilogue<<<row_grid(rows, cols), EW_THREADS>>>(out, yh, bd, rows, cols, Cout);
    launchCheck("k_conv_epilogue");
    return DONE;
}

/* ------------------------------------------------------------------------------
 * Norms. */

static int cuda_group_norm(ldm_backend *be, float *out, const float *x, const ldm_tensor *gamma,
                            const ldm_tensor *beta, int N, int C, int HW, int groups, float eps,
                            int silu) {
    if (N <= 0 || C <= 0 || HW <= 0) return DONE;
    if (groups <= 0 || C % groups != 0) {
        record_failure(be, __FILE__, __LINE__, "group_norm: %d channels do not split into %d groups", C, groups);
        return DONE;
    }
    const __half *gd = dev_weight(be, gamma, C, "group_norm gamma");
    const __half *bd = dev_weight(be, beta, C, "group_norm beta");
    if (!gd || !bd) return DONE;
    int cpg = C / groups, ngroups = N * groups;
    size_t gsize = (size_t)cpg * HW;
    size_t nchunks = (gsize + GN_CHUNK - 1) / GN_CHUNK;
    if (ngroups > 65535 || nchunks > 0x7fffffff) {
        record_failure(be, __FILE__, __LINE__, "group_norm: %d groups of %zu values is beyond the launch limits",
                       ngroups, gsize);
        return DONE;
    }
    size_t part_bytes = (size_t)ngroups * nchunks * sizeof(gn_part);
    size_t stats_off = (part_bytes + 255) & ~(size_t)255;
    char *buf = (char *)scratch(be, &G(be)->stats, stats_off + (size_t)ngroups * sizeof(float2), "group-norm statistics");
    if (!buf) return DONE;
    gn_part *part = (gn_part *)buf;
    float2 *stats = (float2 *)(buf + stats_off);
    k_gn_partial<<<dim3((unsigned)nchunks, (unsigned)ngroups), NORM_THREADS>>>(part, x, gsize);
    if (!launchCheck("k_gn_partial")) return DONE;
    k_gn_finalize<<<(ngroups + 127) / 128, 128>>>(stats, part, (int)nchunks, ngroups, eps);
    if (!launchCheck("k_gn_finalize")) return DONE;
    size_t rows = (size_t)N * C;
    k_gn_apply<<<row_grid(rows, (size_t)HW), EW_THREADS>>>(out, x, stats, gd, bd, rows, (size_t)HW, C,
                                                           cpg, silu);
    launchCheck("k_gn_apply");
    return DONE;
}

static int cuda_layer_norm(ldm_backend *be, float *out, const float *x, const ldm_tensor *gamma,
                            const ldm_tensor *beta, int M, int C, float eps) {
    if (M <= 0 || C <= 0) return DONE;
    const __half *gd = dev_weight(be, gamma, C, "layer_norm gamma");
    const __half *bd = dev_weight(be, beta, C, "layer_norm beta");
    if (!gd || !bd) return DONE;
    k_layer_norm<<<(unsigned)M, NORM_THREADS>>>(out, x, gd, bd, C, eps); /* a block per row */
    launchCheck("k_layer_norm");
    return DONE;
}

/* ------------------------------------------------------------------------------
 * Attention launch: pick the register tile (DPT dims per lane) and the key tile BK. */

template <int DPT, int QPW>
static void attention_launch(ldm_backend *be, float *out, const float *q, const float *k, const float *v, int B,
                             int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                             float scale, int causal) {
    const int rows = ATT_NW * QPW, DQ = (D + 3) & ~3;
    /* Largest BK (a power of two <= 32) whose tiles fit the budget: the default 48 KiB
     * if possible, else up to 96 KiB (and what the device allows). */
    size_t budget = (size_t)96 << 10;
    if (budget > G(be)->smem_optin) budget = G(be)->smem_optin;
    int BK = 32;
    size_t bytes = 0;
    for (;; BK /= 2) {
        bytes = ((size_t)rows * DQ + (size_t)DQ * (BK + 1) + (size_t)BK * D) * sizeof(float);
        if (bytes <= budget || BK == 1) break;
    }
    if (bytes > G(be)->smem_optin) {
        record_failure(be, __FILE__, __LINE__, "attention: head dim %d needs %zu bytes of shared memory, the device allows %zu",
                       D, bytes, G(be)->smem_optin);
        return;
    }
    static size_t attr_set; /* per instantiation: the dynamic smem size already allowed */
    if (bytes > ((size_t)48 << 10) && bytes > attr_set) {
        if (!cudaCheck(cudaFuncSetAttribute(k_attention<DPT, QPW>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes)))
            return;
        attr_set = bytes;
    }
    dim3 grid((unsigned)((Tq + rows - 1) / rows), (unsigned)(B * heads));
    k_attention<DPT, QPW><<<grid, ATT_NW * 32, bytes>>>(out, q, k, v, heads, Tq, Tk, D, DQ, q_stride,
                                                        kv_stride, scale, causal, BK);
    launchCheck("k_attention");
}

static int cuda_attention(ldm_backend *be, float *out, const float *q, const float *k, const float *v, int B,
                           int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                           float scale, int causal) {
    if (B <= 0 || heads <= 0 || Tq <= 0 || D <= 0) return DONE;
    if ((long long)B * heads > 65535) {
        record_failure(be, __FILE__, __LINE__, "attention: %d batches x %d heads exceed the grid limit of 65535", B, heads);
        return DONE;
    }
    if (D <= 64)
        attention_launch<2, 4>(be, out, q, k, v, B, heads, Tq, Tk, D, q_stride, kv_stride, scale, causal);
    else if (D <= 128)
        attention_launch<4, 4>(be, out, q, k, v, B, heads, Tq, Tk, D, q_stride, kv_stride, scale, causal);
    else if (D <= 256)
        attention_launch<8, 4>(be, out, q, k, v, B, heads, Tq, Tk, D, q_stride, kv_stride, scale, causal);
    else if (D <= 512)
        attention_launch<16, 2>(be, out, q, k, v, B, heads, Tq, Tk, D, q_stride, kv_stride, scale, causal);
    else
        record_failure(be, __FILE__, __LINE__, "attention: head dim %d is above the supported 512", D);
    return DONE;
}

/* ------------------------------------------------------------------------------
 * Elementwise and data movement. */

static int cuda_add(ldm_backend *be, float *out, const float *a, const float *b, size_t n) {
    if (n == 0) return DONE;
    k_add<<<ew_blocks(n), EW_THREADS>>>(out, a, b, n);
    launchCheck("k_add");
    return DONE;
}
static int cuda_scale(ldm_backend *be, float *out, const float *x, float s, size_t n) {
    if (n == 0) return DONE;
    k_scale<<<ew_blocks(n), EW_THREADS>>>(out, x, s, n);
    launchCheck("k_scale");
    return DONE;
}
static int cuda_silu(ldm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return DONE;
    k_silu<<<ew_blocks(n), EW_THREADS>>>(out, x, n);
    launchCheck("k_silu");
    return DONE;
}
static int cuda_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return DONE;
    k_gelu<<<ew_blocks(n), EW_THREADS>>>(out, x, n);
    launchCheck("k_gelu");
    return DONE;
}
static int cuda_quick_gelu(ldm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return DONE;
    k_quick_gelu<<<ew_blocks(n), EW_THREADS>>>(out, x, n);
    launchCheck("k_quick_gelu");
    return DONE;
}
static int cuda_geglu(ldm_backend *be, float *out, const float *x, int M, int N) {
    if (M <= 0 || N <= 0) return DONE;
    k_geglu<<<row_grid((size_t)M, (size_t)N), EW_THREADS>>>(out, x, (size_t)M, (size_t)N);
    launchCheck("k_geglu");
    return DONE;
}
static int cuda_add_channel_bias(ldm_backend *be, float *x, const float *v, int N, int C, int HW) {
    if (N <= 0 || C <= 0 || HW <= 0) return DONE;
    size_t rows = (size_t)N * C;
    k_add_row_value<<<row_grid(rows, (size_t)HW), EW_THREADS>>>(x, v, rows, (size_t)HW);
    launchCheck("k_add_row_value");
    return DONE;
}
static int cuda_upsample_nearest2x(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W) {
    if (N <= 0 || C <= 0 || H <= 0 || W <= 0) return DONE;
    size_t rows = (size_t)N * C * 2 * H;
    k_upsample2x<<<row_grid(rows, 2 * (size_t)W), EW_THREADS>>>(out, x, rows, H, W);
    launchCheck("k_upsample2x");
    return DONE;
}
static int cuda_upsample_nearest(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W, int Ho,
                                  int Wo) {
    if (N <= 0 || C <= 0 || H <= 0 || W <= 0 || Ho <= 0 || Wo <= 0) return DONE;
    size_t rows = (size_t)N * C * Ho;
    k_upsample_nearest<<<row_grid(rows, (size_t)Wo), EW_THREADS>>>(
        out, x, rows, H, W, Ho, Wo, (float)H / (float)Ho, (float)W / (float)Wo);
    launchCheck("k_upsample_nearest");
    return DONE;
}
static int cuda_concat_channels(ldm_backend *be, float *out, const float *a, int Ca, const float *b, int Cb, int N,
                                 int HW) {
    if (N <= 0 || HW <= 0) return DONE;
    size_t wa = (size_t)Ca * HW * sizeof(float), wb = (size_t)Cb * HW * sizeof(float);
    for (int n = 0; n < N; n++) { /* N is the batch: one or two */
        char *o = (char *)out + (size_t)n * (wa + wb);
        if (wa && !cudaCheck(cudaMemcpyAsync(o, (const char *)a + (size_t)n * wa, wa,
                                             cudaMemcpyDeviceToDevice, 0)))
            return DONE;
        if (wb && !cudaCheck(cudaMemcpyAsync(o + wa, (const char *)b + (size_t)n * wb, wb,
                                             cudaMemcpyDeviceToDevice, 0)))
            return DONE;
    }
    return DONE;
}
/* out[n][j][i] = x[n][i][j] for x[N, R, Cc]. */
static int transpose(ldm_backend *be, float *out, const float *x, int N, int R, int Cc) {
    if (N <= 0 || R <= 0 || Cc <= 0) return DONE;
    if (N > 65535) {
        record_failure(be, __FILE__, __LINE__, "transpose: batch %d exceeds the grid limit of 65535", N);
        return DONE;
    }
    unsigned ty = (unsigned)((R + 31) / 32);
    dim3 grid((unsigned)((Cc + 31) / 32), ty > 65535u ? 65535u : ty, (unsigned)N);
    k_transpose<<<grid, dim3(32, 8)>>>(out, x, R, Cc);
    launchCheck("k_transpose");
    return DONE;
}
static int cuda_nchw_to_nhwc(ldm_backend *be, float *out, const float *x, int N, int C, int HW) {
    return transpose(be, out, x, N, C, HW);
}
static int cuda_nhwc_to_nchw(ldm_backend *be, float *out, const float *x, int N, int C, int HW) {
    return transpose(be, out, x, N, HW, C);
}
static int cuda_embedding(ldm_backend *be, float *out, const ldm_tensor *table, const int32_t *ids, int n, int C) {
    if (n <= 0 || C <= 0) return DONE;
    int64_t V = table && table->ndim >= 1 ? table->shape[0] : 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V) {
            record_failure(be, __FILE__, __LINE__, "embedding %s: id %d (position %d) outside [0, %lld)",
                           table && table->name ? table->name : "?", (int)ids[i], i, (long long)V);
            return DONE;
        }
    }
    const __half *td = dev_weight(be, table, V * C, "embedding");
    int32_t *idd = (int32_t *)scratch(be, &G(be)->ids, (size_t)n * sizeof(int32_t), "embedding ids");
    if (!td || !idd) return DONE;
    /* synchronous copy from pageable memory: ids may be reused when we return DONE; ordered
     * after earlier kernels on the default stream that still read the old ids */
    if (!cudaCheck(cudaMemcpy(idd, ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice))) return DONE;
    k_embedding<<<row_grid((size_t)n, (size_t)C), EW_THREADS>>>(out, td, idd, (size_t)n, (size_t)C);
    launchCheck("k_embedding");
    return DONE;
}
static int cuda_add_positional(ldm_backend *be, float *out, const ldm_tensor *table, int B, int T, int C) {
    if (B <= 0 || T <= 0 || C <= 0) return DONE;
    const __half *td = dev_weight(be, table, (int64_t)T * C, "add_positional");
    if (!td) return DONE;
    k_add_positional<<<row_grid((size_t)B, (size_t)T * C), EW_THREADS>>>(out, td, (size_t)B, (size_t)T * C);
    launchCheck("k_add_positional");
    return DONE;
}

/* out[nc][y][x] = x[nc][y - top][x - left] inside, 0 outside. */
__global__ void k_pad2d(float *out, const float *x, size_t rows, int H, int W, int Ho, int Wo, int top,
                        int left) {
    for (size_t r = blockIdx.y; r < rows; r += gridDim.y) {   /* r = nc * Ho + y */
        size_t nc = r / (size_t)Ho;
        int y = (int)(r % (size_t)Ho) - top;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < Wo; c += gridDim.x * blockDim.x) {
            int xx = c - left;
            out[r * Wo + c] = (y >= 0 && y < H && xx >= 0 && xx < W) ? x[(nc * H + y) * W + xx] : 0.0f;
        }
    }
}
static int cuda_pad2d(ldm_backend *be, float *out, const float *x, int N, int C, int H, int W, int top,
                      int bottom, int left, int right) {
    const int Ho = H + top + bottom, Wo = W + left + right;
    size_t rows = (size_t)N * C * Ho;
    k_pad2d<<<row_grid(rows, (size_t)Wo), EW_THREADS>>>(out, x, rows, H, W, Ho, Wo, top, left);
    launchCheck("k_pad2d");
    return DONE;
}

/* ------------------------------------------------------------------------------
 * The handle: device 0, its cuBLAS and cuDNN handles. */

static void cuda_destroy(ldm_backend *be) {
    cuda_state *st = G(be);
    if (!st) return;
    (void)cudaDeviceSynchronize(); /* teardown: failures here change nothing */
    for (int i = 0; i < CONV_PLANS; i++) plan_destroy(&st->plans[i]);
    dev_scratch *sc[] = {&st->xh, &st->yh, &st->ws, &st->stats, &st->ids, &st->overlap};
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++)
        if (sc[i]->p) (void)cudaFree(sc[i]->p);
    weight_set **lists[] = {&st->models, &st->loose};
    for (weight_set **list : lists)
        while (*list) {
            weight_set *ws = *list;
            *list = ws->next;
            (void)cudaFree(ws->dev);
            free(ws->e);
            free(ws);
        }
    if (st->cudnn) (void)cudnnDestroy(st->cudnn);
    if (st->cublas) (void)cublasDestroy(st->cublas);
    (void)cudaGetLastError();
    free(st);
    be->impl = NULL;
}

static int init_failed(ldm_backend *be, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int init_failed(ldm_backend *be, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    (void)cudaGetLastError();
    cuda_destroy(be);
    return ldm_error("%s", msg);
}

static int cuda_init(ldm_backend *be) {
    cuda_state *st = (cuda_state *)ldm_xcalloc(1, sizeof *st);
    be->impl = st;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return init_failed(be, "CUDA backend: no usable GPU: cudaGetDeviceCount failed: %s (%s)",
                           cudaGetErrorString(e), cudaGetErrorName(e));
    if (count == 0) return init_failed(be, "CUDA backend: no usable GPU: cudaGetDeviceCount found 0 devices");
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaGetDeviceProperties(&st->prop, 0)) != cudaSuccess)
        return init_failed(be, "CUDA backend: device 0: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    int optin = 0;
    if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0)) != cudaSuccess)
        return init_failed(be, "CUDA backend: device 0: shared memory attribute: %s", cudaGetErrorString(e));
    st->smem_optin = optin > 0 ? (size_t)optin : (size_t)48 << 10;
    snprintf(st->isa, sizeof st->isa, "%.200s (sm_%d%d)", st->prop.name, st->prop.major, st->prop.minor);
    cublasStatus_t bs = cublasCreate(&st->cublas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        st->cublas = NULL;
        return init_failed(be, "CUDA backend: cublasCreate failed: %s", cublasGetStatusString(bs));
    }
    cudnnStatus_t ds = cudnnCreate(&st->cudnn);
    if (ds != CUDNN_STATUS_SUCCESS) {
        st->cudnn = NULL;
        return init_failed(be, "CUDA backend: cudnnCreate failed: %s (cuDNN %zu)", cudnnGetErrorString(ds),
                           cudnnGetVersion());
    }
    if (be->opts.verbose)
        ldm_log(2, "CUDA backend: %s, compute %d.%d, %.1f GiB, %d devices, cuDNN %zu\n", st->prop.name,
                st->prop.major, st->prop.minor, st->prop.totalGlobalMem / 1073741824.0, count,
                cudnnGetVersion());
    return 0;
}

/* What the record's "isa" says for this backend: the GPU and its compute capability, e.g.
 * "NVIDIA H200 (sm_90)", so the history names the GPU an image was made on. */
static const char *cuda_isa_name(ldm_backend *be) {
    cuda_state *st = G(be);
    return st && st->isa[0] ? st->isa : "cuda";
}

extern "C" const ldm_backend_ops ldm_backend_ops_cuda = {
    "cuda",
    0,
    cuda_init,
    cuda_destroy,
    cuda_alloc,
    cuda_free,
    cuda_upload,
    cuda_download,
    cuda_synchronize,
    cuda_prepare_weights,
    cuda_release_weights,
    NULL, /* precision_name: the record says "fp32" and the backend "cuda" */
    cuda_isa_name,
#define LDM_X(name, params, args) cuda_##name,
    LDM_OPS(LDM_X)
#undef LDM_X
};
