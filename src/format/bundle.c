/* bundle.c - open, validate and read .ldmb bundles (see bundle/FORMAT.md).
 *
 * The file is memory-mapped read-only once.  Its tar structure is walked twice:
 * by our own ustar/pax header parser, which gives each member's data offset, and by
 * libarchive, which must agree on every member name and size (so what we read is
 * what `bsdtar -tvf` shows).  The manifest is then checked against weights.bin:
 * every tensor F16, inside weights.bin, 64-byte aligned, no two overlapping.
 * Tensors point into the mapping (no copy); the small members (configs, tokenizer
 * files, manifest) are copied out, NUL-terminated.
 *
 * Every offset and size read from the file is bounds-checked without wrapping (a size
 * near 2^64 must not pass "off + size <= file size"), and nothing costs more than
 * O(n log n) in the number of members or tensors (member names are looked up through a
 * sorted index, which also finds duplicates).
 */
#include "format/bundle.h"
#include "core/common.h"
#include "core/limits.h"
#include "format/ldmb.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

typedef struct {
    char *name;
    uint64_t offset, size;   /* data position within the file */
    char *copy;              /* NUL-terminated copy (NULL for weights.bin) */
} member;

struct ldm_bundle {
    char *path;
    const uint8_t *map;
    size_t size;
    member *m;
    size_t nm, mcap;
    size_t *m_by_name;        /* member indices sorted by name */
    ldm_tensor *t;
    size_t nt;
    size_t *by_name;          /* tensor indices sorted by name */
    uint64_t wbase, wsize;    /* weights.bin data offset and size */
    char hash[65];
    char **components;
    size_t ncomp;
    char **hash_members;      /* manifest "members" order (for the content hash) */
    int64_t *member_crc;      /* their crc32 from the manifest, -1 if none */
    size_t nhash_members;
};

/* ---------------------------------------------------------------- content hash */

void ldmb_hash_begin(ldm_sha256 *s) {
    ldm_sha256_init(s);
    ldm_sha256_update(s, "ldmb-content-v1\n", 16);
}

void ldmb_hash_member(ldm_sha256 *s, const char *name, const void *data, size_t len) {
    char head[64];
    ldm_sha256_update(s, "member ", 7);
    ldm_sha256_update(s, name, strlen(name));
    int n = snprintf(head, sizeof head, "\n%zu\n", len);
    ldm_sha256_update(s, head, (size_t)n);
    ldm_sha256_update(s, data, len);
}

void ldmb_hash_tensor_head(ldm_sha256 *s, const char *name, int ndim, const int64_t *shape,
                           uint64_t nbytes) {
    char head[256];
    ldm_sha256_update(s, "tensor ", 7);
    ldm_sha256_update(s, name, strlen(name));
    int n = snprintf(head, sizeof head, "\nF16 [");
    for (int i = 0; i < ndim; i++)
        n += snprintf(head + n, sizeof head - (size_t)n, "%s%" PRId64, i ? "," : "", shape[i]);
    n += snprintf(head + n, sizeof head - (size_t)n, "]\n%" PRIu64 "\n", nbytes);
    ldm_sha256_update(s, head, (size_t)n);
}

/* ---------------------------------------------------------------- tar walking */

static uint64_t tar_number(const uint8_t *p, size_t n, int *ok) {
    uint64_t v = 0;
    if (p[0] & 0x80) {                      /* GNU base-256 */
        if (p[0] != 0x80) { *ok = 0; return 0; }
        for (size_t i = 1; i < n; i++) {
            if (v >> 56) { *ok = 0; return 0; }
            v = v << 8 | p[i];
        }
        return v;
    }
    size_t i = 0;
    while (i < n && p[i] == ' ') i++;
    int digits = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++, digits++) {
        if (v >> 60) { *ok = 0; return 0; }
        v = v * 8 + (uint64_t)(p[i] - '0');
    }
    for (; i < n; i++)
        if (p[i] != ' ' && p[i] != '\0') { *ok = 0; return 0; }
    if (!digits) *ok = 0;
    return v;
}

static int is_zero_block(const uint8_t *p) {
    for (int i = 0; i < 512; i++) if (p[i]) return 0;
    return 1;
}

