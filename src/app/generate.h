/* generate.h - what ldmgen does around the pipeline: one generation job from bundle to
 * PNG files, with the history rows, the prompt-embedding cache, the PNG metadata, the
 * guidance-by-steps grid, the latent pictures, and `ldmgen replay`.
 *
 *   job --check--> bundle + parameters (usage errors before any work)
 *       --begin--> 'running' rows in the history (one per image or grid cell)
 *       --load---> pipeline;  text encoding through the cache (bundle hash, ids, clip skip)
 *       --generate, encode PNG (parameters + ldm chunks), SHA-256, atomic write-->
 *       --finish-> rows ok / failed (with the message) / interrupted
 *
 * The history is best effort: when the database cannot be opened or written the images
 * are still made and written, with one warning line (an error with --require-history).
 *
 * Every PNG carries two text chunks: "parameters" (AUTOMATIC1111's format, see
 * ldm_a1111_parameters) and "ldm" (ldm_meta as one JSON object: everything replay needs,
 * and nothing that depends on the output file name, so a replay gives the same bytes).
 */
#ifndef LDM_GENERATE_H
#define LDM_GENERATE_H

#include <stdint.h>

#include "pipeline/pipeline.h"

#define LDM_GRID_MAX 16   /* values per grid axis */

/* The machine-readable "ldm" PNG chunk, and a history record seen the same way. */
typedef struct ldm_meta {
    char *ldm_version;
    char *prompt, *negative;
    uint64_t seed;            /* this image's seed (first seed of its batch + batch_index) */
    int steps;
    double guidance;
    char *scheduler;          /* ldm_sched_name: the effective scheduler */
    int karras;
    double eta;
    char *timestep_spacing;   /* NULL: the bundle's configuration */
    int width, height, clip_skip;
    int batch_size, batch_index;
    char *bundle_hash, *bundle_path;
    /* a grid image: guidance per row, steps per column (grid_rows = 0: not a grid) */
    int grid_rows, grid_cols;
    double grid_guidance[LDM_GRID_MAX];
    int grid_steps[LDM_GRID_MAX];
} ldm_meta;

/* JSON text of m, one line, ASCII only (so always a tEXt chunk).  malloc'd. */
char *ldm_meta_json(const ldm_meta *m);
/* Parse an "ldm" chunk; `where` names it in errors.  0, or -1 with ldm_error naming the
 * field.  Free with ldm_meta_free. */
int ldm_meta_parse(const char *json, const char *where, ldm_meta *m);
void ldm_meta_free(ldm_meta *m);

typedef struct ldm_job {
    ldm_gen_params prm;         /* prompt, seed, steps, ... (hooks are set by ldm_job_run) */
    int have_seed;              /* 0: choose a random seed and print it */
    const char *bundle_path;    /* resolved bundle path */
    const char *output;         /* PNG path; with batch N > 1: stem-0001.png ... */
    const char *latent_output;  /* --save-latent, or NULL */
    /* grid: guidance along rows, steps along columns (rows = 0: not a grid) */
    int grid_rows, grid_cols;
    double grid_guidance[LDM_GRID_MAX];
    int grid_steps[LDM_GRID_MAX];
    /* database */
    const char *db_path;        /* NULL: ldm_db_default_path */
    int no_history, require_history, no_cache;
    double cache_max_mb;        /* embedding cache cap */
    const volatile int *interrupt; /* SIGINT/SIGTERM flag, may be NULL */
    int progress_bar;           /* draw a progress bar on stderr */
    /* replay */
    const char *want_hash;      /* refuse a bundle with another content hash */
    const char *meta_bundle_path; /* bundle path for the metadata (the original's) */
    int only_index;             /* >= 0: write only this image of the batch, to `output` */
    int64_t replay_of;          /* history id replayed, 0 = none */
    /* results */
    char png_sha256[65];        /* SHA-256 of the (last) PNG written */
} ldm_job;

/* Defaults: ldm_gen_params_default, out.png, cache cap 256 MiB, only_index -1. */
void ldm_job_init(ldm_job *j);
/* Run the job, printing progress and one line per error on stderr and the files written
 * on stdout.  Returns the exit status: 0, 1 runtime error (or history lost with
 * --require-history), 2 usage error, 130 interrupted. */
int ldm_job_run(ldm_job *j);

/* `ldmgen replay ID|IMAGE.png [options]`: argv[0] is "replay".  Exit status 0 when the
 * new PNG is byte-identical to the recorded one, 1 when it differs or on error, 2 on a
 * usage error, 130 interrupted. */
int ldm_cmd_replay(int argc, char **argv, const volatile int *interrupt);

/* Output name of image i of n: n == 1 -> out; else "<out without .png>-%04d.png".
 * malloc'd. */
char *ldm_output_name(const char *out, int i, int n);

#endif
