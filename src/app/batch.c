/* batch.c - prompt files, shards, restarts and the run of many entries.  See batch.h.
 *
 * Invariants: the entries and their indices depend on the file alone (never on the
 * shard), every entry's seed and names are computed from the file and the options
 * alone, so shards and restarts agree on what each entry is; a skipped entry is one
 * whose files are exactly those a run would write now (the PNG's "ldm" chunk is
 * compared byte for byte); nothing is written before every name has been checked.
 */
#include "app/batch.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "app/db.h"
#include "app/outname.h"
#include "core/sha256.h"
#include "format/png_io.h"
#include "pipeline/scheduler.h"

#define DEFAULT_PATTERN "{index:05}-{seed}.png"
#define MAX_SHARDS 1000000L

/* ------------------------------------------------------------------------------------ */
/* shards */

/* A whole decimal number in [lo, hi]; -1 when it is not. */
static int parse_num(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        if (v > (hi - (*p - '0')) / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < lo) return -1;
    *out = v;
    return 0;
}

int ldm_shard_parse(const char *text, ldm_shard *s) {
    const char *slash = strchr(text, '/');
    long k, n;
    char kt[32];
    if (!slash || (size_t)(slash - text) >= sizeof kt)
        return ldm_error_kind(LDM_USAGE, "--shard \"%s\": expected K/N, e.g. 0/4 (shard K of N, "
                              "K from 0 to N-1)", text);
    memcpy(kt, text, (size_t)(slash - text));
    kt[slash - text] = 0;
    if (parse_num(kt, 0, MAX_SHARDS, &k) || parse_num(slash + 1, 0, MAX_SHARDS, &n))
        return ldm_error_kind(LDM_USAGE, "--shard \"%s\": expected K/N with whole numbers, e.g. 0/4 "
                              "(shard K of N, K from 0 to N-1)", text);
    if (n < 1) return ldm_error_kind(LDM_USAGE, "--shard %s: N must be at least 1", text);
    if (k >= n)
        return ldm_error_kind(LDM_USAGE, "--shard %s: K must be below N (the shards of N are 0 to "
                              "%ld)", text, n - 1);
    s->k = (int)k;
    s->n = (int)n;
    return 0;
}

int ldm_shard_from_slurm(const char *task_id, const char *task_min, const char *task_step,
                         const char *task_count, ldm_shard *s) {
    long id, mn = 0, step = 1, count;
    if (parse_num(task_id, 0, 1L << 40, &id))
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_ID=\"%s\": expected a whole number", task_id ? task_id : "");
    if (task_min && parse_num(task_min, 0, 1L << 40, &mn))
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_MIN=\"%s\": expected a whole number", task_min);
    if (task_step && parse_num(task_step, 1, 1L << 40, &step))
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_STEP=\"%s\": expected a whole number >= 1", task_step);
    if (!task_count)
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_ID=%s without SLURM_ARRAY_TASK_COUNT: the "
                              "number of shards is unknown; give --shard K/N", task_id);
    if (parse_num(task_count, 1, MAX_SHARDS, &count))
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_COUNT=\"%s\": expected a whole number >= 1", task_count);
    if (id < mn || (id - mn) % step || (id - mn) / step >= count)
        return ldm_error_kind(LDM_USAGE, "SLURM_ARRAY_TASK_ID=%ld is not one of the %ld tasks %ld, "
                              "%ld, ... (MIN %ld, STEP %ld): give the array as a range (--array=0-%ld) "
                              "or give --shard K/N", id, count, mn, mn + step, mn, step, count - 1);
    s->k = (int)((id - mn) / step);
    s->n = (int)count;
    return 0;
}

