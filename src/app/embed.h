/* embed.h - prompt embeddings through the cache.
 *
 * The app has the pipeline make the text embeddings (ldm_pipeline_embed_text: the prompt
 * syntax, chunks, weights, padding) with ldm_embed_chunk as its text encoder, and hands
 * the floats to ldm_generate as diffusers' prompt_embeds / negative_prompt_embeds.  What
 * is cached is the text encoder's output for one chunk of 77 ids, and it is keyed by
 * exactly what that output is made from: bundle hash, backend, precision, the chunk's
 * token ids and clip skip (ldm_cache_key), never the prompt text.  A1111 weights are
 * applied to the chunks after the cache (they do not change the encoder's output), so a
 * prompt that differs only in its weights reuses the cached chunks, and no two inputs
 * share an entry.  Each chunk is looked up, in order, in this process's memo (grid cells
 * and chunks share), in the database's embedding cache, and only then encoded by the
 * text encoder.  New embeddings are stored in the database only when
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

/* out[T, C] = the text encoder's output for ids[T] at clip_skip (1 = last layer): an
 * ldm_chunk_encoder (pipeline.h) whose user is the ldm_embedder.  `what` ("prompt",
 * "negative prompt, chunk 2 of 3") names it in messages.  0, or -1 with ldm_error. */
int ldm_embed_chunk(void *embedder, ldm_pipeline *p, const int32_t *ids, int clip_skip,
                    const char *what, float *out);
/* Store the embeddings encoded since the last commit/discard in the cache (best effort:
 * a database error is logged at level 2 and not returned). */
void ldm_embedder_commit(ldm_embedder *e);
void ldm_embedder_discard(ldm_embedder *e);

#endif
