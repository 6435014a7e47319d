/* tokenizer.c - CLIP BPE tokenizer equal to transformers' CLIPTokenizerFast (see tokenizer.h).
 *
 * Unicode data (NFC, lower case, general categories) comes from utf8proc; vocab.json,
 * tokenizer.json and the tokenizer configs are read with jansson.  Text is handled as arrays of code points
 * between the stages; BPE works on vocabulary ids, with the merges in a hash table keyed
 * by the pair of ids.
 */
#include "model/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/common.h"

#define NAME_MAX_LEN 600

/* transformers' CLIPTokenizer reads at most 49152 - 256 - 2 merges from merges.txt */
#define CLIP_MAX_MERGES (49152 - 256 - 2)

typedef struct {
    int32_t *cps; /* content as code points (normalized when `normalized`) */
    int len;
    int32_t id;
    int normalized; /* matched after normalization (else on the raw text) */
} added_token;

typedef struct {
    uint64_t key; /* (left id << 32) | right id, UINT64_MAX = empty */
    int32_t rank, merged;
} merge_slot;

struct ldm_tokenizer {
    json_t *vocab; /* token string -> integer id */
    int32_t byte_id[256], byte_eow_id[256];
    merge_slot *merges;
    size_t merge_mask;
    added_token *added;
    int n_added;
    int split_specials; /* the pre-tokenizer pattern starts with <|startoftext|>|<|endoftext|> */
    ldm_tokenizer_info info;
    /* names used in error messages while loading */
    char vocab_where[NAME_MAX_LEN + 32]; /* ".../vocab.json" or ".../tokenizer.json: field model.vocab" */
    const char *vocab_short;         /* "vocab.json" or "model.vocab" */
    char merges_name[NAME_MAX_LEN], json_name[NAME_MAX_LEN];
    char config_name[NAME_MAX_LEN], special_name[NAME_MAX_LEN];
};

/* ---- growable int32 buffer ----------------------------------------------------- */

typedef struct {
    int32_t *v;
    int n, cap;
} ibuf;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) {
        ldm_log(0, "ldm: out of memory (allocating %zu bytes)\n", n);
        abort();
    }
    return q;
}

static void ibuf_push(ibuf *b, int32_t x) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->v = xrealloc(b->v, (size_t)b->cap * sizeof *b->v);
    }
    b->v[b->n++] = x;
}

/* ---- Unicode helpers ----------------------------------------------------------- */

/* Decode UTF-8 into code points.  -1 with ldm_error naming `what` on invalid input. */
static int decode_utf8(const char *s, size_t len, ibuf *out, const char *what) {
    size_t i = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0 || cp < 0)
            return ldm_error("%s: invalid UTF-8 at byte %zu (0x%02x)", what, i, (unsigned char)s[i]);
        ibuf_push(out, cp);
        i += (size_t)k;
    }
    return 0;
}

static size_t encode_utf8(const int32_t *cps, int n, char **out) {
    char *s = ldm_xmalloc((size_t)n * 4 + 1);
    size_t len = 0;
    for (int i = 0; i < n; i++) len += (size_t)utf8proc_encode_char(cps[i], (utf8proc_uint8_t *)s + len);
    s[len] = 0;
    *out = s;
    return len;
}

static int is_letter(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
           c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO;
}