int ldm_shard_from_index(const char *index, const char *what, long count, ldm_shard *s) {
    long k;
    if (parse_num(index, 0, MAX_SHARDS, &k))
        return ldm_error_kind(LDM_USAGE, "%s=\"%s\": expected a whole number", what, index ? index : "");
    if (count < 1 || count > MAX_SHARDS)
        return ldm_error_kind(LDM_USAGE, "shard count %ld: expected a whole number >= 1", count);
    if (k >= count)
        return ldm_error_kind(LDM_USAGE, "%s=%ld is not below the shard count %ld", what, k, count);
    s->k = (int)k;
    s->n = (int)count;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* the prompt file */

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static char *absolute(const char *path) {
    char *r = realpath(path, NULL);
    if (r) {
        char *s = ldm_xstrdup(r);
        free(r);
        return s;
    }
    return ldm_xstrdup(path);
}

/* entry error, printf-style */
static void entry_fail(ldm_prompt_entry *e, const char *fmt, ...) LDM_PRINTF(2, 3);
static void entry_fail(ldm_prompt_entry *e, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    free(e->error);
    e->error = ldm_xstrdup(buf);
}

static int valid_utf8(const char *s, size_t n, size_t *bad) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) { *bad = i; return 0; }
        i += (size_t)k;
    }
    return 1;
}

/* ---- one JSON line ---- */

static const char *const known_keys[] = {
    "prompt", "negative", "negative_prompt", "seed", "steps", "guidance", "scheduler", "karras",
    "eta", "timestep_spacing", "timestep-spacing", "width", "height", "clip_skip", "clip-skip",
    "batch", "output", "prompt_syntax", "prompt-syntax", NULL};

static int json_whole(json_t *v, long lo, long hi, long *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return -1;
    *out = (long)x;
    return 0;
}

static int json_number(json_t *v, double lo, double hi, double *out) {
    if (!json_is_number(v)) return -1;
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return -1;
    *out = x;
    return 0;
}

