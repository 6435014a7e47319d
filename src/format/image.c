/* image.c - PNG and JPEG input pictures as 8-bit RGB.  See image.h. */
#include "format/image.h"

#include <errno.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>   /* after stdio.h: it uses FILE and size_t */

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
static void jpeg_quiet(j_common_ptr cinfo, int level) { (void)cinfo; (void)level; }

static int read_jpeg(const char *path, FILE *f, uint8_t **rgb, int *w, int *h) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    uint8_t *volatile out = NULL;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_fail;
    err.pub.emit_message = jpeg_quiet;   /* warnings are not printed */
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(out);
        return ldm_error_kind(LDM_DATA, "%s: invalid JPEG: %s", path, err.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, f);
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
    if (cinfo.output_components != 3) longjmp(err.jump, 1);
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

int ldm_image_read(const char *path, uint8_t **rgb, int *w, int *h) {
    *rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ldm_error("%s: %s", path, strerror(errno));
    unsigned char sig[8] = {0};
    size_t k = fread(sig, 1, sizeof sig, f);
    int rc;
    if (k >= 3 && sig[0] == 0xff && sig[1] == 0xd8 && sig[2] == 0xff) {
        rewind(f);
        rc = read_jpeg(path, f, rgb, w, h);
        fclose(f);
        return rc;
    }
    fclose(f);
    if (k == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8)) {
        rc = ldm_png_read(path, rgb, w, h, NULL, NULL);
        if (rc) ldm_error_set_kind(LDM_DATA);
        return rc;
    }
    return ldm_error_kind(LDM_DATA, "%s: not a PNG or JPEG image", path);
}