static int is_number(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* \s of the Oniguruma regexes used by tokenizers: Unicode White_Space, which is
 * U+0009..U+000D, U+0085 and the separators Zs, Zl, Zp. */
static int is_space(int32_t cp) {
    if ((cp >= 0x09 && cp <= 0x0d) || cp == 0x85) return 1;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* The fast tokenizer's normalizer: NFC, each \s+ run -> " ", then per-character lower
 * case with Rust's char::to_lowercase, i.e. the full mapping.  The only unconditional
 * multi-character lower-case mapping in Unicode is U+0130 -> "i" U+0307; every other
 * character maps as utf8proc_tolower (the simple mapping) does. */
static void normalize(const int32_t *cps, int n, ibuf *out) {
    char *utf8, *nfc = NULL;
    size_t len = encode_utf8(cps, n, &utf8);
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)utf8, (utf8proc_ssize_t)len,
                                      (utf8proc_uint8_t **)&nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    ibuf composed = {0};
    if (m < 0) { /* cannot happen for valid input; keep the text as it was */
        for (int i = 0; i < n; i++) ibuf_push(&composed, cps[i]);
    } else {
        decode_utf8(nfc, (size_t)m, &composed, "NFC");
    }
    free(utf8);
    free(nfc);
    for (int i = 0; i < composed.n; i++) {
        int32_t cp = composed.v[i];
        if (is_space(cp)) {
            while (i + 1 < composed.n && is_space(composed.v[i + 1])) i++;
            ibuf_push(out, ' ');
        } else if (cp == 0x130) {
            ibuf_push(out, 'i');
            ibuf_push(out, 0x307);
        } else {
            ibuf_push(out, utf8proc_tolower(cp));
        }
    }
    free(composed.v);
}

/* ---- vocabulary and merges ----------------------------------------------------- */

static int32_t vocab_get(const ldm_tokenizer *t, const char *s) {
    json_t *v = json_object_get(t->vocab, s);
    return v ? (int32_t)json_integer_value(v) : -1;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other
 * bytes are numbered from U+0100 in byte order. */
static int32_t byte_to_cp(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) n++;
    return 256 + n;
}

/* Take the token -> id object (a new reference is kept) and find the byte tokens. */
static int set_vocab(ldm_tokenizer *t, json_t *vocab) {
    if (!json_is_object(vocab)) return ldm_error("%s: expected a JSON object of token -> id", t->vocab_where);
    t->vocab = json_incref(vocab);
    const char *key;
    json_t *val;
    json_object_foreach(t->vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > INT32_MAX)
            return ldm_error("%s: token \"%s\": expected a non-negative integer id", t->vocab_where, key);
    }
    for (int b = 0; b < 256; b++) {
        char s[16];
        int32_t cp = byte_to_cp(b);
        int n = (int)utf8proc_encode_char(cp, (utf8proc_uint8_t *)s);
        s[n] = 0;
        t->byte_id[b] = vocab_get(t, s);
        strcpy(s + n, "</w>");
        t->byte_eow_id[b] = vocab_get(t, s);
        if (t->byte_id[b] < 0 || t->byte_eow_id[b] < 0)
            return ldm_error("%s: no token for byte 0x%02x (\"%s\" with and without </w>)", t->vocab_where, b, s);
    }
    return 0;
}

static int load_vocab(ldm_tokenizer *t, const char *text, size_t len) {
    json_error_t err;
    json_t *v = json_loadb(text, len, 0, &err);
    if (!v) return ldm_error("%s line %d: %s", t->vocab_where, err.line, err.text);
    int rc = set_vocab(t, v);
    json_decref(v);
    return rc;
}

static uint64_t hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static merge_slot *merge_find(const ldm_tokenizer *t, uint64_t key) {
    size_t i = hash64(key) & t->merge_mask;
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
    return &t->merges[i];
}

static void merges_alloc(ldm_tokenizer *t, size_t count) {
    size_t cap = 1024;
    while (cap < 2 * count) cap *= 2;
    t->merges = ldm_xmalloc(cap * sizeof *t->merges);
    for (size_t i = 0; i < cap; i++) t->merges[i].key = UINT64_MAX;
    t->merge_mask = cap - 1;
}

/* Register the merge a + b with the given rank; `where` names it in errors. */
static int add_merge(ldm_tokenizer *t, const char *a, const char *b, int rank, const char *where) {
    int32_t ia = vocab_get(t, a), ib = vocab_get(t, b);
    size_t la = strlen(a), lb = strlen(b);
    char *joined = ldm_xmalloc(la + lb + 1);
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb + 1);
    int32_t im = vocab_get(t, joined);
    if (ia < 0 || ib < 0 || im < 0) {
        int rc = ldm_error("%s: token \"%s\" is not in %s", where, ia < 0 ? a : ib < 0 ? b : joined,
                           t->vocab_short);
        free(joined);
        return rc;
    }
    free(joined);
    merge_slot *s = merge_find(t, ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib);
    if (s->key == UINT64_MAX) { /* a repeated pair keeps its first rank */
        s->key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        s->rank = rank;
        s->merged = im;
    }
    return 0;
}

