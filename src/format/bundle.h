/* bundle.h - the .ldmb bundle: one tar archive holding a diffusers model in fp16.
 *
 * The runtime memory-maps the file and points into it: tensor data is stored
 * uncompressed and 64-byte aligned in the member "weights.bin", so nothing is copied
 * at load.  The format is specified in bundle/FORMAT.md.
 *
 * Tensor names are "<component>.<diffusers state-dict key>", for example
 *   unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight
 *   vae.decoder.conv_in.weight
 *   text_encoder.text_model.embeddings.token_embedding.weight
 * Members other than weights.bin keep their diffusers paths, for example
 *   unet/config.json, vae/config.json, text_encoder/config.json,
 *   tokenizer/vocab.json, tokenizer/merges.txt (or tokenizer/tokenizer.json),
 *   tokenizer/tokenizer_config.json,
 *   scheduler/scheduler_config.json, model_index.json, manifest.json.
 */
#ifndef LDM_BUNDLE_H
#define LDM_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"

#define LDMB_FORMAT_VERSION 1

/* ldm_tensor (core/tensor.h): a tensor of the bundle, pointing into the mapping. */

typedef struct ldm_bundle ldm_bundle;

/* Open and validate the structure of a bundle (members, manifest, offsets, sizes).
 * Tensor checksums are NOT checked here (that reads every byte); see ldm_bundle_verify.
 * Returns NULL with ldm_last_error() set, naming the file and what is wrong. */
ldm_bundle *ldm_bundle_open(const char *path);
void ldm_bundle_close(ldm_bundle *b);

const char *ldm_bundle_path(const ldm_bundle *b);
/* Hex SHA-256 content hash identifying the model (64 chars + NUL). */
const char *ldm_bundle_hash(const ldm_bundle *b);

/* A tensor by full name, or NULL. */
ldm_tensor *ldm_bundle_tensor(const ldm_bundle *b, const char *name);
size_t ldm_bundle_tensor_count(const ldm_bundle *b);
ldm_tensor *ldm_bundle_tensor_at(const ldm_bundle *b, size_t i);

/* A non-weight member's bytes (NUL-terminated copy owned by the bundle), or NULL. */
const char *ldm_bundle_member(const ldm_bundle *b, const char *name, size_t *len);

/* Check every tensor checksum.  On failure, the error names the damaged tensor(s). */
int ldm_bundle_verify(const ldm_bundle *b);

/* Convenience for model loaders: look up "prefix" + "name" and check its shape
 * (ndim dims given in shape[]); error names the tensor, expected and found shapes. */
ldm_tensor *ldm_bundle_need(const ldm_bundle *b, const char *name, int ndim, const int64_t *shape);

/* ---- Introspection (ldmpack --info, tests) ---- */
/* Members in archive order: name and size in bytes (weights.bin included). */
size_t ldm_bundle_member_count(const ldm_bundle *b);
const char *ldm_bundle_member_name(const ldm_bundle *b, size_t i);
uint64_t ldm_bundle_member_size(const ldm_bundle *b, size_t i);
/* Byte offset of a member's data within the file. */
uint64_t ldm_bundle_member_offset(const ldm_bundle *b, size_t i);
uint64_t ldm_bundle_file_size(const ldm_bundle *b);
/* 1 if the manifest lists the component ("unet", "vae", "text_encoder", "tokenizer",
 * "scheduler"), else 0. */
int ldm_bundle_has_component(const ldm_bundle *b, const char *component);
/* Clear every tensor's used flag. */
void ldm_bundle_clear_used(ldm_bundle *b);

#endif
