/* test_files.c - the file handling every reader and writer shares (core/common.c) and the
 * PNG reader/writer on top of it: FIFOs and devices are refused without blocking, atomic
 * writes create their temporary with O_EXCL in the output's folder (a planted symbolic
 * link is never followed, names of 255 bytes work), an output that is not a regular file
 * is refused, a write that hits the file size limit (EFBIG) fails with the system's
 * reason and leaves nothing, and the checked size arithmetic. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/common.h"
#include "core/limits.h"
#include "format/png_io.h"
#include "test.h"

static char dir[256];

static const char *path_in(const char *name) {
    static char buf[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int has_error(const char *want) {
    if (strstr(ldm_last_error(), want)) return 1;
    printf("  error '%s' lacks '%s'\n", ldm_last_error(), want);
    return 0;
}

/* Directory entries other than . and .. whose name starts with prefix. */
static int count(const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !strncmp(e->d_name, prefix, strlen(prefix)))
            n++;
    closedir(d);
    return n;
}

/* Noise: it does not compress, so a 200x200 PNG is ~120 kB. */
static uint8_t *image(int w, int h) {
    uint8_t *p = ldm_xmalloc((size_t)w * h * 3);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        p[i] = (uint8_t)x;
    }
    return p;
}

static void test_arith(void) {
    size_t z = 7;
    uint64_t u = 7;
    CHECK(ldm_mul_size(3, 5, &z) == 0 && z == 15, "3 * 5");
    CHECK(ldm_mul_size(SIZE_MAX / 2 + 1, 2, &z) == -1 && z == 15, "overflow leaves *out alone");
    CHECK(ldm_add_size(SIZE_MAX, 1, &z) == -1, "SIZE_MAX + 1");
    CHECK(ldm_add_size(SIZE_MAX - 1, 1, &z) == 0 && z == SIZE_MAX, "SIZE_MAX - 1 + 1");
    CHECK(ldm_mul_u64(UINT64_C(1) << 32, UINT64_C(1) << 32, &u) == -1, "2^32 * 2^32 wraps");
    CHECK(ldm_mul_u64(UINT64_C(1) << 62, 4, &u) == -1, "2^62 * 4 wraps");
    CHECK(ldm_mul_u64(UINT64_C(1) << 31, UINT64_C(1) << 32, &u) == 0 && u == UINT64_C(1) << 63, "2^63");
    CHECK(ldm_add_u64(UINT64_MAX - 511, 512, &u) == -1, "2^64 - 512 + 512 wraps");
    CHECK(ldm_add_u64(0, 0, &u) == 0 && u == 0, "0 + 0");
}

/* Readers: a FIFO (or any non-regular file) is refused at once, naming the path. */
static void test_readers(void) {
    const char *fifo = path_in("pipe.png");
    CHECK(mkfifo(fifo, 0644) == 0, "mkfifo: %s", strerror(errno));
    alarm(20);   /* a regression would block in open(): fail instead of hanging */
    size_t len;
    CHECK(ldm_read_file(fifo, &len) == NULL && has_error(fifo) && has_error("not a regular file (a FIFO)"),
          "ldm_read_file on a FIFO");
    CHECK(ldm_open_regular(fifo) == -1 && has_error("a FIFO"), "ldm_open_regular on a FIFO");
    uint8_t *rgb = NULL;
    int w, h;
    CHECK(ldm_png_read(fifo, &rgb, &w, &h, NULL, NULL) == -1 && has_error(fifo) && has_error("FIFO"),
          "ldm_png_read on a FIFO");
    CHECK(rgb == NULL, "rgb set");
    CHECK(ldm_read_file(dir, &len) == NULL && has_error("a folder"), "ldm_read_file on a folder");
    CHECK(ldm_read_file("/dev/null", &len) == NULL && has_error("/dev/null") && has_error("character device"),
          "ldm_read_file on /dev/null");
    alarm(0);
    unlink(fifo);

    /* a regular file still reads, and O_NONBLOCK was cleared */
    const char *f = path_in("plain.txt");
    CHECK(ldm_write_file_atomic(f, "hello", 5) == 0, "write: %s", ldm_last_error());
    int fd = ldm_open_regular(f);
    CHECK(fd >= 0 && !(fcntl(fd, F_GETFL) & O_NONBLOCK), "O_NONBLOCK left set");
    if (fd >= 0) close(fd);
    char *t = ldm_read_file(f, &len);
    CHECK(t && len == 5 && !strcmp(t, "hello"), "read back");
    free(t);
    unlink(f);
}

