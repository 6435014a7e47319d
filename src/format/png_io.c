/* png_io.c - 8-bit RGB PNG writer and reader on libpng (see png_io.h).
 *
 * libpng reports errors by longjmp; each libpng session runs in a function that keeps
 * everything it allocates in a context struct owned by its caller, so cleanup after a
 * longjmp sees current values.
 */
#include "format/png_io.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "core/common.h"
#include "core/limits.h"

/* ---- libpng error plumbing ------------------------------------------------------ */

typedef struct {
    char msg[256];
} png_err;

static void on_error(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    ldm_log(2, "libpng: %s\n", msg);
}

/* ---- text conversion ------------------------------------------------------------ */

/* UTF-8 -> Latin-1 (malloc'd).  Returns 1 on success, 0 when a character is above
 * U+00FF, -1 on invalid UTF-8. */
static int utf8_to_latin1(const char *s, char **out) {
    size_t len = strlen(s), k = 0;
    char *o = ldm_xmalloc(len + 1);
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n <= 0) { free(o); return -1; }
        if (cp > 0xff) { free(o); return 0; }
        o[k++] = (char)cp;
        i += (size_t)n;
    }
    o[k] = 0;
    *out = o;
    return 1;
}

static char *latin1_to_utf8(const char *s) {
    size_t len = strlen(s), k = 0;
    char *o = ldm_xmalloc(2 * len + 1);
    for (size_t i = 0; i < len; i++) k += (size_t)utf8proc_encode_char((unsigned char)s[i], (utf8proc_uint8_t *)o + k);
    o[k] = 0;
    return o;
}

/* PNG keywords: 1-79 Latin-1 printable characters, no leading, trailing or double spaces. */
static int check_key(const char *key_latin1, const char *key_utf8) {
    size_t n = strlen(key_latin1);
    if (n < 1 || n > 79) return ldm_error("PNG text key \"%s\": must be 1 to 79 characters", key_utf8);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key_latin1[i];
        if (!((c >= 32 && c <= 126) || c >= 161))
            return ldm_error("PNG text key \"%s\": character 0x%02x is not allowed", key_utf8, c);
        if (c == ' ' && (i == 0 || i + 1 == n || key_latin1[i + 1] == ' '))
            return ldm_error("PNG text key \"%s\": leading, trailing or double space", key_utf8);
    }
    return 0;
}

