/* test_png.c - PNG writer/reader: pixel and text round trips (tEXt and iTXt), deterministic
 * bytes, errors for unwritable paths, bad keys and files that are not PNGs. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"
#include "format/png_io.h"
#include "test.h"

static char dir[256];

/* Count directory entries whose name starts with prefix. */
static int count_files(const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

static uint8_t *make_image(int w, int h) {
    uint8_t *p = ldm_xmalloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) p[((size_t)y * w + x) * 3 + c] = (uint8_t)(x * 7 + y * 13 + c * 101);
    return p;
}

static void test_round_trip(void) {
    int w = 37, h = 23;
    uint8_t *img = make_image(w, h);
    ldm_png_text texts[] = {
        {"parameters", "a photo of an astronaut riding a horse on mars\nSteps: 20, Seed: 42"},
        {"Comment", "caf\xc3\xa9 na\xc3\xafve \xc2\xa9 \xc3\xbf"},              /* Latin-1: tEXt */
        {"prompt", "\xe4\xb8\x80\xe5\xb9\x85\xe5\xb1\xb1\xe6\xb0\xb4 \xf0\x9f\x90\xb1"}, /* CJK + emoji: iTXt */
        {"Gr\xc3\xb6\xc3\x9f" "e", "\xce\xa3 sigma"},                             /* Latin-1 key, iTXt */
        {"empty", ""},
    };
    int nt = (int)(sizeof texts / sizeof *texts);
    char path[512];
    snprintf(path, sizeof path, "%s/out.png", dir);
    CHECK(ldm_png_write(path, img, w, h, texts, nt) == 0, "write: %s", ldm_last_error());
    CHECK(count_files("out.png.tmp") == 0, "temporary file left behind");

    uint8_t *rgb = NULL;
    ldm_png_text *rt = NULL;
    int rw = 0, rh = 0, rn = 0;
    CHECK(ldm_png_read(path, &rgb, &rw, &rh, &rt, &rn) == 0, "read: %s", ldm_last_error());
    CHECK(rw == w && rh == h, "size %dx%d", rw, rh);
    CHECK(rgb && memcmp(rgb, img, (size_t)w * h * 3) == 0, "pixels differ");
    CHECK(rn == nt, "%d texts read back", rn);
    for (int i = 0; i < rn && i < nt; i++) {
        CHECK(strcmp(rt[i].key, texts[i].key) == 0, "key %d: \"%s\"", i, rt[i].key);
        CHECK(strcmp(rt[i].text, texts[i].text) == 0, "text %d: \"%s\"", i, rt[i].text);
    }
    free(rgb);
    ldm_png_texts_free(rt, rn);

    /* chunk types: Latin-1 texts as tEXt, the others as iTXt; no tIME */
    size_t len;
    char *bytes = ldm_read_file(path, &len);
    int n_text = 0, n_itxt = 0, n_time = 0;
    for (size_t i = 8; bytes && i + 8 <= len;) {
        uint32_t clen = ((uint32_t)(uint8_t)bytes[i] << 24) | ((uint32_t)(uint8_t)bytes[i + 1] << 16) |
                        ((uint32_t)(uint8_t)bytes[i + 2] << 8) | (uint8_t)bytes[i + 3];
        n_text += memcmp(bytes + i + 4, "tEXt", 4) == 0;
        n_itxt += memcmp(bytes + i + 4, "iTXt", 4) == 0;
        n_time += memcmp(bytes + i + 4, "tIME", 4) == 0;
        i += 12 + (size_t)clen;
    }
    CHECK(n_text == 3 && n_itxt == 2 && n_time == 0, "chunks: %d tEXt, %d iTXt, %d tIME", n_text, n_itxt, n_time);

    /* deterministic: encoding again gives the same bytes */
    uint8_t *mem = NULL;
    size_t mem_len = 0;
    CHECK(ldm_png_encode(img, w, h, texts, nt, &mem, &mem_len) == 0, "encode: %s", ldm_last_error());
    CHECK(bytes && mem_len == len && memcmp(mem, bytes, len) == 0, "encode differs from the written file");
    free(mem);
    free(bytes);

    /* texts are optional on both sides */
    CHECK(ldm_png_write(path, img, w, h, NULL, 0) == 0, "write without texts: %s", ldm_last_error());
    CHECK(ldm_png_read(path, &rgb, &rw, &rh, NULL, NULL) == 0, "read without texts: %s", ldm_last_error());
    CHECK(rgb && memcmp(rgb, img, (size_t)w * h * 3) == 0, "pixels differ (no texts)");
    free(rgb);
    unlink(path);
    free(img);
}

