/* arena.c - the activation arena, the "dry" backend, and the CUDA fallback.
 *
 * The arena is a bump allocator over one buffer in backend memory: ldm_arena_alloc
 * hands out 64-byte aligned slices, ldm_arena_mark/reset pop back to an earlier
 * point.  A measuring arena (base NULL) only counts: it returns fake, never
 * dereferenced, non-NULL pointers and records the peak, which is the exact size the
 * real arena needs when the same code is run on the dry backend, whose ops do nothing.
 */
#include "backend/ops.h"
#include "core/common.h"

#include <stdio.h>
#include <stdlib.h>

/* Fake addresses handed out by a measuring arena start here (never dereferenced). */
#define MEASURE_BASE ((uintptr_t)0x100000)

/* ---- Dry backend: every op is a no-op. ---- */

static _Alignas(64) float dry_dummy[16];

static void *dry_alloc(size_t bytes) { (void)bytes; return dry_dummy; }
static void dry_free(void *p) { (void)p; }
static void dry_move(float *dst, const float *src, size_t n) { (void)dst; (void)src; (void)n; }
static void dry_fill(float *dst, float value, size_t n) { (void)dst; (void)value; (void)n; }
static void dry_synchronize(void) {}
static int dry_prepare_weight(ldm_tensor *w) { (void)w; return 0; }
static void dry_linear(float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int M, int K, int N) {
    (void)out; (void)x; (void)w; (void)b; (void)M; (void)K; (void)N;
}
static void dry_conv2d(float *out, const float *x, const ldm_tensor *w, const ldm_tensor *b,
                       int N, int Cin, int H, int W, int Cout, int k, int stride, int pad) {
    (void)out; (void)x; (void)w; (void)b; (void)N; (void)Cin; (void)H; (void)W;
    (void)Cout; (void)k; (void)stride; (void)pad;
}
static void dry_group_norm(float *out, const float *x, const ldm_tensor *gamma,
                           const ldm_tensor *beta, int N, int C, int HW, int groups, float eps,
                           int silu) {
    (void)out; (void)x; (void)gamma; (void)beta; (void)N; (void)C; (void)HW; (void)groups;
    (void)eps; (void)silu;
}
static void dry_layer_norm(float *out, const float *x, const ldm_tensor *gamma,
                           const ldm_tensor *beta, int M, int C, float eps) {
    (void)out; (void)x; (void)gamma; (void)beta; (void)M; (void)C; (void)eps;
}
static void dry_attention(float *out, const float *q, const float *k, const float *v, int B,
                          int heads, int Tq, int Tk, int D, int q_stride, int kv_stride,
                          float scale, int causal) {
    (void)out; (void)q; (void)k; (void)v; (void)B; (void)heads; (void)Tq; (void)Tk; (void)D;
    (void)q_stride; (void)kv_stride; (void)scale; (void)causal;
}
static void dry_binary(float *out, const float *a, const float *b, size_t n) {
    (void)out; (void)a; (void)b; (void)n;
}
static void dry_scale(float *out, const float *x, float s, size_t n) {
    (void)out; (void)x; (void)s; (void)n;
}
static void dry_unary(float *out, const float *x, size_t n) { (void)out; (void)x; (void)n; }
static void dry_geglu(float *out, const float *x, int M, int N) {
    (void)out; (void)x; (void)M; (void)N;
}
static void dry_add_channel_bias(float *x, const float *v, int N, int C, int HW) {
    (void)x; (void)v; (void)N; (void)C; (void)HW;
}
static void dry_upsample(float *out, const float *x, int N, int C, int H, int W) {
    (void)out; (void)x; (void)N; (void)C; (void)H; (void)W;
}
static void dry_resize(float *out, const float *x, int N, int C, int H, int W, int Ho, int Wo) {
    (void)out; (void)x; (void)N; (void)C; (void)H; (void)W; (void)Ho; (void)Wo;
}
static void dry_concat(float *out, const float *a, int Ca, const float *b, int Cb, int N,
                       int HW) {
    (void)out; (void)a; (void)Ca; (void)b; (void)Cb; (void)N; (void)HW;
}
static void dry_transpose(float *out, const float *x, int N, int C, int HW) {
    (void)out; (void)x; (void)N; (void)C; (void)HW;
}
static void dry_embedding(float *out, const ldm_tensor *table, const int32_t *ids, int n,
                          int C) {
    (void)out; (void)table; (void)ids; (void)n; (void)C;
}
static void dry_add_positional(float *out, const ldm_tensor *table, int B, int T, int C) {
    (void)out; (void)table; (void)B; (void)T; (void)C;
}

const ldm_backend ldm_backend_dry = {
    .name = "dry",
    .alloc = dry_alloc,
    .free = dry_free,
    .upload = dry_move,
    .download = dry_move,
    .copy = dry_move,
    .fill = dry_fill,
    .synchronize = dry_synchronize,
    .prepare_weight = dry_prepare_weight,
    .linear = dry_linear,
    .conv2d = dry_conv2d,
    .group_norm = dry_group_norm,
    .layer_norm = dry_layer_norm,
    .attention = dry_attention,
    .add = dry_binary,
    .scale = dry_scale,
    .silu = dry_unary,
    .gelu = dry_unary,
    .quick_gelu = dry_unary,
    .geglu = dry_geglu,
    .add_channel_bias = dry_add_channel_bias,
    .upsample_nearest2x = dry_upsample,
    .upsample_nearest = dry_resize,
    .concat_channels = dry_concat,
    .nchw_to_nhwc = dry_transpose,
    .nhwc_to_nchw = dry_transpose,
    .embedding = dry_embedding,
    .add_positional = dry_add_positional,
};

#ifndef LDM_CUDA
const ldm_backend *ldm_backend_cuda(void) {
    ldm_error("CUDA backend: ldm was built without CUDA (rebuild with nvcc available)");
    return NULL;
}
#endif

/* ---- Arena ---- */

void ldm_arena_measure(ldm_arena *a) {
    a->be = &ldm_backend_dry;
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
}

int ldm_arena_init(ldm_arena *a, const ldm_backend *be, size_t bytes) {
    a->be = be;
    a->cap = (bytes + 63) & ~(size_t)63;
    a->used = a->peak = 0;
    a->base = be->alloc(a->cap ? a->cap : 64);
    if (!a->base) {
        a->cap = 0;
        return ldm_error("activation arena: could not allocate %zu bytes of %s memory", bytes,
                         be->name);
    }
    return 0;
}

void ldm_arena_free(ldm_arena *a) {
    if (a->base && a->be) a->be->free(a->base);
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
}

float *ldm_arena_alloc(ldm_arena *a, size_t n) {
    size_t off = (a->used + 63) & ~(size_t)63;
    size_t bytes = ((n * sizeof(float)) + 63) & ~(size_t)63;
    if (n > SIZE_MAX / sizeof(float) / 2 || (a->base && (off > a->cap || bytes > a->cap - off))) {
        fprintf(stderr,
                "ldm: activation arena overflow: %zu floats requested with %zu of %zu bytes "
                "used (the measuring pass undercounted; this is a bug)\n",
                n, a->used, a->cap);
        abort();
    }
    a->used = off + bytes;
    if (a->used > a->peak) a->peak = a->used;
    if (!a->base) return (float *)(MEASURE_BASE + off);
    return (float *)(a->base + off);
}
