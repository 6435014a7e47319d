/* db.h - the ldm SQLite database: generation history, grids and the prompt-embedding
 * cache.
 *
 * One database file; the program chooses its path (ldmgen: --db, $LDM_DB,
 * $XDG_DATA_HOME/ldm/ldm.db, ~/.local/share/ldm/ldm.db).  The schema is the numbered migrations in schema/,
 * compiled in and applied in order, tracked by PRAGMA user_version; a database newer
 * than this program is refused.  WAL journal, a busy timeout and foreign keys are set
 * on every connection, and every statement is prepared (no SQL is built from user
 * text), so concurrent ldmgen processes can all record their runs.
 */
#ifndef LDM_DB_H
#define LDM_DB_H

#include <stddef.h>
#include <stdint.h>

#include "app/record.h"

typedef struct ldm_db ldm_db;

/* The schema version this program writes (number of migrations). */
int ldm_db_schema_version(void);

/* A new random (version 4) UUID, lower-case, 36 characters and a NUL: the globally
 * unique id of a generation or grid (schema 004), given when its row is created. */
void ldm_uuid_new(char out[37]);


/* Open (creating the folder and file if needed) and migrate.  NULL + ldm_error. */
ldm_db *ldm_db_open(const char *path);
void ldm_db_close(ldm_db *db);
const char *ldm_db_path(const ldm_db *db);
/* The SQLite connection, for code of this layer that works on whole tables (merge.c). */
struct sqlite3;
struct sqlite3 *ldm_db_sqlite(ldm_db *db);

/* ---- prompt-embedding cache ---- */
/* What an embedding is made from: the model, where and how it was computed, the token
 * ids and the layer. */
typedef struct ldm_cache_key {
    const char *bundle_hash;
    const char *backend;      /* "cpu", "cuda" */
    const char *precision;    /* "fp32" */
    const int32_t *ids;
    int n_ids;
    int clip_skip;
} ldm_cache_key;
/* On a hit copy n_floats floats into out, bump its LRU stamp and return 1; 0 on a miss
 * (also when the stored size differs); -1 on error. */
int ldm_db_cache_get(ldm_db *db, const ldm_cache_key *k, float *out, size_t n_floats);
/* Store an embedding ([n_ids, hidden] floats), then evict least-recently-used entries
 * until the cache holds at most max_bytes of embeddings. */
int ldm_db_cache_put(ldm_db *db, const ldm_cache_key *k, int hidden, const float *emb,
                     size_t max_bytes);
/* Total bytes and entries in the cache. */
int ldm_db_cache_stats(ldm_db *db, int64_t *bytes, int64_t *entries);

/* ---- history: rows of table generations, one ldm_gen_record each (app/record.h) ---- */
/* Insert a 'running' row for the run described by r; sets r->id, r->status and, when
 * unset, r->pid, r->host and r->uuid (a new random UUID). */
int ldm_db_begin(ldm_db *db, ldm_gen_record *r);
/* End a run: status "ok", "failed" or "interrupted" (set in r with error), with r's
 * outputs and timings (the fields marked O). */
int ldm_db_finish(ldm_db *db, ldm_gen_record *r, const char *status, const char *error);
/* A new grid row (with a new UUID); returns its id or -1. */
int64_t ldm_db_new_grid(ldm_db *db, const char *spec, const char *output_path);
int ldm_db_set_grid_output(ldm_db *db, int64_t grid_id, const char *output_path);

/* Mark 'running' rows of this host whose process no longer exists as interrupted. */
int ldm_db_reap_interrupted(ldm_db *db);

/* PRAGMA integrity_check and foreign_key_check: 0 when both pass, else -1 with ldm_error
 * quoting the first problem. */
int ldm_db_check(ldm_db *db);

typedef struct ldm_history_filter {
    const char *grep;         /* FTS5 query over prompt and negative prompt */
    const char *since, *until;/* ISO dates/times compared with created_at */
    const char *bundle;       /* hash prefix or path substring */
    const char *status;
    int has_seed;
    uint64_t seed;
    int64_t grid_id;          /* 0: any */
    const char *prompt_file;  /* exact prompt_file, or NULL */
    int64_t prompt_line;      /* 0: any */
    const char *uuid;         /* exact uuid, or NULL */
    int limit;                /* 0: no limit */
} ldm_history_filter;

/* Call fn for each matching record, newest first.  The record is freed after the call
 * (ldm_record_copy keeps one).  fn returns non-zero to stop. */
int ldm_db_query(ldm_db *db, const ldm_history_filter *f,
                 int (*fn)(const ldm_gen_record *r, void *ctx), void *ctx);
/* Read one record by id into r (ldm_record_free it): 1 found, 0 not found, -1 error. */
int ldm_db_get(ldm_db *db, int64_t id, ldm_gen_record *r);

#endif
