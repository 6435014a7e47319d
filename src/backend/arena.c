/* arena.c - the activation arena.
 *
 * The arena is a bump allocator over one buffer in backend memory: ldm_arena_alloc
 * hands out 64-byte aligned slices, ldm_arena_mark/reset pop back to an earlier
 * point.  A measuring arena (base NULL) only counts: it returns fake, never
 * dereferenced, non-NULL pointers and records the peak, which is the exact size the
 * real arena needs when the same code is run on the dry backend (ops_dry.c).
 */
#include "backend/ops.h"
#include "core/common.h"

#include <stdio.h>
#include <stdlib.h>

/* Fake addresses handed out by a measuring arena start here (never dereferenced). */
#define MEASURE_BASE ((uintptr_t)0x100000)

/* ---- Arena ---- */

void ldm_arena_measure(ldm_arena *a) {
    a->be = NULL;
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
}

int ldm_arena_init(ldm_arena *a, ldm_backend *be, size_t bytes) {
    a->be = be;
    a->cap = (bytes + 63) & ~(size_t)63;
    a->used = a->peak = 0;
    a->base = ldm_be_alloc(be, a->cap ? a->cap : 64);
    if (!a->base) {
        a->cap = 0;
        ldm_backend_status(be);
        return ldm_error_prefix("activation arena: could not allocate %zu bytes of %s memory",
                                bytes, ldm_backend_name(be));
    }
    return 0;
}

void ldm_arena_free(ldm_arena *a) {
    if (a->base && a->be) ldm_be_free(a->be, a->base);
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
}

float *ldm_arena_alloc(ldm_arena *a, size_t n) {
    size_t off = (a->used + 63) & ~(size_t)63;
    size_t bytes = ((n * sizeof(float)) + 63) & ~(size_t)63;
    if (n > SIZE_MAX / sizeof(float) / 2 || (a->base && (off > a->cap || bytes > a->cap - off))) {
        ldm_log(0, "ldm: activation arena overflow: %zu floats requested with %zu of %zu bytes "
                "used (the measuring pass undercounted; this is a bug)\n", n, a->used, a->cap);
        abort();
    }
    a->used = off + bytes;
    if (a->used > a->peak) a->peak = a->used;
    if (!a->base) return (float *)(MEASURE_BASE + off);
    return (float *)(a->base + off);
}
