/* safetensors.c - memory-mapped, fully validated reader for safetensors files and
 * sharded safetensors indexes (see safetensors.h for the format).
 *
 * Invariants after ldm_st_open succeeds: every tensor's bytes lie inside its file's
 * data area, tensors of one file tile that area exactly (sorted, no hole, no overlap),
 * nbytes == numel * dtype size (computed without overflow: the product of the non-zero
 * dimensions times the dtype size fits in 63 bits), and names are unique across all
 * shards.
 */
#include "format/safetensors.h"
#include "core/common.h"
#include "core/fp16.h"
#include "core/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER LDM_MAX_ST_HEADER
_Static_assert(LDM_ST_MAX_DIMS == LDM_MAX_ST_DIMS, "safetensors.h and limits.h disagree");

typedef struct {
    char *path;
    uint8_t *map;
    size_t size;
    json_t *meta;          /* "__metadata__" object or NULL */
} st_file;

struct ldm_safetensors {
    st_file *files;
    size_t nfiles;
    ldm_st_tensor *t;
    size_t n, cap;
    size_t *by_name;       /* indices into t, sorted by name */
};

static const struct { const char *name; size_t size; } DTYPES[] = {
    [LDM_ST_F64] = { "F64", 8 },  [LDM_ST_F32] = { "F32", 4 }, [LDM_ST_F16] = { "F16", 2 },
    [LDM_ST_BF16] = { "BF16", 2 }, [LDM_ST_I64] = { "I64", 8 }, [LDM_ST_I32] = { "I32", 4 },
    [LDM_ST_I16] = { "I16", 2 },  [LDM_ST_I8] = { "I8", 1 },   [LDM_ST_U8] = { "U8", 1 },
    [LDM_ST_BOOL] = { "BOOL", 1 },
};
#define NDTYPES (sizeof DTYPES / sizeof DTYPES[0])

const char *ldm_st_dtype_name(ldm_st_dtype d) { return (size_t)d < NDTYPES ? DTYPES[d].name : "?"; }
size_t ldm_st_dtype_size(ldm_st_dtype d) { return (size_t)d < NDTYPES ? DTYPES[d].size : 0; }
int ldm_st_dtype_is_float(ldm_st_dtype d) {
    return d == LDM_ST_F64 || d == LDM_ST_F32 || d == LDM_ST_F16 || d == LDM_ST_BF16;
}

static ldm_st_tensor *push_tensor(ldm_safetensors *st) {
    if (st->n == st->cap) {
        st->cap = st->cap ? 2 * st->cap : 64;
        ldm_st_tensor *nt = realloc(st->t, st->cap * sizeof *nt);
        if (!nt) { ldm_log(0, "ldm: out of memory\n"); abort(); }
        st->t = nt;
    }
    ldm_st_tensor *t = &st->t[st->n++];
    memset(t, 0, sizeof *t);
    return t;
}