/* ---- writing -------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} membuf;

static void write_cb(png_structp png, png_bytep data, size_t n) {
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap < m->len + n) cap *= 2;
        uint8_t *p = realloc(m->data, cap);
        if (!p) png_error(png, "out of memory");
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, n);
    m->len += n;
}

static void flush_cb(png_structp png) { (void)png; }

typedef struct {
    png_err err;
    png_structp png;
    png_infop info;
    png_bytep *rows;
    membuf out;
} write_ctx;

static int encode_png(write_ctx *c, const uint8_t *rgb, int width, int height, png_text *text, int n_text) {
    c->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &c->err, on_error, on_warning);
    if (!c->png) return ldm_error("png: cannot create libpng write struct");
    c->info = png_create_info_struct(c->png);
    if (!c->info) return ldm_error("png: cannot create libpng info struct");
    if (setjmp(png_jmpbuf(c->png))) return ldm_error("png: %s", c->err.msg);
    png_set_write_fn(c->png, &c->out, write_cb, flush_cb);
    png_set_compression_level(c->png, 6);
    png_set_IHDR(c->png, c->info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) png_set_text(c->png, c->info, text, n_text);
    c->rows = ldm_xmalloc((size_t)height * sizeof *c->rows);
    for (int y = 0; y < height; y++) c->rows[y] = (png_bytep)(rgb + (size_t)y * (size_t)width * 3);
    png_write_info(c->png, c->info);
    png_write_image(c->png, c->rows);
    png_write_end(c->png, c->info);
    return 0;
}

int ldm_png_encode(const uint8_t *rgb, int width, int height, const ldm_png_text *texts, int n_texts,
                   uint8_t **png_out, size_t *png_len) {
    *png_out = NULL;
    *png_len = 0;
    if (!rgb || width < 1 || height < 1 || width > LDM_MAX_PNG_SIDE || height > LDM_MAX_PNG_SIDE)
        return ldm_error("png: invalid image %dx%d", width, height);
    if (n_texts < 0 || (n_texts > 0 && !texts)) return ldm_error("png: invalid text list");

    /* convert keys and texts before libpng runs: the strings live until we free them */
    png_text *text = ldm_xcalloc(n_texts > 0 ? (size_t)n_texts : 1, sizeof *text);
    char **owned = ldm_xcalloc(2 * (size_t)(n_texts > 0 ? n_texts : 1), sizeof *owned);
    int rc = 0;
    for (int i = 0; i < n_texts && rc == 0; i++) {
        const char *key = texts[i].key ? texts[i].key : "", *val = texts[i].text ? texts[i].text : "";
        char *k1 = NULL, *v1 = NULL;
        int kr = utf8_to_latin1(key, &k1);
        if (kr <= 0) {
            rc = ldm_error("PNG text key \"%s\": %s", key, kr < 0 ? "invalid UTF-8" : "not representable in Latin-1");
            break;
        }
        owned[2 * i] = k1;
        if (check_key(k1, key) < 0) { rc = -1; break; }
        int vr = utf8_to_latin1(val, &v1);
        if (vr < 0) { rc = ldm_error("PNG text \"%s\": invalid UTF-8", key); break; }
        text[i].key = k1;
        if (vr == 1) {
            owned[2 * i + 1] = v1;
            text[i].compression = PNG_TEXT_COMPRESSION_NONE; /* tEXt */
            text[i].text = v1;
        } else {
            text[i].compression = PNG_ITXT_COMPRESSION_NONE; /* iTXt, UTF-8 */
            text[i].text = (char *)val;
            text[i].lang = NULL;
            text[i].lang_key = NULL;
        }
    }

    write_ctx c = {0};
    if (rc == 0) rc = encode_png(&c, rgb, width, height, text, n_texts);
    if (c.png) png_destroy_write_struct(&c.png, c.info ? &c.info : NULL);
    free(c.rows);
    for (int i = 0; i < 2 * n_texts; i++) free(owned[i]);
    free(owned);
    free(text);
    if (rc < 0) {
        free(c.out.data);
        return -1;
    }
    *png_out = c.out.data;
    *png_len = c.out.len;
    return 0;
}

int ldm_png_write(const char *path, const uint8_t *rgb, int width, int height, const ldm_png_text *texts,
                  int n_texts) {
    uint8_t *data;
    size_t len;
    if (ldm_png_encode(rgb, width, height, texts, n_texts, &data, &len) < 0)
        return ldm_error_prefix("%s", path);
    int rc = ldm_write_file_atomic(path, data, len);
    free(data);
    return rc;
}

/* ---- reading -------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n, at;
} memsrc;

static void read_cb(png_structp png, png_bytep out, size_t n) {
    memsrc *m = png_get_io_ptr(png);
    if (n > m->n - m->at) png_error(png, "unexpected end of data");
    memcpy(out, m->p + m->at, n);
    m->at += n;
}

typedef struct {
    png_err err;
    png_structp png;
    png_infop info;
    FILE *f;                /* the source: a file, or */
    memsrc mem;             /* bytes in memory (when f is NULL) */
    uint8_t *rgb;
    png_bytep *rows;
    ldm_png_text *texts;
    int n_texts;
    int width, height;
} read_ctx;