/* Writers: temporaries, outputs that are not regular files, long names. */
static void test_writers(void) {
    uint8_t *img = image(4, 4);

    /* the temporary is new (O_EXCL) and short, in the output's folder */
    char t1[4096], t2[4096];
    int a = ldm_tmp_create(path_in("x.png"), t1, sizeof t1), b = ldm_tmp_create(path_in("x.png"), t2, sizeof t2);
    CHECK(a >= 0 && b >= 0 && strcmp(t1, t2) != 0, "two temporaries: %s %s", t1, t2);
    CHECK(strncmp(t1, dir, strlen(dir)) == 0 && strlen(strrchr(t1, '/') + 1) == 11 &&
          !strncmp(strrchr(t1, '/') + 1, ".ldm-", 5), "temporary name %s", t1);
    if (a >= 0) { close(a); unlink(t1); }
    if (b >= 0) { close(b); unlink(t2); }

    /* a symbolic link planted where the old code put its temporary (OUT.tmp.PID) is not
     * followed: the file it points to is untouched */
    const char *victim = path_in("victim");
    ldm_write_file_atomic(victim, "precious", 8);
    char planted[4096];
    snprintf(planted, sizeof planted, "%s.tmp.%ld", path_in("out.png"), (long)getpid());
    CHECK(symlink(victim, planted) == 0, "symlink: %s", strerror(errno));
    CHECK(ldm_png_write(path_in("out.png"), img, 4, 4, NULL, 0) == 0, "write: %s", ldm_last_error());
    size_t len;
    char *v = ldm_read_file(victim, &len);
    CHECK(v && len == 8 && !memcmp(v, "precious", 8), "the planted link was followed");
    free(v);
    struct stat sb;
    CHECK(lstat(planted, &sb) == 0 && S_ISLNK(sb.st_mode), "planted link touched");
    unlink(planted);
    unlink(victim);
    unlink(path_in("out.png"));
    CHECK(count(".ldm-") == 0, "temporary left");

    /* an output that is a FIFO, or a link to a device, is refused and left alone */
    const char *fifo = path_in("fifo.png");
    mkfifo(fifo, 0644);
    alarm(20);
    CHECK(ldm_png_write(fifo, img, 4, 4, NULL, 0) == -1 && has_error(fifo) && has_error("FIFO"),
          "PNG over a FIFO");
    CHECK(ldm_write_file_atomic(fifo, "x", 1) == -1 && has_error("not a regular file"), "write over a FIFO");
    alarm(0);
    CHECK(lstat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode), "the FIFO was replaced");
    unlink(fifo);
    const char *null = path_in("null.png");
    symlink("/dev/null", null);
    CHECK(ldm_png_write(null, img, 4, 4, NULL, 0) == -1 && has_error("null.png") &&
          has_error("character device"), "PNG over a link to /dev/null");
    CHECK(lstat(null, &sb) == 0 && S_ISLNK(sb.st_mode), "the link to /dev/null was replaced");
    CHECK(stat("/dev/null", &sb) == 0 && S_ISCHR(sb.st_mode), "/dev/null is no longer a device");
    unlink(null);
    CHECK(count(".ldm-") == 0, "temporary left after refusals");

    /* names of 246..255 bytes are valid; the temporary must fit NAME_MAX too */
    char name[300];
    for (int n = 246; n <= 255; n += 9) {
        memset(name, 'n', (size_t)n);
        memcpy(name + n - 4, ".png", 5);
        CHECK(ldm_png_write(path_in(name), img, 4, 4, NULL, 0) == 0, "%d-byte name: %s", n, ldm_last_error());
        uint8_t *rgb = NULL;
        int w = 0, h = 0;
        CHECK(ldm_png_read(path_in(name), &rgb, &w, &h, NULL, NULL) == 0 && w == 4 && h == 4 &&
              !memcmp(rgb, img, 48), "%d-byte name read back: %s", n, ldm_last_error());
        free(rgb);
        unlink(path_in(name));
    }
    memset(name, 'n', 256);
    name[256] = '\0';
    CHECK(ldm_png_write(path_in(name), img, 4, 4, NULL, 0) == -1 && has_error("nnnn") &&
          has_error(strerror(ENAMETOOLONG)), "256-byte name");
    CHECK(count("") == 0, "files left: %d", count(""));
    free(img);
}

