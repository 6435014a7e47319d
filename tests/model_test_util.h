/* model_test_util.h - helpers shared by the model tests (test_clip.c, test_vae.c):
 * a scratch directory, packing a fixture folder with $LDM_BUILD/ldmpack, copying a
 * fixture folder and editing a field of one of its config.json files, and reading
 * expected tensors from tests/fixtures/expected as float32.
 * Header-only (static functions); include after test.h.
 */
#ifndef LDM_MODEL_TEST_UTIL_H
#define LDM_MODEL_TEST_UTIL_H

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "backend/ops.h"
#include "core/common.h"
#include "format/bundle.h"
#include "format/safetensors.h"

/* One CPU and one dry backend handle per test program (freed at exit). */
static ldm_backend *mt_cpu_be, *mt_dry_be;
static void mt_free_backends(void) {
    ldm_backend_free(mt_cpu_be);
    ldm_backend_free(mt_dry_be);
}
static ldm_backend *mt_backend(ldm_backend **slot, const char *name) {
    if (!*slot) {
        if (!mt_cpu_be && !mt_dry_be) atexit(mt_free_backends);
        *slot = ldm_backend_new(name, NULL);
        if (!*slot) { /* e.g. LDM_TEST_BACKEND=cuda without a GPU: a failure, not a crash */
            printf("FAIL: the %s backend: %s\n0 passed, 1 failed\n", name, ldm_last_error());
            exit(1);
        }
    }
    return *slot;
}
/* The backend the model tests run on: the CPU, or the one LDM_TEST_BACKEND names
 * (scripts/gpu-check.sh runs test_clip, test_unet and test_vae with LDM_TEST_BACKEND=cuda
 * against the same diffusers expectations). */
static inline const char *mt_backend_name(void) {
    const char *b = getenv("LDM_TEST_BACKEND");
    return b && *b ? b : "cpu";
}
static inline ldm_backend *mt_cpu(void) { return mt_backend(&mt_cpu_be, mt_backend_name()); }
/* A test's relative-L2 bound: its own on the CPU (fp32, diffusers' order); 1e-2 on CUDA,
 * which computes the products in fp16 (issue 12's bound for fp16 compute). */
static inline double mt_tol(double cpu_tol) { return strcmp(mt_backend_name(), "cpu") ? 1e-2 : cpu_tol; }
static inline ldm_backend *mt_dry(void) { return mt_backend(&mt_dry_be, "dry"); }

static char mt_tmp[256];

/* Create the scratch directory (removed by mt_cleanup). */
static const char *mt_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    snprintf(mt_tmp, sizeof mt_tmp, "%s/ldm_model_test.XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(mt_tmp)) { perror("mkdtemp"); exit(2); }
    return mt_tmp;
}

static void mt_cleanup(void) {
    char cmd[600];
    if (!mt_tmp[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", mt_tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", mt_tmp);
}

/* Run a shell command, capturing stdout+stderr into out (NUL-terminated, truncated).
 * Returns the exit status (or -1). */
static int mt_run(const char *cmd, char *out, size_t cap) {
    char full[4200];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) { snprintf(out, cap, "popen failed"); return -1; }
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Pack a diffusers folder into `bundle` with ldmpack; log gets its output. */
static int mt_pack(const char *folder, const char *bundle, char *log, size_t cap) {
    const char *build = getenv("LDM_BUILD");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s/ldmpack' '%s' -o '%s'", build ? build : "build", folder,
             bundle);
    return mt_run(cmd, log, cap);
}

/* Copy a fixture folder (following the tokenizer symlinks) to dst. */
static int mt_copy(const char *src, const char *dst) {
    char cmd[4096], log[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -rL '%s' '%s'", dst, src, dst);
    int rc = mt_run(cmd, log, sizeof log);
    if (rc) fprintf(stderr, "%s: %s\n", cmd, log);
    return rc;
}

/* Set `field` of the JSON object in `path` to the JSON text `value`, or delete it when
 * value is NULL. */
static int mt_edit_json(const char *path, const char *field, const char *value) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) { fprintf(stderr, "%s: %s\n", path, e.text); return -1; }
    if (value) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, &e);
        if (!v) { fprintf(stderr, "bad value %s: %s\n", value, e.text); json_decref(j); return -1; }
        json_object_set_new(j, field, v);
    } else {
        json_object_del(j, field);
    }
    int rc = json_dump_file(j, path, JSON_INDENT(2));
    json_decref(j);
    return rc;
}