/* Decode after the 8 signature bytes; `what` names the source in messages. */
static int decode_png(read_ctx *c, const char *what, int want_texts) {
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c->err, on_error, on_warning);
    if (!c->png) return ldm_error("%s: cannot create libpng read struct", what);
    c->info = png_create_info_struct(c->png);
    if (!c->info) return ldm_error("%s: cannot create libpng info struct", what);
    if (setjmp(png_jmpbuf(c->png))) return ldm_error("%s: invalid PNG: %s", what, c->err.msg);
    if (c->f) png_init_io(c->png, c->f);
    else png_set_read_fn(c->png, &c->mem, read_cb);
    /* libpng allocates a chunk's declared length (up to 2^31) before reading it, and
     * inflates zTXt/iTXt/iCCP without limit unless told: bound both, and the number of
     * ancillary chunks kept */
    png_set_chunk_malloc_max(c->png, LDM_MAX_PNG_CHUNK);
    png_set_chunk_cache_max(c->png, LDM_MAX_PNG_CHUNKS);
    png_set_sig_bytes(c->png, 8);
    png_read_info(c->png, c->info);

    png_uint_32 w = png_get_image_width(c->png, c->info), h = png_get_image_height(c->png, c->info);
    size_t npix, nbytes, nrows;
    if (w < 1 || h < 1 || ldm_mul_size(w, h, &npix) || npix > LDM_MAX_PNG_PIXELS)
        return ldm_error("%s: image %ux%u is too large (at most %u pixels)", what, (unsigned)w,
                         (unsigned)h, LDM_MAX_PNG_PIXELS);
    if (ldm_mul_size(npix, 3, &nbytes) || ldm_mul_size(h, sizeof *c->rows, &nrows))
        return ldm_error("%s: image %ux%u is too large", what, (unsigned)w, (unsigned)h);
    int color = png_get_color_type(c->png, c->info);
    png_set_expand(c->png); /* palette -> RGB, gray < 8 bits -> 8, tRNS -> alpha */
    /* alpha is composited on white (as AUTOMATIC1111 flattens an init image), before the
     * reduction to 8 bits (16-bit samples keep their high byte, as PIL reads them) */
    png_color_16 white = {0, 65535, 65535, 65535, 65535};
    if ((color & PNG_COLOR_MASK_ALPHA) || png_get_valid(c->png, c->info, PNG_INFO_tRNS)) {
        if (png_get_bit_depth(c->png, c->info) < 16) white.red = white.green = white.blue = white.gray = 255;
        png_set_background(c->png, &white, PNG_BACKGROUND_GAMMA_FILE, 1, 1.0);
    }
    png_set_strip_16(c->png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(c->png);
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    if (png_get_rowbytes(c->png, c->info) != (size_t)w * 3)
        return ldm_error("%s: cannot convert this PNG to 8-bit RGB", what);

    c->width = (int)w;
    c->height = (int)h;
    c->rgb = ldm_xmalloc(nbytes);
    c->rows = ldm_xmalloc(nrows);
    for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->rgb + (size_t)y * w * 3;
    png_read_image(c->png, c->rows);
    png_read_end(c->png, c->info);

    if (want_texts) {
        png_textp text = NULL;
        int n = png_get_text(c->png, c->info, &text, NULL);
        c->texts = ldm_xcalloc(n > 0 ? (size_t)n : 1, sizeof *c->texts);
        for (int i = 0; i < n; i++) {
            int utf8 = text[i].compression == PNG_ITXT_COMPRESSION_NONE || text[i].compression == PNG_ITXT_COMPRESSION_zTXt;
            c->texts[i].key = latin1_to_utf8(text[i].key);
            c->texts[i].text = utf8 ? ldm_xstrdup(text[i].text ? text[i].text : "")
                                    : latin1_to_utf8(text[i].text ? text[i].text : "");
            c->n_texts = i + 1;
        }
    }
    return 0;
}

/* libpng allocates a chunk's declared length before it reads the chunk (2 GiB for a
 * 60-byte file): the chunk headers are walked first (check_chunk on each) and an oversized
 * chunk other than IDAT (which libpng reads piecewise) is refused. */