static void parse_json_entry(ldm_prompt_entry *e, const char *text, size_t len) {
    json_error_t je;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) { entry_fail(e, "not valid JSON: %s (column %d)", je.text, je.column); return; }
    if (!json_is_object(o)) {
        entry_fail(e, "expected a JSON object such as {\"prompt\": \"red apple\", \"seed\": 1}");
        json_decref(o);
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int known = 0;
        for (int i = 0; known_keys[i]; i++) known |= !strcmp(key, known_keys[i]);
        if (!known) {
            char *k = ldm_escape_controls(key);
            entry_fail(e, "unknown key \"%.60s\" (known: prompt, negative, seed, steps, guidance, "
                       "scheduler, karras, eta, timestep_spacing, width, height, clip_skip, batch, "
                       "output, prompt_syntax)", k);
            free(k);
            goto done;
        }
    }
    ldm_gen_params *p = &e->prm;
    long n;
    double d;
    json_t *pv = json_object_get(o, "prompt");
    if (!json_is_string(pv)) { entry_fail(e, "\"prompt\": expected a string (every line needs one)"); goto done; }
    e->prompt = ldm_xstrdup(json_string_value(pv));
    json_t *nv = json_object_get(o, "negative");
    json_t *nv2 = json_object_get(o, "negative_prompt");
    if (nv && nv2) { entry_fail(e, "\"negative\" and \"negative_prompt\" both given"); goto done; }
    if (nv2) nv = nv2;
    if (nv) {
        if (!json_is_string(nv)) { entry_fail(e, "\"negative\": expected a string"); goto done; }
        e->negative = ldm_xstrdup(json_string_value(nv));
        e->set |= LDM_PE_NEGATIVE;
    }
    if ((v = json_object_get(o, "seed"))) {
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            p->seed = (uint64_t)json_integer_value(v);
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            uint64_t x = 0;
            int ok = *s != 0;
            for (const char *c = s; *c && ok; c++) {
                unsigned dg = (unsigned)(*c - '0');
                ok = *c >= '0' && *c <= '9' && x <= (UINT64_MAX - dg) / 10;
                x = x * 10 + dg;
            }
            if (!ok) { entry_fail(e, "\"seed\": expected a whole number from 0 to 18446744073709551615"); goto done; }
            p->seed = x;
        } else {
            entry_fail(e, "\"seed\": expected a whole number from 0 to 18446744073709551615");
            goto done;
        }
        e->set |= LDM_PE_SEED;
    }
    if ((v = json_object_get(o, "steps"))) {
        if (json_whole(v, 1, 1000, &n)) { entry_fail(e, "\"steps\": expected a whole number from 1 to 1000"); goto done; }
        p->steps = (int)n;
        e->set |= LDM_PE_STEPS;
    }
    if ((v = json_object_get(o, "guidance"))) {
        if (json_number(v, 0, 100, &d)) { entry_fail(e, "\"guidance\": expected a number from 0 to 100"); goto done; }
        p->guidance = d;
        e->set |= LDM_PE_GUIDANCE;
    }
    if ((v = json_object_get(o, "scheduler"))) {
        if (!json_is_string(v) || (p->scheduler = ldm_sched_kind_from_name(json_string_value(v))) < 0) {
            entry_fail(e, "\"scheduler\": expected ddim, ddpm, pndm, euler, euler_a or dpmpp_2m");
            goto done;
        }
        e->set |= LDM_PE_SCHEDULER;
    }
    if ((v = json_object_get(o, "karras"))) {
        if (!json_is_boolean(v)) { entry_fail(e, "\"karras\": expected true or false"); goto done; }
        p->karras = json_is_true(v);
        e->set |= LDM_PE_KARRAS;
    }
    if ((v = json_object_get(o, "eta"))) {
        if (json_number(v, 0, 1, &d)) { entry_fail(e, "\"eta\": expected a number from 0 to 1"); goto done; }
        p->eta = d;
        e->set |= LDM_PE_ETA;
    }
    json_t *sv = json_object_get(o, "timestep_spacing"), *sv2 = json_object_get(o, "timestep-spacing");
    if (sv && sv2) { entry_fail(e, "\"timestep_spacing\" given twice"); goto done; }
    if ((v = sv ? sv : sv2)) {
        if (!json_is_string(v) || (p->spacing = ldm_spacing_from_name(json_string_value(v))) < 0) {
            entry_fail(e, "\"timestep_spacing\": expected leading, trailing or linspace");
            goto done;
        }
        e->set |= LDM_PE_SPACING;
    }
    const char *dims[2] = {"width", "height"};
    for (int i = 0; i < 2; i++) {
        if (!(v = json_object_get(o, dims[i]))) continue;
        if (json_whole(v, 8, 8192, &n) || n % 8) {
            entry_fail(e, "\"%s\": expected a multiple of 8 from 8 to 8192", dims[i]);
            goto done;
        }
        if (i == 0) { p->width = (int)n; e->set |= LDM_PE_WIDTH; }
        else { p->height = (int)n; e->set |= LDM_PE_HEIGHT; }
    }
    json_t *cv = json_object_get(o, "clip_skip"), *cv2 = json_object_get(o, "clip-skip");
    if (cv && cv2) { entry_fail(e, "\"clip_skip\" given twice"); goto done; }
    if ((v = cv ? cv : cv2)) {
        if (json_whole(v, 1, 12, &n)) { entry_fail(e, "\"clip_skip\": expected a whole number from 1 to 12"); goto done; }
        p->clip_skip = (int)n;
        e->set |= LDM_PE_CLIP_SKIP;
    }
    json_t *yv = json_object_get(o, "prompt_syntax"), *yv2 = json_object_get(o, "prompt-syntax");
    if (yv && yv2) { entry_fail(e, "\"prompt_syntax\" given twice"); goto done; }
    if ((v = yv ? yv : yv2)) {
        if (!json_is_string(v) || (p->prompt_syntax = ldm_prompt_syntax_from_name(json_string_value(v))) < 0) {
            entry_fail(e, "\"prompt_syntax\": expected \"a1111\" or \"plain\"");
            goto done;
        }
        e->set |= LDM_PE_SYNTAX;
    }
    if ((v = json_object_get(o, "batch"))) {
        if (json_whole(v, 1, 64, &n)) { entry_fail(e, "\"batch\": expected a whole number from 1 to 64"); goto done; }
        p->batch = (int)n;
        e->set |= LDM_PE_BATCH;
    }
    if ((v = json_object_get(o, "output"))) {
        if (!json_is_string(v) || !json_string_value(v)[0]) {
            entry_fail(e, "\"output\": expected a file name or pattern");
            goto done;
        }
        e->output = ldm_xstrdup(json_string_value(v));
    }
