/* generate.c - one ldmgen job from bundle to PNG files, with history, embedding cache,
 * PNG metadata, grid, latent pictures and replay.  See generate.h for the flow.
 *
 * Invariants kept here:
 * - rows are inserted as 'running' before the models are loaded and finished exactly
 *   once: ok only after the PNG is under its final name, else failed (with the message)
 *   or interrupted; a SIGKILL leaves 'running' rows that ldm_db_reap_interrupted marks;
 * - text is always encoded one prompt at a time through cached_encode, with or without
 *   the cache, so a cache hit, a miss and --no-cache give the same floats;
 * - nothing in the PNG chunks depends on the output file name: the same job gives the
 *   same bytes wherever it is written.
 */
#include "app/generate.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "format/bundle.h"
#include "core/common.h"
#include "app/db.h"
#include "app/grid.h"
#include "format/png_io.h"
#include "pipeline/scheduler.h"
#include "core/sha256.h"

/* ------------------------------------------------------------------------------------ */
/* small helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* path made absolute against the current folder (symlinks kept: the file name, and so
 * the model name, stays the one the user gave).  malloc'd. */
static char *absolute_path(const char *path) {
    if (path[0] == '/') return ldm_xstrdup(path);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return ldm_xstrdup(path);
    while (path[0] == '.' && path[1] == '/') path += 2;
    size_t n = strlen(cwd) + strlen(path) + 2;
    char *s = ldm_xmalloc(n);
    snprintf(s, n, "%s/%s", cwd, path);
    return s;
}

/* "/a/b/sd15.ldmb" -> "sd15" (malloc'd). */
static char *path_stem(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *s = ldm_xstrdup(base);
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = 0;
    return s;
}

char *ldm_output_name(const char *out, int i, int n) {
    if (n == 1) return ldm_xstrdup(out);
    size_t L = strlen(out);
    const char *slash = strrchr(out, '/');
    const char *dot = strrchr(out, '.');
    if (dot && (!slash || dot > slash + 1) && !strcmp(dot, ".png")) L = (size_t)(dot - out);
    char *s = ldm_xmalloc(L + 16);
    snprintf(s, L + 16, "%.*s-%04d.png", (int)L, out, i + 1);
    return s;
}

/* The folder of `path` must exist and be writable, and path must not be a folder. */
static int check_output(const char *path) {
    struct stat st;
    if (!*path) return ldm_error("output file name is empty");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return ldm_error("%s: is a folder; give a file name with -o", path);
    char *dir = ldm_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int rc = 0;
    if (stat(dir, &st) != 0)
        rc = ldm_error("%s: folder %s does not exist", path, dir);
    else if (!S_ISDIR(st.st_mode))
        rc = ldm_error("%s: %s is not a folder", path, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        rc = ldm_error("%s: folder %s is not writable", path, dir);
    free(dir);
    return rc;
}

static int check_utf8(const char *s, const char *what) {
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) return ldm_error("%s: invalid UTF-8 at byte %zu (0x%02x)", what, i, (unsigned char)s[i]);
        i += (size_t)k;
    }
    return 0;
}

static uint64_t random_seed(void) {
    uint32_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = 0;
        close(fd);
    }
    if (!r) r = (uint32_t)time(NULL) ^ (uint32_t)getpid() * 2654435761u;
    return r;   /* 32 bits: short enough to type back */
}

static void sha256_hex(const void *data, size_t n, char hex[65]) {
    uint8_t d[32];
    ldm_sha256_buf(data, n, d);
    ldm_sha256_hex(d, hex);
}

static const ldm_backend *pick_backend(void) {
    const char *env = getenv("LDM_BACKEND");
    if (env && !strcmp(env, "cpu")) return &ldm_backend_cpu;
    const ldm_backend *cuda = ldm_backend_cuda();
    return cuda ? cuda : &ldm_backend_cpu;
}

/* ------------------------------------------------------------------------------------ */
/* the "ldm" chunk */

char *ldm_meta_json(const ldm_meta *m) {
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)m->seed);
    json_t *o = json_object();
    json_object_set_new(o, "ldm_version", json_string(m->ldm_version ? m->ldm_version : LDM_VERSION));
    json_object_set_new(o, "prompt", json_string(m->prompt ? m->prompt : ""));
    json_object_set_new(o, "negative_prompt", json_string(m->negative ? m->negative : ""));
    json_object_set_new(o, "seed", json_string(seed));   /* uint64: beyond JSON's safe integers */
    json_object_set_new(o, "steps", json_integer(m->steps));
    json_object_set_new(o, "guidance", json_real(m->guidance));
    json_object_set_new(o, "scheduler", json_string(m->scheduler ? m->scheduler : ""));
    json_object_set_new(o, "karras", json_boolean(m->karras));
    json_object_set_new(o, "eta", json_real(m->eta));
    json_object_set_new(o, "timestep_spacing",
                        m->timestep_spacing ? json_string(m->timestep_spacing) : json_null());
    json_object_set_new(o, "width", json_integer(m->width));
    json_object_set_new(o, "height", json_integer(m->height));
    json_object_set_new(o, "clip_skip", json_integer(m->clip_skip));
    json_object_set_new(o, "batch_size", json_integer(m->batch_size));
    json_object_set_new(o, "batch_index", json_integer(m->batch_index));
    json_object_set_new(o, "bundle_hash", json_string(m->bundle_hash ? m->bundle_hash : ""));
    json_object_set_new(o, "bundle_path", json_string(m->bundle_path ? m->bundle_path : ""));
    if (m->grid_rows > 0) {
        json_t *g = json_object(), *gv = json_array(), *nv = json_array();
        for (int r = 0; r < m->grid_rows; r++) json_array_append_new(gv, json_real(m->grid_guidance[r]));
        for (int c = 0; c < m->grid_cols; c++) json_array_append_new(nv, json_integer(m->grid_steps[c]));
        json_object_set_new(g, "guidance", gv);
        json_object_set_new(g, "steps", nv);
        json_object_set_new(o, "grid", g);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!s) { fputs("ldm: out of memory (JSON)\n", stderr); abort(); }
    char *r = ldm_xstrdup(s);
    free(s);
    return r;
}