static int load_merges(ldm_tokenizer *t, const char *text, size_t len) {
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    merges_alloc(t, lines);

    int rank = 0, lineno = 0;
    size_t pos = 0;
    char *buf = NULL;
    size_t buf_cap = 0;
    while (pos < len && rank < CLIP_MAX_MERGES) {
        size_t end = pos;
        while (end < len && text[end] != '\n') end++;
        size_t n = end - pos;
        lineno++;
        if (n + 8 > buf_cap) { free(buf); buf_cap = 2 * n + 64; buf = ldm_xmalloc(buf_cap); }
        memcpy(buf, text + pos, n);
        buf[n] = 0;
        pos = end + 1;
        while (n && (buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) buf[--n] = 0;
        if (lineno == 1 && strncmp(buf, "#version", 8) == 0) continue;
        if (n == 0) continue;
        /* "left right": two tokens separated by whitespace */
        char *a = buf;
        while (*a == ' ' || *a == '\t') a++;
        char *sep = a;
        while (*sep && *sep != ' ' && *sep != '\t') sep++;
        char *b = sep;
        while (*b == ' ' || *b == '\t') b++;
        char *extra = b;
        while (*extra && *extra != ' ' && *extra != '\t') extra++;
        if (sep == a || *b == 0 || *extra != 0) {
            ldm_error("%s line %d: expected two tokens separated by a space, found \"%.60s\"",
                      t->merges_name, lineno, a);
            free(buf);
            return -1;
        }
        *sep = 0;
        char where[NAME_MAX_LEN + 32];
        snprintf(where, sizeof where, "%s line %d", t->merges_name, lineno);
        if (add_merge(t, a, b, rank, where) < 0) { free(buf); return -1; }
        rank++;
    }
    free(buf);
    return 0;
}

/* tokenizer.json's model.merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs.
 * Every merge is used (the tokenizers library has no cap). */
static int load_json_merges(ldm_tokenizer *t, json_t *merges) {
    if (!merges) return ldm_error("%s: field model.merges: missing (expected the list of BPE merges)", t->json_name);
    if (!json_is_array(merges))
        return ldm_error("%s: field model.merges: expected an array of \"a b\" strings or [\"a\", \"b\"] pairs",
                         t->json_name);
    size_t n = json_array_size(merges);
    merges_alloc(t, n);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(merges, i);
        char where[NAME_MAX_LEN + 64];
        snprintf(where, sizeof where, "%s: field model.merges[%zu]", t->json_name, i);
        const char *a = NULL, *b = NULL;
        char *pair = NULL;
        if (json_is_string(m)) {
            /* tokenizers splits on the first space; both halves must be non-empty */
            pair = ldm_xstrdup(json_string_value(m));
            char *sp = strchr(pair, ' ');
            if (sp && sp != pair && sp[1] && !strchr(sp + 1, ' ')) { *sp = 0; a = pair; b = sp + 1; }
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            if (!*a || !*b) a = b = NULL;
        }
        if (!a) {
            char *txt = json_dumps(m, JSON_COMPACT | JSON_ENCODE_ANY);
            ldm_error("%s: expected \"a b\" (two tokens and one space) or a pair [\"a\", \"b\"], found %.60s",
                      where, txt ? txt : "?");
            free(txt);
            free(pair);
            return -1;
        }
        int rc = add_merge(t, a, b, (int)i, where);
        free(pair);
        if (rc < 0) return -1;
    }
    return 0;
}

/* ---- special and added tokens -------------------------------------------------- */

static json_t *parse_optional(const char *text, const char *name, int *failed) {
    *failed = 0;
    if (!text) return NULL;
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j) { *failed = 1; ldm_error("%s line %d: %s", name, err.line, err.text); return NULL; }
    if (!json_is_object(j)) { *failed = 1; json_decref(j); ldm_error("%s: expected a JSON object", name); return NULL; }
    return j;
}

/* A special-token field: a string or {"content": ..., "normalized": ...}; string_norm
 * and dict_norm are the "normalized" flags transformers gives each form by default.
 * Returns 1 when present, 0 when absent or null, -1 on a malformed value. */
static int token_field(json_t *obj, const char *field, const char *file, int string_norm,
                       int dict_norm, const char **content, int *normalized) {
    json_t *v = obj ? json_object_get(obj, field) : NULL;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        *content = json_string_value(v);
        *normalized = string_norm;
        return 1;
    }
    json_t *c = json_is_object(v) ? json_object_get(v, "content") : NULL;
    if (!json_is_string(c))
        return ldm_error("%s: field %s: expected a string or an object with a \"content\" string", file, field);
    *content = json_string_value(c);
    json_t *nz = json_object_get(v, "normalized");
    *normalized = json_is_boolean(nz) ? json_is_true(nz) : dict_norm;
    return 1;
}

static int add_token(ldm_tokenizer *t, const char *content, int32_t id, int normalized, const char *where) {
    ibuf raw = {0};
    if (decode_utf8(content, strlen(content), &raw, where) < 0) return -1;
    if (raw.n == 0) { free(raw.v); return 0; }
    for (int i = 0; i < t->n_added; i++) /* the first registration wins, as in transformers */
        if (t->added[i].id == id) { free(raw.v); return 0; }
    ibuf cps = {0};
    if (normalized) {
        normalize(raw.v, raw.n, &cps);
        free(raw.v);
    } else {
        cps = raw;
    }
    t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
    t->added[t->n_added++] = (added_token){cps.v, cps.n, id, normalized};
    return 0;
}

