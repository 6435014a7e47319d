/* fuzz_bundle.c - libFuzzer harness for the .ldmb bundle reader (format/bundle.c).
 *
 * The input is a bundle file.  It is opened with ldm_bundle_open, which walks the tar
 * headers, cross-checks them with libarchive and validates the manifest; a bundle that
 * opens is verified (every checksum, the content hash), every tensor is looked up by name
 * and every byte of it read, its models are loaded on the dry backend as ldmpack does
 * (ldm_pack_check_models), and ldmpack --info (text and JSON) describes it.
 *
 * The custom mutator runs libFuzzer's mutations and then, most of the time, rewrites
 * the checksum of every tar header it can find, so that mutated headers get past the
 * checksum test to the code behind it (the seeds are small valid bundles,
 * tests/fuzz/corpus/bundle, and tests/fuzz/bundle.dict has the tar/pax/manifest tokens).
 */
#include "fuzz_util.h"
#include "format/bundle.h"
#include "app/pack.h"

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    devnull = fopen("/dev/null", "w");
    if (!devnull) fuzz_die("/dev/null");
    return 0;
}

/* The value of a tar number field (octal, or GNU base-256); 0 when it is not one. */
static uint64_t tar_num(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    if (p[0] & 0x80) {
        for (size_t i = 1; i < n; i++) {
            if (v >> 56) return 0;
            v = v << 8 | p[i];
        }
        return v;
    }
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
        if (v >> 60) return 0;
        v = v * 8 + (uint64_t)(p[i] - '0');
    }
    return v;
}

/* Rewrite the checksum of each header block, following the sizes from header to header. */
static void fix_checksums(uint8_t *data, size_t size) {
    size_t off = 0;
    while (off + 512 <= size) {
        uint8_t *h = data + off;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++) zero = !h[i];
        if (zero) { off += 512; continue; }
        unsigned sum = 0;
        for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
        char field[9];
        snprintf(field, sizeof field, "%06o", sum & 0777777);
        memcpy(h + 148, field, 6);
        h[154] = '\0';
        h[155] = ' ';
        uint64_t len = tar_num(h + 124, 12);
        if (len > size) break;
        off += 512 + (size_t)((len + 511) & ~(uint64_t)511);
    }
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
    size = LLVMFuzzerMutate(data, size, max_size);
    if (seed % 8) fix_checksums(data, size);   /* 1 in 8 keeps what the mutation made */
    return size;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfd(data, size);
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return 0;
    (void)ldm_bundle_verify(b);
    (void)ldm_bundle_hash(b);
    for (size_t i = 0; i < ldm_bundle_member_count(b); i++) {
        const char *name = ldm_bundle_member_name(b, i);
        size_t len = 0;
        const char *text = ldm_bundle_member(b, name, &len);
        if (text && (uint64_t)len != ldm_bundle_member_size(b, i)) fuzz_die("member size differs");
        if (ldm_bundle_member_offset(b, i) + ldm_bundle_member_size(b, i) > ldm_bundle_file_size(b))
            fuzz_die("a member lies outside the file");
    }
    for (size_t i = 0; i < ldm_bundle_tensor_count(b); i++) {
        ldm_tensor *t = ldm_bundle_tensor_at(b, i);
        if (ldm_bundle_tensor(b, t->name) != t) fuzz_die("ldm_bundle_tensor does not find a listed tensor");
        for (int64_t k = 0; k < t->numel; k++) fuzz_sink += t->f16[k];
        (void)ldm_bundle_need(b, t->name, t->ndim, t->shape);
    }
    (void)ldm_pack_check_models(b);
    ldm_bundle_close(b);
    (void)ldm_pack_info(path, 0, devnull);
    (void)ldm_pack_info(path, 1, devnull);
    return 0;
}