void ldm_meta_free(ldm_meta *m) {
    if (!m) return;
    free(m->ldm_version); free(m->prompt); free(m->negative); free(m->scheduler);
    free(m->timestep_spacing); free(m->bundle_hash); free(m->bundle_path);
    memset(m, 0, sizeof *m);
}

static int meta_str(json_t *o, const char *where, const char *key, int nullable, char **out) {
    json_t *v = json_object_get(o, key);
    if (nullable && (!v || json_is_null(v))) { *out = NULL; return 0; }
    if (!json_is_string(v)) return ldm_error("%s: field \"%s\": expected a string", where, key);
    *out = ldm_xstrdup(json_string_value(v));
    return 0;
}

static int meta_int(json_t *o, const char *where, const char *key, long lo, long hi, int *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return ldm_error("%s: field \"%s\": expected an integer from %ld to %ld", where, key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int meta_num(json_t *o, const char *where, const char *key, double *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return ldm_error("%s: field \"%s\": expected a number", where, key);
    *out = json_number_value(v);
    return 0;
}

int ldm_meta_parse(const char *text, const char *where, ldm_meta *m) {
    memset(m, 0, sizeof *m);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o || !json_is_object(o)) {
        if (o) json_decref(o);
        return ldm_error("%s: not a JSON object (%s)", where, o ? "other JSON value" : je.text);
    }
    int rc = -1;
    char *seed = NULL;
    json_t *k = json_object_get(o, "karras");
    if (meta_str(o, where, "ldm_version", 0, &m->ldm_version) || meta_str(o, where, "prompt", 0, &m->prompt) ||
        meta_str(o, where, "negative_prompt", 0, &m->negative) || meta_str(o, where, "seed", 0, &seed) ||
        meta_int(o, where, "steps", 1, 1000, &m->steps) || meta_num(o, where, "guidance", &m->guidance) ||
        meta_str(o, where, "scheduler", 0, &m->scheduler) || meta_num(o, where, "eta", &m->eta) ||
        meta_str(o, where, "timestep_spacing", 1, &m->timestep_spacing) ||
        meta_int(o, where, "width", 8, 8192, &m->width) || meta_int(o, where, "height", 8, 8192, &m->height) ||
        meta_int(o, where, "clip_skip", 0, 12, &m->clip_skip) ||
        meta_int(o, where, "batch_size", 1, 64, &m->batch_size) ||
        meta_int(o, where, "batch_index", 0, 63, &m->batch_index) ||
        meta_str(o, where, "bundle_hash", 0, &m->bundle_hash) ||
        meta_str(o, where, "bundle_path", 0, &m->bundle_path))
        goto done;
    if (!json_is_boolean(k)) { ldm_error("%s: field \"karras\": expected true or false", where); goto done; }
    m->karras = json_is_true(k);
    char *end;
    errno = 0;
    m->seed = strtoull(seed, &end, 10);
    if (!seed[0] || *end || errno || seed[0] == '-') {
        ldm_error("%s: field \"seed\": expected a decimal number, found \"%s\"", where, seed);
        goto done;
    }
    if (m->batch_index >= m->batch_size) {
        ldm_error("%s: batch_index %d is not below batch_size %d", where, m->batch_index, m->batch_size);
        goto done;
    }
    json_t *g = json_object_get(o, "grid");
    if (g) {
        json_t *gv = json_object_get(g, "guidance"), *nv = json_object_get(g, "steps");
        size_t ng = json_array_size(gv), nn = json_array_size(nv);
        if (!json_is_array(gv) || !json_is_array(nv) || ng < 1 || nn < 1 || ng > LDM_GRID_MAX ||
            nn > LDM_GRID_MAX) {
            ldm_error("%s: field \"grid\": expected {\"guidance\": [1..%d numbers], \"steps\": "
                      "[1..%d integers]}", where, LDM_GRID_MAX, LDM_GRID_MAX);
            goto done;
        }
        for (size_t i = 0; i < ng; i++) {
            json_t *v = json_array_get(gv, i);
            if (!json_is_number(v)) { ldm_error("%s: grid guidance %zu is not a number", where, i); goto done; }
            m->grid_guidance[i] = json_number_value(v);
        }
        for (size_t i = 0; i < nn; i++) {
            json_t *v = json_array_get(nv, i);
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000) {
                ldm_error("%s: grid steps %zu is not an integer from 1 to 1000", where, i);
                goto done;
            }
            m->grid_steps[i] = (int)json_integer_value(v);
        }
        m->grid_rows = (int)ng;
        m->grid_cols = (int)nn;
    }
    rc = 0;
done:
    free(seed);
    json_decref(o);
    if (rc) ldm_meta_free(m);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* the database: history rows and the embedding cache, both best effort */

typedef struct {
    ldm_db *db;        /* NULL: none (not wanted, or could not be opened) */
    int record, cache; /* history / cache wanted */
    int require;       /* --require-history */
    int lost;          /* some history was not recorded (warned once) */
    size_t cache_max;
} session;

static void history_lost(session *s, const char *why) {
    if (!s->lost) {
        if (s->require) fprintf(stderr, "ldmgen: history not recorded (--require-history): %s\n", why);
        else fprintf(stderr, "ldmgen: warning: history not recorded: %s\n", why);
    }
    s->lost = 1;
}

static void session_open(session *s, const ldm_job *j) {
    memset(s, 0, sizeof *s);
    s->record = !j->no_history;
    s->cache = !j->no_cache;
    s->require = j->require_history;
    s->cache_max = j->cache_max_mb > 0 ? (size_t)(j->cache_max_mb * 1048576.0) : 0;
    if (!s->record && !s->cache) return;
    char buf[4096];
    const char *path = j->db_path;
    if (!path && ldm_db_default_path(buf, sizeof buf) == 0) path = buf;
    if (path) s->db = ldm_db_open(path);
    if (!s->db) {
        if (s->record) history_lost(s, ldm_last_error());
        else ldm_log(2, "embedding cache not used: %s\n", ldm_last_error());
        return;
    }
    if (ldm_db_reap_interrupted(s->db) < 0) ldm_log(2, "%s\n", ldm_last_error());
}

static void rec_begin(session *s, ldm_record *r) {
    r->id = 0;
    if (!s->record || !s->db) return;
    if (ldm_db_begin(s->db, r)) { history_lost(s, ldm_last_error()); r->id = 0; }
}

static void rec_finish(session *s, ldm_record *r, const char *status, const char *error) {
    if (!r->id) return;
    if (ldm_db_finish(s->db, r, status, error)) history_lost(s, ldm_last_error());
}

/* ---- text encoding through the cache ---- */

typedef struct {
    int32_t *ids;
    int clip_skip;
    float *emb;
} memo_entry;

typedef struct {
    session *s;
    const char *hash;
    int T, D;
    int call;            /* encodings in this ldm_generate: the prompt comes first */
    memo_entry memo[4];  /* this process's embeddings (grid cells share them) */
    int n_memo;
} enc_ctx;

static void enc_free(enc_ctx *c) {
    for (int i = 0; i < c->n_memo; i++) { free(c->memo[i].ids); free(c->memo[i].emb); }
    c->n_memo = 0;
}

static int cached_encode(void *user, ldm_pipeline *p, const int32_t *ids, int B, int clip_skip,
                         float *out) {
    enc_ctx *c = user;
    const int T = c->T, D = c->D;
    const size_t TD = (size_t)T * D;
    for (int b = 0; b < B; b++) {
        const int32_t *id = ids + (size_t)b * T;
        float *o = out + (size_t)b * TD;
        /* ldm_generate encodes the prompt, then the negative prompt */
        const char *what = c->call++ == 0 ? "prompt" : "negative prompt";
        int found = 0;
        for (int m = 0; m < c->n_memo && !found; m++)
            if (c->memo[m].clip_skip == clip_skip && !memcmp(c->memo[m].ids, id, sizeof(int32_t) * T)) {
                memcpy(o, c->memo[m].emb, sizeof(float) * TD);
                ldm_log(2, "text embedding (%s): reused\n", what);
                found = 1;
            }
        if (!found && c->s->db && c->s->cache) {
            int r = ldm_db_cache_get(c->s->db, c->hash, id, T, clip_skip, o, TD);
            if (r < 0) ldm_log(2, "embedding cache: %s\n", ldm_last_error());
            if (r == 1) { ldm_log(2, "text embedding (%s): cache hit\n", what); found = 1; }
        }
        if (!found) {
            double t = now_s();
            if (ldm_pipeline_encode_text(p, id, 1, clip_skip, o)) return -1;
            int cached = c->s->db && c->s->cache;
            ldm_log(2, "text embedding (%s): %s, encoded in %.2f s\n", what,
                    cached ? "cache miss" : "cache not used", now_s() - t);
            if (cached && ldm_db_cache_put(c->s->db, c->hash, id, T, clip_skip, D, o, c->s->cache_max))
                ldm_log(2, "embedding cache: %s\n", ldm_last_error());
        }
        if (!found || c->n_memo == 0) {
            if (c->n_memo == 4) {   /* drop the oldest */
                free(c->memo[0].ids); free(c->memo[0].emb);
                memmove(c->memo, c->memo + 1, sizeof c->memo[0] * 3);
                c->n_memo = 3;
            }
            memo_entry *e = &c->memo[c->n_memo++];
            e->ids = ldm_xmalloc(sizeof(int32_t) * T);
            memcpy(e->ids, id, sizeof(int32_t) * T);
            e->clip_skip = clip_skip;
            e->emb = ldm_xmalloc(sizeof(float) * TD);
            memcpy(e->emb, o, sizeof(float) * TD);
        }
    }
    return 0;
}

/* ---- progress bar ---- */

typedef struct {
    double start;
    int shown;
    char label[32];
} progress_state;

static void progress(void *user, int step, int total) {
    progress_state *ps = user;
    const int width = 30;
    int fill = (int)((long)step * width / total);
    if (step == 1) ps->start = now_s();
    double el = now_s() - ps->start;
    fprintf(stderr, "\r%s%4d/%-4d [", ps->label, step, total);
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %.2f s/step", step > 1 ? el / (step - 1) : 0.0);
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
    ps->shown = step != total;
}

/* ------------------------------------------------------------------------------------ */
/* the job */

/* Everything one run shares: the bundle identity, names, rows and the pipeline. */
typedef struct {
    ldm_job *j;
    session s;
    enc_ctx enc;
    progress_state ps;
    ldm_pipeline *p;
    char *hash, *abs_bundle, *meta_bundle, *model_name;
    const char *sched_name;
    int W, H, B;              /* image size, images per generation */
    int n_cells;              /* grid cells (1 without a grid) */
    ldm_gen_params *cell;     /* [n_cells] the parameters of each generation */
    int n_img;                /* PNGs written (a grid is one) */
    char **names, **lat_names;/* [n_img] */
    int n_rows;               /* history rows: images, or grid cells */
    ldm_record *recs;
    char (*shas)[65];         /* [n_rows] */
} run_state;

/* Metadata for image `idx` of generation prm. */
static void make_meta(const run_state *r, const ldm_gen_params *prm, int idx, int batch, ldm_meta *m) {
    memset(m, 0, sizeof *m);
    m->ldm_version = (char *)LDM_VERSION;
    m->prompt = (char *)prm->prompt;
    m->negative = (char *)(prm->negative ? prm->negative : "");
    m->seed = prm->seed + (uint64_t)idx;
    m->steps = prm->steps;
    m->guidance = prm->guidance;
    m->scheduler = (char *)r->sched_name;
    m->karras = prm->karras;
    m->eta = prm->eta;
    m->timestep_spacing = prm->spacing >= 0 ? (char *)ldm_spacing_name(prm->spacing) : NULL;
    m->width = r->W;
    m->height = r->H;
    m->clip_skip = prm->clip_skip > 1 ? prm->clip_skip : 1;
    m->batch_size = batch;
    m->batch_index = idx;
    m->bundle_hash = r->hash;
    m->bundle_path = r->meta_bundle;
}

/* PNG bytes of an image with its two chunks, and their SHA-256. */
static int encode_png(const uint8_t *rgb, int W, int H, const char *params, const char *meta,
                      uint8_t **png, size_t *len, char sha[65]) {
    ldm_png_text t[2] = {{"parameters", params}, {"ldm", meta}};
    if (ldm_png_encode(rgb, W, H, t, meta ? 2 : 1, png, len)) return -1;
    sha256_hex(*png, *len, sha);
    return 0;
}

static void finish_all(run_state *r, int from, const char *status, const char *error) {
    for (int i = from; i < r->n_rows; i++) rec_finish(&r->s, &r->recs[i], status, error);
}

/* ldm_generate with the hooks; on failure finishes the rows and returns the exit code. */
static int generate(run_state *r, ldm_gen_params *prm, ldm_gen_result *res, const char *label) {
    ldm_job *j = r->j;
    prm->encode = cached_encode;
    prm->encode_user = &r->enc;
    prm->interrupt = j->interrupt;
    prm->keep_latents = j->latent_output != NULL;
    snprintf(r->ps.label, sizeof r->ps.label, "%s", label);
    r->ps.shown = 0;
    r->ps.start = now_s();
    if (j->progress_bar) { prm->progress = progress; prm->progress_user = &r->ps; }
    r->enc.call = 0;
    int g = ldm_generate(r->p, prm, res);
    if (r->ps.shown) fputc('\n', stderr);
    if (!g && j->interrupt && *j->interrupt) {
        res->interrupted = 1;
        ldm_error("interrupted");
        g = -1;
    }
    if (!g) return 0;
    if (res->interrupted) {
        finish_all(r, 0, "interrupted", "interrupted by a signal");
        fprintf(stderr, "ldmgen: interrupted; nothing written\n");
        return 130;
    }
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    finish_all(r, 0, "failed", msg);
    fprintf(stderr, "ldmgen: %s\n", msg);
    return 1;
}

static void warn_truncated(const run_state *r, const ldm_gen_result *res) {
    int T = ldm_pipeline_text_length(r->p) - 2;
    if (res->prompt_truncated) ldm_warn("the prompt is longer than %d tokens; the rest was truncated", T);
    if (res->negative_truncated)
        ldm_warn("the negative prompt is longer than %d tokens; the rest was truncated", T);
}

static int write_failed(run_state *r, int from) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    finish_all(r, from, "failed", msg);
    fprintf(stderr, "ldmgen: %s\n", msg);
    return 1;
}

