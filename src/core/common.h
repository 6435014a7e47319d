/* common.h - error reporting, logging and small helpers shared by every part of ldm.
 *
 * Errors: a function that can fail returns non-zero (or NULL) and leaves a one-line
 * message in a per-thread buffer, read with ldm_last_error().  Messages say what was
 * expected, what was found and where (file, member, tensor or field).  Callers that
 * add context use ldm_error_prefix().
 */
#ifndef LDM_COMMON_H
#define LDM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LDM_VERSION "0.1.0"

#if defined(__GNUC__)
#define LDM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LDM_PRINTF(a, b)
#endif

/* Set the current error message (printf-style).  Always returns -1. */
int ldm_error(const char *fmt, ...) LDM_PRINTF(1, 2);
/* Prepend "prefix: " to the current message.  Always returns -1. */
int ldm_error_prefix(const char *fmt, ...) LDM_PRINTF(1, 2);
const char *ldm_last_error(void);

/* Verbosity: 0 quiet, 1 normal, 2 verbose.  ldm_log(level, ...) prints to stderr. */
extern int ldm_verbosity;
void ldm_log(int level, const char *fmt, ...) LDM_PRINTF(2, 3);
void ldm_warn(const char *fmt, ...) LDM_PRINTF(1, 2);

/* malloc/calloc that abort with a message on failure (out of memory is not recoverable). */
void *ldm_xmalloc(size_t n);
void *ldm_xcalloc(size_t n, size_t size);
char *ldm_xstrdup(const char *s);

/* Read a whole file into memory (NUL-terminated).  NULL and ldm_error on failure. */
char *ldm_read_file(const char *path, size_t *len);

/* Write a file atomically: data goes to "path.tmp.PID" which is fsynced and renamed. */
int ldm_write_file_atomic(const char *path, const void *data, size_t len);

#endif