static int add_member(ldm_bundle *b, const char *name, uint64_t off, uint64_t size) {
    if (!name[0]) return ldm_error("%s: member at offset %" PRIu64 " has an empty name", b->path, off);
    if (name[0] == '/')
        return ldm_error("%s: member '%s': absolute names (leading '/') are not allowed", b->path, name);
    for (const char *p = name; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return ldm_error("%s: member '%s': '..' in member names is not allowed", b->path, name);
        p += n + (e ? 1 : 0);
    }
    if (strlen(name) > LDM_MAX_MEMBER_NAME)
        return ldm_error("%s: member at offset %" PRIu64 ": name longer than %d bytes", b->path, off,
                         LDM_MAX_MEMBER_NAME);
    if (b->nm == b->mcap) {   /* duplicates are found once the walk is done (index_members) */
        b->mcap = b->mcap ? 2 * b->mcap : 16;
        member *nm = realloc(b->m, b->mcap * sizeof *b->m);
        if (!nm) { ldm_log(0, "ldm: out of memory\n"); abort(); }
        b->m = nm;
    }
    b->m[b->nm++] = (member){ ldm_xstrdup(name), off, size, NULL };
    return 0;
}

static int cmp_member_name(const void *x, const void *y, void *ctx) {
    const ldm_bundle *b = ctx;
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    int c = strcmp(b->m[i].name, b->m[j].name);
    return c ? c : (i > j) - (i < j);
}

/* Sort the members by name (for find_member) and refuse duplicates: O(n log n). */
static int index_members(ldm_bundle *b) {
    b->m_by_name = ldm_xmalloc((b->nm ? b->nm : 1) * sizeof *b->m_by_name);
    for (size_t i = 0; i < b->nm; i++) b->m_by_name[i] = i;
    if (b->nm > 1) qsort_r(b->m_by_name, b->nm, sizeof *b->m_by_name, cmp_member_name, b);
    for (size_t i = 1; i < b->nm; i++)
        if (strcmp(b->m[b->m_by_name[i - 1]].name, b->m[b->m_by_name[i]].name) == 0)
            return ldm_error("%s: duplicate member '%s'", b->path, b->m[b->m_by_name[i]].name);
    return 0;
}

/* Parse pax extended header records "LEN key=value\n" for path and size.  LEN counts the
 * whole record, its own digits included, so it is at least digits + 4 (" k=\n"). */
static int parse_pax(ldm_bundle *b, const uint8_t *p, uint64_t n, uint64_t at, char **path,
                     uint64_t *size, int *have_size) {
    uint64_t i = 0;
    while (i < n) {
        uint64_t len = 0, j = i;
        /* stop accumulating once len > n: it is refused below, and cannot overflow */
        while (j < n && p[j] >= '0' && p[j] <= '9' && len <= n) len = len * 10 + (uint64_t)(p[j++] - '0');
        uint64_t digits = j - i;
        if (digits == 0 || j >= n || p[j] != ' ' || len > n - i || len < digits + 4)
            return ldm_error("%s: malformed pax header at offset %" PRIu64 " (record length)", b->path, at);
        const char *kv = (const char *)p + j + 1;
        size_t kvlen = (size_t)(len - digits - 2);         /* without the space and newline */
        const char *eq = memchr(kv, '=', kvlen);
        if (!eq || eq == kv || p[i + len - 1] != '\n')
            return ldm_error("%s: malformed pax header at offset %" PRIu64, b->path, at);
        size_t klen = (size_t)(eq - kv), vlen = kvlen - klen - 1;
        if (klen == 4 && memcmp(kv, "path", 4) == 0) {
            free(*path);
            *path = ldm_xmalloc(vlen + 1);
            memcpy(*path, eq + 1, vlen);
            (*path)[vlen] = '\0';
        } else if (klen == 4 && memcmp(kv, "size", 4) == 0) {
            uint64_t v = 0;
            if (vlen == 0) return ldm_error("%s: bad pax size at offset %" PRIu64, b->path, at);
            for (size_t k = 0; k < vlen; k++) {
                char c = eq[1 + k];
                if (c < '0' || c > '9' || v > UINT64_MAX / 10 - 9)
                    return ldm_error("%s: bad pax size at offset %" PRIu64, b->path, at);
                v = v * 10 + (uint64_t)(c - '0');
            }
            *size = v;
            *have_size = 1;
        }
        i += len;
    }
    return 0;
}

