/* sha256.h - SHA-256 (FIPS 180-4), used for the bundle content hash. */
#ifndef LDM_SHA256_H
#define LDM_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct ldm_sha256 {
    uint32_t h[8];
    uint64_t len;          /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
} ldm_sha256;

void ldm_sha256_init(ldm_sha256 *s);
void ldm_sha256_update(ldm_sha256 *s, const void *data, size_t n);
void ldm_sha256_final(ldm_sha256 *s, uint8_t digest[32]);
/* Lower-case hex of a digest: 64 characters and a NUL. */
void ldm_sha256_hex(const uint8_t digest[32], char hex[65]);
/* One-shot convenience. */
void ldm_sha256_buf(const void *data, size_t n, uint8_t digest[32]);

/* Hex SHA-256 of a whole file's bytes.  0, or -1 with ldm_error naming the file. */
int ldm_sha256_file(const char *path, char hex[65]);

#endif