done:
    json_decref(o);
}

ldm_status ldm_prompt_file_read(const char *path, ldm_prompt_file *pf) {
    memset(pf, 0, sizeof *pf);
    size_t len = 0;
    char *data = ldm_read_file(path, &len);
    if (!data) return ldm_error_prefix("prompt file"), LDM_RUNTIME;
    pf->path = ldm_xstrdup(path);
    pf->abs_path = absolute(path);
    uint8_t d[32];
    ldm_sha256_buf(data, len, d);
    pf->content_seed = ((uint64_t)d[0] << 24) | ((uint64_t)d[1] << 16) | ((uint64_t)d[2] << 8) | d[3];
    int sniff = !(ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".txt"));
    pf->jsonl = ends_with(path, ".jsonl") || ends_with(path, ".ndjson");
    size_t pos = 0;
    if (len >= 3 && !memcmp(data, "\xef\xbb\xbf", 3)) pos = 3;   /* a UTF-8 byte order mark */
    int cap = 0;
    for (int line = 1; pos < len || (pos == len && 0); line++) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t a = pos, b = end;
        pos = nl ? end + 1 : len;
        while (a < b && is_space(data[a])) a++;
        while (b > a && is_space(data[b - 1])) b--;
        if (a == b || data[a] == '#') { if (!nl) break; continue; }
        if (sniff) { pf->jsonl = data[a] == '{'; sniff = 0; }
        if (pf->n == cap) {
            cap = cap ? cap * 2 : 64;
            ldm_prompt_entry *ne = ldm_xcalloc((size_t)cap, sizeof *ne);
            if (pf->e) memcpy(ne, pf->e, sizeof *ne * (size_t)pf->n);
            free(pf->e);
            pf->e = ne;
        }
        ldm_prompt_entry *e = &pf->e[pf->n];
        memset(e, 0, sizeof *e);
        e->index = pf->n++;
        e->line = line;
        e->prm = ldm_gen_params_default();
        size_t bad;
        if (memchr(data + a, 0, b - a)) entry_fail(e, "the line contains a NUL byte");
        else if (!valid_utf8(data + a, b - a, &bad))
            entry_fail(e, "invalid UTF-8 at column %zu (byte 0x%02x)", bad + 1, (unsigned char)data[a + bad]);
        else if (pf->jsonl) parse_json_entry(e, data + a, b - a);
        else {
            e->prompt = ldm_xmalloc(b - a + 1);
            memcpy(e->prompt, data + a, b - a);
            e->prompt[b - a] = 0;
        }
        if (!nl) break;
    }
    free(data);
    if (pf->n == 0) {
        ldm_error_kind(LDM_DATA, "%s: no prompts (every line is blank or a # comment)", path);
        ldm_prompt_file_free(pf);
        return LDM_DATA;
    }
    return LDM_OK;
}

void ldm_prompt_file_free(ldm_prompt_file *pf) {
    for (int i = 0; i < pf->n; i++) {
        free(pf->e[i].error);
        free(pf->e[i].prompt);
        free(pf->e[i].negative);
        free(pf->e[i].output);
    }
    free(pf->e);
    free(pf->path);
    free(pf->abs_path);
    memset(pf, 0, sizeof *pf);
}

