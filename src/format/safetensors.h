/* safetensors.h - read .safetensors files (single or sharded) by memory-mapping them.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
 * optional "__metadata__": {string: string}}), then the tensor bytes; offsets are
 * relative to the end of the header.  ldm_st_open validates everything before it
 * returns: header size, JSON, each entry's fields, dtype, byte counts, offsets in
 * range, sorted coverage of the data area without holes or overlaps.
 *
 * A sharded model is a "*.safetensors.index.json" with {"weight_map": {tensor: shard}};
 * opening the index opens every shard and presents one tensor list.  A tensor in two
 * shards, a shard that is missing, or a weight_map that disagrees with the shards is
 * an error.
 */
#ifndef LDM_SAFETENSORS_H
#define LDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    LDM_ST_F64, LDM_ST_F32, LDM_ST_F16, LDM_ST_BF16,
    LDM_ST_I64, LDM_ST_I32, LDM_ST_I16, LDM_ST_I8, LDM_ST_U8, LDM_ST_BOOL,
} ldm_st_dtype;

#define LDM_ST_MAX_DIMS 8

typedef struct {
    char *name;
    ldm_st_dtype dtype;
    int ndim;
    int64_t shape[LDM_ST_MAX_DIMS];
    int64_t numel;
    const void *data;      /* inside the mapping; may be unaligned */
    size_t nbytes;
    const char *file;      /* the file (shard) holding it */
} ldm_st_tensor;

typedef struct ldm_safetensors ldm_safetensors;

/* Open a .safetensors file or a .safetensors.index.json.  NULL + ldm_error on failure. */
ldm_safetensors *ldm_st_open(const char *path);
void ldm_st_close(ldm_safetensors *st);

/* Tensors in file order (shard by shard, ascending data offset). */
size_t ldm_st_count(const ldm_safetensors *st);
const ldm_st_tensor *ldm_st_at(const ldm_safetensors *st, size_t i);
const ldm_st_tensor *ldm_st_find(const ldm_safetensors *st, const char *name);
/* The "__metadata__" value for key, or NULL (first file only for shards). */
const char *ldm_st_metadata(const ldm_safetensors *st, const char *key);

const char *ldm_st_dtype_name(ldm_st_dtype d);
size_t ldm_st_dtype_size(ldm_st_dtype d);
int ldm_st_dtype_is_float(ldm_st_dtype d);

/* A malloc'd float32 copy of any tensor (float or integer dtype). Caller frees.  NULL with
 * ldm_error if the copy's size overflows size_t. */
float *ldm_st_to_f32(const ldm_st_tensor *t);

#endif