static int cmp_int(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* (id, index) pairs: by id, then by position */
static int cmp_int_pair(const void *a, const void *b) {
    const long *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

/* tokenizer.json's "added_tokens": [{"id", "content", "normalized", "special", ...}],
 * registered in id order (transformers sorts its added_tokens_decoder). */
static int add_json_tokens(ldm_tokenizer *t, json_t *arr) {
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return ldm_error("%s: field added_tokens: expected an array", t->json_name);
    size_t n = json_array_size(arr);
    long *order = ldm_xmalloc((n ? n : 1) * 2 * sizeof *order); /* (id, index) pairs */
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *e = json_array_get(arr, i), *id = json_object_get(e, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX ||
            !json_is_string(json_object_get(e, "content")))
            rc = ldm_error("%s: field added_tokens[%zu]: expected an object with a non-negative integer "
                           "\"id\" and a \"content\" string", t->json_name, i);
        static const char *unsupported[3] = {"lstrip", "rstrip", "single_word"};
        for (int k = 0; k < 3 && !rc; k++)
            if (json_is_true(json_object_get(e, unsupported[k])))
                rc = ldm_error("%s: field added_tokens[%zu].%s: true is not supported (CLIP's added "
                               "tokens match exactly)", t->json_name, i, unsupported[k]);
        order[2 * i] = rc ? 0 : (long)json_integer_value(id);
        order[2 * i + 1] = (long)i;
    }
    if (!rc) qsort(order, n, 2 * sizeof *order, cmp_int_pair);
    for (size_t k = 0; k < n && !rc; k++) {
        json_t *e = json_array_get(arr, (size_t)order[2 * k + 1]);
        json_t *nz = json_object_get(e, "normalized"), *sp = json_object_get(e, "special");
        int normalized = json_is_boolean(nz) ? json_is_true(nz) : !json_is_true(sp);
        rc = add_token(t, json_string_value(json_object_get(e, "content")), (int32_t)order[2 * k], normalized,
                       t->json_name);
    }
    free(order);
    return rc;
}

/* json_mode: the vocabulary came from tokenizer.json (transformers 5 rules: its
 * added_tokens are the added tokens unless the config has added_tokens_decoder, and a
 * special token given as a plain string is a special, not normalized, AddedToken). */
static int load_special(ldm_tokenizer *t, const char *config_text, const char *special_text,
                        json_t *json_added, int json_mode) {
    int failed;
    json_t *config = parse_optional(config_text, t->config_name, &failed);
    if (failed) return -1;
    json_t *special = parse_optional(special_text, t->special_name, &failed);
    if (failed) { json_decref(config); return -1; }
    int rc = 0;

    t->info.max_length = 77;
    json_t *ml = config ? json_object_get(config, "model_max_length") : NULL;
    if (json_is_integer(ml) && json_integer_value(ml) > 2 && json_integer_value(ml) < 1000000)
        t->info.max_length = (int)json_integer_value(ml);

    /* transformers 4.36 and 5: with "added_tokens_decoder" the config alone describes the
     * tokens; otherwise (older files, and every file transformers 5 writes)
     * special_tokens_map.json overrides the config, and transformers 5 takes the added
     * tokens from tokenizer.json. */
    json_t *decoder = config ? json_object_get(config, "added_tokens_decoder") : NULL;
    if (decoder && !json_is_object(decoder)) {
        rc = ldm_error("%s: field added_tokens_decoder: expected an object", t->config_name);
        goto done;
    }
    if (decoder) {
        size_t n = json_object_size(decoder), k = 0;
        long *ids = ldm_xmalloc((n ? n : 1) * sizeof *ids);
        const char *key;
        json_t *val;
        json_object_foreach(decoder, key, val) {
            char *endp;
            long id = strtol(key, &endp, 10);
            if (*key == 0 || *endp != 0 || id < 0 || id > INT32_MAX) {
                free(ids);
                rc = ldm_error("%s: added_tokens_decoder key \"%s\": expected a token id", t->config_name, key);
                goto done;
            }
            ids[k++] = id;
        }
        qsort(ids, n, sizeof *ids, cmp_int);
        for (size_t i = 0; i < n && rc == 0; i++) {
            char key_s[32];
            snprintf(key_s, sizeof key_s, "%ld", ids[i]);
            json_t *e = json_object_get(decoder, key_s);
            json_t *c = json_is_object(e) ? json_object_get(e, "content") : NULL;
            if (!json_is_string(c)) {
                rc = ldm_error("%s: added_tokens_decoder[\"%s\"]: expected an object with a \"content\" string",
                               t->config_name, key_s);
                break;
            }
            json_t *nz = json_object_get(e, "normalized"), *sp = json_object_get(e, "special");
            int normalized = json_is_boolean(nz) ? json_is_true(nz) : !json_is_true(sp);
            rc = add_token(t, json_string_value(c), (int32_t)ids[i], normalized, t->config_name);
        }
        free(ids);
        if (rc) goto done;
    } else if (json_mode && (rc = add_json_tokens(t, json_added)) < 0) {
        goto done;
    }

    /* CLIPTokenizer's defaults.  transformers 4.36: bos/eos/unk given as plain strings
     * are wrapped as normalized AddedTokens by CLIPTokenizer, a plain pad string is not;
     * an object without "normalized" is normalized in tokenizer_config.json (AddedToken
     * default) and not in special_tokens_map.json (read as special=True).  transformers 5
     * (json_mode) makes every special token given as a string or object without
     * "normalized" a special AddedToken, not normalized.  A token already registered
     * (from added_tokens_decoder or tokenizer.json) keeps its flags. */
    static const char *fields[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    static const char *defaults[4] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"};
    int32_t *dst[4] = {&t->info.bos, &t->info.eos, &t->info.unk, &t->info.pad};
    for (int f = 0; f < 4; f++) {
        const char *content = defaults[f];
        int str_norm = json_mode ? 0 : f < 3;
        int normalized = str_norm;
        int got = token_field(config, fields[f], t->config_name, str_norm, !json_mode, &content, &normalized);
        if (got < 0) { rc = -1; goto done; }
        if (!decoder) {
            int g2 = token_field(special, fields[f], t->special_name, str_norm, 0, &content, &normalized);
            if (g2 < 0) { rc = -1; goto done; }
        }
        int32_t id = vocab_get(t, content);
        for (int i = 0; i < t->n_added && id < 0; i++) {
            char *s;
            encode_utf8(t->added[i].cps, t->added[i].len, &s);
            if (strcmp(s, content) == 0) id = t->added[i].id;
            free(s);
        }
        if (id < 0) {
            rc = ldm_error("%s: %s \"%s\" is not in %s", special && !decoder ? t->special_name : t->config_name,
                           fields[f], content, t->vocab_short);
            goto done;
        }
        *dst[f] = id;
        if ((rc = add_token(t, content, id, normalized, fields[f])) < 0) goto done;
    }
done:
    json_decref(config);
    json_decref(special);
    return rc;
}

/* ---- tokenizer.json ------------------------------------------------------------ */

#define CLIP_PATTERN "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"
/* transformers 5 writes (and always uses) the pattern with the special tokens first */
#define CLIP_PATTERN_SPECIALS "<\\|startoftext\\|>|<\\|endoftext\\|>|" CLIP_PATTERN

/* The Split pre-tokenizer's regex, alone or inside a Sequence: one of the two CLIP
 * patterns (which sets split_specials), else an error naming the field. */
static int read_pre_tokenizer(ldm_tokenizer *t, json_t *root) {
    json_t *pre = json_object_get(root, "pre_tokenizer");
    json_t *list = pre;
    const char *seq = "";
    if (json_is_object(pre) && json_is_string(json_object_get(pre, "type")) &&
        !strcmp(json_string_value(json_object_get(pre, "type")), "Sequence")) {
        list = json_object_get(pre, "pretokenizers");
        seq = ".pretokenizers";
    }
    size_t n = json_is_array(list) ? json_array_size(list) : json_is_object(list) ? 1 : 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(list) ? json_array_get(list, i) : list;
        json_t *type = json_object_get(e, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "Split")) continue;
        json_t *re = json_object_get(json_object_get(e, "pattern"), "Regex");
        const char *r = json_string_value(re);
        if (r && !strcmp(r, CLIP_PATTERN_SPECIALS)) { t->split_specials = 1; return 0; }
        if (r && !strcmp(r, CLIP_PATTERN)) { t->split_specials = 0; return 0; }
        char idx[32] = "";
        if (json_is_array(list)) snprintf(idx, sizeof idx, "[%zu]", i);
        return ldm_error("%s: field pre_tokenizer%s%s.pattern.Regex: %s%.80s%s is not CLIP's pattern (expected "
                         "\"%s\", optionally preceded by \"<\\|startoftext\\|>|<\\|endoftext\\|>|\")",
                         t->json_name, seq, idx, r ? "\"" : "", r ? r : "missing", r ? "\"" : "", CLIP_PATTERN);
    }
    return ldm_error("%s: field pre_tokenizer: no Split pre-tokenizer with CLIP's pattern (expected the CLIP "
                     "tokenizer's Split + ByteLevel sequence)", t->json_name);
}

