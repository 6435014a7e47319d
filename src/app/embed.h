/* embed.h - prompt embeddings through the cache.
 *
 * The app encodes the prompt and the negative prompt here and hands the floats to
 * ldm_generate as diffusers' prompt_embeds / negative_prompt_embeds; the pipeline never
 * calls back up.  Each text is looked up, in order, in this process's memo (grid cells
 * share their prompt), in the database's embedding cache (keyed by bundle hash,
 * backend, precision, token ids and clip skip: ldm_cache_key), and only then encoded
 * by the text encoder.  New embeddings are stored in the database only when
 * ldm_embedder_commit is called, after the generation that used them succeeded, so a
 * failed run leaves nothing in the cache.  A hit, a miss and no cache at all give the
 * same floats (one text at a time, the same encoder call).
 */
#ifndef LDM_EMBED_H
#define LDM_EMBED_H

#include <stddef.h>

#include "app/db.h"
#include "pipeline/pipeline.h"

typedef struct ldm_embedder ldm_embedder;

/* db may be NULL (no cache: memo only).  Strings are copied. */
ldm_embedder *ldm_embedder_new(ldm_db *db, const char *bundle_hash, const char *backend,
                               const char *precision, size_t cache_max_bytes);
void ldm_embedder_free(ldm_embedder *e);

/* out[T, C] = the embedding of text at clip_skip (1 = last layer); *truncated is set
 * when the text had more tokens than fit.  `what` ("prompt", "negative prompt") names
 * it in messages.  0, or -1 with ldm_error. */
int ldm_embed_text(ldm_embedder *e, ldm_pipeline *p, const char *text, int clip_skip,
                   const char *what, float *out, int *truncated);
/* Store the embeddings encoded since the last commit/discard in the cache (best effort:
 * a database error is logged at level 2 and not returned). */
void ldm_embedder_commit(ldm_embedder *e);
void ldm_embedder_discard(ldm_embedder *e);

#endif
