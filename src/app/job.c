/* job.c - one ldmgen job from bundle to PNG files.  See job.h for the flow.
 *
 * Invariants kept here:
 * - rows are inserted as 'running' before the models are loaded and finished exactly
 *   once: ok only after the PNG is under its final name, else failed (with the message)
 *   or interrupted; a SIGKILL leaves 'running' rows that ldm_db_reap_interrupted marks;
 * - every row and every PNG "ldm" chunk is the same ldm_gen_record (app/record.h), so
 *   what replay reads back is what was recorded;
 * - nothing in the PNG chunks depends on the output file name or the bundle's path:
 *   the same job gives the same bytes wherever it is written and whichever copy of the
 *   bundle it reads;
 * - a failed generation writes no PNG and leaves nothing in the embedding cache;
 * - a session (ldm_session_*) owns the bundle, backend, models, database and embedder;
 *   a job run in it borrows them and frees only its own plan, rows and names, so a
 *   prompt file loads the models once; a backend or model failure ends the session;
 * - with refuse_existing no file is ever replaced: checked when the names are planned
 *   and again by the write itself (ldm_write_file_new), which cannot replace a file
 *   another process made meanwhile.
 */
#include "app/job.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "app/db.h"
#include "app/embed.h"
#include "app/grid.h"
#include "core/sha256.h"
#include "format/bundle.h"
#include "format/image.h"
#include "format/png_io.h"
#include "pipeline/imageproc.h"
#include "pipeline/scheduler.h"


/* ------------------------------------------------------------------------------------ */
/* small helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* path made absolute against the current folder (symlinks kept).  malloc'd. */
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
        if (k <= 0)
            return ldm_error_kind(LDM_USAGE, "%s: invalid UTF-8 at byte %zu (0x%02x)", what, i,
                                  (unsigned char)s[i]);
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

