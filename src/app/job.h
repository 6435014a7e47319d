/* job.h - one ldmgen job from bundle to PNG files: planning, history rows, embeddings
 * through the cache, generation, PNG metadata, the guidance-by-steps grid, the latent
 * pictures, and the replay job made from a record.
 *
 *   plan ----> bundle opened, configs read once (ldm_pipeline_new), every generation's
 *              parameters checked (usage errors before any work), output names checked
 *   begin ---> 'running' rows in the history (one per image or grid cell)
 *   load ----> the models on the backend (ldm_pipeline_load)
 *   generate-> prompt and negative prompt embedded through the cache (app/embed.h) and
 *              passed down; images; PNG with "parameters" and "ldm" chunks; atomic write
 *   finish --> rows ok / failed (with the message) / interrupted; new embeddings stored
 *              in the cache only after their generation succeeded
 *
 * Many jobs on one bundle (ldmgen --prompts) run in one session (ldm_session_open,
 * ldm_session_run for each, ldm_session_close): the bundle, its configs, the backend,
 * the models, the database and the embedding cache are opened once; ldm_job_run is a
 * session of one job.
 *
 * Output names: `output` and `latent_output` are patterns (app/outname.h): {seed},
 * {prompt} and {id} are filled in by the job, the other fields come from name_fields.
 * With refuse_existing an existing file is never replaced (ldmgen without --overwrite);
 * with numbered too, a taken name becomes NAME-N.png instead (the default names).
 *
 * The job never prints: files written, progress and per-op profiles go to the hooks,
 * messages to the log handler (core/common.h), and the outcome is the returned status
 * with ldm_last_error().  The history is best effort: when the database cannot be
 * opened or written the images are still made, with one warning (j->history_lost; with
 * require_history the job then returns LDM_RUNTIME after writing the images).
 */
#ifndef LDM_JOB_H
#define LDM_JOB_H

#include <stdint.h>

#include "app/outname.h"
#include "app/record.h"
#include "backend/ops.h"
#include "core/common.h"
#include "pipeline/pipeline.h"

typedef struct ldm_job_hooks {
    void *user;
    /* a file was written (image, latent picture, grid), in order */
    void (*written)(void *user, const char *path);
    /* after each denoising step of a generation: label ("" or "cell 2/6 "), step
     * 1..total, seconds since the generation's first step began */
    void (*progress)(void *user, const char *label, int step, int total, double elapsed);
    /* per-op totals of the backend, once at the end when backend_opts.profile is set */
    void (*profile)(void *user, const char *backend, const ldm_op_stat *st, int n);
} ldm_job_hooks;

