/* test_silent.c - the library never writes to stdout or stderr: a program linked against
 * libldm runs a pack, a job (images, history, cache, grid, latent picture) and a range of
 * failures (missing bundle, bad parameters, a failing op, a damaged PNG chunk) with both
 * streams redirected to files, and both files must stay empty.  Without a log handler
 * installed, messages are dropped; with one, they reach the handler only. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/job.h"
#include "app/pack.h"
#include "app/record.h"
#include "core/common.h"
#include "format/png_io.h"
#include "test.h"

static int handler_calls;
static void count(void *user, int level, int warning, const char *msg) {
    (void)user; (void)level; (void)warning; (void)msg;
    handler_calls++;
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

int main(void) {
    char dir[] = "/tmp/ldm_silent.XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char out_path[256], err_path[256], bundle[256], db[256], png[256], lat[256], grid[256], bad[256];
    snprintf(out_path, sizeof out_path, "%s/stdout", dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", dir);
    snprintf(bundle, sizeof bundle, "%s/sd1.ldmb", dir);
    snprintf(db, sizeof db, "%s/h.db", dir);
    snprintf(png, sizeof png, "%s/a.png", dir);
    snprintf(lat, sizeof lat, "%s/lat.png", dir);
    snprintf(grid, sizeof grid, "%s/grid.png", dir);
    snprintf(bad, sizeof bad, "%s/bad.png", dir);

    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);

    int results[16], k = 0;
    /* success: pack, a job with history, cache, a latent picture; a grid */
    ldm_pack_opts po = {0};
    po.model_dir = "tests/fixtures/models/sd1";
    po.output = bundle;
    results[k++] = ldm_pack(&po) == 0;
    ldm_job j;
    ldm_job_init(&j);
    j.prm.prompt = "a red cube";
    j.prm.steps = 2;
    j.have_seed = 0;                 /* the chosen seed is logged, not printed */
    j.bundle_path = bundle;
    j.output = png;
    j.latent_output = lat;
    j.db_path = db;
    j.backend = "cpu";
    j.backend_opts.profile = 1;
    results[k++] = ldm_job_run(&j) == LDM_OK;
    ldm_job_init(&j);
    j.prm.prompt = "a red cube";
    j.have_seed = 1;
    j.bundle_path = bundle;
    j.output = grid;
    j.db_path = db;
    j.backend = "cpu";
    j.grid.rows = 2; j.grid.guidance[0] = 1; j.grid.guidance[1] = 3;
    j.grid.cols = 1; j.grid.steps[0] = 1;
    results[k++] = ldm_job_run(&j) == LDM_OK;
    /* failures: no bundle, bad parameters, a failing op, a truncated prompt warning */
    ldm_job_init(&j);
    j.prm.prompt = "x";
    j.bundle_path = "/nonexistent/x.ldmb";
    j.output = png;
    results[k++] = ldm_job_run(&j) != LDM_OK;
    ldm_job_init(&j);
    j.prm.prompt = "x";
    j.prm.width = 60;
    j.bundle_path = bundle;
    j.output = bad;
    results[k++] = ldm_job_run(&j) == LDM_USAGE;
    ldm_job_init(&j);
    j.prm.prompt = "word word word word word word word word word word word word word word word "
                   "word word word word word word word word word word word word word word word "
                   "word word word word word word word word word word word word word word word "
                   "word word word word word word word word word word word word word word word "
                   "word word word word word word word word word word word word word word word "
                   "word word word word word word word word word word word word word word word";
    j.prm.steps = 1;
    j.have_seed = 1;
    j.bundle_path = bundle;
    j.output = bad;
    j.db_path = db;
    j.backend = "cpu";
    j.backend_opts.fail_op = 40;
    results[k++] = ldm_job_run(&j) == LDM_RUNTIME && access(bad, F_OK) != 0;
    ldm_gen_record r;
    results[k++] = ldm_record_parse_png("{\"ldm_version\": 3}", "x", &r) != 0;
    /* with a handler, messages go to it (and still not to the streams) */
    ldm_set_log_handler(count, NULL);
    ldm_job_init(&j);
    j.prm.prompt = "x";
    j.prm.steps = 1;
    j.bundle_path = bundle;
    j.output = png;
    j.db_path = NULL;
    j.backend = "cpu";
    results[k++] = ldm_job_run(&j) == LDM_OK;   /* logs "seed: N" */
    ldm_set_log_handler(NULL, NULL);

    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(fo);
    close(fe);
    const char *what[] = {"pack", "job", "grid job", "missing bundle refused", "bad size refused",
                          "failing op refused, nothing written", "bad chunk refused",
                          "job with a handler"};
    for (int i = 0; i < k; i++) CHECK(results[i], "%s: %s", what[i], ldm_last_error());
    CHECK(file_size(png) > 0 && file_size(lat) > 0 && file_size(grid) > 0, "the files were written");
    long so = file_size(out_path), se = file_size(err_path);
    CHECK(so == 0, "nothing on stdout (%ld bytes)", so);
    CHECK(se == 0, "nothing on stderr (%ld bytes)", se);
    if (se > 0) {
        char *t = ldm_read_file(err_path, NULL);
        printf("stderr was: %.400s\n", t ? t : "");
        free(t);
    }
    CHECK(handler_calls >= 1, "the handler got the messages (%d)", handler_calls);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    TEST_END();
}
