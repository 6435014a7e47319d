/* ops.c - the backend front: handles, status, the checked ldm_op_* calls, the profile
 * and the fault injection.  See ops.h.
 *
 * Every op goes through one generated wrapper (FRONT below):
 *   handle already failed -> -1 at once (the op does nothing);
 *   check_NAME(...)       -> a bad argument fails the handle, naming the op and the
 *                            tensor (a bug in model code, or a weight of the wrong shape);
 *   fault injection       -> the opts.fail_op-th call fails as a real backend failure;
 *   the backend's op      -> timed when opts.profile is set.
 */
#include "backend/ops.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"

const char *const ldm_op_names[LDM_OP_COUNT] = {
#define LDM_X(name, params, args) #name,
    LDM_OPS(LDM_X)
#undef LDM_X
};

extern const ldm_backend_ops ldm_backend_ops_dry;
#ifndef LDM_NO_CPU_BACKEND   /* the fuzz build leaves the CPU kernels out (OpenMP, BLAS) */
extern const ldm_backend_ops ldm_backend_ops_cpu;
#endif
#ifdef LDM_CUDA
extern const ldm_backend_ops ldm_backend_ops_cuda;
#endif

int ldm_backend_have_cuda(void) {
#ifdef LDM_CUDA
    return 1;
#else
    return 0;
#endif
}

ldm_backend *ldm_backend_new(const char *name, const ldm_backend_opts *opts) {
    const ldm_backend_ops *ops = NULL;
    if (!strcmp(name, "cpu")) {
#ifndef LDM_NO_CPU_BACKEND
        ops = &ldm_backend_ops_cpu;
#else
        ldm_error("CPU backend: not in this build");
        return NULL;
#endif
    } else if (!strcmp(name, "dry")) ops = &ldm_backend_ops_dry;
    else if (!strcmp(name, "cuda")) {
#ifdef LDM_CUDA
        ops = &ldm_backend_ops_cuda;
#else
        ldm_error("CUDA backend: ldm was built without CUDA (rebuild with nvcc available)");
        return NULL;
#endif
    } else {
        ldm_error_kind(LDM_USAGE, "unknown backend \"%s\": expected cpu, cuda or dry", name);
        return NULL;
    }
    ldm_backend *be = ldm_xcalloc(1, sizeof *be);
    be->ops = ops;
    be->failed_op = -1;
    if (opts) be->opts = *opts;
    if (ops->init && ops->init(be)) {
        free(be);
        return NULL;
    }
    return be;
}

void ldm_backend_free(ldm_backend *be) {
    if (!be) return;
    if (be->ops->destroy) be->ops->destroy(be);
    free(be);
}

const char *ldm_backend_precision_name(ldm_backend *be) {
    return be->ops->precision_name ? be->ops->precision_name(be) : "fp32";
}
const char *ldm_backend_isa_name(ldm_backend *be) {
    return be->ops->isa_name ? be->ops->isa_name(be) : be->ops->name;
}
const char *ldm_backend_name(const ldm_backend *be) { return be->ops->name; }

int ldm_backend_fail(ldm_backend *be, const char *fmt, ...) {
    if (be->failed) return -1;
    be->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->error, sizeof be->error, fmt, ap);
    va_end(ap);
    return -1;
}

int ldm_backend_status(ldm_backend *be) {
    if (!be->failed && be->ops->synchronize) be->ops->synchronize(be);
    if (!be->failed) return 0;
    if (be->failed_op >= 0)
        return ldm_error("%s backend: op %s: %s", be->ops->name, ldm_op_names[be->failed_op],
                         be->error);
    return ldm_error("%s backend: %s", be->ops->name, be->error);
}

double ldm_backend_gflop(const ldm_backend *be) {
    double f = 0;
    for (int i = 0; i < LDM_OP_COUNT; i++) f += be->op_flops[i];
    return f * 1e-9;
}

int ldm_backend_profile(const ldm_backend *be, ldm_op_stat out[LDM_OP_COUNT]) {
    for (int i = 0; i < LDM_OP_COUNT; i++) {
        out[i].name = ldm_op_names[i];
        out[i].calls = be->op_count[i];
        out[i].seconds = be->op_seconds[i];
        out[i].gflop = be->op_flops[i] * 1e-9;
    }
    return LDM_OP_COUNT;
}

/* ------------------------------------------------------------------------------------ */
/* argument checks: 0, or -1 with the reason in msg */

typedef struct { char *msg; size_t cap; double flops; } why;  /* flops: of the products */