/* model (BPE, "</w>" suffix), its vocab and merges, the pre-tokenizer pattern; the
 * added_tokens array is returned (new reference) for load_special.  The normalizer,
 * post-processor and decoder are CLIP's fixed ones and not read (transformers 5's
 * CLIPTokenizer does not read them either). */
static int load_tokenizer_json(ldm_tokenizer *t, const char *text, size_t len, json_t **added) {
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    if (!root) return ldm_error("%s line %d: %s", t->json_name, err.line, err.text);
    int rc = -1;
    json_t *model = json_object_get(root, "model"), *v;
    if (!json_is_object(root)) {
        ldm_error("%s: expected a JSON object", t->json_name);
        goto out;
    }
    if (!json_is_object(model)) {
        ldm_error("%s: field model: %s (expected the BPE model object)", t->json_name,
                  model ? "not an object" : "missing");
        goto out;
    }
    v = json_object_get(model, "type");
    if (v && !(json_is_string(v) && !strcmp(json_string_value(v), "BPE"))) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        ldm_error("%s: field model.type: %s is not supported (expected \"BPE\", CLIP's byte-level BPE)",
                  t->json_name, s ? s : "?");
        free(s);
        goto out;
    }
    v = json_object_get(model, "end_of_word_suffix");
    if (!json_is_string(v) || strcmp(json_string_value(v), "</w>")) {
        char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        ldm_error("%s: field model.end_of_word_suffix: expected \"</w>\" (CLIP's BPE), found %s", t->json_name,
                  s ? s : "none");
        free(s);
        goto out;
    }
    v = json_object_get(model, "continuing_subword_prefix");
    if (v && !json_is_null(v) && !(json_is_string(v) && !*json_string_value(v))) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        ldm_error("%s: field model.continuing_subword_prefix: expected \"\" or null (CLIP's BPE), found %s",
                  t->json_name, s ? s : "?");
        free(s);
        goto out;
    }
    v = json_object_get(model, "vocab");
    if (!v) {
        ldm_error("%s: missing (expected the BPE vocabulary, an object of token -> id)", t->vocab_where);
        goto out;
    }
    if (set_vocab(t, v) < 0 || load_json_merges(t, json_object_get(model, "merges")) < 0 ||
        read_pre_tokenizer(t, root) < 0)
        goto out;
    *added = json_incref(json_object_get(root, "added_tokens"));
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static void set_names(ldm_tokenizer *t, const char *dir, int json_mode) {
    if (!dir) dir = "tokenizer";
    snprintf(t->json_name, sizeof t->json_name, "%s/tokenizer.json", dir);
    snprintf(t->merges_name, sizeof t->merges_name, "%s/merges.txt", dir);
    snprintf(t->config_name, sizeof t->config_name, "%s/tokenizer_config.json", dir);
    snprintf(t->special_name, sizeof t->special_name, "%s/special_tokens_map.json", dir);
    if (json_mode) {
        snprintf(t->vocab_where, sizeof t->vocab_where, "%s: field model.vocab", t->json_name);
        t->vocab_short = "model.vocab";
    } else {
        snprintf(t->vocab_where, sizeof t->vocab_where, "%s/vocab.json", dir);
        t->vocab_short = "vocab.json";
    }
}

