/* common.c - error buffer, logging, checked allocation and file I/O (regular files only,
 * atomic writes through an O_EXCL temporary). */
#include "core/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
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

/* "a FIFO", "a folder", ... for messages about a file that is not a regular file. */
static const char *file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a folder";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISLNK(m)) return "a symbolic link";
    return "not a plain file";
}

int ldm_open_regular(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return ldm_error("%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ldm_error("%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ldm_error("%s: not a regular file (%s)", path, file_kind(sb.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return ldm_error("%s: %s", path, strerror(e));
    }
    return fd;
}

char *ldm_read_file(const char *path, size_t *len) {
    int fd = ldm_open_regular(path);
    if (fd < 0) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = ldm_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > SIZE_MAX / 2) { free(buf); close(fd); out_of_memory(SIZE_MAX); }
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); close(fd); out_of_memory(cap); }
            buf = nb;
        }
        ssize_t got = read(fd, buf + n, cap - n - 1);
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            ldm_error("%s: read error: %s", path, strerror(e));
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int ldm_check_output(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || S_ISREG(sb.st_mode)) return 0;
    return ldm_error("%s: exists and is %s, not a regular file; refusing to replace it", path,
                     file_kind(sb.st_mode));
}

/* 64 random bits for temporary names (getrandom, else time, pid and a counter). */
static uint64_t tmp_random(void) {
    static _Atomic unsigned counter;
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15u ^ (uint64_t)ts.tv_sec << 20 ^
        (uint64_t)getpid() << 40 ^ (uint64_t)++counter * 0xbf58476d1ce4e5b9u;
    return r ^ r >> 31;
}

int ldm_tmp_create(const char *path, char *tmp, size_t tmpsz) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
    const size_t namelen = 11;                       /* ".ldm-XXXXXX" */
    if (!path[0] || (slash && !slash[1]))
        return ldm_error("%s: not a file name", path);
    if (dirlen + namelen + 1 > tmpsz) return ldm_error("%s: %s", path, strerror(ENAMETOOLONG));
    memcpy(tmp, path, dirlen);
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t r = tmp_random();
        char *p = tmp + dirlen;
        memcpy(p, ".ldm-", 5);
        for (int i = 0; i < 6; i++, r /= 62) p[5 + i] = alnum[r % 62];
        p[namelen] = '\0';
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0644);
        if (fd >= 0) return fd;
        if (errno != EEXIST && errno != EINTR)
            return ldm_error("%s: cannot create a file in its folder: %s", path, strerror(errno));
    }
    return ldm_error("%s: cannot create a temporary file in its folder (100 names taken)", path);
}

/* data into a new temporary in path's folder (O_EXCL|O_NOFOLLOW), fsynced and closed;
 * tmp gets its name.  An existing path that is not a regular file is refused. */
static int write_tmp(const char *path, const void *data, size_t len, char *tmp, size_t cap) {
    if (ldm_check_output(path)) return -1;
    int fd = ldm_tmp_create(path, tmp, cap);
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            int e = w < 0 ? errno : ENOSPC;     /* ENOSPC, EFBIG (ulimit -f), EIO, ... */
            close(fd);
            unlink(tmp);
            return ldm_error("%s: write failed: %s", path, strerror(e));
        }
        p += w;
        left -= (size_t)w;
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
