/* ops_dry.c - the "dry" backend: every op is a no-op that succeeds.
 *
 * Running a forward pass on it with a measuring arena (ldm_arena_measure) sizes the
 * activation arena exactly, and loading a model on it checks every weight's name and
 * shape without touching the data (ldmpack's model check).  Generated from the op list.
 */
#include "backend/ops.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

static _Alignas(64) float dry_dummy[16];

static void *dry_alloc(ldm_backend *be, size_t bytes) { return dry_dummy; }
static void dry_free(ldm_backend *be, void *p) {}
static int dry_move(ldm_backend *be, float *dst, const float *src, size_t n) { return 0; }

#define LDM_X(name, params, args) \
    static int dry_##name LDM_BE_PARAMS params { return 0; }
LDM_OPS(LDM_X)
#undef LDM_X

const ldm_backend_ops ldm_backend_ops_dry = {
    .name = "dry",
    .no_data = 1,
    .alloc = dry_alloc,
    .free = dry_free,
    .upload = dry_move,
    .download = dry_move,
#define LDM_X(name, params, args) .name = dry_##name,
    LDM_OPS(LDM_X)
#undef LDM_X
};