/* Our own walk over the 512-byte headers: member names, sizes, data offsets. */
static int walk_tar(ldm_bundle *b) {
    uint64_t off = 0;
    char *pax_path = NULL;
    uint64_t pax_size = 0;
    uint64_t size_claim = 0;
    int have_pax_size = 0, rc = 0, ended = 0;
    while (!rc) {
        if (off + 512 > b->size) break;
        const uint8_t *h = b->map + off;
        if (is_zero_block(h)) { ended = 1; break; }
        int ok = 1;
        uint64_t chk = tar_number(h + 148, 8, &ok);
        uint64_t sum = 0;
        for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
        if (!ok || chk != sum || memcmp(h + 257, "ustar", 5) != 0) {
            if (off == 0) rc = ldm_error("%s: not a tar archive (no ustar header at offset 0)", b->path);
            else rc = ldm_error("%s: corrupt tar header at offset %" PRIu64 " (bad checksum or magic)",
                                b->path, off);
            break;
        }
        uint64_t size = tar_number(h + 124, 12, &ok);
        if (!ok) { rc = ldm_error("%s: bad size field in tar header at offset %" PRIu64, b->path, off); break; }
        char type = (char)h[156];
        if (type == 'x' || type == 'g') {
            if (size > b->size - off - 512) { rc = -2; size_claim = size; break; }   /* off + 512 <= b->size here */
            if (type == 'x')
                rc = parse_pax(b, b->map + off + 512, size, off, &pax_path, &pax_size, &have_pax_size);
            off += 512 + ((size + 511) & ~(uint64_t)511);
            continue;
        }
        char name[512];
        if (pax_path) {
            if (strlen(pax_path) > LDM_MAX_MEMBER_NAME) {
                rc = ldm_error("%s: member at offset %" PRIu64 ": name longer than %d bytes",
                               b->path, off + 512, LDM_MAX_MEMBER_NAME);
                break;
            }
            snprintf(name, sizeof name, "%s", pax_path);
        } else {
            char nm[101], prefix[156];
            memcpy(nm, h, 100); nm[100] = '\0';
            memcpy(prefix, h + 345, 155); prefix[155] = '\0';
            if (prefix[0]) snprintf(name, sizeof name, "%s/%s", prefix, nm);
            else snprintf(name, sizeof name, "%s", nm);
        }
        if (have_pax_size) size = pax_size;
        if (type != '0' && type != '\0') {
            rc = ldm_error("%s: member '%s' has tar type '%c'; a bundle holds only regular files",
                           b->path, name, type);
            break;
        }
        uint64_t data = off + 512;
        if (size > b->size - data) { rc = -2; size_claim = size; break; }
        if ((rc = add_member(b, name, data, size)) != 0) break;
        free(pax_path); pax_path = NULL; have_pax_size = 0;
        off = data + ((size + 511) & ~(uint64_t)511);
    }
    free(pax_path);
    if (rc == -2)   /* a header whose size runs past the end of the file */
        return ldm_error("%s: truncated: the tar archive ends at byte %zu, inside member %zu "
                         "(its header at offset %" PRIu64 " says %" PRIu64 " bytes)", b->path,
                         b->size, b->nm + 1, off, size_claim);
    if (!rc && !ended)
        return ldm_error("%s: truncated: the tar archive ends at byte %zu inside or before "
                         "the end of member %zu", b->path, b->size, b->nm + 1);
    return rc;
}

/* libarchive must see the same members (names and sizes, in order). */
static int cross_check(ldm_bundle *b) {
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    int rc = 0;
    if (archive_read_open_memory(a, b->map, b->size) != ARCHIVE_OK) {
        rc = ldm_error("%s: libarchive: %s", b->path, archive_error_string(a));
        archive_read_free(a);
        return rc;
    }
    size_t i = 0;
    struct archive_entry *e;
    for (;;) {
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK) { rc = ldm_error("%s: libarchive: %s", b->path, archive_error_string(a)); break; }
        const char *name = archive_entry_pathname(e);
        if (i >= b->nm || !name || strcmp(name, b->m[i].name) != 0 ||
            (uint64_t)archive_entry_size(e) != b->m[i].size) {
            rc = ldm_error("%s: tar structure disagrees with libarchive at member %zu ('%s')",
                           b->path, i + 1, name ? name : "?");
            break;
        }
        i++;
    }
    if (!rc && i != b->nm)
        rc = ldm_error("%s: libarchive sees %zu members, expected %zu", b->path, i, b->nm);
    archive_read_free(a);
    return rc;
}

