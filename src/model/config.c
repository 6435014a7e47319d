/* config.c - typed config.json field readers; every error names member and field. */
#include "model/config.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

#include <stdlib.h>

#include "core/common.h"

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

json_t *cfg_parse(const char *text, const char *member) {
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j) {
        ldm_error("%s: invalid JSON at line %d column %d: %s", member, err.line, err.column,
                  err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        ldm_error("%s: expected a JSON object at the top level, found %s", member, json_kind(j));
        json_decref(j);
        return NULL;
    }
    return j;
}

json_t *cfg_load(const ldm_bundle *b, const char *member) {
    const char *text = ldm_bundle_member(b, member, NULL);
    if (!text) {
        ldm_error("%s: missing member %s", ldm_bundle_path(b), member);
        return NULL;
    }
    return cfg_parse(text, member);
}

int cfg_has(const json_t *j, const char *field) {
    const json_t *v = json_object_get(j, field);
    return v && !json_is_null(v);
}

/* The field's value, or NULL with an error when missing/null. */
static const json_t *need(const json_t *j, const char *member, const char *field) {
    const json_t *v = json_object_get(j, field);
    if (!v) { ldm_error("%s: missing field \"%s\"", member, field); return NULL; }
    if (json_is_null(v)) { ldm_error("%s: field \"%s\" is null", member, field); return NULL; }
    return v;
}

static int as_int(const json_t *v, const char *member, const char *field, int *out) {
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < -2147483647 || x > 2147483647)
            return ldm_error("%s: field \"%s\": integer %lld out of range", member, field,
                             (long long)x);
        *out = (int)x;
        return 0;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (x == floor(x) && fabs(x) < 2147483647.0) { *out = (int)x; return 0; }
    }
    return ldm_error("%s: field \"%s\": expected an integer, found %s", member, field,
                     json_kind(v));
}

int cfg_int(const json_t *j, const char *member, const char *field, int *out) {
    const json_t *v = need(j, member, field);
    return v ? as_int(v, member, field, out) : -1;
}

int cfg_int_or(const json_t *j, const char *member, const char *field, int def, int *out) {
    if (!cfg_has(j, field)) { *out = def; return 0; }
    return as_int(json_object_get(j, field), member, field, out);
}

static int as_float(const json_t *v, const char *member, const char *field, float *out) {
    if (!json_is_number(v))
        return ldm_error("%s: field \"%s\": expected a number, found %s", member, field,
                         json_kind(v));
    *out = (float)json_number_value(v);
    return 0;
}

int cfg_float(const json_t *j, const char *member, const char *field, float *out) {
    const json_t *v = need(j, member, field);
    return v ? as_float(v, member, field, out) : -1;
}

int cfg_float_or(const json_t *j, const char *member, const char *field, float def, float *out) {
    if (!cfg_has(j, field)) { *out = def; return 0; }
    return as_float(json_object_get(j, field), member, field, out);
}

static int as_bool(const json_t *v, const char *member, const char *field, int *out) {
    if (!json_is_boolean(v))
        return ldm_error("%s: field \"%s\": expected true or false, found %s", member, field,
                         json_kind(v));
    *out = json_is_true(v);
    return 0;
}

int cfg_bool(const json_t *j, const char *member, const char *field, int *out) {
    const json_t *v = need(j, member, field);
    return v ? as_bool(v, member, field, out) : -1;
}

int cfg_bool_or(const json_t *j, const char *member, const char *field, int def, int *out) {
    if (!cfg_has(j, field)) { *out = def; return 0; }
    return as_bool(json_object_get(j, field), member, field, out);
}

static int as_str(const json_t *v, const char *member, const char *field, const char **out) {
    if (!json_is_string(v))
        return ldm_error("%s: field \"%s\": expected a string, found %s", member, field,
                         json_kind(v));
    *out = json_string_value(v);
    return 0;
}

int cfg_str(const json_t *j, const char *member, const char *field, const char **out) {
    const json_t *v = need(j, member, field);
    return v ? as_str(v, member, field, out) : -1;
}

int cfg_str_or(const json_t *j, const char *member, const char *field, const char *def,
               const char **out) {
    if (!cfg_has(j, field)) { *out = def; return 0; }
    return as_str(json_object_get(j, field), member, field, out);
}

/* The field as a list of at most max entries; NULL with an error otherwise. */
static const json_t *need_list(const json_t *j, const char *member, const char *field, int max) {
    const json_t *v = need(j, member, field);
    if (!v) return NULL;
    if (!json_is_array(v)) {
        ldm_error("%s: field \"%s\": expected a list, found %s", member, field, json_kind(v));
        return NULL;
    }
    if (json_array_size(v) > (size_t)max) {
        ldm_error("%s: field \"%s\": list has %zu entries, at most %d supported", member, field,
                  json_array_size(v), max);
        return NULL;
    }
    return v;
}

int cfg_int_list(const json_t *j, const char *member, const char *field, int *out, int max,
                 int *n) {
    const json_t *v = need_list(j, member, field, max);
    if (!v) return -1;
    char name[256];
    for (size_t i = 0; i < json_array_size(v); i++) {
        snprintf(name, sizeof name, "%s[%zu]", field, i);
        if (as_int(json_array_get(v, i), member, name, &out[i])) return -1;
    }
    *n = (int)json_array_size(v);
    return 0;
}