static void set_times(ldm_record *rec, const ldm_gen_result *res) {
    rec->t_text_ms = res->t_text * 1e3;
    rec->t_sampling_ms = res->t_sampling * 1e3;
    rec->t_decode_ms = res->t_decode * 1e3;
    rec->t_total_ms = res->t_total * 1e3;
}

/* The latent picture: mean over channels, enlarged to the image size. */
static int write_latent(const run_state *r, const char *path, const float *lat, const ldm_gen_result *res,
                        const char *params) {
    uint8_t *img;
    int w, h;
    if (ldm_latent_image(lat, res->latent_channels, res->latent_h, res->latent_w,
                         res->width / res->latent_w, &img, &w, &h))
        return -1;
    char desc[160];
    snprintf(desc, sizeof desc, "ldm final latent %dx%dx%d, averaged over its %d channels "
             "(black = lowest, white = highest)", res->latent_channels, res->latent_h,
             res->latent_w, res->latent_channels);
    ldm_png_text t[2] = {{"Description", desc}, {"parameters", params}};
    int rc = ldm_png_write(path, img, w, h, t, 2);
    free(img);
    (void)r;
    return rc;
}

/* A plain run: one generation of B images, written as names[]. */
static int run_batch(run_state *r) {
    ldm_job *j = r->j;
    ldm_gen_params prm = r->cell[0];
    ldm_gen_result res;
    int rc = generate(r, &prm, &res, "");
    if (rc) return rc;
    warn_truncated(r, &res);
    const size_t img_bytes = (size_t)res.width * res.height * 3;
    const size_t per = (size_t)res.latent_channels * res.latent_h * res.latent_w;
    for (int i = 0; i < r->n_img; i++) {
        int idx = j->only_index >= 0 ? j->only_index : i;
        char *params = ldm_a1111_parameters(&prm, &res, idx, r->hash, r->model_name);
        ldm_meta m;
        make_meta(r, &prm, idx, r->B, &m);
        char *meta = ldm_meta_json(&m);
        uint8_t *png = NULL;
        size_t len = 0;
        int bad = encode_png(res.rgb + idx * img_bytes, res.width, res.height, params, meta, &png,
                             &len, r->shas[i]) ||
                  ldm_write_file_atomic(r->names[i], png, len);
        free(png);
        free(meta);
        if (bad) { free(params); rc = write_failed(r, i); break; }
        ldm_record *rec = &r->recs[i];
        rec->png_sha256 = r->shas[i];
        set_times(rec, &res);
        rec_finish(&r->s, rec, "ok", NULL);
        snprintf(j->png_sha256, sizeof j->png_sha256, "%s", r->shas[i]);
        if (ldm_verbosity > 0) printf("%s\n", r->names[i]);
        if (j->latent_output) {
            if (write_latent(r, r->lat_names[i], res.latents_final + idx * per, &res, params)) {
                free(params);
                fprintf(stderr, "ldmgen: %s\n", ldm_last_error());
                rc = 1;
                finish_all(r, i + 1, "failed", "not written: the latent picture before it failed");
                break;
            }
            if (ldm_verbosity > 0) printf("%s\n", r->lat_names[i]);
        }
        free(params);
    }
    if (!rc) {
        ldm_log(2, "%s, %d steps (%d UNet evaluations), %dx%d, seed %llu\n",
                ldm_sched_a1111_name(&res.sched), prm.steps, res.unet_evaluations, res.width,
                res.height, (unsigned long long)prm.seed);
        ldm_log(2, "time: text %.2f s, sampling %.2f s, decode %.2f s, total %.2f s\n", res.t_text,
                res.t_sampling, res.t_decode, res.t_total);
    }
    ldm_gen_result_free(&res);
    return rc;
}

