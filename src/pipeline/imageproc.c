/* imageproc.c - VaeImageProcessor.preprocess and PIL's Lanczos resize.  See imageproc.h.
 *
 * The resize follows Pillow's Resample.c: for each output index the filter (Lanczos,
 * support 3, widened by the scale when shrinking) is sampled at the input pixel centres
 * inside [centre - support, centre + support], normalised to sum 1, turned into 22-bit
 * fixed point (rounded away from zero), and applied with an initial half; the result is
 * the sum shifted down and clamped to 0..255.  Horizontal pass first (on the rows the
 * vertical pass reads), then vertical, each to 8 bits.
 */
#include "pipeline/imageproc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

#define PRECISION_BITS (32 - 8 - 2)

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}
static double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

/* Coefficients for in_size -> out_size: bounds[2*i] = first input, bounds[2*i+1] = count;
 * kk[i * ksize + j] fixed point.  Returns ksize. */
static int coeffs(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = ldm_xmalloc(sizeof(int) * 2 * (size_t)out_size);
    int32_t *kk = ldm_xmalloc(sizeof(int32_t) * (size_t)out_size * ksize);
    double *k = ldm_xmalloc(sizeof(double) * (size_t)ksize);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double w = lanczos((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            kk[(size_t)xx * ksize + x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                                               : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;   /* arithmetic shift, as Pillow's clip8 lookup */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

void ldm_resize_lanczos(const uint8_t *rgb, int w, int h, int ow, int oh, uint8_t **out) {
    if (ow == w && oh == h) {   /* Image.resize to the same size is a copy */
        *out = ldm_xmalloc((size_t)w * h * 3);
        memcpy(*out, rgb, (size_t)w * h * 3);
        return;
    }
    int *bh, *bv;
    int32_t *kh, *kv;
    int ksh = coeffs(w, ow, &bh, &kh), ksv = coeffs(h, oh, &bv, &kv);
    const uint8_t *src = rgb;
    uint8_t *tmp = NULL;
    int sw = w, sh = h;
    if (ow != w) {
        /* only the rows the vertical pass reads */
        int first = bv[0], last = bv[2 * (oh - 1)] + bv[2 * (oh - 1) + 1];
        if (oh == h) { first = 0; last = h; }
        sh = last - first;
        tmp = ldm_xmalloc((size_t)ow * sh * 3);
        for (int y = 0; y < sh; y++) {
            const uint8_t *row = rgb + (size_t)(y + first) * w * 3;
            for (int xx = 0; xx < ow; xx++) {
                const int xmin = bh[2 * xx], n = bh[2 * xx + 1];
                const int32_t *k = kh + (size_t)xx * ksh;
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < n; x++) {
                    const uint8_t *p = row + (size_t)(x + xmin) * 3;
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                uint8_t *o = tmp + ((size_t)y * ow + xx) * 3;
                o[0] = clip8(s0);
                o[1] = clip8(s1);
                o[2] = clip8(s2);
            }
        }
        if (oh != h)
            for (int yy = 0; yy < oh; yy++) bv[2 * yy] -= first;
        src = tmp;
        sw = ow;
    }
    if (oh != h) {
        uint8_t *o = ldm_xmalloc((size_t)sw * oh * 3);
        for (int yy = 0; yy < oh; yy++) {
            const int ymin = bv[2 * yy], n = bv[2 * yy + 1];
            const int32_t *k = kv + (size_t)yy * ksv;
            for (int xx = 0; xx < sw; xx++) {
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int y = 0; y < n; y++) {
                    const uint8_t *p = src + ((size_t)(y + ymin) * sw + xx) * 3;
                    s0 += p[0] * k[y];
                    s1 += p[1] * k[y];
                    s2 += p[2] * k[y];
                }
                uint8_t *q = o + ((size_t)yy * sw + xx) * 3;
                q[0] = clip8(s0);
                q[1] = clip8(s1);
                q[2] = clip8(s2);
            }
        }
        free(tmp);
        *out = o;
    } else {
        *out = tmp;
    }
    (void)sh;
    free(bh); free(kh); free(bv); free(kv);
}

int ldm_image_preprocess(const uint8_t *rgb, int w, int h, int want_w, int want_h, int mult,
                         float **out, int *ow, int *oh) {
    int W = want_w > 0 ? want_w : w, H = want_h > 0 ? want_h : h;
    W -= W % mult;
    H -= H % mult;
    if (W < mult || H < mult)
        return ldm_error_kind(LDM_USAGE, "image %dx%d is smaller than one multiple of %d", w, h, mult);
    uint8_t *px;
    ldm_resize_lanczos(rgb, w, h, W, H, &px);
    float *f = ldm_xmalloc(sizeof(float) * 3 * (size_t)W * H);
    const size_t HW = (size_t)W * H;
    for (size_t i = 0; i < HW; i++)
        for (int c = 0; c < 3; c++) {
            float v = (float)px[i * 3 + c] / 255.0f;   /* np.float32 / 255.0 */
            f[c * HW + i] = 2.0f * v - 1.0f;           /* 2.0 * image - 1.0 */
        }
    free(px);
    *out = f;
    *ow = W;
    *oh = H;
    return 0;
}

int ldm_mask_preprocess(const uint8_t *rgb, int w, int h, int W, int H, float **out) {
    if (W < 1 || H < 1) return ldm_error_kind(LDM_USAGE, "mask: size %dx%d", W, H);
    uint8_t *px;
    ldm_resize_lanczos(rgb, w, h, W, H, &px);
    const size_t HW = (size_t)W * H;
    float *m = ldm_xmalloc(sizeof(float) * HW);
    for (size_t i = 0; i < HW; i++) {
        const uint8_t *q = px + i * 3;
        /* PIL convert("L"): L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 */
        uint32_t l = ((uint32_t)q[0] * 19595u + (uint32_t)q[1] * 38470u + (uint32_t)q[2] * 7471u + 0x8000u) >> 16;
        float v = (float)l / 255.0f;
        m[i] = v < 0.5f ? 0.0f : 1.0f;   /* do_binarize */
    }
    free(px);
    *out = m;
    return 0;
}