ldm_gen_params ldm_prompt_entry_params(const ldm_prompt_entry *e, const ldm_gen_params *base,
                                       uint64_t base_seed) {
    ldm_gen_params p = *base;
    const ldm_gen_params *o = &e->prm;
    p.prompt = e->prompt;
    if (e->set & LDM_PE_NEGATIVE) p.negative = e->negative;
    p.seed = (e->set & LDM_PE_SEED) ? o->seed : base_seed + (uint64_t)e->index;
    if (e->set & LDM_PE_STEPS) p.steps = o->steps;
    if (e->set & LDM_PE_GUIDANCE) p.guidance = o->guidance;
    if (e->set & LDM_PE_SCHEDULER) p.scheduler = o->scheduler;
    if (e->set & LDM_PE_KARRAS) p.karras = o->karras;
    if (e->set & LDM_PE_ETA) p.eta = o->eta;
    if (e->set & LDM_PE_SPACING) p.spacing = o->spacing;
    if (e->set & LDM_PE_WIDTH) p.width = o->width;
    if (e->set & LDM_PE_HEIGHT) p.height = o->height;
    if (e->set & LDM_PE_CLIP_SKIP) p.clip_skip = o->clip_skip;
    if (e->set & LDM_PE_BATCH) p.batch = o->batch;
    if (e->set & LDM_PE_SYNTAX) p.prompt_syntax = o->prompt_syntax;
    return p;
}

/* ------------------------------------------------------------------------------------ */
/* the run */

void ldm_batch_init(ldm_batch *b) {
    memset(b, 0, sizeof *b);
    ldm_job_init(&b->base);
    b->base.output = NULL;
    b->shard.n = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    ldm_batch *b;
    const ldm_prompt_file *pf;
    ldm_db *db;               /* our own connection for the restart check */
    int db_tried;
} batch_ctx;

static void name_fields(const ldm_batch *b, const ldm_prompt_entry *e, const ldm_gen_params *p,
                        ldm_name_fields *f) {
    ldm_name_fields_init(f);
    f->index = e->index;
    f->line = e->line;
    f->shard = e->index % b->shard.n;
    f->has_seed = 1;
    f->seed = p->seed;
    f->prompt = p->prompt;
}

/* ---- restart: is an image already there, made with these parameters? ---- */

typedef struct {
    const ldm_gen_record *want;
    const char *want_chunk;
    int match_path;           /* the planned path is known (no {id}) */
    int found;
} find_ctx;

static int image_matches(const ldm_gen_record *row, void *ctx) {
    find_ctx *c = ctx;
    if (row->batch_index != c->want->batch_index || !row->output_path || !row->png_sha256) return 0;
    if (c->match_path && strcmp(row->output_path, c->want->output_path)) return 0;
    char sha[65];
    if (access(row->output_path, F_OK) != 0 || ldm_sha256_file(row->output_path, sha) ||
        strcmp(sha, row->png_sha256))
        return 0;
    uint8_t *rgb = NULL;
    ldm_png_text *t = NULL;
    int w, h, nt = 0, same = 0;
    if (ldm_png_read(row->output_path, &rgb, &w, &h, &t, &nt) == 0) {
        for (int i = 0; i < nt; i++)
            if (!strcmp(t[i].key, "ldm")) same = !strcmp(t[i].text, c->want_chunk);
        free(rgb);
        ldm_png_texts_free(t, nt);
    }
    if (same) c->found = 1;
    return same;   /* stop at the first match */
}

static int entry_done(void *user, const ldm_job *j, const ldm_gen_record *recs, int n) {
    batch_ctx *c = user;
    if (!c->db_tried) {
        c->db_tried = 1;
        if (!c->b->base.no_history && c->b->base.db_path) {
            c->db = ldm_db_open(c->b->base.db_path);
            if (!c->db) ldm_log(2, "restart check: %s\n", ldm_last_error());
        }
    }
    if (!c->db) return 0;
    for (int i = 0; i < n; i++) {
        char *chunk = ldm_record_png_json(&recs[i]);
        find_ctx f = {&recs[i], chunk, !strstr(recs[i].output_path ? recs[i].output_path : "", "{id"), 0};
        ldm_history_filter flt = {0};
        flt.status = "ok";
        flt.prompt_file = j->prompt_file;
        flt.prompt_line = j->prompt_line;
        int rc = ldm_db_query(c->db, &flt, image_matches, &f);
        free(chunk);
        if (rc) ldm_log(2, "restart check: %s\n", ldm_last_error());
        if (rc || !f.found) return 0;
    }
    return 1;
}

