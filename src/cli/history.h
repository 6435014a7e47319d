/* history.h - printing the generation history: a table for people, JSON lines for
 * scripts, and one record in full.  Used by `ldmgen history` and `ldmgen show`. */
#ifndef LDM_HISTORY_H
#define LDM_HISTORY_H

#include <stdio.h>

#include "app/db.h"

void ldm_history_print_header(FILE *f);
void ldm_history_print_row(FILE *f, const ldm_gen_record *r);
/* One JSON object on one line (every field of the record). */
void ldm_history_print_json(FILE *f, const ldm_gen_record *r);
/* Every field, one "name: value" per line. */
void ldm_history_print_full(FILE *f, const ldm_gen_record *r);

/* `ldmgen history [filters]` and `ldmgen show ID`: argv[0] is the subcommand name.
 * db_path may be NULL (default path).  Return the process exit code. */
int cli_history(int argc, char **argv);
int cli_show(int argc, char **argv);
/* `ldmgen history merge OUT.db IN.db...` (merge.c); argv[0] is "merge". */
int cli_history_merge(int argc, char **argv);

#endif
