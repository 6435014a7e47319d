/* grid.c - the labelled guidance-by-steps grid and the grayscale latent picture.
 *
 * Labels are drawn with a 5x7 bitmap font holding just the characters cell titles need
 * ("g=7.5 n=25"), scaled up for large cells; a missing character is drawn as '?'.
 */
#include "app/grid.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct { char c; uint8_t rows[7]; } glyph;

/* Each row is 5 bits, most significant bit on the left. */
static const glyph font[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}}, {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
    {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}}, {' ', {0, 0, 0, 0, 0, 0, 0}},
    {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}}, {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
    {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}}, {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
    {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}}, {'g', {0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E}},
    {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}}, {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}}, {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}},
    {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
};

static const glyph *find_glyph(char c) {
    for (size_t i = 0; i < sizeof font / sizeof *font; i++)
        if (font[i].c == c) return &font[i];
    return find_glyph('?');
}

/* Draw text at (x, y) in an RGB image of width W, height H, each font pixel s x s. */
static void draw_text(uint8_t *img, int W, int H, int x, int y, int s, const char *text) {
    for (const char *p = text; *p; p++, x += 6 * s) {
        const glyph *g = find_glyph(*p);
        for (int r = 0; r < 7; r++)
            for (int c = 0; c < 5; c++) {
                if (!(g->rows[r] & (0x10 >> c))) continue;
                for (int dy = 0; dy < s; dy++)
                    for (int dx = 0; dx < s; dx++) {
                        int px = x + c * s + dx, py = y + r * s + dy;
                        if (px < 0 || py < 0 || px >= W || py >= H) continue;
                        memset(img + ((size_t)py * W + px) * 3, 0, 3);
                    }
            }
    }
}

int ldm_grid_compose(const uint8_t *const *cells, int rows, int cols, int cw, int ch,
                     const char *const *labels, uint8_t **out, int *width, int *height) {
    if (rows <= 0 || cols <= 0 || cw <= 0 || ch <= 0) return ldm_error("grid: empty grid");
    /* Small pictures (a 32x32 demo model) are enlarged by a whole factor, nearest
     * neighbour, so that they can be seen and their titles fit. */
    int zoom = cw < LDM_GRID_MIN_CELL ? (LDM_GRID_MIN_CELL + cw - 1) / cw : 1;
    int zw = cw * zoom, zh = ch * zoom;
    int s = zw >= 192 ? 2 : 1;          /* font scale */
    int strip = 7 * s + 4 * s;          /* title strip height */
    int gap = 2;
    int slot = zw;                      /* a column is as wide as its widest title */
    for (int i = 0; labels && i < rows * cols; i++) {
        int tw = labels[i] ? (int)strlen(labels[i]) * 6 * s + 2 * s : 0;
        if (tw > slot) slot = tw;
    }
    int W = cols * slot + (cols + 1) * gap, H = rows * (zh + strip) + (rows + 1) * gap;
    uint8_t *img = ldm_xmalloc((size_t)W * H * 3);
    memset(img, 255, (size_t)W * H * 3);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            int sx = gap + c * (slot + gap), y0 = gap + r * (zh + strip + gap);
            const char *label = labels ? labels[r * cols + c] : NULL;
            if (label) {
                int tw = (int)strlen(label) * 6 * s;
                draw_text(img, W, H, sx + (slot - tw) / 2, y0 + 2 * s, s, label);
            }
            int x0 = sx + (slot - zw) / 2;
            const uint8_t *cell = cells[r * cols + c];
            for (int y = 0; y < zh; y++)
                for (int x = 0; x < zw; x++)
                    memcpy(img + ((size_t)(y0 + strip + y) * W + x0 + x) * 3,
                           cell + ((size_t)(y / zoom) * cw + x / zoom) * 3, 3);
        }
    *out = img;
    *width = W;
    *height = H;
    return 0;
}

int ldm_latent_image(const float *latent, int C, int h, int w, int scale, uint8_t **out,
                     int *width, int *height) {
    if (C <= 0 || h <= 0 || w <= 0 || scale <= 0) return ldm_error("latent image: bad shape");
    size_t hw = (size_t)h * w;
    float *mean = ldm_xcalloc(hw, sizeof(float));
    for (int c = 0; c < C; c++)
        for (size_t i = 0; i < hw; i++) mean[i] += latent[c * hw + i] / (float)C;
    float lo = mean[0], hi = mean[0];
    for (size_t i = 1; i < hw; i++) {
        if (mean[i] < lo) lo = mean[i];
        if (mean[i] > hi) hi = mean[i];
    }
    float range = hi > lo ? hi - lo : 1.0f;
    int W = w * scale, H = h * scale;
    uint8_t *img = ldm_xmalloc((size_t)W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float v = (mean[(size_t)(y / scale) * w + x / scale] - lo) / range;
            uint8_t g = (uint8_t)lrintf(v * 255.0f);
            uint8_t *px = img + ((size_t)y * W + x) * 3;
            px[0] = px[1] = px[2] = g;
        }
    free(mean);
    *out = img;
    *width = W;
    *height = H;
    return 0;
}

int ldm_grid_parse_axis(const char *spec, char *axis, double *vals, int cap) {
    if ((spec[0] != 'g' && spec[0] != 'n') || spec[1] != '=')
        return ldm_error("--grid '%s': expected g=LIST (guidance) or n=LIST (steps), e.g. g=1,3,7.5", spec);
    *axis = spec[0];
    int n = 0;
    const char *p = spec + 2;
    for (;;) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || (*end != ',' && *end != '\0'))
            return ldm_error("--grid '%s': '%s' is not a number list", spec, p);
        if (spec[0] == 'n' && (v < 1 || v > 1000 || v != floor(v)))
            return ldm_error("--grid '%s': steps must be whole numbers from 1 to 1000", spec);
        if (spec[0] == 'g' && (v < 0 || v > 100))
            return ldm_error("--grid '%s': guidance must be between 0 and 100", spec);
        if (n == cap) return ldm_error("--grid '%s': at most %d values", spec, cap);
        vals[n++] = v;
        if (*end == '\0') break;
        p = end + 1;
    }
    return n;
}
