/* pack.h - ldmpack's library half: pack a diffusers model folder into an .ldmb bundle,
 * describe a bundle (--info) and check its checksums (--verify).  The ldmpack CLI
 * (ldmpack_main.c) only parses arguments and calls these.
 */
#ifndef LDM_PACK_H
#define LDM_PACK_H

#include <stdio.h>

#include "format/bundle.h"

typedef struct ldm_pack_opts {
    const char *model_dir;      /* diffusers folder, or NULL */
    /* Component folders; each overrides MODEL_DIR/<component>.  NULL = from MODEL_DIR. */
    const char *unet, *vae, *text_encoder, *tokenizer, *scheduler;
    const char *output;         /* the bundle to write */
    int clamp;                  /* clamp out-of-range values to ±65504 instead of failing */
    int no_model_check;         /* skip ldm_pack_check_models (tests of the format only) */
    /* the folders hold configs (and the tokenizer) only: every weight the configs need is
     * made up, deterministically: N(0, 0.02) (seeded from the tensor's name), norm weights 1, biases 0 (benchmarks of full-size shapes without weights) */
    int random_weights;
} ldm_pack_opts;

/* Pack.  Writes a new temporary file in OUTPUT's folder (".ldm-XXXXXX"), re-opens and
 * verifies it, checks it against the model loaders, then renames it to OUTPUT.  On failure
 * (or SIGINT/SIGTERM) the temporary file is removed and OUTPUT is left as it was; an
 * existing OUTPUT that is not a regular file is refused.  Returns 0, or -1 with ldm_error
 * set. */
int ldm_pack(const ldm_pack_opts *o);

/* Load every model component the bundle has with the dry backend (checking each weight's
 * name and shape), then report tensors no loader asked for.  0 or -1 with ldm_error. */
int ldm_pack_check_models(const ldm_bundle *b);

/* Describe a bundle on `out` (text, or JSON if json != 0).  0 or -1 with ldm_error. */
int ldm_pack_info(const char *path, int json, FILE *out);

/* Verify every checksum.  Prints "OK" (0) or returns -1 with the damaged tensors named. */
int ldm_pack_verify(const char *path, FILE *out);

#endif