ldm_tokenizer *ldm_tokenizer_load(const ldm_tokenizer_files *f) {
    ldm_tokenizer *t = ldm_xcalloc(1, sizeof *t);
    int json_mode = !(f->vocab_json && f->merges) && f->tokenizer_json;
    set_names(t, f->dir, json_mode);
    int rc;
    if (json_mode) {
        json_t *added = NULL;
        rc = load_tokenizer_json(t, f->tokenizer_json, f->tokenizer_json_len, &added);
        if (!rc) rc = load_special(t, f->config_json, f->special_json, added, 1);
        json_decref(added);
    } else if (!f->vocab_json || !f->merges) {
        rc = ldm_error("%s: missing (a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json)",
                       f->vocab_json ? t->merges_name : t->vocab_where);
    } else {
        rc = load_vocab(t, f->vocab_json, f->vocab_len);
        if (!rc) rc = load_merges(t, f->merges, f->merges_len);
        if (!rc) rc = load_special(t, f->config_json, f->special_json, NULL, 0);
    }
    if (rc) {
        ldm_tokenizer_free(t);
        return NULL;
    }
    return t;
}

ldm_tokenizer *ldm_tokenizer_new(const char *vocab_json, size_t vocab_len, const char *merges,
                                 size_t merges_len, const char *tokenizer_config_json,
                                 const char *special_tokens_json) {
    ldm_tokenizer_files f = {0};
    f.vocab_json = vocab_json;
    f.vocab_len = vocab_len;
    f.merges = merges;
    f.merges_len = merges_len;
    f.config_json = tokenizer_config_json;
    f.special_json = special_tokens_json;
    return ldm_tokenizer_load(&f);
}