/* Shortest "%g"-style number that reads back as the same double (7.5, 0.5, 12). */
static void fmt_num(char *out, size_t cap, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* ------------------------------------------------------------------------------------ */
/* the database: history rows and the embedding cache, both best effort */

typedef struct {
    ldm_db *db;        /* NULL: none (not wanted, or could not be opened) */
    int record, cache; /* history / cache wanted */
    int require;       /* require_history */
    int *lost;         /* some history of this job was not recorded */
    int *warned, warned_flag; /* warned once (per session: warned points to warned_flag) */
    char lost_msg[512];
} session;

static void history_lost(session *s, const char *why) {
    if (!*s->warned) ldm_warn("history not recorded%s: %s", s->require ? " (--require-history)" : "", why);
    if (!*s->lost) snprintf(s->lost_msg, sizeof s->lost_msg, "history not recorded: %s", why);
    *s->warned = 1;
    *s->lost = 1;
}

static void session_open(session *s, ldm_job *j) {
    memset(s, 0, sizeof *s);
    s->lost = &j->history_lost;
    s->warned = &s->warned_flag;
    s->record = !j->no_history && j->db_path;
    s->cache = !j->no_cache && j->db_path;
    s->require = j->require_history;
    if (!s->record && !s->cache) return;
    s->db = ldm_db_open(j->db_path);
    if (!s->db) {
        if (s->record) history_lost(s, ldm_last_error());
        else ldm_log(2, "embedding cache not used: %s\n", ldm_last_error());
        return;
    }
    if (ldm_db_reap_interrupted(s->db) < 0) ldm_log(2, "%s\n", ldm_last_error());
}

static void rec_begin(session *s, ldm_gen_record *r) {
    r->id = 0;
    if (!s->record || !s->db) return;
    if (ldm_db_begin(s->db, r)) { history_lost(s, ldm_last_error()); r->id = 0; }
}

static void rec_finish(session *s, ldm_gen_record *r, const char *status, const char *error) {
    if (!r->id) return;
    if (ldm_db_finish(s->db, r, status, error)) history_lost(s, ldm_last_error());
}

/* ------------------------------------------------------------------------------------ */
/* the job */

/* What a session opens once for its jobs (ldm_session_open). */
struct ldm_session {
    ldm_job cfg;              /* the session's settings; its strings are the copies below */
    char *bundle_path, *db_path, *backend_name;
    ldm_pipeline *p;          /* configs from the start, models once loaded */
    char *hash, *abs_bundle;
    ldm_backend *be;          /* opened by the first job */
    int db_opened;
    session store;            /* the database, opened by the first job */
    int loaded;
    ldm_status broken;        /* the backend or the models failed: no job can run */
    char broken_msg[1024];
    ldm_embedder *emb;        /* after loading */
};

/* Everything one run shares: the bundle identity, names, rows and the pipeline (the
 * pipeline, backend, embedder, hash and bundle path belong to the session). */
typedef struct {
    ldm_job *j;
    ldm_session *ss;
    session s;                /* the session's database, with this job's lost flag */
    ldm_embedder *emb;
    ldm_backend *be;
    ldm_pipeline *p;
    char *hash, *abs_bundle, *model_name;
    const char *sched_name;
    int W, H, B;              /* image size, images per generation */
    int n_cells;              /* grid cells (1 without a grid) */
    ldm_gen_params *cell;     /* [n_cells] the parameters of each generation */
    int n_img;                /* PNGs written (a grid is one) */
    char **names, **lat_names;/* [n_img] */
    int n_rows;               /* history rows: images, or grid cells */
    ldm_gen_record *recs;     /* [n_rows] */
    const char *label;        /* progress label of the generation running */
    double step_start;
    /* image to image */
    float *init;              /* preprocessed [3, H, W] */
    char *init_abs;           /* the path given, made absolute */
    char init_sha[65];        /* SHA-256 of the decoded 8-bit RGB pixels */
    float *mask;              /* inpainting: preprocessed [H, W] */
    char *mask_abs;
    char mask_sha[65];
    char *pattern, *lat_pattern; /* -o / --save-latent with every field but {id} */
    int by_id;                /* the names use {id}: made once the rows exist */
} run_state;

/* The record of image `idx` of generation prm (a batch of `batch`). */
static void make_record(const run_state *r, const ldm_gen_params *prm, int idx, int batch,
                        ldm_gen_record *m) {
    ldm_record_init(m);
    ldm_record_set(&m->bundle_hash, r->hash);
    ldm_record_set(&m->bundle_path, r->abs_bundle);
    ldm_record_set(&m->model_name, r->model_name);
    ldm_record_set(&m->prompt, prm->prompt);
    ldm_record_set(&m->negative_prompt, prm->negative ? prm->negative : "");
    m->seed = prm->seed + (uint64_t)idx;
    m->steps = prm->steps;
    m->guidance = prm->guidance;
    ldm_record_set(&m->scheduler, r->sched_name);
    m->karras = prm->karras;
    m->eta = prm->eta;
    ldm_record_set(&m->timestep_spacing, prm->spacing >= 0 ? ldm_spacing_name(prm->spacing) : NULL);
    ldm_record_set(&m->final_sigmas, prm->final_sigmas >= 0 ? ldm_final_sigmas_name(prm->final_sigmas) : NULL);
    m->width = r->W;
    m->height = r->H;
    m->clip_skip = prm->clip_skip > 1 ? prm->clip_skip : 1;
    ldm_record_set(&m->prompt_syntax, ldm_prompt_syntax_name(prm->prompt_syntax));
    m->batch_size = batch;
    m->batch_index = idx;
    m->replay_of = r->j->replay_of;
    ldm_record_set(&m->prompt_file, r->j->prompt_file);
    m->prompt_line = r->j->prompt_line;
    ldm_record_set(&m->backend, r->be ? ldm_backend_name(r->be) : "");
    ldm_record_set(&m->precision, r->be ? ldm_backend_precision_name(r->be) : "fp32");
    ldm_record_set(&m->isa, r->be ? ldm_backend_isa_name(r->be) : NULL);
    if (r->be) {
        snprintf(r->j->backend_used, sizeof r->j->backend_used, "%s", ldm_backend_name(r->be));
        snprintf(r->j->isa_used, sizeof r->j->isa_used, "%s", ldm_backend_isa_name(r->be));
    }
    if (r->init) {
        m->strength = prm->strength;
        ldm_record_set(&m->init_image_sha256, r->init_sha);
        ldm_record_set(&m->init_image, r->init_abs);
    }
    if (r->mask) {
        ldm_record_set(&m->mask_sha256, r->mask_sha);
        ldm_record_set(&m->mask_image, r->mask_abs);
    }
}

/* A PNG under its final name: replacing a file only when the job allows it. */
static int put_file(const run_state *r, const char *path, const void *data, size_t len) {
    return r->j->refuse_existing ? ldm_write_file_new(path, data, len)
                                 : ldm_write_file_atomic(path, data, len);
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

/* A failure after the rows began: finish them (from `from`) as failed or interrupted
 * with the current message and return its status. */
static ldm_status fail_rows(run_state *r, int from) {
    ldm_status st = ldm_last_status();
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    if (st == LDM_INTERRUPTED) {
        finish_all(r, from, "interrupted", "interrupted by a signal");
        ldm_error_kind(LDM_INTERRUPTED, "interrupted; nothing written");
    } else {
        finish_all(r, from, "failed", msg);
        ldm_error_kind(st == LDM_OK ? LDM_RUNTIME : st, "%s", msg);
    }
    return ldm_last_status();
}

static void written(run_state *r, const char *path) {
    if (r->j->hooks.written) r->j->hooks.written(r->j->hooks.user, path);
}

static void on_step(void *user, int step, int total) {
    run_state *r = user;
    if (step <= 1) r->step_start = now_s();
    r->j->hooks.progress(r->j->hooks.user, r->label, step, total, now_s() - r->step_start);
}

/* Embeddings for prm through the cache, then ldm_generate.  On failure the rows are
 * finished and the status returned. */
static ldm_status generate(run_state *r, ldm_gen_params *prm, ldm_gen_result *res, const char *label) {
    ldm_job *j = r->j;
    memset(res, 0, sizeof *res);
    prm->interrupt = j->interrupt;
    prm->keep_latents = j->latent_output != NULL;
    r->label = label;
    r->step_start = now_s();
    if (j->hooks.progress) { prm->progress = on_step; prm->progress_user = r; }
    double t0 = now_s();
    /* the prompt syntax, its chunks, weights and padding, and which texts get clip skip,
     * are the pipeline's (ldm_pipeline_embed_text); each chunk goes through the cache */
    ldm_text_embeds te;
    if (ldm_pipeline_embed_text(r->p, prm, ldm_embed_chunk, r->emb, &te)) {
        ldm_text_embeds_free(&te);
        goto fail;
    }
    if (te.prompt_chunks > 1 || te.negative_chunks > 1)
        ldm_log(2, "text: prompt %d chunk%s, negative prompt %d chunk%s%s\n", te.prompt_chunks,
                te.prompt_chunks == 1 ? "" : "s", te.negative_chunks, te.negative_chunks == 1 ? "" : "s",
                te.pad_conds ? ", padded to the same length" : "");
    prm->prompt_embeds = te.prompt;
    prm->negative_embeds = te.negative;
    prm->text_tokens = te.tokens;
    double t_text = now_s() - t0;
    ldm_status st = ldm_generate(r->p, prm, res);
    prm->prompt_embeds = prm->negative_embeds = NULL;
    prm->text_tokens = 0;
    res->prompt_truncated = te.prompt_truncated;
    res->negative_truncated = te.negative_truncated;
    res->pad_conds = te.pad_conds;
    ldm_text_embeds_free(&te);
    res->t_text += t_text;
    res->t_total += t_text;
    if (st == LDM_OK && j->interrupt && *j->interrupt) {
        ldm_gen_result_free(res);
        ldm_error_kind(LDM_INTERRUPTED, "interrupted");
        st = LDM_INTERRUPTED;
    }
    if (st == LDM_OK) {
        ldm_embedder_commit(r->emb);
        return LDM_OK;
    }
fail:
    ldm_embedder_discard(r->emb);
    return fail_rows(r, 0);
}

static void warn_truncated(const run_state *r, const ldm_gen_result *res) {
    int T = ldm_pipeline_text_length(r->p) - 2;
    if (res->prompt_truncated) ldm_warn("the prompt is longer than %d tokens; the rest was truncated", T);
    if (res->negative_truncated)
        ldm_warn("the negative prompt is longer than %d tokens; the rest was truncated", T);
}

static void set_times(ldm_gen_record *rec, const ldm_gen_result *res) {
    rec->t_text_ms = res->t_text * 1e3;
    rec->t_sampling_ms = res->t_sampling * 1e3;
    rec->t_decode_ms = res->t_decode * 1e3;
    rec->t_total_ms = res->t_total * 1e3;
}

/* The latent picture: mean over channels, enlarged to the image size. */
static int write_latent(const run_state *r, const char *path, const float *lat,
                        const ldm_gen_result *res, const char *params) {
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
    uint8_t *png = NULL;
    size_t len = 0;
    int rc = ldm_png_encode(img, w, h, t, 2, &png, &len) || put_file(r, path, png, len) ? -1 : 0;
    free(png);
    free(img);
    return rc;
}

/* A plain run: one generation of B images, written as names[]. */
static ldm_status run_batch(run_state *r) {
    ldm_job *j = r->j;
    ldm_gen_params prm = r->cell[0];
    ldm_gen_result res;
    ldm_status rc = generate(r, &prm, &res, "");
    if (rc) return rc;
    warn_truncated(r, &res);
    const size_t img_bytes = (size_t)res.width * res.height * 3;
    const size_t per = (size_t)res.latent_channels * res.latent_h * res.latent_w;
    for (int i = 0; i < r->n_img; i++) {
        int idx = j->only_index >= 0 ? j->only_index : i;
        char *params = ldm_a1111_parameters(&prm, &res, idx, r->hash, r->model_name);
        ldm_gen_record *rec = &r->recs[i];
        char *meta = ldm_record_png_json(rec);
        uint8_t *png = NULL;
        size_t len = 0;
        char sha[65];
        int bad = encode_png(res.rgb + idx * img_bytes, res.width, res.height, params, meta, &png,
                             &len, sha) ||
                  put_file(r, r->names[i], png, len);
        free(png);
        free(meta);
        if (bad) { free(params); rc = fail_rows(r, i); break; }
        ldm_record_set(&rec->png_sha256, sha);
        set_times(rec, &res);
        rec_finish(&r->s, rec, "ok", NULL);
        snprintf(j->png_sha256, sizeof j->png_sha256, "%s", sha);
        j->images_written++;
        written(r, r->names[i]);
        if (j->latent_output) {
            if (write_latent(r, r->lat_names[i], res.latents_final + idx * per, &res, params)) {
                free(params);
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", ldm_last_error());
                finish_all(r, i + 1, "failed", "not written: the latent picture before it failed");
                ldm_error("%s", msg);
                rc = LDM_RUNTIME;
                break;
            }
            written(r, r->lat_names[i]);
        }
        free(params);
    }
    if (!rc) {
        ldm_log(2, "%s, %d steps (%d UNet evaluations), %dx%d, seed %llu\n",
                ldm_sched_a1111_name(&res.sched), prm.steps, res.unet_evaluations, res.width,
                res.height, (unsigned long long)prm.seed);
        ldm_log(2, "time: text %.3f s, sampling %.3f s, decode %.3f s, total %.3f s\n", res.t_text,
                res.t_sampling, res.t_decode, res.t_total);
        ldm_log(2, "products: sampling %.1f GFLOP (%.0f GFLOP/s), decode %.1f GFLOP (%.0f GFLOP/s)\n",
                res.gflop_sampling, res.t_sampling > 0 ? res.gflop_sampling / res.t_sampling : 0.0,
                res.gflop_decode, res.t_decode > 0 ? res.gflop_decode / res.t_decode : 0.0);
    }
    ldm_gen_result_free(&res);
    return rc;
}

/* The grid: one generation per cell (same seed), composed with titles. */
static ldm_status run_grid(run_state *r) {
    ldm_job *j = r->j;
    const int rows = j->grid.rows, cols = j->grid.cols, n = r->n_cells;
    uint8_t **cells = ldm_xcalloc((size_t)n, sizeof *cells);
    uint8_t **lcells = ldm_xcalloc((size_t)n, sizeof *lcells);
    char **labels = ldm_xcalloc((size_t)n, sizeof *labels);
    char *first_params = NULL, *meta = NULL;
    uint8_t *grid = NULL, *lgrid = NULL, *png = NULL;
    ldm_status rc = LDM_OK;
    int gw, gh;
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
        char *cmeta = ldm_record_png_json(&r->recs[k]);
        char sha[65];
        if (encode_png(res.rgb, res.width, res.height, params, cmeta, &png, &len, sha)) {
            free(params); free(cmeta);
            rc = fail_rows(r, 0);
            break;
        }
        free(png); png = NULL;
        free(cmeta);
        if (k == 0) first_params = params;
        else free(params);
        ldm_record_set(&r->recs[k].png_sha256, sha);
        set_times(&r->recs[k], &res);
        if (j->latent_output) {
            int lw, lh;
            if (ldm_latent_image(res.latents_final, res.latent_channels, res.latent_h, res.latent_w,
                                 res.width / res.latent_w, &lcells[k], &lw, &lh)) {
                rc = fail_rows(r, 0);
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
        rc = fail_rows(r, 0);
    if (!rc) {
        /* A1111 gives a grid the first cell's parameters; ours describe the whole grid */
        ldm_gen_record m;
        make_record(r, &j->prm, 0, 1, &m);
        m.grid = j->grid;
        meta = ldm_record_png_json(&m);
        ldm_record_free(&m);
        char sha[65];
        if (encode_png(grid, gw, gh, first_params, meta, &png, &len, sha) ||
            put_file(r, r->names[0], png, len)) {
            rc = fail_rows(r, 0);
        } else {
            snprintf(j->png_sha256, sizeof j->png_sha256, "%s", sha);
            j->images_written++;
            finish_all(r, 0, "ok", NULL);
            written(r, r->names[0]);
        }
    }
    if (!rc && j->latent_output) {
        int lw, lh;
        char desc[160];
        snprintf(desc, sizeof desc, "ldm final latents of the grid cells, each averaged over its "
                 "channels (black = lowest, white = highest)");
        ldm_png_text t[2] = {{"Description", desc}, {"parameters", first_params}};
        free(png);
        png = NULL;
        if (ldm_grid_compose((const uint8_t *const *)lcells, rows, cols, r->W, r->H,
                             (const char *const *)labels, &lgrid, &lw, &lh) ||
            ldm_png_encode(lgrid, lw, lh, t, 2, &png, &len) || put_file(r, r->lat_names[0], png, len))
            rc = LDM_RUNTIME;
        else
            written(r, r->lat_names[0]);
    }
    for (int k = 0; k < n; k++) { free(cells[k]); free(lcells[k]); free(labels[k]); }
    free(cells); free(lcells); free(labels);
    free(first_params); free(meta); free(grid); free(lgrid); free(png);
    return rc;
}

char *ldm_image_copy_path(const char *db_path, const char *sha) {
    const char *slash = strrchr(db_path, '/');
    int dl = slash ? (int)(slash - db_path) : 1;
    const char *dir = slash ? db_path : ".";
    size_t n = (size_t)dl + strlen(sha) + 16;
    char *p = ldm_xmalloc(n);
    snprintf(p, n, "%.*s/images/%s.png", dl, dir, sha);
    return p;
}

/* The copy of an input picture beside the database, named by the pixels' hash (so
 * replay works when the original has been moved or edited); best effort. */
static void keep_copy(const ldm_job *j, const uint8_t *rgb, int w, int h, const char *sha) {
    if (!j->db_path || j->no_image_copy || j->no_history) return;
    char *cp = ldm_image_copy_path(j->db_path, sha);
    struct stat st;
    if (stat(cp, &st) != 0) {
        char *dir = ldm_xstrdup(cp);
        *strrchr(dir, '/') = 0;
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            ldm_log(2, "image copy not kept: %s: %s\n", dir, strerror(errno));
        else if (ldm_png_write(cp, rgb, w, h, NULL, 0))
            ldm_log(2, "image copy not kept: %s\n", ldm_last_error());
        free(dir);
    }
    free(cp);
}

/* An input picture decoded and hashed, checked against the recorded hash (replay). */
static ldm_status read_input(const char *path, const char *want_sha, uint8_t **rgb, int *w, int *h,
                             char sha[65]) {
    if (ldm_image_read(path, rgb, w, h)) return ldm_last_status();
    sha256_hex(*rgb, (size_t)*w * *h * 3, sha);
    if (want_sha && strcmp(want_sha, sha)) {
        free(*rgb);
        *rgb = NULL;
        ldm_error_kind(LDM_DATA, "%s: its pixels have SHA-256 %s, the generation used %s", path, sha,
                       want_sha);
        return LDM_DATA;
    }
    return LDM_OK;
}

/* The init image (and the mask): decoded, hashed, checked against the recorded hash
 * (replay), preprocessed to the size the generation will use.  The mask is resized to
 * that size whatever its own (as diffusers' mask processor does). */
static ldm_status load_init(run_state *r) {
    ldm_job *j = r->j;
    uint8_t *rgb, *mrgb = NULL;
    int w, h, W, H, mw = 0, mh = 0;
    ldm_status st = read_input(j->init_image, j->init_image_sha256, &rgb, &w, &h, r->init_sha);
    if (st) return st;
    if (j->mask_image &&
        (st = read_input(j->mask_image, j->mask_sha256, &mrgb, &mw, &mh, r->mask_sha))) {
        free(rgb);
        return st;
    }
    int rc = ldm_image_preprocess(rgb, w, h, j->prm.width, j->prm.height,
                                  ldm_pipeline_size_multiple(r->p), &r->init, &W, &H);
    if (rc) {
        free(rgb);
        free(mrgb);
        return ldm_error_prefix("%s", j->init_image), LDM_USAGE;
    }
    j->prm.width = W;
    j->prm.height = H;
    j->prm.init_image = r->init;
    r->init_abs = absolute_path(j->init_image);
    keep_copy(j, rgb, w, h, r->init_sha);
    free(rgb);
    if (mrgb) {
        if (ldm_mask_preprocess(mrgb, mw, mh, W, H, &r->mask)) {
            free(mrgb);
            return ldm_error_prefix("%s", j->mask_image), LDM_USAGE;
        }
        j->prm.mask = r->mask;
        r->mask_abs = absolute_path(j->mask_image);
        keep_copy(j, mrgb, mw, mh, r->mask_sha);
        free(mrgb);
    }
    return LDM_OK;
}

void ldm_job_init(ldm_job *j) {
    memset(j, 0, sizeof *j);
    j->prm = ldm_gen_params_default();
    j->prm.prompt_syntax = LDM_SYNTAX_A1111;   /* ldmgen's default; the pipeline's is plain */
    j->output = "out.png";
    j->cache_max_mb = 256;
    j->only_index = -1;
    ldm_name_fields_init(&j->name_fields);
}

/* The backend the job asked for: "cpu", "cuda", or CUDA when usable, else the CPU. */
static ldm_backend *open_backend(const ldm_job *j) {
    ldm_backend_opts o = j->backend_opts;
    if (j->backend) return ldm_backend_new(j->backend, &o);
    if (ldm_backend_have_cuda()) {
        ldm_backend *be = ldm_backend_new("cuda", &o);
        if (be) return be;
        ldm_log(2, "CUDA not used: %s\n", ldm_last_error());
    }
    return ldm_backend_new("cpu", &o);
}

static char *grid_spec_text(const ldm_grid_spec *g) {
    char spec[512] = "g=", v[32];
    for (int i = 0; i < g->rows; i++) {
        fmt_num(v, sizeof v, g->guidance[i]);
        snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s%s", i ? "," : "", v);
    }
    snprintf(spec + strlen(spec), sizeof spec - strlen(spec), " n=");
    for (int i = 0; i < g->cols; i++)
        snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s%d", i ? "," : "", g->steps[i]);
    return ldm_xstrdup(spec);
}

/* What can be checked of the job alone, before any file is opened. */
static ldm_status check_job(const ldm_job *j) {
    const ldm_gen_params *base = &j->prm;
    const int grid = j->grid.rows > 0;
    if (!base->prompt) return ldm_error_kind(LDM_USAGE, "no prompt given"), LDM_USAGE;
    if (check_utf8(base->prompt, "prompt") || (base->negative && check_utf8(base->negative, "negative prompt")))
        return LDM_USAGE;
    if (j->mask_image && !j->init_image)
        return ldm_error_kind(LDM_USAGE, "a mask goes with an init image (--mask needs --init-img)"), LDM_USAGE;
    if (grid && base->batch > 1)
        return ldm_error_kind(LDM_USAGE, "--grid makes one image per cell; -b does not apply"), LDM_USAGE;
    if (grid && (j->grid.rows > LDM_GRID_MAX || j->grid.cols < 1 || j->grid.cols > LDM_GRID_MAX))
        return ldm_error_kind(LDM_USAGE, "--grid: too many values"), LDM_USAGE;
    if (!j->output || ldm_name_check(j->output) || (j->latent_output && ldm_name_check(j->latent_output)))
        return j->output ? LDM_USAGE : (ldm_error_kind(LDM_USAGE, "no output name"), LDM_USAGE);
    return LDM_OK;
}

static int file_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static int exists_error(const char *path) {
    /* a device, FIFO or folder is never replaced, --overwrite or not: say what it is */
    if (ldm_check_output(path)) return -1;
    return ldm_error("%s exists; give --overwrite to replace it, or another -o", path);
}

/* names[] and lat_names[] of the expanded names out and lat (NULL: no latent), checked;
 * with `exist` also that they are free (refuse_existing), a taken image name moving to
 * out-N.png with numbered. */
static int set_names(run_state *r, const char *out, const char *lat, int exist) {
    ldm_job *j = r->j;
    char *numbered = NULL;
    int k = 0, rc = 0;
    for (;;) {
        const char *o = numbered ? numbered : out;
        const char *taken = NULL;
        for (int i = 0; i < r->n_img && !rc; i++) {
            free(r->names[i]);
            r->names[i] = ldm_output_name(o, i, r->n_img);
            if (lat) {
                free(r->lat_names[i]);
                r->lat_names[i] = ldm_output_name(lat, i, r->n_img);
            }
            if (check_output(r->names[i]) || (lat && check_output(r->lat_names[i]))) rc = -1;
            else if (lat && !strcmp(r->names[i], r->lat_names[i]))
                rc = ldm_error_kind(LDM_USAGE, "--save-latent names the same file as the image");
            else if (exist && j->refuse_existing && lat && file_exists(r->lat_names[i]))
                rc = exists_error(r->lat_names[i]);
            else if (exist && j->refuse_existing && !taken && file_exists(r->names[i]))
                taken = r->names[i];
        }
        if (rc || !taken) break;
        if (!j->numbered || k > 100000) { rc = exists_error(taken); break; }
        k = k ? k + 1 : ldm_name_highest_number(out) + 1;
        free(numbered);
        numbered = ldm_name_numbered(out, k);
    }
    free(numbered);
    return rc;
}

/* The patterns with every field but {id}; without {id} the names too. */
static int plan_names(run_state *r) {
    ldm_job *j = r->j;
    ldm_name_fields f = j->name_fields;
    f.has_seed = 1;
    f.seed = j->prm.seed;
    f.prompt = j->prm.prompt;
    f.id = 0;
    if (!(r->pattern = ldm_name_expand(j->output, &f))) return -1;
    if (j->latent_output && !(r->lat_pattern = ldm_name_expand(j->latent_output, &f))) return -1;
    r->by_id = ldm_name_uses(j->output, "id") || (j->latent_output && ldm_name_uses(j->latent_output, "id"));
    r->names = ldm_xcalloc((size_t)r->n_img, sizeof *r->names);
    r->lat_names = ldm_xcalloc((size_t)r->n_img, sizeof *r->lat_names);
    if (!r->by_id) return set_names(r, r->pattern, r->lat_pattern, 0);
    if (r->ss->cfg.no_history || !r->ss->cfg.db_path)
        return ldm_error_kind(LDM_USAGE, "-o: {id} is the history id, and the history is not recorded");
    /* the folders now (any id will do), the names once the rows exist */
    ldm_name_fields g;
    ldm_name_fields_init(&g);
    g.id = 1;
    char *o = ldm_name_expand(r->pattern, &g), *l = r->lat_pattern ? ldm_name_expand(r->lat_pattern, &g) : NULL;
    int rc = !o || (r->lat_pattern && !l) || check_output(o) || (l && check_output(l)) ? -1 : 0;
    free(o);
    free(l);
    return rc;
}

/* A name of image i of n from pattern p with its {id}: a name with an id of its own is
 * used as it is, else numbered as a batch. */
static char *name_with_id(const char *p, int64_t id, int i, int n) {
    ldm_name_fields f;
    ldm_name_fields_init(&f);
    f.id = id;
    char *s = ldm_name_expand(p, &f);
    if (!s || ldm_name_uses(p, "id")) return s;
    char *t = ldm_output_name(s, i, n);
    free(s);
    return t;
}

/* -o with {id}: the names from the rows' ids, checked and recorded in the rows. */
static int names_by_id(run_state *r) {
    ldm_job *j = r->j;
    const int grid = j->grid.rows > 0;
    for (int i = 0; i < r->n_img; i++) {
        int64_t id = r->recs[grid ? 0 : i].id;
        if (!id)
            return ldm_error("-o: {id} is the history id, and the history could not be recorded (%s)",
                             r->s.lost_msg[0] ? r->s.lost_msg : "no database");
        free(r->names[i]);
        if (!(r->names[i] = name_with_id(r->pattern, id, i, r->n_img))) return -1;
        if (r->lat_pattern) {
            free(r->lat_names[i]);
            if (!(r->lat_names[i] = name_with_id(r->lat_pattern, id, i, r->n_img))) return -1;
        }
        if (check_output(r->names[i]) || (r->lat_names[i] && check_output(r->lat_names[i]))) return -1;
        if (r->lat_names[i] && !strcmp(r->names[i], r->lat_names[i]))
            return ldm_error_kind(LDM_USAGE, "--save-latent names the same file as the image");
        if (j->refuse_existing && file_exists(r->names[i])) return exists_error(r->names[i]);
        if (j->refuse_existing && r->lat_names[i] && file_exists(r->lat_names[i]))
            return exists_error(r->lat_names[i]);
        char *abs_out = absolute_path(r->names[i]);
        for (int k = 0; k < r->n_rows; k++)
            if (grid || k == i) ldm_record_set(&r->recs[k].output_path, abs_out);
        free(abs_out);
    }
    return 0;
}

ldm_session *ldm_session_open(const ldm_job *j) {
    if (!j->bundle_path) return ldm_error_kind(LDM_USAGE, "no bundle given"), NULL;
    ldm_log(2, "bundle: %s\n", j->bundle_path);
    ldm_bundle *b = ldm_bundle_open(j->bundle_path);
    if (!b) return NULL;
    ldm_session *ss = ldm_xcalloc(1, sizeof *ss);
    ss->hash = ldm_xstrdup(ldm_bundle_hash(b));
    ss->p = ldm_pipeline_new(b);   /* owns b, also on failure */
    if (!ss->p) {
        free(ss->hash);
        free(ss);
        return NULL;
    }
    ss->cfg = *j;
    ss->bundle_path = ldm_xstrdup(j->bundle_path);
    ss->db_path = j->db_path ? ldm_xstrdup(j->db_path) : NULL;
    ss->backend_name = j->backend ? ldm_xstrdup(j->backend) : NULL;
    ss->cfg.bundle_path = ss->bundle_path;
    ss->cfg.db_path = ss->db_path;
    ss->cfg.backend = ss->backend_name;
    ss->abs_bundle = absolute_path(j->bundle_path);
    return ss;
}

ldm_status ldm_session_status(const ldm_session *ss) {
    if (!ss->broken) return LDM_OK;
    ldm_error_kind(ss->broken, "%s", ss->broken_msg);
    return ss->broken;
}

/* The current error ends the session: no later job can run. */
static void session_broken(ldm_session *ss) {
    ss->broken = ldm_last_status() == LDM_OK ? LDM_RUNTIME : ldm_last_status();
    snprintf(ss->broken_msg, sizeof ss->broken_msg, "%s", ldm_last_error());
}

void ldm_session_close(ldm_session *ss) {
    if (!ss) return;
    if (ss->be && ss->cfg.backend_opts.profile && ss->cfg.hooks.profile) {
        ldm_op_stat st[LDM_OP_COUNT];
        int n = ldm_backend_profile(ss->be, st);
        ss->cfg.hooks.profile(ss->cfg.hooks.user, ldm_backend_name(ss->be), st, n);
    }
    ldm_embedder_free(ss->emb);
    ldm_pipeline_close(ss->p);
    ldm_backend_free(ss->be);
    ldm_db_close(ss->store.db);
    free(ss->hash); free(ss->abs_bundle);
    free(ss->bundle_path); free(ss->db_path); free(ss->backend_name);
    free(ss);
}

ldm_status ldm_job_run(ldm_job *j) {
    j->history_lost = 0;
    j->png_sha256[0] = 0;
    j->backend_used[0] = j->isa_used[0] = 0;
    ldm_status rc = check_job(j);
    if (rc) return rc;
    ldm_session *ss = ldm_session_open(j);
    if (!ss) return ldm_last_status();
    rc = ldm_session_run(ss, j);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    ldm_session_close(ss);
    if (rc) ldm_error_kind(rc, "%s", msg);
    return rc;
}

ldm_status ldm_session_run(ldm_session *ss, ldm_job *j) {
    run_state R, *r = &R;
    memset(r, 0, sizeof R);
    r->j = j;
    r->ss = ss;
    j->history_lost = 0;
    j->png_sha256[0] = 0;
    j->skipped = 0;
    j->images_written = 0;
    ldm_gen_params *base = &j->prm;
    const int grid = j->grid.rows > 0;
    ldm_status rc = check_job(j);
    if (rc) return rc;
    if (ss->broken) return ldm_session_status(ss);
    rc = LDM_RUNTIME;
    r->p = ss->p;
    r->hash = ss->hash;
    r->abs_bundle = ss->abs_bundle;

    /* ---- plan: the configs were read once, the parameters of every generation ---- */
    if (j->want_hash && strcmp(j->want_hash, r->hash)) {
        ldm_error_kind(LDM_DATA, "%s has content hash %s, but the image was made with a bundle "
                       "of hash %s; give the right file with --bundle", ss->bundle_path, r->hash,
                       j->want_hash);
        rc = LDM_DATA;
        goto out;
    }
    if (j->init_image && (rc = load_init(r)) != LDM_OK) goto out;
    r->n_cells = grid ? j->grid.rows * j->grid.cols : 1;
    r->cell = ldm_xcalloc((size_t)r->n_cells, sizeof *r->cell);
    ldm_sched_config sc;
    for (int k = 0; k < r->n_cells; k++) {
        r->cell[k] = *base;
        if (grid) {
            r->cell[k].guidance = j->grid.guidance[k / j->grid.cols];
            r->cell[k].steps = j->grid.steps[k % j->grid.cols];
            r->cell[k].batch = 1;
        }
        if (ldm_gen_check(r->p, &r->cell[k], &sc, &r->W, &r->H)) {
            rc = ldm_last_status();
            if (grid) ldm_error_prefix("grid");
            goto out;
        }
    }
    r->sched_name = ldm_sched_name(sc.kind);
    r->B = grid ? 1 : (base->batch > 0 ? base->batch : 1);
    if (j->only_index >= r->B) {
        ldm_error_kind(LDM_DATA, "image %d of a batch of %d does not exist", j->only_index, r->B);
        rc = LDM_DATA;
        goto out;
    }
    r->n_img = (grid || j->only_index >= 0) ? 1 : r->B;
    if (!j->have_seed) {
        base->seed = random_seed();
        ldm_log(1, "seed: %llu\n", (unsigned long long)base->seed);
    }
    j->seed_used = base->seed;
    for (int k = 0; k < r->n_cells; k++) r->cell[k].seed = base->seed;
    if (plan_names(r)) {
        rc = ldm_last_status();
        goto out;
    }
    r->model_name = j->model_name ? ldm_xstrdup(j->model_name) : path_stem(ss->bundle_path);
    if (!ss->be) {
        if (!(ss->be = open_backend(&ss->cfg))) {
            session_broken(ss);
            rc = ldm_last_status();
            goto out;
        }
        ldm_log(2, "backend: %s (%s, %s)\n", ldm_backend_name(ss->be),
                ldm_backend_precision_name(ss->be), ldm_backend_isa_name(ss->be));
        if (ss->cfg.backend_opts.precision == LDM_PRECISION_BF16 &&
            strcmp(ldm_backend_precision_name(ss->be), "bf16"))
            ldm_warn("bf16 asked for, but the %s backend here has no bf16 products "
                       "(AMX or AVX512_BF16): running fp32\n", ldm_backend_name(ss->be));
    }
    r->be = ss->be;

    /* ---- the rows it will write; a job the caller finds done is skipped ---- */
    r->n_rows = grid ? r->n_cells : r->n_img;
    r->recs = ldm_xcalloc((size_t)r->n_rows, sizeof *r->recs);
    for (int k = 0; k < r->n_rows; k++) {
        int idx = grid ? 0 : (j->only_index >= 0 ? j->only_index : k);
        ldm_gen_record *rec = &r->recs[k];
        make_record(r, &r->cell[grid ? k : 0], idx, r->B, rec);
        char *abs_out = absolute_path(r->by_id ? r->pattern : r->names[grid ? 0 : k]);
        ldm_record_set(&rec->output_path, abs_out);
        free(abs_out);
    }
    if (j->skip && j->skip(j->skip_user, j, r->recs, r->n_rows)) {
        j->skipped = 1;
        rc = LDM_OK;
        goto out;
    }
    /* files in the way: refused, or the default name numbered around them */
    if (j->refuse_existing && !r->by_id) {
        if (set_names(r, r->pattern, r->lat_pattern, 1)) {
            rc = ldm_last_status();
            goto out;
        }
        for (int k = 0; k < r->n_rows; k++) {
            char *abs_out = absolute_path(r->names[grid ? 0 : k]);
            ldm_record_set(&r->recs[k].output_path, abs_out);
            free(abs_out);
        }
    }

    /* ---- history rows, 'running' before any heavy work ---- */
    if (!ss->db_opened) {
        session_open(&ss->store, &ss->cfg);
        ss->db_opened = 1;
    }
    r->s = ss->store;
    r->s.lost = &j->history_lost;
    r->s.lost_msg[0] = 0;
    if (r->s.record && !r->s.db) {   /* the database could not be opened (warned once) */
        j->history_lost = 1;
        snprintf(r->s.lost_msg, sizeof r->s.lost_msg, "%s", ss->store.lost_msg);
    }
    int64_t grid_id = 0;
    if (grid && r->s.record && r->s.db) {
        char *spec = grid_spec_text(&j->grid), *abs_out = absolute_path(r->by_id ? r->pattern : r->names[0]);
        grid_id = ldm_db_new_grid(r->s.db, spec, abs_out);
        free(abs_out);
        free(spec);
        if (grid_id < 0) { history_lost(&r->s, ldm_last_error()); grid_id = 0; }
    }
    for (int k = 0; k < r->n_rows; k++) {
        r->recs[k].grid_id = grid_id;
        rec_begin(&r->s, &r->recs[k]);
    }
    if (r->by_id && names_by_id(r)) {
        rc = fail_rows(r, 0);
        goto out;
    }
    if (grid_id && r->by_id) {
        char *abs_out = absolute_path(r->names[0]);
        if (ldm_db_set_grid_output(r->s.db, grid_id, abs_out)) history_lost(&r->s, ldm_last_error());
        free(abs_out);
    }

    /* ---- models, once per session ---- */
    if (!ss->loaded) {
        double t_load = now_s();
        if (ldm_pipeline_load(ss->p, ss->be)) {
            session_broken(ss);
            rc = fail_rows(r, 0);
            goto out;
        }
        ss->loaded = 1;
        ldm_log(2, "models loaded in %.2f s\n", now_s() - t_load);
        ss->emb = ldm_embedder_new(ss->store.cache ? ss->store.db : NULL, ss->hash, ldm_backend_name(ss->be),
                                   ldm_backend_precision_name(ss->be), ss->cfg.cache_max_mb > 0 ? (size_t)(ss->cfg.cache_max_mb * 1048576.0) : 0);
    }
    r->emb = ss->emb;
    rc = grid ? run_grid(r) : run_batch(r);
    if (rc == LDM_OK && r->s.record && j->history_lost && r->s.require) {
        ldm_error("%s", r->s.lost_msg);
        rc = LDM_RUNTIME;
    }
out:
    for (int i = 0; i < r->n_img; i++) {
        if (r->names) free(r->names[i]);
        if (r->lat_names) free(r->lat_names[i]);
    }
    for (int k = 0; k < r->n_rows; k++) ldm_record_free(&r->recs[k]);
    free(r->names); free(r->lat_names);
    free(r->recs); free(r->cell);
    free(r->model_name);
    free(r->pattern); free(r->lat_pattern);
    free(r->init); free(r->init_abs); free(r->mask); free(r->mask_abs);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* the replay job */

/* Whether version "MAJOR.MINOR[.PATCH]" is before major.minor (unparsable: no). */
static int version_before(const char *v, int major, int minor) {
    int a, b;
    if (!v || sscanf(v, "%d.%d", &a, &b) != 2) return 0;
    return a < major || (a == major && b < minor);
}

ldm_status ldm_job_from_record(const ldm_gen_record *m, ldm_job *j) {
    j->prm.prompt = m->prompt;
    j->prm.negative = m->negative_prompt;
    j->prm.steps = m->steps;
    j->prm.guidance = m->guidance;
    j->prm.seed = m->seed - (uint64_t)m->batch_index;
    j->have_seed = 1;
    j->prm.batch = m->batch_size;
    j->prm.width = m->width;
    j->prm.height = m->height;
    j->prm.clip_skip = m->clip_skip;
    /* an image made before the syntax was recorded was made with the plain one */
    const char *syn = m->prompt_syntax && m->prompt_syntax[0] ? m->prompt_syntax : "plain";
    if ((j->prm.prompt_syntax = ldm_prompt_syntax_from_name(syn)) < 0) {
        char *s = ldm_escape_controls(syn);
        ldm_error_kind(LDM_DATA, "unknown prompt syntax \"%.60s\"", s);
        free(s);
        return LDM_DATA;
    }
    j->prm.karras = m->karras;
    j->prm.eta = m->eta;
    if ((j->prm.scheduler = ldm_sched_kind_from_name(m->scheduler ? m->scheduler : "")) < 0) {
        char *s = ldm_escape_controls(m->scheduler ? m->scheduler : "");
        ldm_error_kind(LDM_DATA, "unknown scheduler \"%.60s\"", s);
        free(s);
        return LDM_DATA;
    }
    j->prm.spacing = -1;
    if (m->timestep_spacing && (j->prm.spacing = ldm_spacing_from_name(m->timestep_spacing)) < 0) {
        char *s = ldm_escape_controls(m->timestep_spacing);
        ldm_error_kind(LDM_DATA, "unknown timestep spacing \"%.60s\"", s);
        free(s);
        return LDM_DATA;
    }
    j->prm.final_sigmas = -1;
    if (m->final_sigmas && (j->prm.final_sigmas = ldm_final_sigmas_from_name(m->final_sigmas)) < 0) {
        char *s = ldm_escape_controls(m->final_sigmas);
        ldm_error_kind(LDM_DATA, "unknown final sigmas \"%.60s\"", s);
        free(s);
        return LDM_DATA;
    }
    /* ldm 0.1 ran DPM++ as diffusers 0.25 did (no final_sigmas_type); its images replay so */
    if (!m->final_sigmas && m->scheduler && !strcmp(m->scheduler, "dpmpp_2m") &&
        version_before(m->ldm_version, 0, 2))
        j->prm.final_sigmas = LDM_FINAL_V025;
    if (m->grid.rows > 0) {
        j->grid = m->grid;
        j->prm.batch = 1;
        j->only_index = -1;
    } else {
        j->only_index = m->batch_index;
    }
    /* an image made before the precision was recorded was made in fp32 */
    const char *prec = m->precision && m->precision[0] ? m->precision : "fp32";
    if (!strcmp(prec, "fp32")) j->backend_opts.precision = LDM_PRECISION_FP32;
    else if (!strcmp(prec, "bf16")) j->backend_opts.precision = LDM_PRECISION_BF16;
    else {
        char *s = ldm_escape_controls(prec);
        ldm_error_kind(LDM_DATA, "unknown precision \"%.60s\" (expected fp32 or bf16)", s);
        free(s);
        return LDM_DATA;
    }
    j->want_hash = m->bundle_hash;
    j->model_name = m->model_name && m->model_name[0] ? m->model_name : NULL;
    if (m->init_image_sha256) {   /* the caller finds the picture (ldm_image_copy_path) */
        j->prm.strength = m->strength;
        j->init_image_sha256 = m->init_image_sha256;
        j->init_image = m->init_image;   /* a history row's path; the caller may override */
    }
    if (m->mask_sha256) {
        if (!m->init_image_sha256) {
            ldm_error_kind(LDM_DATA, "the record has a mask (mask_sha256) but no init image");
            return LDM_DATA;
        }
        j->mask_sha256 = m->mask_sha256;
        j->mask_image = m->mask_image;
    }
    return LDM_OK;
}