/* A write that exceeds the file size limit (ulimit -f) fails like a full disk. */
static void test_efbig(void) {
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN);   /* as the CLIs do: write() then fails with EFBIG */
    lim = old;
    lim.rlim_cur = 4096;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit: %s", strerror(errno));
    size_t n = 100000;
    char *data = ldm_xcalloc(n, 1);
    const char *out = path_in("big.bin");
    CHECK(ldm_write_file_atomic(out, data, n) == -1 && has_error(out) && has_error(strerror(EFBIG)),
          "EFBIG: %s", ldm_last_error());
    uint8_t *img = image(200, 200);   /* ~120 kB of noise-like pixels */
    CHECK(ldm_png_write(path_in("big.png"), img, 200, 200, NULL, 0) == -1 && has_error("big.png") &&
          has_error(strerror(EFBIG)), "PNG EFBIG: %s", ldm_last_error());
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_DFL);
    CHECK(access(out, F_OK) != 0 && access(path_in("big.png"), F_OK) != 0 && count("") == 0,
          "output or temporary left after EFBIG");
    free(img);
    free(data);
}

/* Append chunk type+data (n bytes) with its length and CRC at p; returns the bytes written. */
static size_t chunk(uint8_t *p, const uint8_t *type_data, size_t n) {
    uint32_t len = (uint32_t)n - 4, crc = (uint32_t)crc32(0, type_data, (uInt)n);
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(len >> (24 - 8 * i));
    memcpy(p + 4, type_data, n);
    for (int i = 0; i < 4; i++) p[4 + n + i] = (uint8_t)(crc >> (24 - 8 * i));
    return n + 8;
}

/* PNG chunks libpng would allocate in full before reading them. */
static void test_png_limits(void) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t png[128];
    memcpy(png, sig, 8);
    /* IHDR 1x1 RGB, then a zTXt chunk that claims 2^31 - 1 bytes (CRCs are not reached) */
    static const uint8_t ihdr[] = {0, 0, 0, 13, 'I', 'H', 'D', 'R', 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0,
                                   0x90, 0x77, 0x53, 0xde};
    memcpy(png + 8, ihdr, sizeof ihdr);
    static const uint8_t ztxt[] = {0x7f, 0xff, 0xff, 0xff, 'z', 'T', 'X', 't', 'k', 0, 0};
    memcpy(png + 8 + sizeof ihdr, ztxt, sizeof ztxt);
    size_t n = 8 + sizeof ihdr + sizeof ztxt;
    uint8_t *rgb = NULL;
    int w, h;
    CHECK(ldm_png_decode(png, n, &rgb, &w, &h, NULL, NULL) == -1 && has_error("zTXt") && has_error("too large"),
          "2 GiB zTXt chunk");
    const char *f = path_in("ztxt.png");
    ldm_write_file_atomic(f, png, n);
    CHECK(ldm_png_read(f, &rgb, &w, &h, NULL, NULL) == -1 && has_error(f) && has_error("zTXt"),
          "2 GiB zTXt chunk in a file");
    unlink(f);
    /* 100000 x 100000: refused before any allocation */
    static const uint8_t big[] = {'I', 'H', 'D', 'R', 0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 8, 2, 0, 0, 0};
    static const uint8_t idat[] = {'I', 'D', 'A', 'T', 0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1};
    static const uint8_t iend[] = {'I', 'E', 'N', 'D'};
    n = 8;
    n += chunk(png + n, big, sizeof big);
    n += chunk(png + n, idat, sizeof idat);
    n += chunk(png + n, iend, sizeof iend);
    CHECK(ldm_png_decode(png, n, &rgb, &w, &h, NULL, NULL) == -1 && has_error("100000x100000") &&
          has_error("too large"), "100000x100000 image");
    CHECK(rgb == NULL, "rgb set");
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/ldm_test_files.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp\n");
        return 1;
    }
    test_arith();
    test_readers();
    test_writers();
    test_efbig();
    test_png_limits();
    rmdir(dir);
    TEST_END();
}
