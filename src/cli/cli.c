/* cli.c - message handler, exit codes and environment paths for ldmgen and ldmpack. */
#include "cli/cli.h"

#include <errno.h>
#include <sched.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef LDM_DATADIR
#define LDM_DATADIR "/usr/local/share/ldm"
#endif
#define DEFAULT_BUNDLE_NAME "default.ldmb"

int cli_verbosity = 1;
static const char *prog_name = "ldm";

static void on_message(void *user, int level, int warning, const char *msg) {
    (void)user;
    if (warning) {
        fprintf(stderr, "%s: warning: %s\n", prog_name, msg);
        return;
    }
    if (level <= cli_verbosity) fputs(msg, stderr);
}

void cli_init(const char *prog) {
    prog_name = prog;
    ldm_set_log_handler(on_message, NULL);
}

int cli_exit(const char *prog, ldm_status st, const char *msg) {
    switch (st) {
    case LDM_OK: return 0;
    case LDM_USAGE: fprintf(stderr, "%s: %s (try %s --help)\n", prog, msg, prog); return 2;
    case LDM_INTERRUPTED: fprintf(stderr, "%s: %s\n", prog, msg); return 130;
    default: fprintf(stderr, "%s: %s\n", prog, msg); return 1;
    }
}

int cli_db_path(const char *opt, char *buf, size_t n) {
    const char *env = getenv("LDM_DB"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    if (opt && *opt) snprintf(buf, n, "%s", opt);
    else if (env && *env) snprintf(buf, n, "%s", env);
    else if (xdg && *xdg) snprintf(buf, n, "%s/ldm/ldm.db", xdg);
    else if (home && *home) snprintf(buf, n, "%s/.local/share/ldm/ldm.db", home);
    else return ldm_error("no database path: set LDM_DB, XDG_DATA_HOME or HOME, or pass --db");
    return 0;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int cli_bundle_path(const char *opt, char *buf, size_t n) {
    if (opt) { snprintf(buf, n, "%s", opt); return 0; }
    const char *env = getenv("LDM_BUNDLE");
    if (env && *env) { snprintf(buf, n, "%s", env); return 0; }
    char exe[PATH_MAX], exedir[PATH_MAX] = "";
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) { *slash = 0; snprintf(exedir, sizeof exedir, "%s", exe); }
    }
    char places[4][PATH_MAX + 64];
    int np = 0;
    if (exedir[0]) snprintf(places[np++], sizeof places[0], "%s/../share/ldm/" DEFAULT_BUNDLE_NAME, exedir);
    snprintf(places[np++], sizeof places[0], "%s", LDM_DATADIR "/" DEFAULT_BUNDLE_NAME);
    snprintf(places[np++], sizeof places[0], "%s", "bundle/" DEFAULT_BUNDLE_NAME);
    if (exedir[0]) snprintf(places[np++], sizeof places[0], "%s/../bundle/" DEFAULT_BUNDLE_NAME, exedir);
    for (int i = 0; i < np; i++)
        if (is_file(places[i])) { snprintf(buf, n, "%s", places[i]); return 0; }
    char list[4 * (PATH_MAX + 64) + 16] = "";
    for (int i = 0; i < np; i++) {
        size_t L = strlen(list);
        snprintf(list + L, sizeof list - L, "%s%.*s", i ? ", " : "", PATH_MAX + 60, places[i]);
    }
    return ldm_error("no bundle given and no default bundle found (searched %s); give one with "
                     "--bundle FILE or LDM_BUNDLE", list);
}

const char *cli_device;   /* --device: "auto", "cpu" or "cuda"; NULL: LDM_BACKEND, else auto */

