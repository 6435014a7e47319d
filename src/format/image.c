/* image.c - PNG and JPEG input pictures as 8-bit RGB.  See image.h. */
#include "format/image.h"

#include <errno.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>   /* after stdio.h: it uses FILE and size_t */
#include <jerror.h>

#include "core/common.h"
#include "format/png_io.h"

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_fail(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jump, 1);
}
/* Warnings are not printed; but data that ends early is an error, as PIL refuses a
 * truncated JPEG (libjpeg would fill the rest with grey: a 175-byte file could stand for a
 * 64-megapixel picture, decoded in full). */
static void jpeg_quiet(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        jpeg_err *e = (jpeg_err *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "truncated (the data ends before the picture)");
        longjmp(e->jump, 1);
    }
}

/* A progressive JPEG may hold any number of scans, each a pass over every coefficient: a
 * few kilobytes of hostile scans keep a decoder busy for minutes (libjpeg-turbo's djpeg has
 * -maxscans for this).  Real encoders write at most a few dozen. */
#define LDM_JPEG_MAX_SCANS 256

static void jpeg_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > LDM_JPEG_MAX_SCANS) {
        jpeg_err *e = (jpeg_err *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than %d scans", LDM_JPEG_MAX_SCANS);
        longjmp(e->jump, 1);
    }
}

/* From the open file f, or from mem[len] when f is NULL. */
static int read_jpeg(const char *path, FILE *f, const void *mem, size_t len, uint8_t **rgb,
                     int *w, int *h) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    uint8_t *volatile out = NULL;
    struct jpeg_progress_mgr progress = {.progress_monitor = jpeg_progress};
    memset(&cinfo, 0, sizeof cinfo);
    err.msg[0] = '\0';
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_fail;
    err.pub.emit_message = jpeg_quiet;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(out);
        return ldm_error_kind(LDM_DATA, "%s: invalid JPEG: %s", path, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &progress;
    if (f) jpeg_stdio_src(&cinfo, f);
    else jpeg_mem_src(&cinfo, mem, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.image_width > LDM_IMAGE_MAX_SIDE || cinfo.image_height > LDM_IMAGE_MAX_SIDE ||
        (uint64_t)cinfo.image_width * cinfo.image_height > LDM_IMAGE_MAX_PIXELS) {
        int W = (int)cinfo.image_width, H = (int)cinfo.image_height;
        jpeg_destroy_decompress(&cinfo);
        return ldm_error_kind(LDM_DATA, "%s: image %dx%d is larger than ldm reads (%d per side, %d "
                              "pixels)", path, W, H, LDM_IMAGE_MAX_SIDE, LDM_IMAGE_MAX_PIXELS);
    }
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return ldm_error_kind(LDM_DATA, "%s: CMYK JPEG is not supported (save it as RGB)", path);
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        snprintf(err.msg, sizeof err.msg, "%d colour components", cinfo.output_components);
        longjmp(err.jump, 1);
    }
    const size_t row = (size_t)cinfo.output_width * 3;
    out = ldm_xmalloc(row * cinfo.output_height);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW r = out + row * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &r, 1);
    }
    jpeg_finish_decompress(&cinfo);
    *w = (int)cinfo.output_width;
    *h = (int)cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    *rgb = out;
    return 0;
}

static int is_jpeg(const unsigned char *sig, size_t k) {
    return k >= 3 && sig[0] == 0xff && sig[1] == 0xd8 && sig[2] == 0xff;
}
static int is_png(const unsigned char *sig, size_t k) {
    return k >= 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8);
}

int ldm_image_read(const char *path, uint8_t **rgb, int *w, int *h) {
    *rgb = NULL;
    int fd = ldm_open_regular(path);   /* a FIFO must not block open() */
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return ldm_error("%s: %s", path, strerror(e));
    }
    unsigned char sig[8] = {0};
    size_t k = fread(sig, 1, sizeof sig, f);
    int rc;
    if (is_jpeg(sig, k)) {
        rewind(f);
        rc = read_jpeg(path, f, NULL, 0, rgb, w, h);
        fclose(f);
        return rc;
    }
    fclose(f);
    if (is_png(sig, k)) {
        rc = ldm_png_read(path, rgb, w, h, NULL, NULL);
        if (rc) ldm_error_set_kind(LDM_DATA);
        return rc;
    }
    return ldm_error_kind(LDM_DATA, "%s: not a PNG or JPEG image", path);
}

int ldm_image_decode(const char *name, const void *data, size_t len, uint8_t **rgb, int *w,
                     int *h) {
    *rgb = NULL;
    if (is_jpeg(data, len)) return read_jpeg(name, NULL, data, len, rgb, w, h);
    if (is_png(data, len)) {
        int rc = ldm_png_decode(data, len, rgb, w, h, NULL, NULL);
        if (rc) ldm_error_set_kind(LDM_DATA);
        return rc;
    }
    return ldm_error_kind(LDM_DATA, "%s: not a PNG or JPEG image", name);
}