static void fmt_num(char *out, size_t cap, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* The grid: one generation per cell (same seed), composed with titles. */
static int run_grid(run_state *r) {
    ldm_job *j = r->j;
    const int rows = j->grid_rows, cols = j->grid_cols, n = r->n_cells;
    uint8_t **cells = ldm_xcalloc((size_t)n, sizeof *cells);
    uint8_t **lcells = ldm_xcalloc((size_t)n, sizeof *lcells);
    char **labels = ldm_xcalloc((size_t)n, sizeof *labels);
    char *first_params = NULL, *meta = NULL;
    uint8_t *grid = NULL, *lgrid = NULL, *png = NULL;
    int rc = 0, gw, gh;
    size_t len;
    ldm_gen_result res;
    memset(&res, 0, sizeof res);
    for (int k = 0; k < n && !rc; k++) {
        ldm_gen_params prm = r->cell[k];
        char g[32], label[48];
        fmt_num(g, sizeof g, prm.guidance);
        snprintf(label, sizeof label, "g=%s n=%d", g, prm.steps);
        labels[k] = ldm_xstrdup(label);
        char plabel[32];
        snprintf(plabel, sizeof plabel, "cell %d/%d ", k + 1, n);
        if ((rc = generate(r, &prm, &res, plabel))) break;
        if (k == 0) warn_truncated(r, &res);
        ldm_log(2, "cell %s: text %.2f s, sampling %.2f s, decode %.2f s\n", label, res.t_text,
                res.t_sampling, res.t_decode);
        /* the cell as a PNG of its own (what `ldmgen replay` of its row writes) */
        char *params = ldm_a1111_parameters(&prm, &res, 0, r->hash, r->model_name);
        ldm_meta m;
        make_meta(r, &prm, 0, 1, &m);
        char *cmeta = ldm_meta_json(&m);
        if (encode_png(res.rgb, res.width, res.height, params, cmeta, &png, &len, r->shas[k])) {
            free(params); free(cmeta);
            rc = write_failed(r, 0);
            break;
        }
        free(png); png = NULL;
        free(cmeta);
        if (k == 0) first_params = params;
        else free(params);
        r->recs[k].png_sha256 = r->shas[k];
        set_times(&r->recs[k], &res);
        if (j->latent_output) {
            int lw, lh;
            if (ldm_latent_image(res.latents_final, res.latent_channels, res.latent_h, res.latent_w,
                                 res.width / res.latent_w, &lcells[k], &lw, &lh)) {
                rc = write_failed(r, 0);
                break;
            }
        }
        cells[k] = res.rgb;
        res.rgb = NULL;
        ldm_gen_result_free(&res);
    }
    ldm_gen_result_free(&res);
    if (!rc && ldm_grid_compose((const uint8_t *const *)cells, rows, cols, r->W, r->H,
                                (const char *const *)labels, &grid, &gw, &gh))
        rc = write_failed(r, 0);
    if (!rc) {
        /* A1111 gives a grid the first cell's parameters; ours describe the whole grid */
        ldm_meta m;
        make_meta(r, &j->prm, 0, 1, &m);
        m.grid_rows = rows;
        m.grid_cols = cols;
        memcpy(m.grid_guidance, j->grid_guidance, sizeof m.grid_guidance);
        memcpy(m.grid_steps, j->grid_steps, sizeof m.grid_steps);
        meta = ldm_meta_json(&m);
        char sha[65];
        if (encode_png(grid, gw, gh, first_params, meta, &png, &len, sha) ||
            ldm_write_file_atomic(r->names[0], png, len)) {
            rc = write_failed(r, 0);
        } else {
            snprintf(j->png_sha256, sizeof j->png_sha256, "%s", sha);
            finish_all(r, 0, "ok", NULL);
            if (ldm_verbosity > 0) printf("%s\n", r->names[0]);
        }
    }
    if (!rc && j->latent_output) {
        int lw, lh;
        char desc[160];
        snprintf(desc, sizeof desc, "ldm final latents of the grid cells, each averaged over its "
                 "channels (black = lowest, white = highest)");
        ldm_png_text t[2] = {{"Description", desc}, {"parameters", first_params}};
        if (ldm_grid_compose((const uint8_t *const *)lcells, rows, cols, r->W, r->H,
                             (const char *const *)labels, &lgrid, &lw, &lh) ||
            ldm_png_write(r->lat_names[0], lgrid, lw, lh, t, 2)) {
            fprintf(stderr, "ldmgen: %s\n", ldm_last_error());
            rc = 1;
        } else if (ldm_verbosity > 0) {
            printf("%s\n", r->lat_names[0]);
        }
    }
    for (int k = 0; k < n; k++) { free(cells[k]); free(lcells[k]); free(labels[k]); }
    free(cells); free(lcells); free(labels);
    free(first_params); free(meta); free(grid); free(lgrid); free(png);
    return rc;
}

void ldm_job_init(ldm_job *j) {
    memset(j, 0, sizeof *j);
    j->prm = ldm_gen_params_default();
    j->output = "out.png";
    j->cache_max_mb = 256;
    j->only_index = -1;
}

static int usage_fail(const char *msg) {
    fprintf(stderr, "ldmgen: %s (try ldmgen --help)\n", msg);
    return 2;
}

int ldm_job_run(ldm_job *j) {
    run_state R, *r = &R;
    memset(r, 0, sizeof R);
    r->j = j;
    ldm_gen_params *base = &j->prm;
    const int grid = j->grid_rows > 0;
    int rc = 1;
    if (!base->prompt) return usage_fail("no prompt given");
    if (check_utf8(base->prompt, "prompt") || (base->negative && check_utf8(base->negative, "negative prompt")))
        return usage_fail(ldm_last_error());
    if (grid && base->batch > 1) return usage_fail("--grid makes one image per cell; -b does not apply");
    if (grid && (j->grid_rows > LDM_GRID_MAX || j->grid_cols < 1 || j->grid_cols > LDM_GRID_MAX))
        return usage_fail("--grid: too many values");

    /* ---- the bundle and the parameters of every generation ---- */
    ldm_log(2, "bundle: %s\n", j->bundle_path);
    ldm_bundle *b = ldm_bundle_open(j->bundle_path);
    if (!b) { fprintf(stderr, "ldmgen: %s\n", ldm_last_error()); return 1; }
    r->hash = ldm_xstrdup(ldm_bundle_hash(b));
    if (j->want_hash && strcmp(j->want_hash, r->hash)) {
        fprintf(stderr, "ldmgen: %s has content hash %s, but the image was made with a bundle "
                "of hash %s; give the right file with --bundle\n", j->bundle_path, r->hash, j->want_hash);
        goto out;
    }
    r->n_cells = grid ? j->grid_rows * j->grid_cols : 1;
    r->cell = ldm_xcalloc((size_t)r->n_cells, sizeof *r->cell);
    ldm_sched_config sc;
    for (int k = 0; k < r->n_cells; k++) {
        r->cell[k] = *base;
        if (grid) {
            r->cell[k].guidance = j->grid_guidance[k / j->grid_cols];
            r->cell[k].steps = j->grid_steps[k % j->grid_cols];
            r->cell[k].batch = 1;
        }
        if (ldm_gen_check_bundle(b, &r->cell[k], &sc, &r->W, &r->H)) {
            /* a config the library cannot read is the bundle's fault, the rest is ours */
            int data = strstr(ldm_last_error(), ".json") != NULL;
            char msg[1024];
            snprintf(msg, sizeof msg, "%s%s", grid ? "grid: " : "", ldm_last_error());
            if (data) fprintf(stderr, "ldmgen: %s\n", msg);
            rc = data ? 1 : usage_fail(msg);
            goto out;
        }
    }
    r->sched_name = ldm_sched_name(sc.kind);
    r->B = grid ? 1 : (base->batch > 0 ? base->batch : 1);
    if (j->only_index >= r->B) {
        fprintf(stderr, "ldmgen: image %d of a batch of %d does not exist\n", j->only_index, r->B);
        goto out;
    }
    r->n_img = (grid || j->only_index >= 0) ? 1 : r->B;
    r->names = ldm_xcalloc((size_t)r->n_img, sizeof *r->names);
    r->lat_names = ldm_xcalloc((size_t)r->n_img, sizeof *r->lat_names);
    for (int i = 0; i < r->n_img; i++) {
        r->names[i] = ldm_output_name(j->output, i, r->n_img);
        if (j->latent_output) r->lat_names[i] = ldm_output_name(j->latent_output, i, r->n_img);
        if (check_output(r->names[i]) || (j->latent_output && check_output(r->lat_names[i]))) {
            fprintf(stderr, "ldmgen: %s\n", ldm_last_error());
            goto out;
        }
        if (j->latent_output && !strcmp(r->names[i], r->lat_names[i])) {
            rc = usage_fail("--save-latent names the same file as the image");
            goto out;
        }
    }
    if (!j->have_seed) {
        base->seed = random_seed();
        ldm_log(1, "seed: %llu\n", (unsigned long long)base->seed);
    }
    for (int k = 0; k < r->n_cells; k++) r->cell[k].seed = base->seed;
    r->abs_bundle = absolute_path(j->bundle_path);
    r->meta_bundle = ldm_xstrdup(j->meta_bundle_path ? j->meta_bundle_path : r->abs_bundle);
    r->model_name = path_stem(r->meta_bundle);
    const ldm_backend *be = pick_backend();
    ldm_log(2, "backend: %s\n", be->name);

    /* ---- history rows, 'running' before any heavy work ---- */
    session_open(&r->s, j);
    int64_t grid_id = 0;
    if (grid && r->s.record && r->s.db) {
        char spec[512] = "g=", v[32];
        for (int i = 0; i < j->grid_rows; i++) {
            fmt_num(v, sizeof v, j->grid_guidance[i]);
            snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s%s", i ? "," : "", v);
        }
        snprintf(spec + strlen(spec), sizeof spec - strlen(spec), " n=");
        for (int i = 0; i < j->grid_cols; i++)
            snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s%d", i ? "," : "", j->grid_steps[i]);
        char *abs_out = absolute_path(j->output);
        grid_id = ldm_db_new_grid(r->s.db, spec, abs_out);
        free(abs_out);
        if (grid_id < 0) { history_lost(&r->s, ldm_last_error()); grid_id = 0; }
    }
    r->n_rows = grid ? r->n_cells : r->n_img;
    r->recs = ldm_xcalloc((size_t)r->n_rows, sizeof *r->recs);
    r->shas = ldm_xcalloc((size_t)r->n_rows, sizeof *r->shas);
    char **abs_names = ldm_xcalloc((size_t)r->n_img, sizeof *abs_names);
    for (int i = 0; i < r->n_img; i++) abs_names[i] = absolute_path(r->names[i]);
    for (int k = 0; k < r->n_rows; k++) {
        const ldm_gen_params *prm = &r->cell[grid ? k : 0];
        int idx = grid ? 0 : (j->only_index >= 0 ? j->only_index : k);
        ldm_record *rec = &r->recs[k];
        rec->grid_id = grid_id;
        rec->bundle_hash = r->hash;
        rec->bundle_path = r->abs_bundle;
        rec->prompt = prm->prompt;
        rec->negative_prompt = prm->negative ? prm->negative : "";
        rec->seed = prm->seed + (uint64_t)idx;
        rec->steps = prm->steps;
        rec->guidance = prm->guidance;
        rec->scheduler = r->sched_name;
        rec->karras = prm->karras;
        rec->eta = prm->eta;
        rec->timestep_spacing = prm->spacing >= 0 ? ldm_spacing_name(prm->spacing) : NULL;
        rec->width = r->W;
        rec->height = r->H;
        rec->clip_skip = prm->clip_skip > 1 ? prm->clip_skip : 1;
        rec->batch_size = r->B;
        rec->batch_index = idx;
        rec->replay_of = j->replay_of;
        rec->backend = be->name;
        rec->ldm_version = LDM_VERSION;
        rec->output_path = abs_names[grid ? 0 : k];
        rec_begin(&r->s, rec);
    }

    /* ---- models ---- */
    double t_load = now_s();
    r->p = ldm_pipeline_new(b, be);
    b = NULL;   /* owned by the pipeline now */
    if (!r->p) {
        rc = write_failed(r, 0);
    } else {
        ldm_log(2, "models loaded in %.2f s\n", now_s() - t_load);
        r->enc.s = &r->s;
        r->enc.hash = r->hash;
        r->enc.T = ldm_pipeline_text_length(r->p);
        r->enc.D = ldm_pipeline_text_dim(r->p);
        rc = grid ? run_grid(r) : run_batch(r);
    }
    if (rc == 0 && r->s.record && r->s.lost && r->s.require) rc = 1;
    for (int i = 0; i < r->n_img; i++) free(abs_names[i]);
    free(abs_names);
out:
    enc_free(&r->enc);
    ldm_pipeline_close(r->p);
    ldm_bundle_close(b);
    ldm_db_close(r->s.db);
    for (int i = 0; i < r->n_img; i++) {
        if (r->names) free(r->names[i]);
        if (r->lat_names) free(r->lat_names[i]);
    }
    free(r->names); free(r->lat_names);
    free(r->recs); free(r->shas); free(r->cell);
    free(r->hash); free(r->abs_bundle); free(r->meta_bundle); free(r->model_name);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* ldmgen replay */

static const char REPLAY_USAGE[] =
    "usage: ldmgen replay [options] ID|IMAGE.png\n"
    "Regenerate a recorded image (history ID, or a PNG made by ldmgen) with the same\n"
    "parameters and report whether the new PNG is byte-identical.\n"
    "  -o, --output FILE     PNG to write (default replay-ID.png / replay-NAME.png)\n"
    "      --bundle FILE     bundle to use (default: the recorded path); its content\n"
    "                        hash must equal the recorded one\n"
    "      --db PATH         history database (default as for ldmgen)\n"
    "      --no-history      do not record the replay\n"
    "      --no-cache        do not use the prompt-embedding cache\n"
    "  -q, --quiet           print errors only;  -v, --verbose  print details\n"
    "Exit status: 0 identical, 1 different or error, 2 usage error, 130 interrupted.\n";

typedef struct { ldm_meta *m; char status[16]; char *sha, *output; int64_t grid_id; } rec_copy;

static char *dup_or_null(const char *s) { return s ? ldm_xstrdup(s) : NULL; }

static int copy_record(const ldm_record *r, void *ctx) {
    rec_copy *c = ctx;
    ldm_meta *m = c->m;
    m->ldm_version = dup_or_null(r->ldm_version);
    m->prompt = dup_or_null(r->prompt ? r->prompt : "");
    m->negative = dup_or_null(r->negative_prompt ? r->negative_prompt : "");
    m->seed = r->seed;
    m->steps = r->steps;
    m->guidance = r->guidance;
    m->scheduler = dup_or_null(r->scheduler);
    m->karras = r->karras;
    m->eta = r->eta;
    m->timestep_spacing = dup_or_null(r->timestep_spacing);
    m->width = r->width;
    m->height = r->height;
    m->clip_skip = r->clip_skip;
    m->batch_size = r->batch_size > 0 ? r->batch_size : 1;
    m->batch_index = r->batch_index;
    m->bundle_hash = dup_or_null(r->bundle_hash);
    m->bundle_path = dup_or_null(r->bundle_path);
    snprintf(c->status, sizeof c->status, "%s", r->status);
    c->sha = dup_or_null(r->png_sha256);
    c->output = dup_or_null(r->output_path);
    c->grid_id = r->grid_id;
    return 0;
}

/* Compare two images; describes the difference in msg.  1 identical, 0 not. */
static int same_pixels(const uint8_t *a, int aw, int ah, const uint8_t *b, int bw, int bh,
                       char *msg, size_t cap) {
    if (aw != bw || ah != bh) {
        snprintf(msg, cap, "pixels differ: size %dx%d, recorded %dx%d", bw, bh, aw, ah);
        return 0;
    }
    size_t n = (size_t)aw * ah * 3, diff = 0;
    int maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d) { diff++; if (d > maxd) maxd = d; }
    }
    if (!diff) { snprintf(msg, cap, "pixels identical"); return 1; }
    snprintf(msg, cap, "pixels differ: %zu of %zu values, by up to %d levels", diff, n, maxd);
    return 0;
}

