/* cli.h - what the two programs share: the message handler (the only place library
 * messages reach stderr), status -> exit code, and the paths they take from the
 * environment (bundle, database), which the library never reads itself. */
#ifndef LDM_CLI_H
#define LDM_CLI_H

#include <stddef.h>

#include "core/common.h"

/* 0 quiet (errors only), 1 normal, 2 verbose. */
extern int cli_verbosity;
/* --threads N (0: OMP_NUM_THREADS when set, else the CPUs of this process's affinity mask) */
extern int cli_threads;
extern int cli_precision;
/* Install the stderr message handler; `prog` prefixes warnings ("ldmgen"). */
void cli_init(const char *prog);
/* Print the failure (prog: message, with "(try PROG --help)" for usage errors) and
 * return the exit code: 0 ok, 2 usage, 1 data or runtime, 130 interrupted. */
int cli_exit(const char *prog, ldm_status st, const char *msg);

/* The history database: --db, else $LDM_DB, else $XDG_DATA_HOME/ldm/ldm.db, else
 * $HOME/.local/share/ldm/ldm.db, into buf.  -1 (message set) when none can be formed. */
int cli_db_path(const char *opt, char *buf, size_t n);

/* The bundle: --bundle, else $LDM_BUNDLE, else the first default.ldmb that exists of
 * <folder of the executable>/../share/ldm, the compiled-in data folder, ./bundle and
 * <folder of the executable>/../bundle (a build tree).  -1 with a message listing the
 * places searched when there is none. */
int cli_bundle_path(const char *opt, char *buf, size_t n);

/* Options from the environment for a backend: LDM_BACKEND (cpu|cuda), the fault
 * injection LDM_TEST_FAIL_OP=K.  *backend is NULL for "choose". */
extern const char *cli_device;
int cli_backend_env(const char **backend, long *fail_op);

#endif

/* ---- ldmgen jobs (ldmgen and ldmgen replay) ---- */
struct ldm_job;
/* Backend from the environment, the hooks (files on stdout, a progress bar on a
 * terminal, the per-op profile with -v).  -1 with a usage message. */
int cli_job_setup(struct ldm_job *j);
/* End the progress bar line if one is open. */
void cli_job_done(struct ldm_job *j);
