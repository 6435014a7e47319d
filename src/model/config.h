/* config.h - helpers for model loaders: typed reads of fields from a diffusers/transformers
 * config.json (jansson), and checked weight lookup with a sticky error (ldm_loader).
 *
 * Model loaders use these so that every error names the member and the field, e.g.
 *   "unet/config.json: field "layers_per_block": expected an integer, found a string".
 * Every function returns 0 on success and -1 with ldm_error set on failure.
 *
 * Conventions:
 * - `member` is the bundle member name (or file path) used in messages only.
 * - The plain readers (cfg_int, cfg_float, ...) require the field; a missing field or
 *   JSON null is an error.  The *_or readers return `def` when the field is missing or
 *   null (diffusers writes null for "use the default"), and an error when it is present
 *   with the wrong type.
 * - Integers: a JSON integer, or a real with an integral value (2.0).  Floats: any number.
 * - Strings returned point into the json object (valid while it lives).
 */
#ifndef LDM_CONFIG_H
#define LDM_CONFIG_H

#include <jansson.h>

#include "backend/ops.h"
#include "core/common.h"
#include "format/bundle.h"
#include "model/model.h"   /* ldm_weight_list_fn */

/* Parse `text` as a JSON object.  NULL with an error naming `member` on failure.
 * The caller json_decref()s the result. */
json_t *cfg_parse(const char *text, const char *member);
/* Read bundle member `member` (e.g. "vae/config.json") and parse it as above. */
json_t *cfg_load(const ldm_bundle *b, const char *member);

/* 1 if the field is present and not null, else 0. */
int cfg_has(const json_t *j, const char *field);

int cfg_int(const json_t *j, const char *member, const char *field, int *out);
int cfg_int_or(const json_t *j, const char *member, const char *field, int def, int *out);
int cfg_float(const json_t *j, const char *member, const char *field, float *out);
int cfg_float_or(const json_t *j, const char *member, const char *field, float def, float *out);
int cfg_bool(const json_t *j, const char *member, const char *field, int *out);
int cfg_bool_or(const json_t *j, const char *member, const char *field, int def, int *out);
int cfg_str(const json_t *j, const char *member, const char *field, const char **out);
int cfg_str_or(const json_t *j, const char *member, const char *field, const char *def,
               const char **out);

/* A list of integers: out[0..*n-1], at most `max` entries (more is an error). */
int cfg_int_list(const json_t *j, const char *member, const char *field, int *out, int max,
                 int *n);
/* An integer or a list of exactly `n` integers (diffusers' "int or tuple" fields such as
 * attention_head_dim, transformer_layers_per_block): a single integer is repeated n times. */
int cfg_int_or_list(const json_t *j, const char *member, const char *field, int n, int *out);
/* Same, but a missing/null field gives `def` repeated n times. */
int cfg_int_or_list_or(const json_t *j, const char *member, const char *field, int n, int def,
                       int *out);
/* A bool or a list of exactly `n` bools (e.g. only_cross_attention); missing/null -> def. */
int cfg_bool_or_list_or(const json_t *j, const char *member, const char *field, int n, int def,
                        int *out);
/* A list of strings: out[0..*n-1] (pointers into j), at most `max` entries. */
int cfg_str_list(const json_t *j, const char *member, const char *field, const char **out,
                 int max, int *n);

/* ---- Counts and dimensions: bounded integers ----
 * Every count or dimension read from a config (a channel count, a layer count, a size)
 * has an explicit maximum from core/limits.h and is read with one of these, so that no
 * value can reach an allocation or a multiplication unchecked.  A value outside [min, max]
 * is an error naming member and field:
 *   text_encoder/config.json: field "num_hidden_layers": 2147483647 is out of range
 *   (expected 1..64) */
int cfg_count(const json_t *j, const char *member, const char *field, int min, int max, int *out);
int cfg_count_or(const json_t *j, const char *member, const char *field, int def, int min,
                 int max, int *out);
/* A list of at most `maxn` counts, each in [min, max] (entries named "field[i]"). */
int cfg_count_list(const json_t *j, const char *member, const char *field, int *out, int maxn,
                   int *n, int min, int max);

/* ---- Weights: look up, check the shape, then prepare them for the backend at once ----
 * The first failure is kept (its message names the tensor) and every later call returns
 * NULL at once, so a loader can fetch all its weights and test L.failed once at the end.
 * ldm_loader_finish hands every weight fetched to the backend in one call (CUDA: one
 * device allocation for the model), returned in *weights_buf for
 * ldm_be_release_weights when the model is freed.  A loader with b == NULL is weightless
 * (a model built from its config alone, for memory planning on the dry backend): every
 * lookup returns NULL without failing:
 *
 *   ldm_loader L = {.b = b, .be = be};
 *   w = ldm_load_weight(&L, LDM_CONV(cout, cin, 3), "vae.decoder.up_blocks.%d.resnets.%d.conv1.weight", i, j);
 *   if (ldm_loader_finish(&L, &m->weights_buf)) goto fail;
 */
typedef struct ldm_loader {
    const ldm_bundle *b;
    ldm_backend *be;
    int failed;
    ldm_tensor **w;      /* every weight fetched, in order */
    size_t n, cap;
    /* with b == NULL: told each weight the loader would fetch (the weight list of a
     * config, ldm_*_list_weights); may be NULL */
    ldm_weight_list_fn want;
    void *want_user;
} ldm_loader;

/* Prepare the fetched weights (unless a fetch failed) and free the list.  0, or -1 with
 * ldm_error (the failed fetch's message, or the backend's). */
int ldm_loader_finish(ldm_loader *L, void **weights_buf);

#define LDM_VEC(n) 1, (int64_t)(n), 0, 0, 0
#define LDM_MAT(n, k) 2, (int64_t)(n), (int64_t)(k), 0, 0
#define LDM_CONV(cout, cin, k) 4, (int64_t)(cout), (int64_t)(cin), (int64_t)(k), (int64_t)(k)

/* ldm_bundle_need(name formatted from fmt, shape), remembered for ldm_loader_finish. */
ldm_tensor *ldm_load_weight(ldm_loader *L, int ndim, int64_t d0, int64_t d1, int64_t d2,
                            int64_t d3, const char *fmt, ...) LDM_PRINTF(7, 8);

#endif