/* ---------------------------------------------------------------- manifest */

static member *find_member(const ldm_bundle *b, const char *name) {
    size_t lo = 0, hi = b->m_by_name ? b->nm : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        member *m = &b->m[b->m_by_name[mid]];
        int c = strcmp(m->name, name);
        if (c == 0) return m;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

static int cmp_tensor_name(const void *x, const void *y, void *ctx) {
    const ldm_bundle *b = ctx;
    return strcmp(b->t[*(const size_t *)x].name, b->t[*(const size_t *)y].name);
}
static int cmp_tensor_off(const void *x, const void *y, void *ctx) {
    const ldm_bundle *b = ctx;
    uint64_t a = b->t[*(const size_t *)x].offset, c = b->t[*(const size_t *)y].offset;
    return a < c ? -1 : a > c;
}

static int get_u64(json_t *o, const char *key, uint64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_tensor(ldm_bundle *b, json_t *jt, size_t i, ldm_tensor *t) {
    const char *P = b->path;
    if (!json_is_object(jt)) return ldm_error("%s: manifest.json: tensors[%zu] is not an object", P, i);
    const char *name = json_string_value(json_object_get(jt, "name"));
    if (!name || !name[0]) return ldm_error("%s: manifest.json: tensors[%zu] has no 'name'", P, i);
    t->name = ldm_xstrdup(name);
    const char *dt = json_string_value(json_object_get(jt, "dtype"));
    if (!dt) return ldm_error("%s: manifest.json: tensor '%s': missing 'dtype'", P, name);
    if (strcmp(dt, "F16") != 0)
        return ldm_error("%s: manifest.json: tensor '%s': dtype '%s', only F16 is supported", P, name, dt);
    json_t *js = json_object_get(jt, "shape");
    if (!json_is_array(js) || json_array_size(js) > LDM_MAX_TENSOR_DIMS)
        return ldm_error("%s: manifest.json: tensor '%s': 'shape' must be an array of at most %d "
                         "dimensions", P, name, LDMB_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *x = json_array_get(js, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            (uint64_t)json_integer_value(x) > LDM_MAX_TENSOR_NUMEL)
            return ldm_error("%s: manifest.json: tensor '%s': bad shape[%d]", P, name, d);
        t->shape[d] = json_integer_value(x);
    }
    /* the product of the non-zero dimensions is bounded too, so that no product of
     * dimensions anywhere can overflow, even for a tensor with a zero dimension */
    uint64_t span = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t x = (uint64_t)t->shape[d];
        if (ldm_mul_u64(span, x ? x : 1, &span) || span > LDM_MAX_TENSOR_NUMEL)
            return ldm_error("%s: manifest.json: tensor '%s': shape has more than 2^40 elements",
                             P, name);
        numel *= x;
    }
    t->numel = (int64_t)numel;
    uint64_t nbytes, crc;
    if (get_u64(jt, "offset", &t->offset) || get_u64(jt, "nbytes", &nbytes) || get_u64(jt, "crc32", &crc) ||
        crc > 0xffffffffu)
        return ldm_error("%s: manifest.json: tensor '%s': 'offset', 'nbytes' and 'crc32' must be "
                         "non-negative integers", P, name);
    t->crc32 = (uint32_t)crc;
    if (nbytes != numel * 2)
        return ldm_error("%s: manifest.json: tensor '%s': nbytes %" PRIu64 " but shape needs %" PRIu64,
                         P, name, nbytes, numel * 2);
    if (t->offset > b->wsize || nbytes > b->wsize - t->offset)
        return ldm_error("%s: tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") lie outside weights.bin "
                         "(%" PRIu64 " bytes)", P, name, t->offset, t->offset + nbytes, b->wsize);
    if ((b->wbase + t->offset) % LDMB_ALIGN)
        return ldm_error("%s: tensor '%s': offset %" PRIu64 " is not %d-byte aligned", P, name,
                         t->offset, LDMB_ALIGN);
    t->f16 = (const uint16_t *)(const void *)(b->map + b->wbase + t->offset);
    return 0;
}