typedef struct ldm_job {
    ldm_gen_params prm;         /* prompt, seed, steps, ... */
    int have_seed;              /* 0: choose a random seed (logged as "seed: N") */
    const char *bundle_path;
    const char *output;         /* PNG path; with batch N > 1: stem-0001.png ... */
    const char *latent_output;  /* --save-latent, or NULL */
    /* image to image: the picture (PNG or JPEG), prm.strength; its size is the picture's
     * unless prm.width/height are set (then resized as diffusers does) */
    const char *init_image;
    const char *init_image_sha256; /* replay: the pixels must have this hash */
    /* inpainting, with init_image: the mask picture (white = repaint, black = keep; resized
     * to the generation's size and binarised as diffusers does); prm.strength should be
     * 1.0, diffusers' default for inpainting */
    const char *mask_image;
    const char *mask_sha256;    /* replay: the mask's pixels must have this hash */
    int no_image_copy;          /* do not keep a copy under images/ beside the database */
    ldm_grid_spec grid;         /* rows = 0: not a grid */
    /* database */
    const char *db_path;        /* NULL: no database (no history, no cache) */
    int no_history, require_history, no_cache;
    double cache_max_mb;        /* embedding cache cap */
    const volatile int *interrupt; /* SIGINT/SIGTERM flag, may be NULL */
    /* backend */
    const char *backend;        /* "cpu", "cuda", or NULL: CUDA when usable, else CPU */
    ldm_backend_opts backend_opts;
    /* replay */
    const char *want_hash;      /* refuse a bundle with another content hash */
    const char *model_name;     /* the A1111 "Model:" name; NULL: the bundle file's stem */
    int only_index;             /* >= 0: write only this image of the batch, to `output` */
    int64_t replay_of;          /* history id replayed, 0 = none */
    ldm_job_hooks hooks;
    /* output names */
    int refuse_existing;        /* an existing output is an error (0: it is replaced) */
    int numbered;               /* with refuse_existing: a taken name becomes NAME-N.png, N
                                   one more than the highest in use (AUTOMATIC1111's way) */
    ldm_name_fields name_fields;/* {index}, {line}, {shard} of the patterns (ldm_job_init:
                                   none); {seed}, {prompt}, {id} are the job's own */
    /* prompt files: where the job came from (history columns prompt_file, prompt_line) */
    const char *prompt_file;    /* absolute path, or NULL */
    int64_t prompt_line;        /* 1-based, 0 = none */
    /* after planning, before any row or file: a non-zero return skips the job (LDM_OK,
     * `skipped` set).  recs are the rows it would write (every parameter, the output
     * paths where they are known before the rows exist, i.e. without {id}). */
    int (*skip)(void *user, const struct ldm_job *j, const ldm_gen_record *recs, int n);
    void *skip_user;
    /* results */
    char png_sha256[65];        /* SHA-256 of the (last) PNG written */
    char backend_used[16];      /* the backend that ran: "cpu" or "cuda" ("" before any) */
    char isa_used[256];         /* and its instruction set or GPU (the record's isa) */
    uint64_t seed_used;
    int history_lost;           /* some history was not recorded */
    int skipped;                /* the skip hook said so: nothing was done */
    int images_written;         /* PNGs written (a grid is one) */
} ldm_job;

/* Defaults: ldm_gen_params_default, out.png, cache cap 256 MiB, only_index -1. */
void ldm_job_init(ldm_job *j);
/* Run the job.  LDM_OK; LDM_USAGE for bad parameters (nothing done); LDM_DATA for a bad
 * bundle; LDM_RUNTIME when a generation or a write failed (or history was lost with
 * require_history); LDM_INTERRUPTED.  The message is in ldm_last_error(). */
ldm_status ldm_job_run(ldm_job *j);

/* ---- sessions: many jobs, one bundle ---- */
typedef struct ldm_session ldm_session;
/* Open j's bundle and read its configs (no weights).  The session's settings are taken
 * from j (copied): bundle_path, db_path, no_history, require_history, no_cache,
 * cache_max_mb, backend, backend_opts and hooks.profile; the backend, the database and
 * the models are opened by the first job that needs them.  NULL with the error. */
ldm_session *ldm_session_open(const ldm_job *j);
/* Run j in the session (j's session settings are not used).  As ldm_job_run. */
ldm_status ldm_session_run(ldm_session *s, ldm_job *j);
/* LDM_OK, or the failure after which no job can run in the session (the backend or
 * the models could not be loaded), with its message set as the current error. */
ldm_status ldm_session_status(const ldm_session *s);
/* The per-op profile hook (with backend_opts.profile), then everything is freed. */
void ldm_session_close(ldm_session *s);

/* The job that regenerates record r (a PNG's "ldm" chunk or a history row): its
 * parameters, the batch/grid it belonged to and the bundle hash it needs.  The job
 * points into r, which must outlive it.  Outputs, database and hooks are left to the
 * caller.  LDM_OK or LDM_DATA (a field that names no scheduler, ...). */
ldm_status ldm_job_from_record(const ldm_gen_record *r, ldm_job *j);

/* Where the copy of an init image with pixel hash `sha` is kept for the database at
 * db_path: <folder of the database>/images/<sha>.png.  malloc'd. */
char *ldm_image_copy_path(const char *db_path, const char *sha);

/* Output name of image i of n: n == 1 -> out; else "<out without .png>-%04d.png".
 * malloc'd. */
char *ldm_output_name(const char *out, int i, int n);

#endif
