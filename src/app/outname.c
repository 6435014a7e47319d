/* outname.c - `-o` patterns, file-name-safe text, numbered names.  See outname.h. */
#include "app/outname.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/common.h"

#define PROMPT_DEFAULT_BYTES 60

void ldm_name_fields_init(ldm_name_fields *f) {
    memset(f, 0, sizeof *f);
    f->index = f->line = f->shard = -1;
}

/* ---- a growing string ---- */
typedef struct { char *s; size_t n, cap; } sbuf;
static void sb_addn(sbuf *b, const char *t, size_t k) {
    if (b->n + k + 1 > b->cap) {
        size_t cap = (b->n + k + 1) * 2 + 16;
        char *p = ldm_xmalloc(cap);
        if (b->s) memcpy(p, b->s, b->n);
        free(b->s);
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, t, k);
    b->n += k;
    b->s[b->n] = 0;
}
static void sb_add(sbuf *b, const char *t) { sb_addn(b, t, strlen(t)); }

/* ---- file-name-safe text ---- */

static int keep_char(utf8proc_int32_t cp) {
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
               cp == '-' || cp == '.' || cp == '_';
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

static int edge_char(char c) { return c == '_' || c == '.' || c == '-'; }

char *ldm_name_safe_text(const char *s, size_t max_bytes) {
    size_t len = strlen(s);
    char *o = ldm_xmalloc(len + 2);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) { k = 1; cp = -1; }
        if (cp >= 0 && keep_char(cp)) {
            memcpy(o + n, s + i, (size_t)k);
            n += (size_t)k;
        } else if (n == 0 || o[n - 1] != '_') {
            o[n++] = '_';
        }
        i += (size_t)k;
    }
    o[n] = 0;
    /* no '_', '.' or '-' at the start */
    size_t a = 0;
    while (a < n && edge_char(o[a])) a++;
    memmove(o, o + a, n - a + 1);
    n -= a;
    /* cut at a character boundary (UTF-8 continuation bytes are 10xxxxxx) */
    if (max_bytes < 1) max_bytes = 1;
    if (n > max_bytes) {
        n = max_bytes;
        while (n > 0 && ((unsigned char)o[n] & 0xc0) == 0x80) n--;
        o[n] = 0;
    }
    while (n > 0 && edge_char(o[n - 1])) o[--n] = 0;
    if (n == 0) strcpy(o, "_");
    return o;
}

/* ---- patterns ---- */

typedef enum { F_INDEX, F_LINE, F_SHARD, F_SEED, F_PROMPT, F_ID, F_UNKNOWN } field_kind;
static const char *const field_names[] = {"index", "line", "shard", "seed", "prompt", "id"};

static field_kind field_of(const char *name, size_t n) {
    for (int i = 0; i < F_UNKNOWN; i++)
        if (strlen(field_names[i]) == n && !strncmp(field_names[i], name, n)) return (field_kind)i;
    return F_UNKNOWN;
}

/* Parse "0W" (numbers) or "N" (prompt) after the colon; -1 when malformed. */
static int parse_width(const char *s, size_t n, int zero, int max) {
    if (zero) {
        if (n < 2 || s[0] != '0') return -1;
        s++; n--;
    }
    if (n < 1 || n > 3) return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= max ? v : -1;
}

static const char *where_known(field_kind k) {
    switch (k) {
    case F_INDEX: case F_LINE: case F_SHARD: return "only with --prompts";
    case F_ID: return "only when the history is recorded";
    default: return "not here";
    }
}

