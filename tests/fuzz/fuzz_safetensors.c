/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader (format/safetensors.c).
 *
 * The input is a .safetensors file, opened with ldm_st_open; every tensor of a file that
 * opens is looked up by name and converted to float32 (ldm_st_to_f32 reads every byte).
 * An input starting with "INDEX\n" is instead a *.safetensors.index.json, opened next to
 * two valid shards, a.safetensors (tensor "x") and b.safetensors (tensor "y").
 */
#include "fuzz_util.h"
#include "format/safetensors.h"

static char dir[] = "/tmp/ldm-fuzz-st.XXXXXX", index_path[300];

static void cleanup(void) {
    static const char *const files[] = {"a.safetensors", "b.safetensors", "model.safetensors.index.json"};
    char path[300];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void make_shard(const char *dir, const char *file, const char *name) {
    char hdr[200], path[300];
    int n = snprintf(hdr, sizeof hdr,
                     "{\"%s\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", name);
    uint8_t buf[256];
    uint64_t len = (uint64_t)n;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)n);
    memcpy(buf + 8 + n, "\0\0\x80\x3f", 4);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    fuzz_write(path, buf, 8 + (size_t)n + 4);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    if (!mkdtemp(dir)) fuzz_die("mkdtemp");
    atexit(cleanup);
    make_shard(dir, "a.safetensors", "x");
    make_shard(dir, "b.safetensors", "y");
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path;
    if (fuzz_mode(&data, &size, "INDEX\n")) {
        fuzz_write(index_path, data, size);
        path = index_path;
    } else {
        path = fuzz_memfd(data, size);
    }
    ldm_safetensors *st = ldm_st_open(path);
    if (!st) return 0;
    size_t n = ldm_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const ldm_st_tensor *t = ldm_st_at(st, i);
        if (ldm_st_find(st, t->name) != t) fuzz_die("ldm_st_find does not find a listed tensor");
        if ((uint64_t)t->numel * ldm_st_dtype_size(t->dtype) != t->nbytes)
            fuzz_die("nbytes != numel * dtype size");
        (void)ldm_st_dtype_name(t->dtype);
        float *f = ldm_st_to_f32(t);
        for (int64_t k = 0; f && k < t->numel; k++) fuzz_sink += f[k] != 0.0f;
        free(f);
    }
    (void)ldm_st_metadata(st, "format");
    ldm_st_close(st);
    return 0;
}