int cli_backend_env(const char **backend, long *fail_op) {
    *backend = NULL;
    *fail_op = 0;
    const char *b = getenv("LDM_BACKEND");
    if (b && *b && !cli_device) {
        if (strcmp(b, "auto") && strcmp(b, "cpu") && strcmp(b, "cuda"))
            return ldm_error_kind(LDM_USAGE, "LDM_BACKEND=%s: expected auto, cpu or cuda", b);
        *backend = strcmp(b, "auto") ? b : NULL;
    }
    if (cli_device) *backend = strcmp(cli_device, "auto") ? cli_device : NULL;
    const char *f = getenv("LDM_TEST_FAIL_OP");
    if (f && *f) {
        char *end;
        errno = 0;
        long v = strtol(f, &end, 10);
        if (*end || errno || v < 1) return ldm_error_kind(LDM_USAGE, "LDM_TEST_FAIL_OP=%s: expected a number >= 1", f);
        *fail_op = v;
    }
    return 0;
}

/* ---- threads ---- */

int cli_threads;
int cli_precision = -1;   /* --precision; -1: the job's own (fp32, or a replayed record's) */

/* The CPU threads a job runs with: --threads, else OMP_NUM_THREADS (0: OpenMP reads it),
 * else the CPUs this process may run on (its affinity mask: a cgroup or taskset limit,
 * not the machine's count). */
static int job_threads(void) {
    if (cli_threads > 0) return cli_threads;
    const char *e = getenv("OMP_NUM_THREADS");
    if (e && *e) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    return 0;
}

/* ---- ldmgen jobs ---- */

#include "app/job.h"

typedef struct { int open; } bar_state;
static bar_state bar;

static void hook_written(void *user, const char *path) {
    (void)user;
    if (bar.open) { fputc('\n', stderr); bar.open = 0; }
    if (cli_verbosity > 0) printf("%s\n", path);
    fflush(stdout);
}

/* "label  12/50 [=======                       ] 3.1 s, 9.4 s left" */
static void hook_progress(void *user, const char *label, int step, int total, double elapsed) {
    (void)user;
    const int width = 30;
    int fill = total > 0 ? (int)((long)step * width / total) : width;
    fprintf(stderr, "\r%s%4d/%-4d [", label, step, total);
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    if (step > 0 && step < total)
        fprintf(stderr, "] %.1f s, %.1f s left ", elapsed, elapsed / step * (total - step));
    else
        fprintf(stderr, "] %.1f s            ", elapsed);
    bar.open = step != total;
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
}

static void hook_profile(void *user, const char *backend, const ldm_op_stat *st, int n) {
    (void)user;
    double total = 0;
    for (int i = 0; i < n; i++) total += st[i].seconds;
    fprintf(stderr, "per-op profile (%s backend, %.2f s in ops):\n", backend, total);
    for (int i = 0; i < n; i++)
        if (st[i].calls)
        {
            fprintf(stderr, "  %-20s %8ld calls %9.3f s %5.1f %%", st[i].name, st[i].calls,
                    st[i].seconds, total > 0 ? 100.0 * st[i].seconds / total : 0.0);
            if (st[i].gflop > 0)
                fprintf(stderr, " %9.1f GFLOP %6.0f GFLOP/s", st[i].gflop,
                        st[i].seconds > 0 ? st[i].gflop / st[i].seconds : 0.0);
            fputc('\n', stderr);
        }
}

int cli_job_setup(ldm_job *j) {
    if (cli_backend_env(&j->backend, &j->backend_opts.fail_op)) return -1;
    j->backend_opts.threads = job_threads();
    if (cli_precision >= 0) j->backend_opts.precision = cli_precision;
    j->backend_opts.profile = cli_verbosity >= 2;
    j->backend_opts.verbose = cli_verbosity >= 2;
    j->hooks.written = hook_written;
    j->hooks.progress = cli_verbosity > 0 && isatty(2) ? hook_progress : NULL;
    j->hooks.profile = hook_profile;
    return 0;
}

void cli_job_done(ldm_job *j) {
    (void)j;
    if (bar.open) { fputc('\n', stderr); bar.open = 0; }
}
