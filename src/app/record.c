/* record.c - the generation record's views, generated from LDM_RECORD_FIELDS: the PNG
 * "ldm" chunk (encode, decode with range checks), the JSON line of `history --json`
 * and the text of `ldmgen show`.  The database view is in db.c, from the same table.
 */
#include "app/record.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

const ldm_field ldm_record_fields[] = {
#define LDM_X(type, name, views, lo, hi) \
    {#name, LDM_FT_##type, views, lo, hi, offsetof(ldm_gen_record, name)},
    LDM_RECORD_FIELDS(LDM_X)
#undef LDM_X
};
const int ldm_record_field_count = (int)(sizeof ldm_record_fields / sizeof ldm_record_fields[0]);

#define FIELD(r, f, T) ((T *)((char *)(r) + (f)->offset))
#define CFIELD(r, f, T) ((const T *)((const char *)(r) + (f)->offset))

void ldm_record_set(char **field, const char *s) {
    char *n = s ? ldm_xstrdup(s) : NULL;
    free(*field);
    *field = n;
}

void ldm_record_init(ldm_gen_record *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (f->type == LDM_FT_STR) *FIELD(r, f, char *) = ldm_xstrdup("");
    }
    ldm_record_set(&r->status, "running");
    ldm_record_set(&r->ldm_version, LDM_VERSION);
    r->batch_size = 1;
    r->clip_skip = 1;
}

void ldm_record_free(ldm_gen_record *r) {
    if (!r) return;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (f->type == LDM_FT_STR || f->type == LDM_FT_OSTR) free(*FIELD(r, f, char *));
    }
    memset(r, 0, sizeof *r);
}

void ldm_record_copy(ldm_gen_record *dst, const ldm_gen_record *src) {
    *dst = *src;
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (f->type == LDM_FT_STR || f->type == LDM_FT_OSTR) {
            const char *s = *CFIELD(src, f, char *);
            *FIELD(dst, f, char *) = s ? ldm_xstrdup(s) : NULL;
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* JSON */

/* A JSON string of s; bytes that are not valid UTF-8 become U+FFFD. */
static json_t *json_text(const char *s) {
    json_t *v = json_string(s);
    if (v) return v;
    size_t n = strlen(s);
    char *o = ldm_xmalloc(3 * n + 1), *p = o;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = k > 0 && i + k <= n;
        for (size_t j = 1; ok && j < k; j++) ok = ((unsigned char)s[i + j] >> 6) == 2;
        if (ok && k > 1) {   /* reject overlong forms and surrogates as jansson does */
            json_t *t = json_stringn(s + i, k);
            ok = t != NULL;
            json_decref(t);
        }
        if (ok) {
            memcpy(p, s + i, k);
            p += k;
            i += k;
        } else {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
            i++;
        }
    }
    *p = 0;
    v = json_string(o);
    free(o);
    return v ? v : json_string("");
}

static json_t *field_json(const ldm_gen_record *r, const ldm_field *f) {
    switch (f->type) {
    case LDM_FT_STR: case LDM_FT_OSTR: {
        const char *s = *CFIELD(r, f, char *);
        return s ? json_text(s) : json_null();
    }
    case LDM_FT_U64: {
        char b[32];
        snprintf(b, sizeof b, "%llu", (unsigned long long)*CFIELD(r, f, uint64_t));
        return json_string(b);
    }
    case LDM_FT_INT: return json_integer(*CFIELD(r, f, int));
    case LDM_FT_DBL: return json_real(*CFIELD(r, f, double));
    case LDM_FT_BOOL: return json_boolean(*CFIELD(r, f, int));
    case LDM_FT_ID: {
        int64_t v = *CFIELD(r, f, int64_t);
        return v ? json_integer(v) : json_null();
    }
    case LDM_FT_GRID: {
        const ldm_grid_spec *g = CFIELD(r, f, ldm_grid_spec);
        if (g->rows <= 0) return NULL;
        json_t *o = json_object(), *gv = json_array(), *nv = json_array();
        for (int i = 0; i < g->rows; i++) json_array_append_new(gv, json_real(g->guidance[i]));
        for (int i = 0; i < g->cols; i++) json_array_append_new(nv, json_integer(g->steps[i]));
        json_object_set_new(o, "guidance", gv);
        json_object_set_new(o, "steps", nv);
        return o;
    }
    }
    return json_null();
}

static char *dump(json_t *o, size_t flags) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII | flags);
    json_decref(o);
    if (!s) {
        ldm_log(0, "ldm: out of memory (JSON)\n");
        abort();
    }
    char *r = ldm_xstrdup(s);
    free(s);
    return r;
}

