/* fuzz_util.h - helpers shared by the libFuzzer harnesses in tests/fuzz/.
 *
 * Inputs that the library reads by path are written to a memfd and opened as
 * /proc/self/fd/N (a regular file as far as fstat is concerned; no disk I/O).
 * Harnesses are run from the repository root (tests/fuzz/run.sh), where they find the
 * fixtures they need.
 */
#ifndef LDM_FUZZ_UTIL_H
#define LDM_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

static inline void fuzz_die(const char *what) {
    fprintf(stderr, "fuzz harness: %s\n", what);
    abort();
}

/* Reads go here, so that the compiler keeps them (every byte must be readable). */
static volatile unsigned fuzz_sink;

/* A memfd holding the input; fuzz_memfd_path() names it. */
static int fuzz_fd = -1;
static char fuzz_path[64];

static inline const char *fuzz_memfd(const uint8_t *data, size_t size) {
    if (fuzz_fd < 0) {
        fuzz_fd = memfd_create("ldm-fuzz", MFD_CLOEXEC);
        if (fuzz_fd < 0) fuzz_die("memfd_create failed");
        snprintf(fuzz_path, sizeof fuzz_path, "/proc/self/fd/%d", fuzz_fd);
    }
    if (ftruncate(fuzz_fd, 0) != 0) fuzz_die("ftruncate failed");
    for (size_t done = 0; done < size;) {
        ssize_t w = pwrite(fuzz_fd, data + done, size - done, (off_t)done);
        if (w <= 0) fuzz_die("pwrite failed");
        done += (size_t)w;
    }
    return fuzz_path;
}

/* A NUL-terminated copy (the input may contain NULs: the text ends at the first). */
static inline char *fuzz_str(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) fuzz_die("out of memory");
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* 1 and the rest of the input when data starts with `tag` (e.g. "INDEX\n"). */
static inline int fuzz_mode(const uint8_t **data, size_t *size, const char *tag) {
    size_t n = strlen(tag);
    if (*size < n || memcmp(*data, tag, n) != 0) return 0;
    *data += n;
    *size -= n;
    return 1;
}

/* Write a file (fixtures of a harness, in its own temporary folder). */
static inline void fuzz_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) fuzz_die(path);
}

#endif