static void test_errors(void) {
    uint8_t *img = make_image(4, 4);
    char path[512];

    /* missing folder: error names the path, nothing is created */
    snprintf(path, sizeof path, "%s/no/such/dir/x.png", dir);
    CHECK(ldm_png_write(path, img, 4, 4, NULL, 0) == -1 && strstr(ldm_last_error(), path),
          "missing dir: %s", ldm_last_error());

    /* unwritable folder (skipped as root, who can write anywhere) */
    char ro[300];
    snprintf(ro, sizeof ro, "%s/ro", dir);
    mkdir(ro, 0555);
    snprintf(path, sizeof path, "%s/x.png", ro);
    if (geteuid() != 0) {
        CHECK(ldm_png_write(path, img, 4, 4, NULL, 0) == -1 && strstr(ldm_last_error(), path),
              "read-only dir: %s", ldm_last_error());
        CHECK(access(path, F_OK) != 0, "file created in read-only dir");
    }
    rmdir(ro);

    /* a parent that is a file, and a final name that is a folder: errors, no leftovers */
    char file[300];
    snprintf(file, sizeof file, "%s/plain", dir);
    ldm_write_file_atomic(file, "x", 1);
    snprintf(path, sizeof path, "%s/x.png", file);
    CHECK(ldm_png_write(path, img, 4, 4, NULL, 0) == -1 && strstr(ldm_last_error(), path),
          "parent is a file: %s", ldm_last_error());
    unlink(file);
    snprintf(path, sizeof path, "%s/isdir.png", dir);
    mkdir(path, 0755);
    CHECK(ldm_png_write(path, img, 4, 4, NULL, 0) == -1 && strstr(ldm_last_error(), path),
          "target is a folder: %s", ldm_last_error());
    CHECK(count_files("isdir.png.tmp") == 0 && count_files(".ldm-") == 0, "temporary file left behind");
    rmdir(path);

    /* bad arguments: no file under the final name */
    snprintf(path, sizeof path, "%s/bad.png", dir);
    ldm_png_text badkey[] = {{"", "x"}};
    CHECK(ldm_png_write(path, img, 4, 4, badkey, 1) == -1 && strstr(ldm_last_error(), "1 to 79"),
          "empty key: %s", ldm_last_error());
    ldm_png_text sp[] = {{" lead", "x"}};
    CHECK(ldm_png_write(path, img, 4, 4, sp, 1) == -1 && strstr(ldm_last_error(), "space"), "space key: %s",
          ldm_last_error());
    ldm_png_text cjk[] = {{"\xe4\xb8\x80", "x"}};
    CHECK(ldm_png_write(path, img, 4, 4, cjk, 1) == -1 && strstr(ldm_last_error(), "Latin-1"), "CJK key: %s",
          ldm_last_error());
    ldm_png_text badutf[] = {{"k", "a\xff"}};
    CHECK(ldm_png_write(path, img, 4, 4, badutf, 1) == -1 && strstr(ldm_last_error(), "UTF-8"),
          "invalid UTF-8 text: %s", ldm_last_error());
    CHECK(ldm_png_write(path, img, 0, 4, NULL, 0) == -1, "0-width image accepted");
    CHECK(access(path, F_OK) != 0 && count_files("bad.png") == 0, "file left after failed writes");

    /* reading something that is not a PNG, a truncated PNG, a missing file */
    uint8_t *rgb = NULL;
    int w, h;
    snprintf(path, sizeof path, "%s/notpng.png", dir);
    ldm_write_file_atomic(path, "hello, this is text\n", 20);
    CHECK(ldm_png_read(path, &rgb, &w, &h, NULL, NULL) == -1 && strstr(ldm_last_error(), "not a PNG"),
          "text file: %s", ldm_last_error());
    unlink(path);

    uint8_t *png;
    size_t len;
    CHECK(ldm_png_encode(img, 4, 4, NULL, 0, &png, &len) == 0, "encode: %s", ldm_last_error());
    snprintf(path, sizeof path, "%s/trunc.png", dir);
    ldm_write_file_atomic(path, png, len / 2);
    CHECK(ldm_png_read(path, &rgb, &w, &h, NULL, NULL) == -1 && strstr(ldm_last_error(), path),
          "truncated PNG: %s", ldm_last_error());
    CHECK(rgb == NULL, "rgb set on failure");
    unlink(path);
    free(png);

    snprintf(path, sizeof path, "%s/missing.png", dir);
    CHECK(ldm_png_read(path, &rgb, &w, &h, NULL, NULL) == -1 && strstr(ldm_last_error(), path),
          "missing file: %s", ldm_last_error());
    free(img);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/ldm_test_png.XXXXXX");
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp\n");
        return 1;
    }
    test_round_trip();
    test_errors();
    rmdir(dir);
    TEST_END();
}
