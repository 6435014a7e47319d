/* common.c - error buffer, logging, checked allocation and whole-file I/O. */
#include "core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local char err_buf[2048];
static _Thread_local ldm_status err_kind = LDM_RUNTIME;

int ldm_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    err_kind = LDM_RUNTIME;
    return -1;
}

int ldm_error_kind(ldm_status kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    err_kind = kind == LDM_OK ? LDM_RUNTIME : kind;
    return -1;
}

ldm_status ldm_last_status(void) { return err_kind; }

int ldm_error_set_kind(ldm_status kind) {
    err_kind = kind == LDM_OK ? LDM_RUNTIME : kind;
    return -1;
}

const char *ldm_status_name(ldm_status s) {
    switch (s) {
    case LDM_OK: return "ok";
    case LDM_USAGE: return "usage error";
    case LDM_DATA: return "data error";
    case LDM_RUNTIME: return "runtime error";
    case LDM_INTERRUPTED: return "interrupted";
    }
    return "error";
}

int ldm_error_prefix(const char *fmt, ...) {
    char prefix[1024], old[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    size_t np = strlen(prefix), no = strlen(old);
    if (np > sizeof err_buf / 2) np = sizeof err_buf / 2;
    if (np + 2 + no >= sizeof err_buf) no = sizeof err_buf - np - 3;
    memcpy(err_buf, prefix, np);
    memcpy(err_buf + np, ": ", 2);
    memcpy(err_buf + np + 2, old, no);
    err_buf[np + 2 + no] = '\0';
    return -1;
}

const char *ldm_last_error(void) { return err_buf; }

static ldm_log_fn log_fn;
static void *log_user;

void ldm_set_log_handler(ldm_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

static void emit(int level, int warning, const char *fmt, va_list ap) {
    if (!log_fn) return;
    char buf[4096];
    vsnprintf(buf, sizeof buf, fmt, ap);
    log_fn(log_user, level, warning, buf);
}

void ldm_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(level, 0, fmt, ap);
    va_end(ap);
}

void ldm_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(0, 1, fmt, ap);
    va_end(ap);
}

static void out_of_memory(size_t n) {
    ldm_log(0, "ldm: out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *ldm_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *ldm_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    return p;
}

char *ldm_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = ldm_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

char *ldm_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { ldm_error("%s: %s", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = ldm_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; char *nb = realloc(buf, cap); if (!nb) { free(buf); fclose(f); out_of_memory(cap); } buf = nb; }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); ldm_error("%s: read error", path); return NULL; }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* data into "path.tmp.PID", fsynced and closed; tmp gets the name. */
static int write_tmp(const char *path, const void *data, size_t len, char *tmp, size_t cap) {
    snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ldm_error("%s: cannot create: %s", path, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno; close(fd); unlink(tmp);
            return ldm_error("%s: write failed: %s", path, strerror(e));
        }
        p += w; left -= (size_t)w;
    }
    int synced = fsync(fd) == 0 ? 0 : errno;
    int closed = close(fd) == 0 ? 0 : errno;
    if (synced || closed) {
        unlink(tmp);
        return ldm_error("%s: write failed: %s", path, strerror(synced ? synced : closed));
    }
    return 0;
}

int ldm_write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4096];
    if (write_tmp(path, data, len, tmp, sizeof tmp)) return -1;
    if (rename(tmp, path) != 0) { int e = errno; unlink(tmp); return ldm_error("%s: cannot rename into place: %s", path, strerror(e)); }
    return 0;
}

int ldm_write_file_new(const char *path, const void *data, size_t len) {
    char tmp[4096];
    if (write_tmp(path, data, len, tmp, sizeof tmp)) return -1;
    /* renameat2(RENAME_NOREPLACE) where the file system has it, else link(): both fail
     * with EEXIST instead of replacing; the last resort checks first (not atomic) */
    int rc = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE), e = rc ? errno : 0;
    if (rc && (e == EINVAL || e == ENOSYS || e == ENOTSUP)) {
        rc = link(tmp, path);
        e = rc ? errno : 0;
        if (rc == 0 || e == EEXIST) unlink(tmp);
        if (rc && (e == EPERM || e == ENOTSUP || e == EOPNOTSUPP)) {
            struct stat st;
            if (stat(path, &st) == 0) { rc = -1; e = EEXIST; unlink(tmp); }
            else { rc = rename(tmp, path); e = rc ? errno : 0; }
        }
    }
    if (rc) {
        unlink(tmp);
        if (e == EEXIST) return ldm_error("%s: exists (made meanwhile by another program); not replaced", path);
        return ldm_error("%s: cannot rename into place: %s", path, strerror(e));
    }
    return 0;
}