static int check_chunk(const char *what, const uint8_t head[8], uint32_t *len, int *end) {
    *len = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    char type[5];
    for (int i = 0; i < 4; i++) {
        unsigned char ch = head[4 + i];
        type[i] = (char)((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ? ch : '?');
    }
    type[4] = '\0';
    *end = memcmp(head + 4, "IEND", 4) == 0;
    if (*len > 0x7fffffffu)
        return ldm_error("%s: invalid PNG: chunk \"%s\" has length %u (more than 2^31 - 1)", what,
                         type, (unsigned)*len);
    if (*len > LDM_MAX_PNG_CHUNK && memcmp(head + 4, "IDAT", 4) != 0)
        return ldm_error("%s: chunk \"%s\" of %u bytes is too large (at most %u)", what, type,
                         (unsigned)*len, LDM_MAX_PNG_CHUNK);
    return 0;
}

static int scan_chunks_mem(const char *what, const uint8_t *p, size_t n) {
    uint64_t at = 8;
    uint32_t len;
    int end = 0;
    while (!end && at + 8 <= n) {
        if (check_chunk(what, p + at, &len, &end)) return -1;
        at += 12 + (uint64_t)len;
    }
    return 0;
}

static int scan_chunks_file(const char *what, FILE *f) {
    uint8_t head[8];
    uint32_t len;
    int end = 0;
    while (!end && fread(head, 1, 8, f) == 8) {
        if (check_chunk(what, head, &len, &end)) return -1;
        if (fseeko(f, (off_t)len + 4, SEEK_CUR) != 0) break;
    }
    if (fseeko(f, 8, SEEK_SET) != 0) return ldm_error("%s: %s", what, strerror(errno));
    return 0;
}

/* Check the signature, decode, hand the results out (or free them). */
static int read_png(read_ctx *c, const char *what, const unsigned char sig[8], int have_sig, uint8_t **rgb,
                    int *width, int *height, ldm_png_text **texts, int *n_texts) {
    int rc = 0;
    if (!have_sig || png_sig_cmp(sig, 0, 8) != 0) rc = ldm_error("%s: not a PNG file", what);
    if (rc == 0) rc = decode_png(c, what, texts != NULL);
    if (c->png) png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
    free(c->rows);
    if (rc < 0) {
        free(c->rgb);
        ldm_png_texts_free(c->texts, c->n_texts);
        return -1;
    }
    *rgb = c->rgb;
    *width = c->width;
    *height = c->height;
    if (texts) *texts = c->texts;
    if (n_texts) *n_texts = c->n_texts;
    return 0;
}

int ldm_png_read(const char *path, uint8_t **rgb, int *width, int *height, ldm_png_text **texts, int *n_texts) {
    *rgb = NULL;
    if (texts) *texts = NULL;
    if (n_texts) *n_texts = 0;
    read_ctx c = {0};
    int fd = ldm_open_regular(path);   /* a FIFO must not block open() */
    if (fd < 0) return -1;
    c.f = fdopen(fd, "rb");
    if (!c.f) {
        int e = errno;
        close(fd);
        return ldm_error("%s: %s", path, strerror(e));
    }
    unsigned char sig[8];
    int have_sig = fread(sig, 1, 8, c.f) == 8;
    if (have_sig && png_sig_cmp(sig, 0, 8) == 0 && scan_chunks_file(path, c.f)) {
        fclose(c.f);
        return -1;
    }
    int rc = read_png(&c, path, sig, have_sig, rgb, width, height, texts, n_texts);
    fclose(c.f);
    return rc;
}

int ldm_png_decode(const void *png, size_t len, uint8_t **rgb, int *width, int *height,
                   ldm_png_text **texts, int *n_texts) {
    *rgb = NULL;
    if (texts) *texts = NULL;
    if (n_texts) *n_texts = 0;
    read_ctx c = {0};
    c.mem = (memsrc){ png, len, len < 8 ? len : 8 };
    if (len >= 8 && png_sig_cmp(png, 0, 8) == 0 && scan_chunks_mem("png", png, len)) return -1;
    return read_png(&c, "png", png, len >= 8, rgb, width, height, texts, n_texts);
}

void ldm_png_texts_free(ldm_png_text *texts, int n) {
    if (!texts) return;
    for (int i = 0; i < n; i++) {
        free((char *)texts[i].key);
        free((char *)texts[i].text);
    }
    free(texts);
}