static int file_sha(const char *path, char sha[65]) {
    size_t len;
    char *data = ldm_read_file(path, &len);
    if (!data) return -1;
    sha256_hex(data, len, sha);
    free(data);
    return 0;
}

int ldm_cmd_replay(int argc, char **argv, const volatile int *interrupt) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"bundle", required_argument, 0, 'B'},
        {"db", required_argument, 0, 'D'},     {"no-history", no_argument, 0, 'N'},
        {"no-cache", no_argument, 0, 'C'},     {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *out = NULL, *bundle = NULL, *db_path = NULL;
    int no_history = 0, no_cache = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:qvh", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'B': bundle = optarg; break;
        case 'D': db_path = optarg; break;
        case 'N': no_history = 1; break;
        case 'C': no_cache = 1; break;
        case 'q': ldm_verbosity = 0; break;
        case 'v': ldm_verbosity = 2; break;
        case 'h': fputs(REPLAY_USAGE, stdout); return 0;
        case ':': fprintf(stderr, "ldmgen replay: option %s needs a value\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "ldmgen replay: unknown option %s (try ldmgen replay --help)\n", argv[optind - 1]); return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "ldmgen replay: expected one generation id or PNG file, got %d arguments\n", argc - optind);
        return 2;
    }
    const char *what = argv[optind];
    int by_id = what[0] != 0 && strspn(what, "0123456789") == strlen(what);
    ldm_meta m;
    memset(&m, 0, sizeof m);
    rec_copy rc_ = {&m, "", NULL, NULL, 0};
    uint8_t *orig = NULL;
    int ow = 0, oh = 0, rc = 1;
    char *default_out = NULL, orig_sha[65] = "";
    long long id = 0;
    if (by_id) {
        id = strtoll(what, NULL, 10);
        char buf[4096];
        const char *path = db_path;
        if (!path && ldm_db_default_path(buf, sizeof buf) == 0) path = buf;
        ldm_db *db = path ? ldm_db_open(path) : NULL;
        if (!db) { fprintf(stderr, "ldmgen replay: %s\n", ldm_last_error()); return 1; }
        ldm_db_reap_interrupted(db);
        int found = ldm_db_get(db, id, copy_record, &rc_);
        if (found <= 0) {
            if (found == 0) fprintf(stderr, "ldmgen replay: no generation %lld in %s\n", id, ldm_db_path(db));
            else fprintf(stderr, "ldmgen replay: %s\n", ldm_last_error());
            ldm_db_close(db);
            goto done;
        }
        ldm_db_close(db);
        if (rc_.sha) snprintf(orig_sha, sizeof orig_sha, "%s", rc_.sha);
        /* the recorded file, when it is still the recorded image, gives a pixel comparison */
        char fsha[65];
        if (rc_.sha && !rc_.grid_id && rc_.output && file_exists(rc_.output) &&
            file_sha(rc_.output, fsha) == 0 && !strcmp(fsha, rc_.sha))
            if (ldm_png_read(rc_.output, &orig, &ow, &oh, NULL, NULL)) orig = NULL;
        default_out = ldm_xmalloc(48);
        snprintf(default_out, 48, "replay-%lld.png", id);
    } else {
        ldm_png_text *texts = NULL;
        int nt = 0;
        if (ldm_png_read(what, &orig, &ow, &oh, &texts, &nt)) {
            fprintf(stderr, "ldmgen replay: %s\n", ldm_last_error());
            return 1;
        }
        const char *meta = NULL;
        for (int i = 0; i < nt; i++)
            if (!strcmp(texts[i].key, "ldm")) meta = texts[i].text;
        char where[4200];
        snprintf(where, sizeof where, "%s: \"ldm\" chunk", what);
        int bad = !meta ? ldm_error("%s: no \"ldm\" text chunk: not an image made by ldmgen "
                                    "(a latent picture has none either)", what)
                        : ldm_meta_parse(meta, where, &m);
        ldm_png_texts_free(texts, nt);
        if (bad) { fprintf(stderr, "ldmgen replay: %s\n", ldm_last_error()); goto done; }
        if (file_sha(what, orig_sha)) { fprintf(stderr, "ldmgen replay: %s\n", ldm_last_error()); goto done; }
        char *stem = path_stem(what);
        size_t n = strlen(stem) + 16;
        default_out = ldm_xmalloc(n);
        snprintf(default_out, n, "replay-%s.png", stem);
        free(stem);
    }

    /* ---- the job ---- */
    ldm_job j;
    ldm_job_init(&j);
    j.prm.prompt = m.prompt;
    j.prm.negative = m.negative;
    j.prm.steps = m.steps;
    j.prm.guidance = m.guidance;
    j.prm.seed = m.seed - (uint64_t)m.batch_index;
    j.have_seed = 1;
    j.prm.batch = m.batch_size;
    j.prm.width = m.width;
    j.prm.height = m.height;
    j.prm.clip_skip = m.clip_skip;
    j.prm.karras = m.karras;
    j.prm.eta = m.eta;
    if ((j.prm.scheduler = ldm_sched_kind_from_name(m.scheduler ? m.scheduler : "")) < 0) {
        fprintf(stderr, "ldmgen replay: %s: unknown scheduler \"%s\"\n", what, m.scheduler ? m.scheduler : "");
        goto done;
    }
    j.prm.spacing = -1;
    if (m.timestep_spacing && (j.prm.spacing = ldm_spacing_from_name(m.timestep_spacing)) < 0) {
        fprintf(stderr, "ldmgen replay: %s: unknown timestep spacing \"%s\"\n", what, m.timestep_spacing);
        goto done;
    }
    if (m.grid_rows > 0) {
        j.grid_rows = m.grid_rows;
        j.grid_cols = m.grid_cols;
        memcpy(j.grid_guidance, m.grid_guidance, sizeof j.grid_guidance);
        memcpy(j.grid_steps, m.grid_steps, sizeof j.grid_steps);
        j.prm.batch = 1;
    } else {
        j.only_index = m.batch_index;
    }
    if (!bundle && !file_exists(m.bundle_path)) {
        fprintf(stderr, "ldmgen replay: the recorded bundle %s does not exist; give the bundle "
                "with --bundle FILE (its content hash must be %s)\n", m.bundle_path, m.bundle_hash);
        goto done;
    }
    j.bundle_path = bundle ? bundle : m.bundle_path;
    j.want_hash = m.bundle_hash;
    j.meta_bundle_path = m.bundle_path;
    j.output = out ? out : default_out;
    j.db_path = db_path;
    j.no_history = no_history;
    j.no_cache = no_cache;
    j.interrupt = interrupt;
    j.progress_bar = ldm_verbosity > 0 && isatty(2);
    j.replay_of = by_id ? id : 0;
    if (m.ldm_version && strcmp(m.ldm_version, LDM_VERSION))
        ldm_log(1, "note: the image was made by ldm %s, this is ldm %s\n", m.ldm_version, LDM_VERSION);
    int saved = ldm_verbosity;
    if (ldm_verbosity == 1) ldm_verbosity = 0;   /* the verdict below names the file */
    rc = ldm_job_run(&j);
    ldm_verbosity = saved;
    if (rc) goto done;

    /* ---- the verdict ---- */
    char pix[160] = "";
    if (orig) {
        uint8_t *now = NULL;
        int nw, nh;
        if (ldm_png_read(j.output, &now, &nw, &nh, NULL, NULL) == 0)
            same_pixels(orig, ow, oh, now, nw, nh, pix, sizeof pix);
        free(now);
    }
    const char *src = by_id ? "generation" : "image";
    char label[4200];
    if (by_id) snprintf(label, sizeof label, "generation %lld", id);
    else snprintf(label, sizeof label, "%s", what);
    if (!orig_sha[0]) {
        fprintf(stderr, "ldmgen replay: %s: %s %lld is '%s' and has no recorded PNG to compare with\n",
                j.output, src, id, rc_.status);
        rc = 1;
    } else if (!strcmp(orig_sha, j.png_sha256)) {
        if (ldm_verbosity > 0)
            printf("%s: identical to %s (PNG bytes%s, sha256 %s)\n", j.output, label,
                   orig ? " and pixels" : "", orig_sha);
        rc = 0;
    } else {
        fprintf(stderr, "ldmgen replay: %s differs from %s: sha256 %s, recorded %s%s%s\n", j.output,
                label, j.png_sha256, orig_sha, pix[0] ? "; " : "", pix);
        rc = 1;
    }
done:
    free(orig);
    free(default_out);
    free(rc_.sha);
    free(rc_.output);
    ldm_meta_free(&m);
    return rc;
}