void ldm_tokenizer_free(ldm_tokenizer *t) {
    if (!t) return;
    json_decref(t->vocab);
    free(t->merges);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].cps);
    free(t->added);
    free(t);
}

ldm_tokenizer_info ldm_tokenizer_get_info(const ldm_tokenizer *t) { return t->info; }

int32_t ldm_tokenizer_token_id(const ldm_tokenizer *t, const char *token) { return vocab_get(t, token); }

char *ldm_tokenizer_token_text(const ldm_tokenizer *t, int32_t id) {
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].id == id) {
            char *s;
            encode_utf8(t->added[k].cps, t->added[k].len, &s);
            return s;
        }
    const char *key = NULL, *k;
    json_t *v;
    json_object_foreach(t->vocab, k, v) {
        if (json_integer_value(v) == id) { key = k; break; }
    }
    if (!key) return NULL;
    /* the byte-level alphabet back to bytes, up to a "</w>" suffix */
    size_t n = strlen(key), eow = n >= 4 && !strcmp(key + n - 4, "</w>") ? n - 4 : n;
    char *out = ldm_xmalloc(n + 1);
    size_t o = 0, i = 0;
    while (i < eow) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)key + i, (utf8proc_ssize_t)(eow - i), &cp);
        if (len <= 0) { out[o++] = key[i++]; continue; }
        int b = -1;
        for (int x = 0; x < 256 && b < 0; x++)
            if (byte_to_cp(x) == cp) b = x;
        if (b >= 0) out[o++] = (char)b;
        else { memcpy(out + o, key + i, (size_t)len); o += (size_t)len; }
        i += (size_t)len;
    }
    memcpy(out + o, key + eow, n - eow);
    out[o + n - eow] = 0;
    return out;
}

/* ---- encoding ------------------------------------------------------------------ */

/* BPE of one word given as UTF-8 bytes; ids appended to out. */
static void bpe_word(const ldm_tokenizer *t, const unsigned char *bytes, size_t n, ibuf *out) {
    int32_t *sym = ldm_xmalloc(n * sizeof *sym);
    int m = (int)n;
    for (size_t i = 0; i < n; i++) sym[i] = i + 1 == n ? t->byte_eow_id[bytes[i]] : t->byte_id[bytes[i]];
    for (;;) {
        /* the adjacent pair with the lowest merge rank */
        int best_rank = INT32_MAX;
        uint64_t best_key = 0;
        int32_t merged = -1;
        for (int i = 0; i + 1 < m; i++) {
            uint64_t key = ((uint64_t)(uint32_t)sym[i] << 32) | (uint32_t)sym[i + 1];
            const merge_slot *s = merge_find(t, key);
            if (s->key == key && s->rank < best_rank) { best_rank = s->rank; best_key = key; merged = s->merged; }
        }
        if (merged < 0) break;
        /* merge every occurrence of that pair, left to right */
        int w = 0;
        for (int i = 0; i < m; i++) {
            if (i + 1 < m && (((uint64_t)(uint32_t)sym[i] << 32) | (uint32_t)sym[i + 1]) == best_key) {
                sym[w++] = merged;
                i++;
            } else {
                sym[w++] = sym[i];
            }
        }
        m = w;
    }
    for (int i = 0; i < m; i++) ibuf_push(out, sym[i]);
    free(sym);
}

/* With split_specials, "<|startoftext|>" or "<|endoftext|>" at the start of a match is
 * one piece (the first alternatives of transformers 5's pattern); it ends a punctuation
 * run that the older pattern would have continued ("<|endoftext|>!" gives "|>", "!"
 * instead of "|>!").  Returns its length or 0. */
static int special_word(const int32_t *cps, int n) {
    static const char *sp[2] = {"<|startoftext|>", "<|endoftext|>"};
    for (int k = 0; k < 2; k++) {
        int len = (int)strlen(sp[k]), i = 0;
        while (i < len && i < n && cps[i] == (unsigned char)sp[k][i]) i++;
        if (i == len) return len;
    }
    return 0;
}