static json_t *record_object(const ldm_gen_record *r, int views) {
    json_t *o = json_object();
    for (int i = 0; i < ldm_record_field_count; i++) {
        const ldm_field *f = &ldm_record_fields[i];
        if (!(f->views & views)) continue;
        json_t *v = field_json(r, f);
        if (v) json_object_set_new(o, f->name, v);
    }
    return o;
}

char *ldm_record_png_json(const ldm_gen_record *r) {
    return dump(record_object(r, LDM_V_P), 0);
}

char *ldm_record_json(const ldm_gen_record *r) {
    return dump(record_object(r, LDM_V_H), JSON_REAL_PRECISION(15));
}

char *ldm_escape_controls(const char *s) {
    size_t n = strlen(s);
    char *o = ldm_xmalloc(4 * n + 1), *p = o;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) p += sprintf(p, "\\x%02x", c);
        else *p++ = (char)c;
    }
    *p = 0;
    return o;
}

char *ldm_record_text(const ldm_gen_record *r) {
    json_t *o = record_object(r, LDM_V_H);
    size_t cap = 256, len = 0;
    char *out = ldm_xmalloc(cap);
    out[0] = 0;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        char *val;
        if (json_is_string(v)) val = ldm_escape_controls(json_string_value(v));
        else if (json_is_null(v)) val = ldm_xstrdup("-");
        else {
            char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
            val = ldm_xstrdup(s ? s : "?");
            free(s);
        }
        size_t need = len + strlen(key) + strlen(val) + 24;
        if (need > cap) {
            cap = need * 2;
            char *t = ldm_xmalloc(cap);
            memcpy(t, out, len + 1);
            free(out);
            out = t;
        }
        len += (size_t)sprintf(out + len, "%-16s %s\n", key, val);
        free(val);
    }
    json_decref(o);
    return out;
}

/* ------------------------------------------------------------------------------------ */
/* decoding the PNG chunk */

static int bad_field(const char *where, const ldm_field *f, const char *what) {
    return ldm_error_kind(LDM_DATA, "%s: field \"%s\": %s", where, f->name, what);
}

static int parse_grid(json_t *g, const char *where, ldm_grid_spec *out) {
    memset(out, 0, sizeof *out);
    if (!g) return 0;
    json_t *gv = json_object_get(g, "guidance"), *nv = json_object_get(g, "steps");
    size_t ng = json_array_size(gv), nn = json_array_size(nv);
    if (!json_is_object(g) || !json_is_array(gv) || !json_is_array(nv) || ng < 1 || nn < 1 ||
        ng > LDM_GRID_MAX || nn > LDM_GRID_MAX)
        return ldm_error_kind(LDM_DATA, "%s: field \"grid\": expected {\"guidance\": [1..%d numbers], "
                              "\"steps\": [1..%d integers]}", where, LDM_GRID_MAX, LDM_GRID_MAX);
    for (size_t i = 0; i < ng; i++) {
        json_t *v = json_array_get(gv, i);
        if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= 100))
            return ldm_error_kind(LDM_DATA, "%s: grid guidance %zu is not a number from 0 to 100", where, i);
        out->guidance[i] = json_number_value(v);
    }
    for (size_t i = 0; i < nn; i++) {
        json_t *v = json_array_get(nv, i);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000)
            return ldm_error_kind(LDM_DATA, "%s: grid steps %zu is not an integer from 1 to 1000", where, i);
        out->steps[i] = (int)json_integer_value(v);
    }
    out->rows = (int)ng;
    out->cols = (int)nn;
    return 0;
}