int cfg_int_or_list(const json_t *j, const char *member, const char *field, int n, int *out) {
    const json_t *v = need(j, member, field);
    if (!v) return -1;
    if (json_is_number(v)) {
        int x;
        if (as_int(v, member, field, &x)) return -1;
        for (int i = 0; i < n; i++) out[i] = x;
        return 0;
    }
    if (!json_is_array(v))
        return ldm_error("%s: field \"%s\": expected an integer or a list of %d integers, "
                         "found %s", member, field, n, json_kind(v));
    if (json_array_size(v) != (size_t)n)
        return ldm_error("%s: field \"%s\": expected %d entries (one per block), found %zu",
                         member, field, n, json_array_size(v));
    int m;
    return cfg_int_list(j, member, field, out, n, &m);
}

int cfg_int_or_list_or(const json_t *j, const char *member, const char *field, int n, int def,
                       int *out) {
    if (!cfg_has(j, field)) {
        for (int i = 0; i < n; i++) out[i] = def;
        return 0;
    }
    return cfg_int_or_list(j, member, field, n, out);
}

int cfg_bool_or_list_or(const json_t *j, const char *member, const char *field, int n, int def,
                        int *out) {
    if (!cfg_has(j, field)) {
        for (int i = 0; i < n; i++) out[i] = def;
        return 0;
    }
    const json_t *v = json_object_get(j, field);
    if (json_is_boolean(v)) {
        for (int i = 0; i < n; i++) out[i] = json_is_true(v);
        return 0;
    }
    if (!json_is_array(v))
        return ldm_error("%s: field \"%s\": expected a boolean or a list of %d booleans, "
                         "found %s", member, field, n, json_kind(v));
    if (json_array_size(v) != (size_t)n)
        return ldm_error("%s: field \"%s\": expected %d entries (one per block), found %zu",
                         member, field, n, json_array_size(v));
    char name[256];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s[%d]", field, i);
        if (as_bool(json_array_get(v, i), member, name, &out[i])) return -1;
    }
    return 0;
}

int cfg_str_list(const json_t *j, const char *member, const char *field, const char **out,
                 int max, int *n) {
    const json_t *v = need_list(j, member, field, max);
    if (!v) return -1;
    char name[256];
    for (size_t i = 0; i < json_array_size(v); i++) {
        snprintf(name, sizeof name, "%s[%zu]", field, i);
        if (as_str(json_array_get(v, i), member, name, &out[i])) return -1;
    }
    *n = (int)json_array_size(v);
    return 0;
}

static int in_range(int v, const char *member, const char *field, int min, int max) {
    if (v >= min && v <= max) return 0;
    return ldm_error("%s: field \"%s\": %d is out of range (expected %d..%d)", member, field, v,
                     min, max);
}

int cfg_count(const json_t *j, const char *member, const char *field, int min, int max, int *out) {
    int v;
    if (cfg_int(j, member, field, &v) || in_range(v, member, field, min, max)) return -1;
    *out = v;
    return 0;
}

int cfg_count_or(const json_t *j, const char *member, const char *field, int def, int min,
                 int max, int *out) {
    int v;
    if (cfg_int_or(j, member, field, def, &v) || in_range(v, member, field, min, max)) return -1;
    *out = v;
    return 0;
}

int cfg_count_list(const json_t *j, const char *member, const char *field, int *out, int maxn,
                   int *n, int min, int max) {
    if (cfg_int_list(j, member, field, out, maxn, n)) return -1;
    char name[256];
    for (int i = 0; i < *n; i++) {
        snprintf(name, sizeof name, "%s[%d]", field, i);
        if (in_range(out[i], member, name, min, max)) return -1;
    }
    return 0;
}

ldm_tensor *ldm_load_weight(ldm_loader *L, int ndim, int64_t d0, int64_t d1, int64_t d2,
                            int64_t d3, const char *fmt, ...) {
    if (L->failed || (!L->b && !L->want)) return NULL;   /* !b: a weightless model (shapes only) */
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const int64_t shape[4] = {d0, d1, d2, d3};
    if (!L->b) {
        L->want(L->want_user, name, ndim, shape);
        return NULL;
    }
    ldm_tensor *t = ldm_bundle_need(L->b, name, ndim, shape);
    if (!t) { L->failed = 1; return NULL; }
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 256;
        ldm_tensor **w = realloc(L->w, L->cap * sizeof *w);
        if (!w) { L->failed = 1; ldm_error("out of memory listing weights"); return NULL; }
        L->w = w;
    }
    L->w[L->n++] = t;
    return t;
}

int ldm_loader_finish(ldm_loader *L, void **weights_buf) {
    *weights_buf = NULL;
    int rc = L->failed ? -1 : 0;
    if (!rc && L->be && ldm_be_prepare_weights(L->be, L->w, L->n, weights_buf)) {
        ldm_error_prefix("%s: preparing %zu weights for the %s backend",
                         L->b ? ldm_bundle_path(L->b) : "model", L->n, ldm_backend_name(L->be));
        rc = -1;
    }
    free(L->w);
    L->w = NULL;
    L->n = L->cap = 0;
    return rc;
}
