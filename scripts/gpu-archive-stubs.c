/* gpu-archive-stubs.c - linked only into the binaries scripts/gpu-check.sh stages for the
 * GPU machine, which has no libarchive: there libarchive.a is linked statically, and its
 * format table (archive_write_set_format.o) names every writer, some of which need nettle,
 * liblzma, libbz2 and libxml2 (with ICU, 30 MB). ldm writes only pax tar, so these writers
 * are replaced by stubs that fail (ARCHIVE_FATAL) and the table links without them. */
struct archive;
#define LDM_STUB(name)                 \
    int name(struct archive *a);       \
    int name(struct archive *a) {      \
        (void)a;                       \
        return -30; /* ARCHIVE_FATAL */ \
    }
LDM_STUB(archive_write_set_format_7zip)
LDM_STUB(archive_write_set_format_xar)
LDM_STUB(archive_write_set_format_mtree)
LDM_STUB(archive_write_set_format_mtree_classic)
LDM_STUB(archive_write_set_format_warc)
LDM_STUB(archive_write_set_format_zip)
