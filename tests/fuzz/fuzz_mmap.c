/* fuzz_mmap.c - file mappings as exact-size heap copies for the fuzz build (fuzz_mmap.h). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

void *ldm_fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int ldm_fuzz_munmap(void *addr, size_t len);

#define MAX_MAPS 256
static void *maps[MAX_MAPS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void *ldm_fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if ((flags & MAP_ANONYMOUS) || fd < 0 || (prot & PROT_WRITE))
        return mmap(addr, len, prot, flags, fd, off);
    uint8_t *p = malloc(len ? len : 1);
    if (!p) { errno = ENOMEM; return MAP_FAILED; }
    for (size_t got = 0; got < len;) {
        ssize_t r = pread(fd, p + got, len - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { free(p); errno = r < 0 ? errno : EIO; return MAP_FAILED; }
        got += (size_t)r;
    }
    pthread_mutex_lock(&lock);
    int i = 0;
    while (i < MAX_MAPS && maps[i]) i++;
    if (i == MAX_MAPS) { pthread_mutex_unlock(&lock); free(p); errno = ENOMEM; return MAP_FAILED; }
    maps[i] = p;
    pthread_mutex_unlock(&lock);
    return p;
}

int ldm_fuzz_munmap(void *addr, size_t len) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_MAPS; i++)
        if (maps[i] == addr) {
            maps[i] = NULL;
            pthread_mutex_unlock(&lock);
            free(addr);
            return 0;
        }
    pthread_mutex_unlock(&lock);
    return munmap(addr, len);
}
