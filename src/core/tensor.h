/* tensor.h - a named weight tensor as the bundle stores it and the backends use it.
 *
 * A tensor points into the read-only mapping of a bundle (or into memory a test or
 * ldmpack owns); nothing here allocates.  Bundle tensors are fp16 today; the dtype is
 * carried so that a backend can refuse what it does not implement instead of
 * misreading bytes, and so that bf16 weights can follow without a new struct.
 */
#ifndef LDM_TENSOR_H
#define LDM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum ldm_dtype {
    LDM_DT_F16 = 0,   /* IEEE binary16: every tensor of a format-1 bundle */
    LDM_DT_BF16 = 1,
    LDM_DT_F32 = 2,
} ldm_dtype;

typedef struct ldm_tensor {
    const char *name;        /* "unet.conv_in.weight" */
    ldm_dtype dtype;         /* element type of f16 (LDM_DT_F16 for bundle tensors) */
    int ndim;                /* 0..4 */
    int64_t shape[4];
    int64_t numel;
    const uint16_t *f16;     /* the data inside the mapping (64-byte aligned) */
    uint64_t offset;         /* byte offset of the data within weights.bin */
    uint32_t crc32;          /* zlib crc32 of the data bytes */
    int used;                /* set by ldm_bundle_need: some loader asked for it */
} ldm_tensor;

#endif
