/* ldmb.h - format details of the .ldmb bundle shared by the writer (pack.c) and the
 * reader (bundle.c): constants and the canonical content-hash encoding.
 * See bundle/FORMAT.md for the specification.
 */
#ifndef LDM_LDMB_H
#define LDM_LDMB_H

#include <stddef.h>
#include <stdint.h>

#include "core/limits.h"
#include "core/sha256.h"

#define LDMB_MANIFEST "manifest.json"
#define LDMB_WEIGHTS "weights.bin"
#define LDMB_ALIGN 64                       /* tensor data alignment within the file */
#define LDMB_MAX_SMALL_MEMBER LDM_MAX_SMALL_MEMBER  /* members other than weights.bin */
#define LDMB_MAX_DIMS LDM_MAX_TENSOR_DIMS

/* Content hash: SHA-256 over
 *   "ldmb-content-v1\n"
 *   for each config member, in manifest "members" order:
 *       "member " NAME "\n" SIZE "\n" BYTES
 *   for each tensor, in manifest "tensors" order:
 *       "tensor " NAME "\n" "F16 [" D0 "," D1 ... "]\n" NBYTES "\n" FP16-BYTES
 * (numbers in decimal ASCII). */
void ldmb_hash_begin(ldm_sha256 *s);
void ldmb_hash_member(ldm_sha256 *s, const char *name, const void *data, size_t len);
void ldmb_hash_tensor_head(ldm_sha256 *s, const char *name, int ndim, const int64_t *shape,
                           uint64_t nbytes);
/* then ldm_sha256_update(s, fp16 bytes, nbytes) */

#endif