/* ---- every name of every entry (all shards), before anything is written ---- */

typedef struct { char *name; int line; } named;

static int cmp_named(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->line - y->line;
}

static ldm_status check_names(ldm_batch *b, ldm_prompt_file *pf, const char *pattern, uint64_t base_seed) {
    named *all = NULL;
    size_t n = 0, cap = 0;
    ldm_status rc = LDM_OK;
    for (int i = 0; i < pf->n && rc == LDM_OK; i++) {
        ldm_prompt_entry *e = &pf->e[i];
        if (e->error) continue;
        ldm_gen_params p = ldm_prompt_entry_params(e, &b->base.prm, base_seed);
        ldm_name_fields f;
        name_fields(b, e, &p, &f);
        const char *pats[2] = {e->output ? e->output : pattern, b->base.latent_output};
        const int B = p.batch > 0 ? p.batch : 1;
        for (int k = 0; k < 2; k++) {
            if (!pats[k] || ldm_name_uses(pats[k], "id")) continue;
            char *name = ldm_name_expand(pats[k], &f);
            if (!name) {
                if (!e->output || k == 1) { rc = ldm_last_status(); break; }
                entry_fail(e, "\"output\": %s", ldm_last_error());
                break;
            }
            for (int m = 0; m < B; m++) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    named *na = ldm_xcalloc(cap, sizeof *na);
                    if (all) memcpy(na, all, sizeof *na * n);
                    free(all);
                    all = na;
                }
                all[n].name = ldm_output_name(name, m, B);
                all[n++].line = e->line;
            }
            free(name);
        }
    }
    if (rc == LDM_OK && n > 1) {
        qsort(all, n, sizeof *all, cmp_named);
        for (size_t i = 1; i < n; i++)
            if (!strcmp(all[i].name, all[i - 1].name)) {
                ldm_error_kind(LDM_USAGE, "%s: lines %d and %d both write %s; put {index} in -o (and "
                               "nothing was written)", pf->path, all[i - 1].line, all[i].line, all[i].name);
                rc = LDM_USAGE;
                break;
            }
    }
    for (size_t i = 0; i < n; i++) free(all[i].name);
    free(all);
    return rc;
}

