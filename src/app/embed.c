/* embed.c - prompt embeddings through the memo and the database cache.  See embed.h. */
#include "app/embed.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"

/* a prompt's chunks, a negative prompt's and the padding chunk */
#define MEMO (2 * LDM_MAX_PROMPT_CHUNKS + 2)

typedef struct {
    int32_t *ids;          /* [T] */
    int T, D, clip_skip;
    float *emb;            /* [T, D] */
    int pending;   /* encoded here, not yet in the database */
} memo_entry;

struct ldm_embedder {
    ldm_db *db;
    char *hash, *backend, *precision;
    size_t cache_max;
    memo_entry memo[MEMO];
    int n_memo;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

ldm_embedder *ldm_embedder_new(ldm_db *db, const char *bundle_hash, const char *backend,
                               const char *precision, size_t cache_max_bytes) {
    ldm_embedder *e = ldm_xcalloc(1, sizeof *e);
    e->db = db;
    e->hash = ldm_xstrdup(bundle_hash);
    e->backend = ldm_xstrdup(backend);
    e->precision = ldm_xstrdup(precision);
    e->cache_max = cache_max_bytes;
    return e;
}

static void drop(memo_entry *m) {
    free(m->ids);
    free(m->emb);
    memset(m, 0, sizeof *m);
}

void ldm_embedder_free(ldm_embedder *e) {
    if (!e) return;
    for (int i = 0; i < e->n_memo; i++) drop(&e->memo[i]);
    free(e->hash);
    free(e->backend);
    free(e->precision);
    free(e);
}

static ldm_cache_key key_of(const ldm_embedder *e, const int32_t *ids, int T, int clip_skip) {
    ldm_cache_key k = {e->hash, e->backend, e->precision, ids, T, clip_skip};
    return k;
}

int ldm_embed_chunk(void *embedder, ldm_pipeline *p, const int32_t *chunk, int clip_skip,
                    const char *what, float *out) {
    ldm_embedder *e = embedder;
    const int T = ldm_pipeline_text_length(p), D = ldm_pipeline_text_dim(p);
    const size_t TD = (size_t)T * D;
    if (clip_skip < 1) clip_skip = 1;
    int32_t *ids = ldm_xmalloc(sizeof(int32_t) * (size_t)T);
    memcpy(ids, chunk, sizeof(int32_t) * (size_t)T);
    for (int m = 0; m < e->n_memo; m++)
        if (e->memo[m].clip_skip == clip_skip && !memcmp(e->memo[m].ids, ids, sizeof(int32_t) * T)) {
            memcpy(out, e->memo[m].emb, sizeof(float) * TD);
            ldm_log(2, "text embedding (%s): reused\n", what);
            free(ids);
            return 0;
        }
    int found = 0, pending = 0;
    ldm_cache_key k = key_of(e, ids, T, clip_skip);
    if (e->db) {
        int r = ldm_db_cache_get(e->db, &k, out, TD);
        if (r < 0) ldm_log(2, "embedding cache: %s\n", ldm_last_error());
        if (r == 1) { ldm_log(2, "text embedding (%s): cache hit\n", what); found = 1; }
    }
    if (!found) {
        double t = now_s();
        if (ldm_pipeline_encode_text(p, ids, 1, clip_skip, out)) {
            free(ids);
            return -1;
        }
        ldm_log(2, "text embedding (%s): %s, encoded in %.2f s\n", what,
                e->db ? "cache miss" : "cache not used", now_s() - t);
        pending = e->db != NULL;
    }
    if (e->n_memo == MEMO) {   /* drop the oldest; a pending one goes to the cache now */
        if (e->memo[0].pending) ldm_embedder_commit(e);
        drop(&e->memo[0]);
        memmove(e->memo, e->memo + 1, sizeof e->memo[0] * (MEMO - 1));
        memset(&e->memo[MEMO - 1], 0, sizeof e->memo[0]);
        e->n_memo = MEMO - 1;
    }
    memo_entry *m = &e->memo[e->n_memo++];
    m->ids = ids;
    m->T = T;
    m->D = D;
    m->clip_skip = clip_skip;
    m->emb = ldm_xmalloc(sizeof(float) * TD);
    memcpy(m->emb, out, sizeof(float) * TD);
    m->pending = pending;
    return 0;
}

void ldm_embedder_commit(ldm_embedder *e) {
    for (int i = 0; i < e->n_memo; i++) {
        memo_entry *m = &e->memo[i];
        if (!m->pending) continue;
        m->pending = 0;
        if (!e->db) continue;
        ldm_cache_key k = key_of(e, m->ids, m->T, m->clip_skip);
        if (ldm_db_cache_put(e->db, &k, m->D, m->emb, e->cache_max))
            ldm_log(2, "embedding cache: %s\n", ldm_last_error());
    }
}

void ldm_embedder_discard(ldm_embedder *e) {
    /* forget what was encoded but not committed: those embeddings may come from a run
     * whose backend failed later; encode them again next time */
    for (int i = 0; i < e->n_memo;) {
        if (e->memo[i].pending) {
            drop(&e->memo[i]);
            memmove(e->memo + i, e->memo + i + 1, sizeof e->memo[0] * (size_t)(e->n_memo - i - 1));
            memset(&e->memo[e->n_memo - 1], 0, sizeof e->memo[0]);
            e->n_memo--;
        } else {
            i++;
        }
    }
}