static int cmp_offset(const void *a, const void *b) {
    const ldm_st_tensor *x = a, *y = b;
    const uint8_t *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Parse one entry of the header: {"dtype": .., "shape": [..], "data_offsets": [b, e]}. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_size,
                       const uint8_t *data, ldm_st_tensor *t) {
    if (!json_is_object(v))
        return ldm_error("%s: tensor '%s': header entry is not a JSON object", path, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!jd) return ldm_error("%s: tensor '%s': missing field 'dtype'", path, name);
    if (!js) return ldm_error("%s: tensor '%s': missing field 'shape'", path, name);
    if (!jo) return ldm_error("%s: tensor '%s': missing field 'data_offsets'", path, name);
    if (!json_is_string(jd)) return ldm_error("%s: tensor '%s': 'dtype' is not a string", path, name);
    const char *ds = json_string_value(jd);
    size_t d;
    for (d = 0; d < NDTYPES; d++) if (strcmp(ds, DTYPES[d].name) == 0) break;
    if (d == NDTYPES)
        return ldm_error("%s: tensor '%s': unknown dtype '%s' (known: F64 F32 F16 BF16 I64 I32 "
                         "I16 I8 U8 BOOL)", path, name, ds);
    t->dtype = (ldm_st_dtype)d;
    if (!json_is_array(js))
        return ldm_error("%s: tensor '%s': 'shape' is not an array", path, name);
    size_t nd = json_array_size(js);
    if (nd > LDM_ST_MAX_DIMS)
        return ldm_error("%s: tensor '%s': %zu dimensions, at most %d supported", path, name, nd,
                         LDM_ST_MAX_DIMS);
    t->ndim = (int)nd;
    /* span: the product of the non-zero dimensions times the dtype size, so that no size
     * computed from this shape can overflow, even with a zero dimension */
    uint64_t numel = 1, span = DTYPES[d].size;
    for (size_t i = 0; i < nd; i++) {
        json_t *x = json_array_get(js, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return ldm_error("%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                             name, i);
        uint64_t dim = (uint64_t)json_integer_value(x);
        t->shape[i] = (int64_t)dim;
        if (ldm_mul_u64(span, dim ? dim : 1, &span) || span > (uint64_t)INT64_MAX)
            return ldm_error("%s: tensor '%s': shape too large (more than 2^63 bytes)", path, name);
        numel *= dim;
    }
    t->numel = (int64_t)numel;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return ldm_error("%s: tensor '%s': 'data_offsets' must be [begin, end] integers", path,
                         name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return ldm_error("%s: tensor '%s': data_offsets [%lld, %lld] outside the data area of "
                         "%llu bytes", path, name, (long long)b, (long long)e,
                         (unsigned long long)data_size);
    uint64_t want = numel * DTYPES[d].size;    /* <= span: no overflow */
    if ((uint64_t)(e - b) != want)
        return ldm_error("%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes, but shape "
                         "and dtype %s need %llu", path, name, (long long)b, (long long)e,
                         (long long)(e - b), ds, (unsigned long long)want);
    t->data = data + b;
    t->nbytes = (size_t)(e - b);
    return 0;
}

/* Map and validate one .safetensors file, appending its tensors. */
static int open_file(ldm_safetensors *st, const char *path) {
    st_file *f = &st->files[st->nfiles];
    memset(f, 0, sizeof *f);
    f->path = ldm_xstrdup(path);
    st->nfiles++;
    int fd = ldm_open_regular(path);   /* a FIFO must not block open() */
    if (fd < 0) return -1;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ldm_error("%s: %s", path, strerror(e));
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        close(fd);
        return ldm_error("%s: file is %zu bytes, too short for a safetensors header", path, f->size);
    }
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return ldm_error("%s: mmap: %s", path, strerror(errno));
    f->map = m;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->map[i];
    if (hlen > ST_MAX_HEADER)
        return ldm_error("%s: header length %llu exceeds the %u MB limit (not a safetensors "
                         "file?)", path, (unsigned long long)hlen, ST_MAX_HEADER >> 20);
    if (hlen + 8 > f->size)
        return ldm_error("%s: header length %llu runs past the end of the %zu-byte file "
                         "(truncated?)", path, (unsigned long long)hlen, f->size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ldm_error("%s: header is not valid JSON: %s (line %d, column %d)", path, jerr.text,
                         jerr.line, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return ldm_error("%s: header is not a JSON object", path);
    }
    const uint8_t *data = f->map + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;
    size_t first = st->n;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) { rc = ldm_error("%s: '__metadata__' is not an object", path); break; }
            f->meta = json_incref(v);
            continue;
        }
        ldm_st_tensor *t = push_tensor(st);
        t->name = ldm_xstrdup(key);
        t->file = f->path;
        if ((rc = parse_entry(path, key, v, data_size, data, t)) != 0) break;
    }
    json_decref(root);
    if (rc) return rc;
    /* Tensors must tile the data area: sorted by offset, each starting where the last ended.
     * (A header with no tensors has st->t == NULL: no qsort on it.) */
    if (st->n - first > 1) qsort(st->t + first, st->n - first, sizeof *st->t, cmp_offset);
    uint64_t at = 0;
    for (size_t i = first; i < st->n; i++) {
        uint64_t b = (uint64_t)((const uint8_t *)st->t[i].data - data);
        if (b < at)
            return ldm_error("%s: tensor '%s' (data_offsets [%llu, %llu]) overlaps tensor '%s'",
                             path, st->t[i].name, (unsigned long long)b,
                             (unsigned long long)(b + st->t[i].nbytes), st->t[i - 1].name);
        if (b > at)
            return ldm_error("%s: tensor '%s' starts at data offset %llu, leaving a hole after "
                             "offset %llu", path, st->t[i].name, (unsigned long long)b,
                             (unsigned long long)at);
        at = b + st->t[i].nbytes;
    }
    if (at != data_size)
        return ldm_error("%s: tensors cover %llu bytes of a %llu-byte data area", path,
                         (unsigned long long)at, (unsigned long long)data_size);
    return 0;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx) {
    const ldm_safetensors *st = ctx;
    return strcmp(st->t[*(const size_t *)a].name, st->t[*(const size_t *)b].name);
}