static int parse_manifest(ldm_bundle *b, const member *mm) {
    const char *P = b->path;
    json_error_t jerr;
    json_t *root = json_loadb(mm->copy, (size_t)mm->size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ldm_error("%s: manifest.json is not valid JSON: %s (line %d)", P, jerr.text, jerr.line);
    int rc = 0;
    const char *fmt = json_string_value(json_object_get(root, "format"));
    json_t *jv = json_object_get(root, "format_version");
    const char *hash = json_string_value(json_object_get(root, "content_hash"));
    json_t *jt = json_object_get(root, "tensors");
    if (!json_is_object(root) || !fmt || strcmp(fmt, "ldmb") != 0) {
        rc = ldm_error("%s: not an ldm bundle: manifest.json has no \"format\": \"ldmb\"", P);
    } else if (!json_is_integer(jv)) {
        rc = ldm_error("%s: manifest.json: missing integer 'format_version'", P);
    } else if (json_integer_value(jv) != LDMB_FORMAT_VERSION) {
        rc = ldm_error("%s: bundle format version %lld, this ldm (%s) reads version %d only",
                       P, (long long)json_integer_value(jv), LDM_VERSION, LDMB_FORMAT_VERSION);
    } else if (!hash || strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64) {
        rc = ldm_error("%s: manifest.json: 'content_hash' must be 64 lower-case hex digits", P);
    } else if (!json_is_array(jt)) {
        rc = ldm_error("%s: manifest.json: missing array 'tensors'", P);
    }
    if (rc) { json_decref(root); return rc; }
    memcpy(b->hash, hash, 65);

    uint64_t wsize;
    json_t *jw = json_object_get(root, "weights");
    if (json_is_object(jw) && get_u64(jw, "size", &wsize) == 0 && wsize != b->wsize)
        rc = ldm_error("%s: manifest.json says weights.bin is %" PRIu64 " bytes, the member is %" PRIu64,
                       P, wsize, b->wsize);

    json_t *jc = json_object_get(root, "components");
    if (!rc && json_is_object(jc)) {
        b->components = ldm_xcalloc(json_object_size(jc) + 1, sizeof *b->components);
        const char *key;
        json_t *v;
        json_object_foreach(jc, key, v) b->components[b->ncomp++] = ldm_xstrdup(key);
    }
    json_t *jm = json_object_get(root, "members");
    if (!rc && json_is_array(jm)) {
        b->hash_members = ldm_xcalloc(json_array_size(jm) + 1, sizeof *b->hash_members);
        b->member_crc = ldm_xcalloc(json_array_size(jm) + 1, sizeof *b->member_crc);
        for (size_t i = 0; i < json_array_size(jm) && !rc; i++) {
            json_t *e = json_array_get(jm, i);
            const char *n = json_string_value(json_object_get(e, "name"));
            uint64_t crc;
            if (!n || !find_member(b, n) || !find_member(b, n)->copy) {
                rc = ldm_error("%s: manifest.json: members[%zu] ('%s') is not a config member in the "
                               "archive", P, i, n ? n : "?");
            } else {
                b->member_crc[b->nhash_members] = get_u64(e, "crc32", &crc) ? -1 : (int64_t)crc;
                b->hash_members[b->nhash_members++] = ldm_xstrdup(n);
            }
        }
    }

    b->nt = json_array_size(jt);
    b->t = ldm_xcalloc(b->nt ? b->nt : 1, sizeof *b->t);
    for (size_t i = 0; i < b->nt && !rc; i++) rc = parse_tensor(b, json_array_get(jt, i), i, &b->t[i]);
    json_decref(root);
    if (rc) return rc;

    /* names first: a tensor listed twice also "overlaps" itself, but that is not the news */
    size_t *idx = ldm_xmalloc((b->nt ? b->nt : 1) * sizeof *idx);
    for (size_t i = 0; i < b->nt; i++) idx[i] = i;
    if (b->nt > 1) qsort_r(idx, b->nt, sizeof *idx, cmp_tensor_name, b);
    for (size_t i = 1; i < b->nt && !rc; i++)
        if (strcmp(b->t[idx[i - 1]].name, b->t[idx[i]].name) == 0)
            rc = ldm_error("%s: manifest.json: tensor '%s' listed twice", P, b->t[idx[i]].name);
    b->by_name = idx;
    if (rc || b->nt < 2) return rc;
    size_t *off = ldm_xmalloc(b->nt * sizeof *off);
    for (size_t i = 0; i < b->nt; i++) off[i] = i;
    qsort_r(off, b->nt, sizeof *off, cmp_tensor_off, b);
    for (size_t i = 1; i < b->nt && !rc; i++) {
        const ldm_tensor *p = &b->t[off[i - 1]], *q = &b->t[off[i]];
        if (p->offset + (uint64_t)p->numel * 2 > q->offset)   /* both inside weights.bin */
            rc = ldm_error("%s: tensors '%s' and '%s' overlap in weights.bin", P, p->name, q->name);
    }
    free(off);
    return rc;
}

/* ---------------------------------------------------------------- open / close */

ldm_bundle *ldm_bundle_open(const char *path) {
    ldm_bundle *b = ldm_xcalloc(1, sizeof *b);
    b->path = ldm_xstrdup(path);
    int fd = ldm_open_regular(path);   /* a FIFO must not block open() */
    if (fd < 0) goto fail;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        ldm_error("%s: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    b->size = (size_t)sb.st_size;
    if (b->size < 1024) {
        close(fd);
        ldm_error("%s: not an ldm bundle (file is only %zu bytes)", path, b->size);
        goto fail;
    }
    void *m = mmap(NULL, b->size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) { ldm_error("%s: mmap: %s", path, strerror(errno)); goto fail; }
    b->map = m;
    if (walk_tar(b) || index_members(b) || cross_check(b)) goto fail;

    member *mm = find_member(b, LDMB_MANIFEST), *mw = find_member(b, LDMB_WEIGHTS);
    if (!mm) { ldm_error("%s: not an ldm bundle: no member manifest.json", path); goto fail; }
    if (!mw) { ldm_error("%s: no member weights.bin (truncated or not an ldm bundle?)", path); goto fail; }
    if (mm != &b->m[0]) {
        ldm_error("%s: manifest.json must be the first member, but '%s' comes first", path, b->m[0].name);
        goto fail;
    }
    if (mw != &b->m[b->nm - 1]) {
        ldm_error("%s: weights.bin must be the last member, but '%s' comes after it", path,
                  (mw + 1)->name);
        goto fail;
    }
    b->wbase = mw->offset;
    b->wsize = mw->size;
    for (size_t i = 0; i < b->nm; i++) {
        member *x = &b->m[i];
        if (x == mw) continue;
        if (x->size > LDM_MAX_SMALL_MEMBER) {
            ldm_error("%s: member '%s' is %" PRIu64 " bytes; only weights.bin may exceed %u MB",
                      path, x->name, x->size, LDM_MAX_SMALL_MEMBER >> 20);
            goto fail;
        }
        x->copy = ldm_xmalloc((size_t)x->size + 1);
        memcpy(x->copy, b->map + x->offset, (size_t)x->size);
        x->copy[x->size] = '\0';
    }
    if (parse_manifest(b, mm)) goto fail;
    return b;
fail:
    ldm_bundle_close(b);
    return NULL;
}

void ldm_bundle_close(ldm_bundle *b) {
    if (!b) return;
    if (b->map) munmap((void *)b->map, b->size);
    for (size_t i = 0; i < b->nm; i++) { free(b->m[i].name); free(b->m[i].copy); }
    for (size_t i = 0; i < b->nt; i++) free((char *)b->t[i].name);
    for (size_t i = 0; i < b->ncomp; i++) free(b->components[i]);
    for (size_t i = 0; i < b->nhash_members; i++) free(b->hash_members[i]);
    free(b->components);
    free(b->hash_members);
    free(b->member_crc);
    free(b->m);
    free(b->m_by_name);
    free(b->t);
    free(b->by_name);
    free(b->path);
    free(b);
}

/* ---------------------------------------------------------------- lookups */

const char *ldm_bundle_path(const ldm_bundle *b) { return b->path; }
const char *ldm_bundle_hash(const ldm_bundle *b) { return b->hash; }
size_t ldm_bundle_tensor_count(const ldm_bundle *b) { return b->nt; }
ldm_tensor *ldm_bundle_tensor_at(const ldm_bundle *b, size_t i) { return i < b->nt ? &b->t[i] : NULL; }

ldm_tensor *ldm_bundle_tensor(const ldm_bundle *b, const char *name) {
    size_t lo = 0, hi = b->nt;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(b->t[b->by_name[mid]].name, name);
        if (c == 0) return &b->t[b->by_name[mid]];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

const char *ldm_bundle_member(const ldm_bundle *b, const char *name, size_t *len) {
    member *m = find_member(b, name);
    if (!m || !m->copy) return NULL;
    if (len) *len = (size_t)m->size;
    return m->copy;
}

size_t ldm_bundle_member_count(const ldm_bundle *b) { return b->nm; }
const char *ldm_bundle_member_name(const ldm_bundle *b, size_t i) { return i < b->nm ? b->m[i].name : NULL; }
uint64_t ldm_bundle_member_size(const ldm_bundle *b, size_t i) { return i < b->nm ? b->m[i].size : 0; }
uint64_t ldm_bundle_member_offset(const ldm_bundle *b, size_t i) { return i < b->nm ? b->m[i].offset : 0; }
uint64_t ldm_bundle_file_size(const ldm_bundle *b) { return b->size; }

int ldm_bundle_has_component(const ldm_bundle *b, const char *component) {
    for (size_t i = 0; i < b->ncomp; i++)
        if (strcmp(b->components[i], component) == 0) return 1;
    return 0;
}

void ldm_bundle_clear_used(ldm_bundle *b) {
    for (size_t i = 0; i < b->nt; i++) b->t[i].used = 0;
}

static void format_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

ldm_tensor *ldm_bundle_need(const ldm_bundle *b, const char *name, int ndim, const int64_t *shape) {
    char want[160], got[160];
    format_shape(want, sizeof want, ndim, shape);
    ldm_tensor *t = ldm_bundle_tensor(b, name);
    if (!t) {
        ldm_error("%s: tensor '%s' (shape %s) is missing from the bundle", b->path, name, want);
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        format_shape(got, sizeof got, t->ndim, t->shape);
        ldm_error("%s: tensor '%s': expected shape %s, found %s", b->path, name, want, got);
        return NULL;
    }
    t->used = 1;
    return t;
}

/* ---------------------------------------------------------------- verify */

int ldm_bundle_verify(const ldm_bundle *b) {
    char msg[1536];
    size_t k = 0, bad = 0;
    msg[0] = '\0';
    ldm_sha256 s;
    ldmb_hash_begin(&s);
    for (size_t i = 0; i < b->nhash_members; i++) {
        size_t len;
        const char *data = ldm_bundle_member(b, b->hash_members[i], &len);
        if (!data) continue;
        ldmb_hash_member(&s, b->hash_members[i], data, len);
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), (const Bytef *)data, (uInt)len);
        if (b->member_crc[i] >= 0 && crc != (uint32_t)b->member_crc[i]) {
            if (bad < 8 && k < sizeof msg)
                k += (size_t)snprintf(msg + k, sizeof msg - k, "%smember %s (crc32 %08x, manifest says "
                                      "%08x)", bad ? "; " : "", b->hash_members[i], (unsigned)crc,
                                      (unsigned)b->member_crc[i]);
            bad++;
        }
    }
    for (size_t i = 0; i < b->nt; i++) {
        const ldm_tensor *t = &b->t[i];
        uint64_t nbytes = (uint64_t)t->numel * 2, crc = crc32(0L, Z_NULL, 0);
        const uint8_t *p = (const uint8_t *)t->f16;
        for (uint64_t done = 0; done < nbytes;) {   /* zlib takes uInt lengths */
            uInt n = (uInt)(nbytes - done > (1u << 30) ? (1u << 30) : nbytes - done);
            crc = crc32(crc, p + done, n);
            done += n;
        }
        ldmb_hash_tensor_head(&s, t->name, t->ndim, t->shape, nbytes);
        ldm_sha256_update(&s, p, (size_t)nbytes);
        if ((uint32_t)crc != t->crc32) {
            if (bad < 8 && k < sizeof msg)
                k += (size_t)snprintf(msg + k, sizeof msg - k, "%stensor %s (crc32 %08x, manifest says %08x)",
                                      bad ? "; " : "", t->name, (unsigned)crc, (unsigned)t->crc32);
            bad++;
        }
    }
    uint8_t d[32];
    char hex[65];
    ldm_sha256_final(&s, d);
    ldm_sha256_hex(d, hex);
    if (bad)
        return ldm_error("%s: %zu damaged: %s%s", b->path, bad, msg, bad > 8 ? "; ..." : "");
    if (strcmp(hex, b->hash) != 0)
        return ldm_error("%s: content hash mismatch: computed %s, manifest says %s (a config member "
                         "or the manifest was changed)", b->path, hex, b->hash);
    return 0;
}