/* One pass over the pattern.  f == NULL: check the syntax only. */
static char *expand(const char *pat, const ldm_name_fields *f, int check_only) {
    sbuf b = {0};
    sb_add(&b, "");
    /* a pattern with {id} and no id yet: {id} and the escapes stay, for a later pass */
    const int keep = !check_only && f->id == 0 && ldm_name_uses(pat, "id");
    for (const char *p = pat; *p;) {
        if (p[0] == '{' && p[1] == '{') { sb_add(&b, keep ? "{{" : "{"); p += 2; continue; }
        if (p[0] == '}' && p[1] == '}') { sb_add(&b, keep ? "}}" : "}"); p += 2; continue; }
        if (p[0] == '}') {
            ldm_error_kind(LDM_USAGE, "-o \"%s\": a single } (write }} for a brace)", pat);
            goto fail;
        }
        if (p[0] != '{') { sb_addn(&b, p, 1); p++; continue; }
        const char *end = strchr(p, '}');
        if (!end) {
            ldm_error_kind(LDM_USAGE, "-o \"%s\": { without its } (write {{ for a brace)", pat);
            goto fail;
        }
        const char *name = p + 1, *colon = memchr(name, ':', (size_t)(end - name));
        size_t nlen = (size_t)((colon ? colon : end) - name);
        field_kind k = field_of(name, nlen);
        if (k == F_UNKNOWN) {
            ldm_error_kind(LDM_USAGE, "-o \"%s\": unknown field {%.*s} (known: {index}, {line}, "
                           "{seed}, {prompt}, {id}, {shard})", pat, (int)nlen, name);
            goto fail;
        }
        int width = 0;
        if (colon) {
            size_t flen = (size_t)(end - colon - 1);
            width = k == F_PROMPT ? parse_width(colon + 1, flen, 0, 255)
                                  : parse_width(colon + 1, flen, 1, 20);
            if (width < 0) {
                ldm_error_kind(LDM_USAGE, "-o \"%s\": {%.*s}: expected %s", pat, (int)(end - name),
                               name, k == F_PROMPT ? "{prompt:N} with N from 1 to 255 (bytes)"
                                                   : "a zero-padded width such as :05 (at most 20)");
                goto fail;
            }
        }
        if (check_only) { p = end + 1; continue; }
        char num[48];
        int have = 1;
        switch (k) {
        case F_INDEX: case F_LINE: case F_SHARD: {
            int64_t v = k == F_INDEX ? f->index : k == F_LINE ? f->line : f->shard;
            have = v >= 0;
            snprintf(num, sizeof num, "%0*lld", width, (long long)v);
            break;
        }
        case F_SEED:
            have = f->has_seed;
            snprintf(num, sizeof num, "%0*llu", width, (unsigned long long)f->seed);
            break;
        case F_ID:
            if (keep) { sb_addn(&b, p, (size_t)(end - p + 1)); p = end + 1; continue; }
            have = f->id > 0;
            snprintf(num, sizeof num, "%0*lld", width, (long long)f->id);
            break;
        case F_PROMPT:
            have = f->prompt != NULL;
            break;
        default:
            break;
        }
        if (!have) {
            ldm_error_kind(LDM_USAGE, "-o \"%s\": {%s} is known %s", pat, field_names[k], where_known(k));
            goto fail;
        }
        if (k == F_PROMPT) {
            char *t = ldm_name_safe_text(f->prompt, width ? (size_t)width : PROMPT_DEFAULT_BYTES);
            if (keep) {   /* the prompt's own braces must survive the second pass */
                for (char *c = t; *c; c++) {
                    if (*c == '{') sb_add(&b, "{{");
                    else if (*c == '}') sb_add(&b, "}}");
                    else sb_addn(&b, c, 1);
                }
            } else {
                sb_add(&b, t);
            }
            free(t);
        } else {
            sb_add(&b, num);
        }
        p = end + 1;
    }
    return b.s;
fail:
    free(b.s);
    return NULL;
}

char *ldm_name_expand(const char *pattern, const ldm_name_fields *f) { return expand(pattern, f, 0); }

int ldm_name_check(const char *pattern) {
    char *s = expand(pattern, NULL, 1);
    if (!s) return -1;
    free(s);
    return 0;
}

int ldm_name_uses(const char *pattern, const char *name) {
    size_t n = strlen(name);
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '{' && p[1] == '{') { p++; continue; }
        if (p[0] == '{' && !strncmp(p + 1, name, n) && (p[1 + n] == '}' || p[1 + n] == ':')) return 1;
    }
    return 0;
}

/* ---- numbered names ---- */

/* Length of name without a final ".png". */
static size_t stem_len(const char *name) {
    size_t L = strlen(name);
    const char *slash = strrchr(name, '/');
    const char *dot = strrchr(name, '.');
    if (dot && (!slash || dot > slash + 1) && !strcmp(dot, ".png")) L = (size_t)(dot - name);
    return L;
}

char *ldm_name_numbered(const char *name, int k) {
    size_t L = stem_len(name);
    size_t cap = L + 32;
    char *s = ldm_xmalloc(cap);
    snprintf(s, cap, "%.*s-%d.png", (int)L, name, k);
    return s;
}

int ldm_name_highest_number(const char *name) {
    size_t L = stem_len(name);
    const char *slash = memrchr(name, '/', L);
    char *dir = slash ? ldm_xmalloc((size_t)(slash - name) + 2) : ldm_xstrdup(".");
    if (slash) {
        size_t dl = (size_t)(slash - name);
        memcpy(dir, name, dl ? dl : 1);
        dir[dl ? dl : 1] = 0;
    }
    const char *base = slash ? slash + 1 : name;
    size_t bl = L - (size_t)(base - name);
    int best = 0;
    DIR *d = opendir(dir);
    free(dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (strncmp(n, base, bl) || n[bl] != '-') continue;
        const char *p = n + bl + 1;
        if (*p < '1' || *p > '9') continue;   /* no leading zeros: -0001 is a batch's */
        long v = 0;
        while (*p >= '0' && *p <= '9' && v < 100000000) v = v * 10 + (*p++ - '0');
        int ok = !strcmp(p, ".png");
        if (!ok && p[0] == '-') {
            const char *q = p + 1;
            int digits = 0;
            while (*q >= '0' && *q <= '9') { q++; digits++; }
            ok = digits == 4 && !strcmp(q, ".png");
        }
        if (ok && v > best) best = (int)v;
    }
    closedir(d);
    return best;
}