static void build_name_index(ldm_safetensors *st) {
    st->by_name = ldm_xmalloc((st->n ? st->n : 1) * sizeof *st->by_name);
    for (size_t i = 0; i < st->n; i++) st->by_name[i] = i;
    if (st->n > 1) qsort_r(st->by_name, st->n, sizeof *st->by_name, cmp_name_idx, st);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A sharded model: index.json's weight_map names the shard of every tensor. */
static int open_index(ldm_safetensors *st, const char *path) {
    size_t len;
    char *text = ldm_read_file(path, &len);
    if (!text) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return ldm_error("%s: not valid JSON: %s (line %d, column %d)", path, jerr.text, jerr.line,
                         jerr.column);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(root);
        return ldm_error("%s: missing object 'weight_map'", path);
    }
    /* Distinct shard names, sorted (deterministic open order). */
    size_t nw = json_object_size(wm), ns = 0;
    char **shards = ldm_xmalloc((nw ? nw : 1) * sizeof *shards);
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v)) { rc = ldm_error("%s: weight_map['%s'] is not a string", path, key); break; }
        const char *s = json_string_value(v);
        if (s[0] == '/' || strstr(s, "..")) {
            rc = ldm_error("%s: weight_map['%s']: shard name '%s' must be a plain file name", path, key, s);
            break;
        }
        shards[ns++] = (char *)s;
    }
    if (!rc) {
        if (ns > 1) qsort(shards, ns, sizeof *shards, cmp_str);
        size_t u = 0;
        for (size_t i = 0; i < ns; i++)
            if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
        ns = u;
        st->files = ldm_xcalloc(ns ? ns : 1, sizeof *st->files);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) slash[1] = '\0'; else dir[0] = '\0';
        for (size_t i = 0; i < ns && !rc; i++) {
            char sp[8192];
            snprintf(sp, sizeof sp, "%s%s", dir, shards[i]);
            if (access(sp, F_OK) != 0) {
                rc = ldm_error("%s: shard '%s' named in weight_map is missing (%s)", path,
                               shards[i], strerror(errno));
                break;
            }
            rc = open_file(st, sp);
        }
    }
    if (!rc) {
        build_name_index(st);
        for (size_t i = 0; i + 1 < st->n && !rc; i++) {
            const ldm_st_tensor *a = &st->t[st->by_name[i]], *b = &st->t[st->by_name[i + 1]];
            if (strcmp(a->name, b->name) == 0)
                rc = ldm_error("%s: tensor '%s' is in two shards: %s and %s", path, a->name,
                               a->file, b->file);
        }
        for (size_t i = 0; i < st->n && !rc; i++) {
            const ldm_st_tensor *t = &st->t[i];
            json_t *s = json_object_get(wm, t->name);
            const char *base = strrchr(t->file, '/') ? strrchr(t->file, '/') + 1 : t->file;
            if (!s)
                rc = ldm_error("%s: tensor '%s' in shard %s is not listed in weight_map", path,
                               t->name, base);
            else if (strcmp(json_string_value(s), base) != 0)
                rc = ldm_error("%s: tensor '%s' is in shard %s, but weight_map says %s", path,
                               t->name, base, json_string_value(s));
        }
        json_object_foreach(wm, key, v) {
            if (rc) break;
            if (!ldm_st_find(st, key))
                rc = ldm_error("%s: tensor '%s' listed in weight_map is not in shard %s", path, key,
                               json_string_value(v));
        }
    }
    free(shards);
    json_decref(root);
    return rc;
}

