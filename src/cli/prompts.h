/* prompts.h - `ldmgen --prompts FILE`: the shard from --shard or the environment (Slurm
 * job arrays, Kubernetes Indexed Jobs), {shard} in --db, the run and its summary. */
#ifndef LDM_CLI_PROMPTS_H
#define LDM_CLI_PROMPTS_H

#include "app/job.h"

typedef struct cli_prompts_opts {
    const char *file;         /* --prompts */
    const char *shard;        /* --shard K/N, or NULL */
    long shard_count;         /* --shard-count N, 0 = not given */
    int force, fail_fast;
} cli_prompts_opts;

/* Run the prompt file with base's options as the defaults of every line; base->db_path
 * may contain {shard}.  Returns the exit code (0 all done or skipped, 1 a line failed,
 * 2 usage, 130 interrupted), the summary and each failure printed on stderr. */
int cli_prompts(ldm_job *base, const cli_prompts_opts *o);

#endif
