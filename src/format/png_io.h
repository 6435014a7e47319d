/* png_io.h - write and read 8-bit RGB PNG files with text chunks (libpng).
 *
 * Written files are deterministic: the same pixels and texts give the same bytes (no
 * tIME chunk, fixed zlib settings).  Text chunks come before the image data; a text
 * whose characters all fit in Latin-1 is stored as tEXt (converted from UTF-8), any
 * other as uncompressed iTXt (UTF-8).  Keys must be 1-79 Latin-1 characters without
 * leading, trailing or doubled spaces, as the PNG specification requires.
 * Writing goes through a new temporary file in the same folder (ldm_write_file_atomic:
 * ".ldm-XXXXXX", O_EXCL), fsynced, then renamed: a failed write never leaves a partial
 * file under the final name, and an existing output that is not a regular file (a FIFO,
 * /dev/null) is refused.  Reading opens regular files only (a FIFO does not block).
 */
#ifndef LDM_PNG_IO_H
#define LDM_PNG_IO_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *key;  /* UTF-8 */
    const char *text; /* UTF-8 */
} ldm_png_text;

/* rgb: [height][width][3] bytes, rows top to bottom.  0, or -1 with ldm_error naming path. */
int ldm_png_write(const char *path, const uint8_t *rgb, int width, int height, const ldm_png_text *texts,
                  int n_texts);

/* The same PNG bytes in memory (*png malloc'd, caller frees): for hashing or streaming. */
int ldm_png_encode(const uint8_t *rgb, int width, int height, const ldm_png_text *texts, int n_texts,
                   uint8_t **png, size_t *png_len);

/* Read any PNG as 8-bit RGB, of at most LDM_MAX_PNG_PIXELS pixels (core/limits.h):
 * palette and gray become RGB, 16-bit samples keep their high byte (as PIL reads them),
 * alpha (or tRNS) is composited on white.
 * *rgb and *texts (keys and texts as UTF-8, tEXt/zTXt/iTXt in file order) are malloc'd;
 * free with free() and ldm_png_texts_free().  texts/n_texts may be NULL. */
int ldm_png_read(const char *path, uint8_t **rgb, int *width, int *height, ldm_png_text **texts,
                 int *n_texts);
/* The same from bytes in memory (messages say "png: ..."). */
int ldm_png_decode(const void *png, size_t len, uint8_t **rgb, int *width, int *height,
                   ldm_png_text **texts, int *n_texts);
void ldm_png_texts_free(ldm_png_text *texts, int n);

#endif