ldm_safetensors *ldm_st_open(const char *path) {
    ldm_safetensors *st = ldm_xcalloc(1, sizeof *st);
    int rc;
    if (ends_with(path, ".json")) {
        rc = open_index(st, path);
    } else {
        st->files = ldm_xcalloc(1, sizeof *st->files);
        rc = open_file(st, path);
        if (!rc) build_name_index(st);
    }
    if (rc) { ldm_st_close(st); return NULL; }
    return st;
}

void ldm_st_close(ldm_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->nfiles; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        if (st->files[i].meta) json_decref(st->files[i].meta);
        free(st->files[i].path);
    }
    for (size_t i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->files);
    free(st->t);
    free(st->by_name);
    free(st);
}

size_t ldm_st_count(const ldm_safetensors *st) { return st->n; }
const ldm_st_tensor *ldm_st_at(const ldm_safetensors *st, size_t i) {
    return i < st->n ? &st->t[i] : NULL;
}

const ldm_st_tensor *ldm_st_find(const ldm_safetensors *st, const char *name) {
    if (!st->by_name) return NULL;
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(st->t[st->by_name[mid]].name, name);
        if (c == 0) return &st->t[st->by_name[mid]];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

const char *ldm_st_metadata(const ldm_safetensors *st, const char *key) {
    if (!st->nfiles || !st->files[0].meta) return NULL;
    return json_string_value(json_object_get(st->files[0].meta, key));
}

float *ldm_st_to_f32(const ldm_st_tensor *t) {
    size_t n = (size_t)t->numel, bytes;
    if (t->numel < 0 || ldm_mul_size(n, sizeof(float), &bytes)) {
        ldm_error("%s: tensor '%s': %lld elements do not fit in memory", t->file, t->name,
                  (long long)t->numel);
        return NULL;
    }
    float *out = ldm_xmalloc(bytes ? bytes : 1);
    const uint8_t *p = t->data;
    size_t es = ldm_st_dtype_size(t->dtype);
    for (size_t i = 0; i < n; i++, p += es) {
        switch (t->dtype) {
        case LDM_ST_F64: { double v; memcpy(&v, p, 8); out[i] = (float)v; break; }
        case LDM_ST_F32: memcpy(&out[i], p, 4); break;
        case LDM_ST_F16: { uint16_t h; memcpy(&h, p, 2); out[i] = ldm_f16_to_f32(h); break; }
        case LDM_ST_BF16: { uint16_t h; memcpy(&h, p, 2); out[i] = ldm_bf16_to_f32(h); break; }
        case LDM_ST_I64: { int64_t v; memcpy(&v, p, 8); out[i] = (float)v; break; }
        case LDM_ST_I32: { int32_t v; memcpy(&v, p, 4); out[i] = (float)v; break; }
        case LDM_ST_I16: { int16_t v; memcpy(&v, p, 2); out[i] = (float)v; break; }
        case LDM_ST_I8: out[i] = (float)(int8_t)*p; break;
        case LDM_ST_U8: case LDM_ST_BOOL: out[i] = (float)*p; break;
        }
    }
    return out;
}
