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

#define LDM_VERSION "0.2.0"

#if defined(__GNUC__)
#define LDM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LDM_PRINTF(a, b)
#endif

/* What kind of failure the current error is.  Public calls of the library return an
 * ldm_status; only src/cli turns one into an exit code (usage 2, data and runtime 1,
 * interrupted 130) and a message on stderr.
 *   LDM_USAGE       the caller's parameters are wrong (a flag, a size, a range)
 *   LDM_DATA        a file's content is wrong (a bundle, a config, a PNG, a database row)
 *   LDM_RUNTIME     the system or a backend failed (I/O, memory, a kernel, a NaN)
 *   LDM_INTERRUPTED stopped by the caller's interrupt flag                        */
typedef enum ldm_status {
    LDM_OK = 0,
    LDM_USAGE,
    LDM_DATA,
    LDM_RUNTIME,
    LDM_INTERRUPTED,
} ldm_status;

/* Set the current error message (printf-style), kind LDM_RUNTIME.  Always returns -1. */
int ldm_error(const char *fmt, ...) LDM_PRINTF(1, 2);
/* The same with an explicit kind.  Always returns -1. */
int ldm_error_kind(ldm_status kind, const char *fmt, ...) LDM_PRINTF(2, 3);
/* The kind of the current error (LDM_RUNTIME unless set otherwise). */
ldm_status ldm_last_status(void);
/* Change the kind of the current error, keeping its message.  Always returns -1. */
int ldm_error_set_kind(ldm_status kind);
/* "ok", "usage error", "data error", "runtime error", "interrupted". */
const char *ldm_status_name(ldm_status s);
/* Prepend "prefix: " to the current message.  Always returns -1. */
int ldm_error_prefix(const char *fmt, ...) LDM_PRINTF(1, 2);
const char *ldm_last_error(void);

/* Messages.  The library never writes to a stream: ldm_log and ldm_warn hand each
 * message to the handler the program installed (src/cli prints them on stderr), and
 * drop it when there is none.  level: 0 always, 1 normal, 2 verbose (the handler
 * decides what to show); warnings are level 0 with warning set. */
typedef void (*ldm_log_fn)(void *user, int level, int warning, const char *msg);
void ldm_set_log_handler(ldm_log_fn fn, void *user);
void ldm_log(int level, const char *fmt, ...) LDM_PRINTF(2, 3);
void ldm_warn(const char *fmt, ...) LDM_PRINTF(1, 2);

/* malloc/calloc that abort on failure (out of memory is not recoverable here; sizes
 * read from files are checked against limits before they reach an allocation).  The
 * message goes to the log handler first. */
void *ldm_xmalloc(size_t n);
void *ldm_xcalloc(size_t n, size_t size);
char *ldm_xstrdup(const char *s);

/* ---- Checked size arithmetic, for every size computed from file data (limits.h).
 * Each stores a op b in *out and returns 0, or returns -1 on overflow (*out untouched). */
static inline int ldm_mul_size(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return -1;
    *out = r;
    return 0;
}
static inline int ldm_add_size(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) return -1;
    *out = r;
    return 0;
}
static inline int ldm_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return -1;
    *out = r;
    return 0;
}
static inline int ldm_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r)) return -1;
    *out = r;
    return 0;
}

/* ---- Files.  Every file ldm reads is opened with ldm_open_regular, every file it writes
 * goes through a temporary from ldm_tmp_create that is renamed over the output. */

/* Open an existing file read-only without ever blocking: O_NONBLOCK (a FIFO or a device
 * would block in open()), fstat, refuse anything but a regular file ("PATH: not a regular
 * file (a FIFO)"), then clear O_NONBLOCK.  The fd (O_CLOEXEC), or -1 with ldm_error
 * naming the path. */
int ldm_open_regular(const char *path);

/* Read a whole regular file into memory (NUL-terminated).  NULL and ldm_error on failure. */
char *ldm_read_file(const char *path, size_t *len);

/* 0 when `path` does not exist or is a regular file (or a link to one); -1 with ldm_error
 * when it is something an atomic write must not replace: a folder, a FIFO, a device
 * (-o /dev/null), a socket. */
int ldm_check_output(const char *path);

/* Create the temporary file for an atomic write of `path`: ".ldm-XXXXXX" (random) in
 * path's folder, so its name always fits NAME_MAX whatever the output's name, created with
 * O_EXCL | O_NOFOLLOW (mode 0644 less the umask) so that no planted file or symbolic link
 * is ever followed or truncated.  Its path goes to tmp[tmpsz].  Returns the fd (O_WRONLY,
 * O_CLOEXEC), or -1 with ldm_error naming `path`. */
int ldm_tmp_create(const char *path, char *tmp, size_t tmpsz);

/* Write a file atomically: ldm_check_output, data to a ldm_tmp_create temporary which is
 * fsynced and renamed over path.  On failure (a full disk, a file size limit: the message
 * names path and gives the system's reason) the temporary is removed and path is left as
 * it was. */
int ldm_write_file_atomic(const char *path, const void *data, size_t len);
/* The same, but an existing file is never replaced: -1 (naming it) when path exists,
 * also when another process creates it at the same moment. */
int ldm_write_file_new(const char *path, const void *data, size_t len);

#endif
