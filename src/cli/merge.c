/* merge.c - `ldmgen history merge OUT.db IN.db...`: the arguments, the library merge
 * (app/merge.c) and one line per input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/merge.h"
#include "cli/cli.h"
#include "cli/history.h"
#include "core/common.h"

static const char MERGE_USAGE[] =
    "usage: ldmgen history merge [-q] OUT.db IN.db...\n"
    "Merge history databases (e.g. one per shard of ldmgen --prompts) into OUT.db,\n"
    "losslessly: every generation with all its fields, grids and replay links (ids are\n"
    "renumbered), and the embedding caches.  A generation OUT.db already has (by its\n"
    "uuid) is not added again, so merging twice adds nothing.  OUT.db is created or\n"
    "merged into, and replaced atomically; an input that is not an ldm database, is\n"
    "damaged or is of a newer schema is refused and OUT.db is left as it was.\n";

int cli_history_merge(int argc, char **argv) {
    int quiet = 0, first = 1;
    for (; first < argc && argv[first][0] == '-' && argv[first][1]; first++) {
        if (!strcmp(argv[first], "--")) { first++; break; }
        if (!strcmp(argv[first], "-h") || !strcmp(argv[first], "--help")) { fputs(MERGE_USAGE, stdout); return 0; }
        if (!strcmp(argv[first], "-q") || !strcmp(argv[first], "--quiet")) { quiet = 1; continue; }
        fprintf(stderr, "ldmgen history merge: unknown option %s\n", argv[first]);
        fputs(MERGE_USAGE, stderr);
        return 2;
    }
    if (argc - first < 2) {
        fprintf(stderr, "ldmgen history merge: expected OUT.db and at least one IN.db\n");
        fputs(MERGE_USAGE, stderr);
        return 2;
    }
    const char *out = argv[first];
    int n = argc - first - 1;
    ldm_merge_stats *per = ldm_xcalloc((size_t)n, sizeof *per), total;
    ldm_status st = ldm_db_merge(out, (const char *const *)argv + first + 1, n, per, &total);
    if (st == LDM_OK && !quiet) {
        for (int i = 0; i < n; i++)
            printf("%s: %lld generations added, %lld already in %s (%lld of them updated), %lld grids, "
                   "%lld cache entries\n", argv[first + 1 + i], (long long)per[i].added,
                   (long long)per[i].present, out, (long long)per[i].updated, (long long)per[i].grids,
                   (long long)per[i].cache);
        printf("%s: %lld generations added in all\n", out, (long long)total.added);
    }
    free(per);
    return cli_exit("ldmgen history merge", st, ldm_last_error());
}