static int bad(why *y, const char *fmt, ...) LDM_PRINTF(2, 3);
static int bad(why *y, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(y->msg, y->cap, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *tname(const ldm_tensor *t) { return t && t->name ? t->name : "(unnamed)"; }

/* t has the given shape (ndim dims) and fp16 data. */
static int want_shape(why *y, const ldm_tensor *t, const char *role, int ndim, int64_t d0,
                      int64_t d1, int64_t d2, int64_t d3) {
    if (!t) return bad(y, "%s: no tensor", role);
    if (!t->f16) return bad(y, "%s %s: no data", role, tname(t));
    if (t->dtype != LDM_DT_F16) return bad(y, "%s %s: dtype %d is not fp16", role, tname(t), (int)t->dtype);
    const int64_t d[4] = {d0, d1, d2, d3};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == d[i];
    if (ok) return 0;
    char got[96] = "", exp[96] = "";
    for (int i = 0; i < t->ndim && i < 4; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    for (int i = 0; i < ndim; i++)
        snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? ", " : "", (long long)d[i]);
    return bad(y, "%s %s: shape [%s], expected [%s]", role, tname(t), got, exp);
}

#define NEED(cond, ...) do { if (!(cond)) return bad(y, __VA_ARGS__); } while (0)
#define PTRS2(a, b) NEED((a) && (b), "NULL buffer")
#define PTRS3(a, b, c) NEED((a) && (b) && (c), "NULL buffer")

static int check_linear(why *y, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                        int M, int K, int N) {
    PTRS2(out, x);
    NEED(M > 0 && K > 0 && N > 0, "sizes M=%d K=%d N=%d must be positive", M, K, N);
    if (want_shape(y, w, "weight", 2, N, K, 0, 0)) return -1;
    if (b && want_shape(y, b, "bias", 1, N, 0, 0, 0)) return -1;
    y->flops = 2.0 * M * K * N;
    return 0;
}
static int check_conv2d(why *y, float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                        int N, int Cin, int H, int W, int Cout, int k, int stride, int pad) {
    PTRS2(out, x);
    NEED(N > 0 && Cin > 0 && H > 0 && W > 0 && Cout > 0 && k > 0 && stride > 0 && pad >= 0,
         "sizes N=%d Cin=%d H=%d W=%d Cout=%d k=%d stride=%d pad=%d out of range", N, Cin, H, W,
         Cout, k, stride, pad);
    NEED(H + 2 * pad >= k && W + 2 * pad >= k, "kernel %d larger than the padded input %dx%d", k, H, W);
    if (want_shape(y, w, "weight", 4, Cout, Cin, k, k)) return -1;
    if (b && want_shape(y, b, "bias", 1, Cout, 0, 0, 0)) return -1;
    y->flops = 2.0 * N * Cout * Cin * k * k * (double)((H + 2 * pad - k) / stride + 1) *
               ((W + 2 * pad - k) / stride + 1);
    return 0;
}
static int check_group_norm(why *y, float *out, const float *x, const ldm_tensor *gamma,
                            const ldm_tensor *beta, int N, int C, int HW, int groups, float eps,
                            int silu) {
    (void)silu;
    PTRS2(out, x);
    NEED(N > 0 && C > 0 && HW > 0 && groups > 0 && C % groups == 0,
         "N=%d C=%d HW=%d groups=%d (C must be a multiple of groups)", N, C, HW, groups);
    NEED(eps > 0 && isfinite(eps), "eps %g must be a positive number", (double)eps);
    if (want_shape(y, gamma, "weight", 1, C, 0, 0, 0) || want_shape(y, beta, "bias", 1, C, 0, 0, 0))
        return -1;
    return 0;
}
static int check_layer_norm(why *y, float *out, const float *x, const ldm_tensor *gamma,
                            const ldm_tensor *beta, int M, int C, float eps) {
    PTRS2(out, x);
    NEED(M > 0 && C > 0, "sizes M=%d C=%d must be positive", M, C);
    NEED(eps > 0 && isfinite(eps), "eps %g must be a positive number", (double)eps);
    if (want_shape(y, gamma, "weight", 1, C, 0, 0, 0) || want_shape(y, beta, "bias", 1, C, 0, 0, 0))
        return -1;
    return 0;
}
static int check_attention(why *y, float *out, const float *q, const float *k, const float *v, int B,
                           int heads, int Tq, int Tk, int D, int q_stride, int kv_stride, float scale,
                           int causal) {
    (void)causal;
    NEED(out && q && k && v, "NULL buffer");
    NEED(B > 0 && heads > 0 && Tq > 0 && Tk > 0 && D > 0, "sizes B=%d heads=%d Tq=%d Tk=%d D=%d must be positive",
         B, heads, Tq, Tk, D);
    NEED((long)heads * D <= q_stride && (long)heads * D <= kv_stride,
         "heads*D = %ld exceeds the row strides %d / %d", (long)heads * D, q_stride, kv_stride);
    NEED(isfinite(scale), "scale is not finite");
    NEED(out != q && out != k && out != v, "out overlaps an input");
    y->flops = 4.0 * B * heads * Tq * (double)Tk * D;
    return 0;
}
static int check_add(why *y, float *out, const float *a, const float *b, size_t n) {
    (void)n;
    PTRS3(out, a, b);
    return 0;
}
static int check_scale(why *y, float *out, const float *x, float s, size_t n) {
    (void)s; (void)n;
    PTRS2(out, x);
    return 0;
}
static int check_unary(why *y, float *out, const float *x, size_t n) {
    (void)n;
    PTRS2(out, x);
    return 0;
}
#define check_silu check_unary
#define check_gelu check_unary
#define check_quick_gelu check_unary
static int check_geglu(why *y, float *out, const float *x, int M, int N) {
    PTRS2(out, x);
    NEED(M > 0 && N > 0, "sizes M=%d N=%d must be positive", M, N);
    return 0;
}
static int check_add_channel_bias(why *y, float *x, const float *v, int N, int C, int HW) {
    PTRS2(x, v);
    NEED(N > 0 && C > 0 && HW > 0, "sizes N=%d C=%d HW=%d must be positive", N, C, HW);
    return 0;
}
static int check_upsample_nearest2x(why *y, float *out, const float *x, int N, int C, int H, int W) {
    PTRS2(out, x);
    NEED(N > 0 && C > 0 && H > 0 && W > 0, "sizes N=%d C=%d H=%d W=%d must be positive", N, C, H, W);
    return 0;
}
static int check_upsample_nearest(why *y, float *out, const float *x, int N, int C, int H, int W,
                                  int Ho, int Wo) {
    PTRS2(out, x);
    NEED(N > 0 && C > 0 && H > 0 && W > 0 && Ho > 0 && Wo > 0,
         "sizes N=%d C=%d %dx%d -> %dx%d must be positive", N, C, H, W, Ho, Wo);
    return 0;
}
static int check_concat_channels(why *y, float *out, const float *a, int Ca, const float *b, int Cb,
                                 int N, int HW) {
    PTRS3(out, a, b);
    NEED(Ca > 0 && Cb > 0 && N > 0 && HW > 0, "sizes Ca=%d Cb=%d N=%d HW=%d must be positive", Ca, Cb, N, HW);
    return 0;
}
static int check_transpose(why *y, float *out, const float *x, int N, int C, int HW) {
    PTRS2(out, x);
    NEED(N > 0 && C > 0 && HW > 0, "sizes N=%d C=%d HW=%d must be positive", N, C, HW);
    NEED(out != x, "out overlaps x");
    return 0;
}
#define check_nchw_to_nhwc check_transpose
#define check_nhwc_to_nchw check_transpose
static int check_embedding(why *y, float *out, const ldm_tensor *table, const int32_t *ids, int n, int C) {
    PTRS2(out, ids);
    NEED(n > 0 && C > 0, "sizes n=%d C=%d must be positive", n, C);
    if (!table || table->ndim != 2) return bad(y, "table %s: expected a matrix", tname(table));
    if (want_shape(y, table, "table", 2, table->shape[0], C, 0, 0)) return -1;
    for (int i = 0; i < n; i++)
        NEED(ids[i] >= 0 && ids[i] < table->shape[0], "table %s: id %d outside [0, %lld)",
             tname(table), (int)ids[i], (long long)table->shape[0]);
    return 0;
}
static int check_add_positional(why *y, float *out, const ldm_tensor *table, int B, int T, int C) {
    NEED(out != NULL, "NULL buffer");
    NEED(B > 0 && T > 0 && C > 0, "sizes B=%d T=%d C=%d must be positive", B, T, C);
    if (!table || table->ndim != 2) return bad(y, "table %s: expected a matrix", tname(table));
    NEED(table->shape[0] >= T, "table %s: %lld positions, %d needed", tname(table),
         (long long)table->shape[0], T);
    return want_shape(y, table, "table", 2, table->shape[0], C, 0, 0);
}
static int check_pad2d(why *y, float *out, const float *x, int N, int C, int H, int W, int top,
                       int bottom, int left, int right) {
    PTRS2(out, x);
    NEED(N > 0 && C > 0 && H > 0 && W > 0, "sizes N=%d C=%d H=%d W=%d must be positive", N, C, H, W);
    NEED(top >= 0 && bottom >= 0 && left >= 0 && right >= 0, "negative padding");
    NEED(out != x, "out overlaps x");
    return 0;
}
static int check_copy(why *y, float *dst, const float *src, size_t n) {
    (void)n;
    PTRS2(dst, src);
    return 0;
}
static int check_fill(why *y, float *dst, float value, size_t n) {
    (void)value; (void)n;
    NEED(dst != NULL, "NULL buffer");
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* the generated front */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Before the backend runs op: 0 to go on, -1 when the call must fail. */
static int enter(ldm_backend *be, int op, int check_rc, const char *why_msg) {
    if (be->failed) return -1;
    if (check_rc) {
        be->failed_op = op;
        return ldm_backend_fail(be, "bad arguments: %s", why_msg);
    }
    be->op_calls++;
    if (be->opts.fail_op > 0 && be->op_calls == be->opts.fail_op) {
        be->failed_op = op;
        return ldm_backend_fail(be, "injected failure at op call %ld (LDM_TEST_FAIL_OP)", be->op_calls);
    }
    return 0;
}

static int leave(ldm_backend *be, int op, int rc, double t0) {
    if (rc && be->failed && be->failed_op < 0) be->failed_op = op;
    if (rc && !be->failed) {   /* a backend that forgot to say why */
        be->failed_op = op;
        ldm_backend_fail(be, "failed");
    }
    if (be->opts.profile) {
        be->op_seconds[op] += now_s() - t0;
        be->op_count[op]++;
    }
    return rc ? -1 : 0;
}

#define LDM_BE_ARGS(...) (be, __VA_ARGS__)
#define LDM_CHECK_ARGS(...) (&y, __VA_ARGS__)
#define LDM_X(name, params, args)                                                          \
    int ldm_op_##name LDM_BE_PARAMS params {                                               \
        if (be->failed) return -1;                                                         \
        char msg[512] = "";                                                                \
        why y = {msg, sizeof msg, 0};                                                      \
        int bad_ = be->ops->no_data ? 0 : check_##name LDM_CHECK_ARGS args;               \
        if (enter(be, LDM_OP_##name, bad_, msg)) return -1;                                \
        be->op_flops[LDM_OP_##name] += y.flops;                                            \
        double t0 = be->opts.profile ? now_s() : 0;                                        \
        return leave(be, LDM_OP_##name, be->ops->name LDM_BE_ARGS args, t0);               \
    }
LDM_OPS(LDM_X)
#undef LDM_X

/* ------------------------------------------------------------------------------------ */
/* memory */

void *ldm_be_alloc(ldm_backend *be, size_t bytes) {
    if (be->failed) return NULL;
    void *p = be->ops->alloc(be, bytes ? bytes : 64);
    if (!p && !be->failed) ldm_backend_fail(be, "could not allocate %zu bytes", bytes);
    return p;
}

void ldm_be_free(ldm_backend *be, void *p) {
    if (p) be->ops->free(be, p);
}

int ldm_be_upload(ldm_backend *be, float *dst, const float *host_src, size_t n) {
    if (be->failed) return -1;
    if (!dst || !host_src) return ldm_backend_fail(be, "upload: NULL buffer");
    return be->ops->upload(be, dst, host_src, n) ? -1 : 0;
}

int ldm_be_download(ldm_backend *be, float *host_dst, const float *src, size_t n) {
    if (be->failed) {
        if (host_dst) memset(host_dst, 0, n * sizeof(float));
        return -1;
    }
    if (!host_dst || !src) return ldm_backend_fail(be, "download: NULL buffer");
    if (be->ops->download(be, host_dst, src, n)) {
        memset(host_dst, 0, n * sizeof(float));
        return -1;
    }
    return 0;
}

int ldm_be_prepare_weights(ldm_backend *be, ldm_tensor *const *w, size_t n, void **buf) {
    *buf = NULL;
    if (be->failed) return ldm_backend_status(be);
    for (size_t i = 0; i < n; i++)
        if (!w[i] || !w[i]->f16 || w[i]->dtype != LDM_DT_F16)
            return ldm_error("%s backend: weight %s is not an fp16 tensor", be->ops->name,
                             w[i] && w[i]->name ? w[i]->name : "(none)");
    if (!be->ops->prepare_weights) return 0;
    if (be->ops->prepare_weights(be, w, n, buf)) {
        *buf = NULL;
        return ldm_backend_status(be);
    }
    return 0;
}

void ldm_be_release_weights(ldm_backend *be, void *buf) {
    if (buf && be->ops->release_weights) be->ops->release_weights(be, buf);
}
