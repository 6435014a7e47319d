/* batch.h - many generations from a prompt file (ldmgen --prompts): the file, the
 * shard of it this process runs, restarts that skip what is done, and the run.
 *
 * A prompt file is plain text (one prompt a line) or JSON lines (one object a line with
 * "prompt" and any generation option); in both, blank lines and lines starting with #
 * are skipped.  The other lines are the file's entries, numbered from 0 in file order:
 * the index.  Entry i gets the seed base_seed + i unless it gives its own, so the same
 * file makes the same images however it is split.  A shard K/N runs the entries whose
 * index is K mod N.  A malformed line is an entry that fails (its index is kept, so
 * fixing it moves nothing).
 *
 * Nothing here reads the environment: the program finds the shard (--shard, Slurm,
 * Kubernetes) and passes the values in.
 */
#ifndef LDM_BATCH_H
#define LDM_BATCH_H

#include <stdint.h>

#include "app/job.h"
#include "core/common.h"
#include "pipeline/pipeline.h"

/* ---- shards ---- */
typedef struct ldm_shard {
    int k, n;                 /* this process runs the entries with index % n == k */
} ldm_shard;

/* "K/N" with 0 <= K < N (decimal, N >= 1).  0, or -1 with an LDM_USAGE error. */
int ldm_shard_parse(const char *text, ldm_shard *s);
/* A Slurm job array task: rank (task_id - task_min) / task_step of task_count (the
 * values of SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT; min NULL = 0, step NULL = 1).
 * Errors (LDM_USAGE) name the variable: not a number, an id that is not on the range. */
int ldm_shard_from_slurm(const char *task_id, const char *task_min, const char *task_step,
                         const char *task_count, ldm_shard *s);
/* An index of count (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX; `what` names the
 * variable in errors). */
int ldm_shard_from_index(const char *index, const char *what, long count, ldm_shard *s);

/* ---- the prompt file ---- */
enum {   /* the options an entry sets (ldm_prompt_entry.set) */
    LDM_PE_NEGATIVE = 1 << 0, LDM_PE_SEED = 1 << 1, LDM_PE_STEPS = 1 << 2,
    LDM_PE_GUIDANCE = 1 << 3, LDM_PE_SCHEDULER = 1 << 4, LDM_PE_KARRAS = 1 << 5,
    LDM_PE_ETA = 1 << 6, LDM_PE_SPACING = 1 << 7, LDM_PE_WIDTH = 1 << 8,
    LDM_PE_HEIGHT = 1 << 9, LDM_PE_CLIP_SKIP = 1 << 10, LDM_PE_BATCH = 1 << 11,
    LDM_PE_SYNTAX = 1 << 12,
};

typedef struct ldm_prompt_entry {
    int index;                /* from 0, among the entries */
    int line;                 /* from 1, in the file */
    char *error;              /* a malformed line: why (without file and line), else NULL */
    char *prompt, *negative;  /* owned; negative NULL when not given */
    ldm_gen_params prm;       /* the options the line gives (see set); prompt/negative above */
    unsigned set;             /* LDM_PE_* */
    char *output;             /* "output": this line's -o pattern, or NULL */
} ldm_prompt_entry;

typedef struct ldm_prompt_file {
    char *path;               /* as given */
    char *abs_path;           /* absolute (recorded in the history as prompt_file) */
    int jsonl;                /* JSON lines, else plain text */
    uint64_t content_seed;    /* from the file's SHA-256: the base seed without --seed */
    int n;
    ldm_prompt_entry *e;      /* [n] */
} ldm_prompt_file;

/* Read and parse a prompt file: JSON lines when its name ends in .jsonl or .ndjson, plain
 * text when it ends in .txt, else JSON lines when its first entry starts with '{'.
 * LDM_OK (malformed lines are entries with an error), or LDM_RUNTIME when the file
 * cannot be read, LDM_DATA when it has no entries. */
ldm_status ldm_prompt_file_read(const char *path, ldm_prompt_file *pf);
void ldm_prompt_file_free(ldm_prompt_file *pf);
/* The generation parameters of entry e: base with e's options over it, the seed e's or
 * base_seed + index.  Strings point into e and base. */
ldm_gen_params ldm_prompt_entry_params(const ldm_prompt_entry *e, const ldm_gen_params *base,
                                       uint64_t base_seed);

/* ---- the run ---- */
typedef struct ldm_batch_hooks {
    void *user;
    /* an entry failed: file as given, its line, index and the message */
    void (*failed)(void *user, const char *file, int line, int index, const char *msg);
} ldm_batch_hooks;

typedef struct ldm_batch {
    ldm_job base;             /* every option of the command line: the defaults of each entry;
                                 base.output is the -o pattern (NULL: {index:05}-{seed}.png),
                                 base.have_seed says whether base.prm.seed is the base seed */
    const char *prompts;      /* the prompt file */
    ldm_shard shard;          /* {0, 1}: every entry */
    int force;                /* redo every entry, replacing its files */
    int fail_fast;            /* stop at the first failed entry */
    ldm_batch_hooks hooks;
    /* results */
    int entries;              /* in the file */
    int mine;                 /* of them in this shard */
    int done, skipped, failed, not_run;
    int images;               /* PNGs written */
    double seconds;           /* wall time of the run */
    uint64_t base_seed;
} ldm_batch;

/* Defaults: ldm_job_init's, shard 0/1. */
void ldm_batch_init(ldm_batch *b);
/* Run this shard's entries in order in one session (the bundle is loaded once).  An
 * entry is skipped, unless force, when it is done: for each of its images the history
 * has an ok row of this prompt file and line whose file still exists with the recorded
 * SHA-256 and carries the "ldm" chunk this run would write (the same parameters, bundle
 * and ldm version); without {id} in -o that file must also be the one -o names.
 * Returns LDM_OK when no entry failed; LDM_RUNTIME when some did ("N of M entries
 * failed"); LDM_USAGE for a bad -o pattern or two entries naming the same file (nothing
 * done); the bundle's error; LDM_INTERRUPTED. */
ldm_status ldm_batch_run(ldm_batch *b);

#endif