/* 1 if `dir` holds `out` or a temporary file (".ldm-XXXXXX", or an older "*.tmp.*"). */
static int mt_leftovers(const char *dir, const char *out) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strcmp(e->d_name, out) || !strncmp(e->d_name, ".ldm-", 5) || strstr(e->d_name, ".tmp."))
            found = 1;
    closedir(d);
    return found;
}

/* Loads one model from a bundle on the CPU backend and frees it again: 1 if it loaded,
 * 0 with ldm_last_error() set if it was refused. */
typedef int (*mt_load_fn)(const ldm_bundle *b);

/* Copy models/sd1, set (or delete, value NULL) one field of `member` (e.g.
 * "vae/config.json"), pack and load with `load`: the error, from ldmpack's validation
 * or from the loader, must contain `needle`.  Needs test.h's CHECK (included first). */
static inline void mt_expect_config_error(const char *tmp, const char *member, mt_load_fn load,
                                          const char *field, const char *value,
                                          const char *needle) {
    char dir[512], cfg[700], bundle[600], log[4096];
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    snprintf(cfg, sizeof cfg, "%s/%s", dir, member);
    snprintf(bundle, sizeof bundle, "%s/bad.ldmb", tmp);
    if (mt_copy("tests/fixtures/models/sd1", dir) || mt_edit_json(cfg, field, value)) {
        CHECK(0, "could not prepare the modified copy for %s", field);
        return;
    }
    remove(bundle);
    int rc = mt_pack(dir, bundle, log, sizeof log);
    if (rc != 0) {
        CHECK(strstr(log, needle) != NULL, "%s=%s: ldmpack output lacks \"%s\": %s", field,
              value ? value : "(deleted)", needle, log);
        /* a refusal, not a crash (abort "out of memory", a sanitizer report), and nothing
         * left behind: no bundle, no temporary */
        CHECK(rc == 1 && !strstr(log, "Sanitizer") && !strstr(log, "runtime error") &&
                  !strstr(log, "out of memory"),
              "%s=%s: ldmpack exit %d: %s", field, value ? value : "(deleted)", rc, log);
        CHECK(!mt_leftovers(tmp, "bad.ldmb"), "%s=%s: output or temporary file left in %s", field,
              value ? value : "(deleted)", tmp);
        return;
    }
    ldm_bundle *b = ldm_bundle_open(bundle);
    CHECK(b != NULL, "%s", ldm_last_error());
    if (!b) return;
    int loaded = load(b);
    CHECK(!loaded && strstr(ldm_last_error(), needle), "%s=%s: error lacks \"%s\": %s", field,
          value ? value : "(deleted)", needle, loaded ? "(loaded)" : ldm_last_error());
    ldm_bundle_close(b);
}

/* A float32 copy of tensor `name` of st, which must have n elements (NULL otherwise). */
/* An expected tensor as floats.  Missing or of the wrong size counts as a failed check
 * (the comparisons that would have used it cannot run) and gives NULL. */
static float *mt_f32(const ldm_safetensors *st, const char *name, size_t n) {
    const ldm_st_tensor *t = ldm_st_find(st, name);
    CHECK(t != NULL, "expected tensor %s missing", name);
    if (!t) return NULL;
    CHECK((size_t)t->numel == n, "expected tensor %s has %lld elements, want %zu", name,
          (long long)t->numel, n);
    if ((size_t)t->numel != n) return NULL;
    return ldm_st_to_f32(t);
}

static double mt_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* 8-bit images a and b (reference) of n values: the largest difference in levels, and the
 * mean in *mean. */
static inline int mt_u8_diff(const uint8_t *a, const uint8_t *b, size_t n, double *mean) {
    int maxd = 0;
    double sum = 0;
    for (size_t k = 0; k < n; k++) {
        int d = abs((int)a[k] - (int)b[k]);
        if (d > maxd) maxd = d;
        sum += d;
    }
    *mean = n ? sum / (double)n : 0;
    return maxd;
}

#endif
