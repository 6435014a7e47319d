/* merge.h - `ldmgen history merge OUT.db IN.db...`: history databases into one, losslessly.
 *
 * Every generation keeps every column (whatever columns the schema has: the copy is made
 * from the table's own column list), gets a new id in OUT, and keeps its grid (grids
 * are copied and the grid ids remapped) and its replay link (replay_of remapped to the
 * new id of the generation it replayed).  A generation is known by its UUID (schema 004,
 * given when it was created): one OUT already has is not added again, so merging the
 * same input twice adds nothing, and a merge of merges has each generation once.  A
 * generation that OUT has as 'running' (or as interrupted without a finish time, i.e.
 * found dead) and that the input has finished since is updated to the input's row.
 * The embedding caches are merged too (an entry OUT has is kept, with the later
 * last_used and the higher hit count); no entry is evicted.
 *
 * Inputs are checked before anything is written: a file that is not an SQLite database,
 * a damaged one (integrity_check), one that is not an ldm history and one of a newer
 * schema are refused.  Older inputs are upgraded in a temporary copy, never in place;
 * inputs are only read.  OUT (when it exists it is merged into too, and checked the same
 * way) is written atomically: the merge is built in a temporary file next to it, checked
 * (integrity and foreign keys), and renamed over OUT; on any failure OUT is untouched
 * and the temporary file removed.
 */
#ifndef LDM_MERGE_H
#define LDM_MERGE_H

#include <stdint.h>

#include "core/common.h"

typedef struct ldm_merge_stats {
    int64_t added;          /* generations new to OUT */
    int64_t present;        /* generations OUT had already */
    int64_t updated;        /* of those, runs finished since (OUT had them running) */
    int64_t grids;          /* grids new to OUT */
    int64_t cache;          /* embedding cache entries new to OUT */
} ldm_merge_stats;

/* Merge in[0..n-1] into out.  per (may be NULL) gets each input's counts, total the
 * sum (may be NULL).  LDM_OK; LDM_USAGE (no input); LDM_DATA for a refused database
 * (named); LDM_RUNTIME for I/O.  OUT is only replaced on success. */
ldm_status ldm_db_merge(const char *out, const char *const *in, int n, ldm_merge_stats *per,
                        ldm_merge_stats *total);

#endif
