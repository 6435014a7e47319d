/* fuzz_mmap.h - force-included (-include) into every library object of the fuzz build.
 *
 * The bundle and safetensors readers memory-map their files.  AddressSanitizer does not
 * see a read past the end of a file mapping (the rest of the page is zero-filled, and the
 * next page may belong to another mapping), so in the fuzz build file mappings are
 * emulated by malloc + pread (fuzz_mmap.c): every byte past the end of the file is then a
 * heap-buffer-overflow that ASan reports at once.  Anonymous mappings go to the real mmap.
 */
#ifndef LDM_FUZZ_MMAP_H
#define LDM_FUZZ_MMAP_H

#include <stddef.h>
#include <sys/mman.h>
#include <sys/types.h>

void *ldm_fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int ldm_fuzz_munmap(void *addr, size_t len);

#define mmap ldm_fuzz_mmap
#define munmap ldm_fuzz_munmap

#endif
