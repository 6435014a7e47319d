/* prompts.c - `ldmgen --prompts FILE`: which shard this process is (--shard, or the
 * environment of the engine that started it: a Slurm job array, a Kubernetes Indexed
 * Job), the per-shard database name, the run (app/batch.c) and its summary. */
#include "cli/prompts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/batch.h"
#include "cli/cli.h"
#include "core/common.h"

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int usage(const char *msg) {
    return cli_exit("ldmgen", LDM_USAGE, msg);
}

/* The shard: --shard, else Slurm, else Kubernetes, else the whole file.  `how` says
 * where it came from.  -1 with a usage message. */
static int find_shard(const cli_prompts_opts *o, ldm_shard *s, char *how, size_t cap) {
    const char *slurm = env("SLURM_ARRAY_TASK_ID"), *k8s = env("JOB_COMPLETION_INDEX");
    s->k = 0;
    s->n = 1;
    if (o->shard) {
        if (ldm_shard_parse(o->shard, s)) return -1;
        if (o->shard_count && o->shard_count != s->n)
            return ldm_error_kind(LDM_USAGE, "--shard %s and --shard-count %ld disagree", o->shard, o->shard_count);
        snprintf(how, cap, "from --shard");
        return 0;
    }
    if (slurm) {
        const char *mn = env("SLURM_ARRAY_TASK_MIN"), *step = env("SLURM_ARRAY_TASK_STEP"),
                   *count = env("SLURM_ARRAY_TASK_COUNT");
        if (ldm_shard_from_slurm(slurm, mn, step, count, s)) return -1;
        if (o->shard_count && o->shard_count != s->n)
            return ldm_error_kind(LDM_USAGE, "--shard-count %ld disagrees with SLURM_ARRAY_TASK_COUNT=%s",
                                  o->shard_count, count);
        snprintf(how, cap, "from a Slurm job array: SLURM_ARRAY_TASK_ID=%s, SLURM_ARRAY_TASK_MIN=%s, "
                 "SLURM_ARRAY_TASK_STEP=%s, SLURM_ARRAY_TASK_COUNT=%s", slurm, mn ? mn : "(unset: 0)",
                 step ? step : "(unset: 1)", count);
        return 0;
    }
    if (k8s) {
        long count = o->shard_count;
        const char *from = "--shard-count";
        const char *ce = env("LDM_SHARD_COUNT");
        if (!count && ce) {
            char *end;
            errno = 0;
            count = strtol(ce, &end, 10);
            if (*end || errno || count < 1)
                return ldm_error_kind(LDM_USAGE, "LDM_SHARD_COUNT=\"%s\": expected a whole number >= 1", ce);
            from = "LDM_SHARD_COUNT";
        }
        if (!count)
            return ldm_error_kind(LDM_USAGE, "JOB_COMPLETION_INDEX=%s (a Kubernetes Indexed Job) needs the "
                                  "number of shards: give --shard-count N or set LDM_SHARD_COUNT to the "
                                  "Job's completions", k8s);
        if (ldm_shard_from_index(k8s, "JOB_COMPLETION_INDEX", count, s)) return -1;
        snprintf(how, cap, "from a Kubernetes Indexed Job: JOB_COMPLETION_INDEX=%s, count %ld from %s",
                 k8s, count, from);
        return 0;
    }
    if (o->shard_count)
        return ldm_error_kind(LDM_USAGE, "--shard-count %ld: no JOB_COMPLETION_INDEX in the environment "
                              "(a Kubernetes Indexed Job sets it); elsewhere give --shard K/N",
                              o->shard_count);
    snprintf(how, cap, "the whole file: no --shard, and no Slurm array task (SLURM_ARRAY_TASK_ID) or "
             "Kubernetes completion index (JOB_COMPLETION_INDEX) in the environment");
    return 0;
}

/* path with every "{shard}" replaced by k.  malloc'd. */
static char *with_shard(const char *path, int k) {
    size_t n = strlen(path) + 1, cnt = 0;
    for (const char *p = strstr(path, "{shard}"); p; p = strstr(p + 7, "{shard}")) cnt++;
    char *o = ldm_xmalloc(n + cnt * 16), *w = o;
    for (const char *p = path; *p;) {
        if (!strncmp(p, "{shard}", 7)) {
            w += sprintf(w, "%d", k);
            p += 7;
        } else {
            *w++ = *p++;
        }
    }
    *w = 0;
    return o;
}

static void on_failed(void *user, const char *file, int line, int index, const char *msg) {
    (void)user;
    (void)index;
    char *m = ldm_escape_controls(msg);
    fprintf(stderr, "ldmgen: %s:%d: %s\n", file, line, m);
    free(m);
}

int cli_prompts(ldm_job *base, const cli_prompts_opts *o) {
    ldm_batch b;
    ldm_batch_init(&b);
    char how[512];
    if (find_shard(o, &b.shard, how, sizeof how)) return usage(ldm_last_error());
    if (cli_verbosity > 0) fprintf(stderr, "ldmgen: shard %d/%d (%s)\n", b.shard.k, b.shard.n, how);
    char *db = NULL;
    if (base->db_path) {
        int has = strstr(base->db_path, "{shard}") != NULL;
        db = with_shard(base->db_path, b.shard.k);
        if (b.shard.n > 1 && !has && !base->no_history)
            ldm_warn("the %d shards all record their history in %s; where they run on several machines "
                     "give each its own with --db ...{shard}.db (SQLite must not be shared over a "
                     "network file system), then merge them with ldmgen history merge", b.shard.n, db);
        if (b.shard.n > 1 && has && base->output && ldm_name_uses(base->output, "id") &&
            !ldm_name_uses(base->output, "shard")) {
            free(db);
            return usage("-o uses {id}, which each shard's database counts on its own: put {shard} in -o too");
        }
        base->db_path = db;
    }
    b.base = *base;
    b.prompts = o->file;
    b.force = o->force;
    b.fail_fast = o->fail_fast;
    b.hooks.failed = on_failed;
    ldm_status st = ldm_batch_run(&b);
    cli_job_done(&b.base);
    char msg[1200];
    snprintf(msg, sizeof msg, "%s", ldm_last_error());
    if (b.entries && cli_verbosity > 0 && st != LDM_USAGE) {
        double per_min = b.seconds > 0 ? b.images * 60.0 / b.seconds : 0;
        fprintf(stderr, "ldmgen: %s, shard %d/%d: %d done, %d skipped, %d failed", o->file, b.shard.k,
                b.shard.n, b.done, b.skipped, b.failed);
        if (b.not_run) fprintf(stderr, ", %d not run", b.not_run);
        fprintf(stderr, " of %d prompts; %d image%s in %.1f s (%.1f images/min)\n", b.mine, b.images,
                b.images == 1 ? "" : "s", b.seconds, per_min);
    }
    free(db);
    return cli_exit("ldmgen", st, msg);
}