/* Fields named *_sha256 hold a SHA-256 in hex: the picture copies are found by it
 * (images/<sha>.png), so nothing else may pass. */
static int is_sha_field(const char *name) {
    size_t n = strlen(name);
    return n >= 6 && !strcmp(name + n - 6, "sha256");
}
static int is_sha256_hex(const char *s) {
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return s[64] == '\0';
}

static int parse_field(json_t *o, const char *where, const ldm_field *f, ldm_gen_record *r) {
    json_t *v = json_object_get(o, f->name);
    char msg[128];
    if (!v && (f->views & LDM_V_A)) return 0;   /* a field newer than the image: its default */
    switch (f->type) {
    case LDM_FT_STR: case LDM_FT_OSTR:
        if (f->type == LDM_FT_OSTR && (!v || json_is_null(v))) {
            ldm_record_set(FIELD(r, f, char *), NULL);
            return 0;
        }
        if (!json_is_string(v)) return bad_field(where, f, "expected a string");
        if (is_sha_field(f->name) && !is_sha256_hex(json_string_value(v)))
            return bad_field(where, f, "expected 64 lowercase hex digits (a SHA-256)");
        ldm_record_set(FIELD(r, f, char *), json_string_value(v));
        return 0;
    case LDM_FT_U64: {
        const char *s = json_string_value(v);
        if (!s) return bad_field(where, f, "expected a decimal number in a string");
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (!s[0] || *end || errno || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
            char m[160];
            snprintf(m, sizeof m, "expected a decimal number, found \"%.40s\"", s);
            return bad_field(where, f, m);
        }
        *FIELD(r, f, uint64_t) = x;
        return 0;
    }
    case LDM_FT_INT:
        if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)f->lo ||
            json_integer_value(v) > (json_int_t)f->hi) {
            snprintf(msg, sizeof msg, "expected an integer from %g to %g", f->lo, f->hi);
            return bad_field(where, f, msg);
        }
        *FIELD(r, f, int) = (int)json_integer_value(v);
        return 0;
    case LDM_FT_DBL: {
        double d = json_number_value(v);
        if (!json_is_number(v) || !isfinite(d) || d < f->lo || d > f->hi) {
            snprintf(msg, sizeof msg, "expected a number from %g to %g", f->lo, f->hi);
            return bad_field(where, f, msg);
        }
        *FIELD(r, f, double) = d;
        return 0;
    }
    case LDM_FT_BOOL:
        if (!json_is_boolean(v)) return bad_field(where, f, "expected true or false");
        *FIELD(r, f, int) = json_is_true(v);
        return 0;
    case LDM_FT_ID:
        if (!v || json_is_null(v)) { *FIELD(r, f, int64_t) = 0; return 0; }
        if (!json_is_integer(v) || json_integer_value(v) < 1) return bad_field(where, f, "expected a positive integer");
        *FIELD(r, f, int64_t) = json_integer_value(v);
        return 0;
    case LDM_FT_GRID:
        return parse_grid(v, where, FIELD(r, f, ldm_grid_spec));
    }
    return 0;
}

int ldm_record_parse_png(const char *text, const char *where, ldm_gen_record *r) {
    ldm_record_init(r);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o || !json_is_object(o)) {
        if (o) json_decref(o);
        ldm_record_free(r);
        return ldm_error_kind(LDM_DATA, "%s: not a JSON object (%s)", where,
                              o ? "other JSON value" : je.text);
    }
    int rc = 0;
    for (int i = 0; i < ldm_record_field_count && !rc; i++)
        if (ldm_record_fields[i].views & LDM_V_P) rc = parse_field(o, where, &ldm_record_fields[i], r);
    if (!rc && r->batch_index >= r->batch_size)
        rc = ldm_error_kind(LDM_DATA, "%s: batch_index %d is not below batch_size %d", where,
                            r->batch_index, r->batch_size);
    json_decref(o);
    if (rc) ldm_record_free(r);
    return rc;
}
