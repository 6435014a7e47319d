/* test_grid.c - grid composition, cell titles, latent picture and --grid parsing. */
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "app/grid.h"
#include "test.h"

static void test_compose(void) {
    enum { R = 2, C = 3, CW = 16, CH = 12, Z = 8 /* 16 px cells are enlarged to 128 */ };
    uint8_t *cells[R * C];
    const char *labels[R * C] = {"g=1 n=10", "g=1 n=25", "g=1 n=50", "g=7.5 n=10", "g=7.5 n=25", "g=7.5 n=50"};
    for (int i = 0; i < R * C; i++) {
        cells[i] = malloc(CW * CH * 3);
        for (int p = 0; p < CW * CH; p++) memset(cells[i] + p * 3, (p % CW) < CW / 2 ? 10 + i * 20 : 200 + i, 3);
    }
    uint8_t *img;
    int W, H;
    CHECK(ldm_grid_compose((const uint8_t *const *)cells, R, C, CW, CH, labels, &img, &W, &H) == 0, "compose");
    int strip = 11, gap = 2, slot = CW * Z;
    CHECK(W == C * slot + (C + 1) * gap && H == R * (CH * Z + strip) + (R + 1) * gap, "size %dx%d", W, H);
    int ok = 1;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            int x0 = gap + c * (slot + gap), y0 = gap + r * (CH * Z + strip + gap) + strip;
            for (int y = 0; y < CH * Z; y++)
                for (int x = 0; x < CW * Z; x++) {
                    int i = r * C + c, want = (x / Z) < CW / 2 ? 10 + i * 20 : 200 + i;
                    if (img[((size_t)(y0 + y) * W + x0 + x) * 3] != want) ok = 0;
                }
        }
    CHECK(ok, "each cell lands in its place, enlarged nearest-neighbour");
    int dark = 0;
    for (int y = gap; y < gap + strip; y++)
        for (int x = 0; x < W; x++) dark += img[((size_t)y * W + x) * 3] == 0;
    CHECK(dark > 20, "the first row's titles are drawn (%d dark pixels)", dark);
    free(img);

    /* Large cells are not enlarged; a title wider than its cell widens the column. */
    uint8_t big[200 * 4 * 3];
    memset(big, 7, sizeof big);
    const uint8_t *one[1] = {big};
    const char *wide[1] = {"g=7.5 n=25 g=7.5 n=25 g=7.5 n=25"};
    CHECK(ldm_grid_compose(one, 1, 1, 200, 4, wide, &img, &W, &H) == 0, "compose wide title");
    int tw = (int)strlen(wide[0]) * 12 + 4;
    CHECK(W == tw + 2 * gap && H == 4 + 22 + 2 * gap, "column widened to its title: %dx%d", W, H);
    CHECK(img[((size_t)(gap + 22) * W + gap + (tw - 200) / 2) * 3] == 7, "picture centred under its title");
    free(img);
    for (int i = 0; i < R * C; i++) free(cells[i]);
}

static void test_latent(void) {
    float lat[2 * 2 * 3] = {0, 1, 2, 3, 4, 5, /* channel 1 */ 0, 1, 2, 3, 4, 5};
    uint8_t *img;
    int W, H;
    CHECK(ldm_latent_image(lat, 2, 2, 3, 4, &img, &W, &H) == 0 && W == 12 && H == 8, "latent image size");
    CHECK(img[0] == 0 && img[(7 * 12 + 11) * 3] == 255, "min is black, max is white");
    CHECK(img[(0 * 12 + 4) * 3] == 51 && img[(0 * 12 + 7) * 3] == 51, "nearest upscale keeps value 1/5 -> 51");
    free(img);
}

static void test_parse(void) {
    double v[8];
    char axis;
    CHECK(ldm_grid_parse_axis("g=1,3,7.5,12", &axis, v, 8) == 4 && axis == 'g' && v[2] == 7.5, "g list");
    CHECK(ldm_grid_parse_axis("n=10,25,50", &axis, v, 8) == 3 && axis == 'n' && v[1] == 25, "n list");
    CHECK(ldm_grid_parse_axis("x=1", &axis, v, 8) < 0 && strstr(ldm_last_error(), "x=1"), "unknown axis");
    CHECK(ldm_grid_parse_axis("g=1,,2", &axis, v, 8) < 0, "empty value");
    CHECK(ldm_grid_parse_axis("n=2.5", &axis, v, 8) < 0, "fractional steps");
    CHECK(ldm_grid_parse_axis("g=abc", &axis, v, 8) < 0 && strstr(ldm_last_error(), "abc"), "not a number");
    CHECK(ldm_grid_parse_axis("n=1,2,3", &axis, v, 2) < 0, "too many values");
}

int main(void) {
    test_compose();
    test_latent();
    test_parse();
    TEST_END();
}