ldm_status ldm_batch_run(ldm_batch *b) {
    double t0 = now_s();
    b->entries = b->mine = b->done = b->skipped = b->failed = b->not_run = b->images = 0;
    b->seconds = 0;
    ldm_job *base = &b->base;
    const char *pattern = base->output ? base->output : DEFAULT_PATTERN;
    if (base->grid.rows > 0)
        return ldm_error_kind(LDM_USAGE, "--grid does not apply with a prompt file"), LDM_USAGE;
    if (base->only_index >= 0 || base->want_hash)
        return ldm_error_kind(LDM_USAGE, "a prompt file cannot be replayed"), LDM_USAGE;
    if (b->shard.n < 1 || b->shard.k < 0 || b->shard.k >= b->shard.n)
        return ldm_error_kind(LDM_USAGE, "shard %d/%d: expected 0 <= K < N", b->shard.k, b->shard.n), LDM_USAGE;
    if (ldm_name_check(pattern) || (base->latent_output && ldm_name_check(base->latent_output)))
        return LDM_USAGE;
    if (!b->prompts) return ldm_error_kind(LDM_USAGE, "no prompt file"), LDM_USAGE;

    ldm_prompt_file pf;
    ldm_status rc = ldm_prompt_file_read(b->prompts, &pf);
    if (rc) return rc;
    b->entries = pf.n;
    b->base_seed = base->have_seed ? base->prm.seed : pf.content_seed;
    for (int i = 0; i < pf.n; i++) b->mine += i % b->shard.n == b->shard.k;
    if ((rc = check_names(b, &pf, pattern, b->base_seed))) {
        ldm_prompt_file_free(&pf);
        return rc;
    }
    ldm_session *ss = ldm_session_open(base);
    if (!ss) {
        rc = ldm_last_status();
        ldm_prompt_file_free(&pf);
        return rc;
    }
    ldm_log(1, "%s: %d prompt%s (%s), shard %d/%d: %d of them; base seed %llu (%s)\n", pf.path, pf.n,
            pf.n == 1 ? "" : "s", pf.jsonl ? "JSON lines" : "text", b->shard.k, b->shard.n, b->mine,
            (unsigned long long)b->base_seed, base->have_seed ? "--seed" : "from the file's SHA-256");

    batch_ctx ctx = {b, &pf, NULL, 0};
    ldm_status stop = LDM_OK;
    char stop_msg[1024] = "";
    for (int i = 0; i < pf.n && stop == LDM_OK; i++) {
        ldm_prompt_entry *e = &pf.e[i];
        if (i % b->shard.n != b->shard.k) continue;
        if (base->interrupt && *base->interrupt) {
            stop = LDM_INTERRUPTED;
            break;
        }
        ldm_status st;
        ldm_job j = *base;
        if (e->error) {
            ldm_error_kind(LDM_DATA, "%s", e->error);
            st = LDM_DATA;
        } else {
            j.prm = ldm_prompt_entry_params(e, &base->prm, b->base_seed);
            j.have_seed = 1;
            j.output = e->output ? e->output : pattern;
            name_fields(b, e, &j.prm, &j.name_fields);
            j.name_fields.has_seed = 0;   /* the job fills in {seed} and {prompt} itself */
            j.name_fields.prompt = NULL;
            j.prompt_file = pf.abs_path;
            j.prompt_line = e->line;
            j.numbered = 0;
            if (b->force) j.refuse_existing = 0;
            j.skip = b->force ? NULL : entry_done;
            j.skip_user = &ctx;
            st = ldm_session_run(ss, &j);
        }
        if (st == LDM_OK && j.skipped) {
            b->skipped++;
            ldm_log(2, "%s:%d: done before, skipped\n", pf.path, e->line);
        } else if (st == LDM_OK) {
            b->done++;
            b->images += j.images_written;
        } else if (st == LDM_INTERRUPTED) {
            stop = LDM_INTERRUPTED;
        } else {
            b->failed++;
            if (b->hooks.failed) b->hooks.failed(b->hooks.user, pf.path, e->line, e->index, ldm_last_error());
            if (ldm_session_status(ss)) {
                stop = ldm_last_status();
                snprintf(stop_msg, sizeof stop_msg, "%s", ldm_last_error());
            } else if (b->fail_fast) {
                stop = LDM_RUNTIME;
                snprintf(stop_msg, sizeof stop_msg, "stopped at the first failed line (--fail-fast)");
            }
        }
    }
    b->not_run = b->mine - b->done - b->skipped - b->failed;
    b->seconds = now_s() - t0;
    ldm_db_close(ctx.db);
    ldm_session_close(ss);
    if (stop == LDM_INTERRUPTED) {
        ldm_error_kind(LDM_INTERRUPTED, "interrupted after %d of %d prompts", b->done + b->skipped + b->failed,
                       b->mine);
        rc = LDM_INTERRUPTED;
    } else if (stop) {
        ldm_error_kind(stop, "%s; %d of %d prompts not run", stop_msg, b->not_run, b->mine);
        rc = stop;
    } else if (b->failed) {
        ldm_error_kind(LDM_RUNTIME, "%d of %d prompts failed", b->failed, b->mine);
        rc = LDM_RUNTIME;
    } else {
        rc = LDM_OK;
    }
    ldm_prompt_file_free(&pf);
    return rc;
}