/* The CLIP pre-tokenizer pattern over normalized code points; whitespace is dropped. */
static void words(const ldm_tokenizer *t, const int32_t *cps, int n, ibuf *out) {
    int i = 0;
    while (i < n) {
        int32_t c = cps[i];
        int end;
        if (is_space(c)) { i++; continue; }
        int special_len = t->split_specials ? special_word(cps + i, n - i) : 0;
        if (special_len) {
            /* ByteLevel's own (GPT-2) pattern, applied to each piece after the Split,
             * cuts "<|endoftext|>" into "<|", "endoftext", "|>": three words.  Every
             * other CLIP piece is one GPT-2 piece already. */
            const int cut[4] = {0, 2, special_len - 2, special_len};
            for (int k = 0; k < 3; k++) {
                char *utf8;
                size_t len = encode_utf8(cps + i + cut[k], cut[k + 1] - cut[k], &utf8);
                bpe_word(t, (const unsigned char *)utf8, len, out);
                free(utf8);
            }
            i += special_len;
            continue;
        } else if (c == '\'' && i + 1 < n &&
            (cps[i + 1] == 's' || cps[i + 1] == 't' || cps[i + 1] == 'm' || cps[i + 1] == 'd')) {
            end = i + 2;
        } else if (c == '\'' && i + 2 < n &&
                   ((cps[i + 1] == 'r' && cps[i + 2] == 'e') || (cps[i + 1] == 'v' && cps[i + 2] == 'e') ||
                    (cps[i + 1] == 'l' && cps[i + 2] == 'l'))) {
            end = i + 3;
        } else if (is_letter(c)) {
            end = i + 1;
            while (end < n && is_letter(cps[end])) end++;
        } else if (is_number(c)) {
            end = i + 1;
        } else {
            end = i + 1;
            while (end < n && !is_space(cps[end]) && !is_letter(cps[end]) && !is_number(cps[end])) end++;
        }
        char *utf8;
        size_t len = encode_utf8(cps + i, end - i, &utf8);
        bpe_word(t, (const unsigned char *)utf8, len, out);
        free(utf8);
        i = end;
    }
}

/* Leftmost-longest match of the added tokens with the given `normalized` flag at or
 * after `from`.  Returns the match start (n when none) and sets *tok. */
static int find_added(const ldm_tokenizer *t, const int32_t *cps, int n, int from, int normalized,
                      const added_token **tok) {
    for (int i = from; i < n; i++) {
        const added_token *best = NULL;
        for (int k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized || a->len > n - i || (best && a->len <= best->len)) continue;
            if (memcmp(cps + i, a->cps, (size_t)a->len * sizeof *cps) == 0) best = a;
        }
        if (best) { *tok = best; return i; }
    }
    return n;
}

static void normalized_piece(const ldm_tokenizer *t, const int32_t *raw, int n, ibuf *out) {
    ibuf norm = {0};
    normalize(raw, n, &norm);
    int pos = 0;
    while (pos <= norm.n) {
        const added_token *tok = NULL;
        int at = find_added(t, norm.v, norm.n, pos, 1, &tok);
        words(t, norm.v + pos, at - pos, out);
        if (at >= norm.n) break;
        ibuf_push(out, tok->id);
        pos = at + tok->len;
    }
    free(norm.v);
}

static int encode(const ldm_tokenizer *t, const char *text, ibuf *out) {
    ibuf cps = {0};
    if (decode_utf8(text, strlen(text), &cps, "prompt") < 0) { free(cps.v); return -1; }
    int pos = 0;
    while (pos <= cps.n) {
        const added_token *tok = NULL;
        int at = find_added(t, cps.v, cps.n, pos, 0, &tok);
        if (at > pos) normalized_piece(t, cps.v + pos, at - pos, out);
        if (at >= cps.n) break;
        ibuf_push(out, tok->id);
        pos = at + tok->len;
    }
    free(cps.v);
    return 0;
}

int ldm_tokenize_bpe(const ldm_tokenizer *t, const char *text, int32_t *ids, int cap) {
    ibuf out = {0};
    if (encode(t, text, &out) < 0) return -1;
    for (int i = 0; i < out.n && i < cap; i++) ids[i] = out.v[i];
    int n = out.n;
    free(out.v);
    return n;
}

int ldm_tokenize(const ldm_tokenizer *t, const char *text, int32_t *ids, int max_len, int *truncated) {
    if (max_len < 2) return ldm_error("tokenizer: max_len %d is too small for BOS and EOS", max_len);
    ibuf out = {0};
    if (encode(t, text, &out) < 0) return -1;
    int keep = out.n < max_len - 2 ? out.n : max_len - 2;
    if (truncated) *truncated = out.n > keep;
    int k = 0;
    ids[k++] = t->info.bos;
    for (int i = 0; i < keep; i++) ids[k++] = out.v[i];
    ids[k++] = t->info.eos;
    int used = k;
    while (k < max_len) ids[k++] = t->info.pad;
    free(out.v);
    return used;
}
