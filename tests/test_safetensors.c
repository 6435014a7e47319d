/* test_safetensors.c - fp16 conversion (round to nearest even, subnormals, overflow),
 * SHA-256 against the NIST vectors, and the safetensors reader: valid files, every
 * kind of malformed header, sharded indexes, and the committed fixtures. */
#include "core/common.h"
#include "core/fp16.h"
#include "backend/ops.h"
#include "format/safetensors.h"
#include "core/sha256.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---------------------------------------------------------------- fp16 */

/* Reference: round x to the nearest half (ties to even) in double arithmetic. */
static double ref_round_half(float x) {
    double a = fabs((double)x);
    if (a == 0) return x;
    int e;
    frexp(a, &e);                 /* a = m * 2^e, m in [0.5, 1) */
    e -= 1;                       /* a in [2^e, 2^(e+1)) */
    if (e < -14) e = -14;         /* subnormal spacing */
    double ulp = ldexp(1.0, e - 10);
    double q = nearbyint(a / ulp) * ulp;
    if (q >= 65520.0 || q > 65504.0) q = INFINITY;
    return x < 0 ? -q : q;
}

static void test_fp16(void) {
    CHECK(ldm_f32_to_f16(1.0f) == 0x3c00, "1.0");
    CHECK(ldm_f32_to_f16(-2.0f) == 0xc000, "-2.0");
    CHECK(ldm_f32_to_f16(0.0f) == 0x0000, "+0");
    CHECK(ldm_f32_to_f16(-0.0f) == 0x8000, "-0");
    CHECK(ldm_f32_to_f16(65504.0f) == 0x7bff, "max");
    CHECK(ldm_f32_to_f16(65519.0f) == 0x7bff, "just below the Inf threshold rounds down");
    CHECK(ldm_f32_to_f16(65520.0f) == 0x7c00, "65520 ties to even = Inf");
    CHECK(ldm_f32_to_f16(1e6f) == 0x7c00, "overflow -> Inf");
    CHECK(ldm_f32_to_f16(-1e6f) == 0xfc00, "overflow -> -Inf");
    CHECK(ldm_f32_to_f16(INFINITY) == 0x7c00, "Inf");
    uint16_t hn = ldm_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff), "NaN stays NaN: %04x", hn);
    /* ties to even in the normal range: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01 */
    CHECK(ldm_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00, "tie rounds to even (down)");
    CHECK(ldm_f32_to_f16(1.0f + 3 * ldexpf(1, -11)) == 0x3c02, "tie rounds to even (up)");
    CHECK(ldm_f32_to_f16(nextafterf(1.0f + ldexpf(1, -11), 2)) == 0x3c01, "above tie rounds up");
    /* subnormals */
    CHECK(ldm_f32_to_f16(ldexpf(1, -24)) == 0x0001, "smallest subnormal");
    CHECK(ldm_f32_to_f16(ldexpf(1, -25)) == 0x0000, "half the smallest subnormal ties to 0");
    CHECK(ldm_f32_to_f16(nextafterf(ldexpf(1, -25), 1)) == 0x0001, "just above rounds up");
    CHECK(ldm_f32_to_f16(3 * ldexpf(1, -25)) == 0x0002, "1.5 ulp ties to even (2)");
    CHECK(ldm_f32_to_f16(ldexpf(1, -14) - ldexpf(1, -25)) == 0x0400, "subnormal carries into normal");
    CHECK(ldm_f32_to_f16(ldexpf(1, -30)) == 0x0000, "underflow -> 0");
    CHECK(ldm_f32_to_f16(-ldexpf(1, -30)) == 0x8000, "underflow -> -0");
    CHECK(ldm_f16_to_f32(0x0001) == ldexpf(1, -24), "decode subnormal");
    CHECK(ldm_f16_to_f32(0x03ff) == ldexpf(1023, -24), "decode largest subnormal");
    CHECK(ldm_f16_to_f32(0x7bff) == 65504.0f, "decode max");
    CHECK(isinf(ldm_f16_to_f32(0xfc00)) && ldm_f16_to_f32(0xfc00) < 0, "decode -Inf");
    CHECK(isnan(ldm_f16_to_f32(0x7e00)), "decode NaN");
    CHECK(signbit(ldm_f16_to_f32(0x8000)), "decode -0");

    /* every half round-trips; the row helper agrees with the scalar */
    static uint16_t all[65536];
    static float wide[65536];
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    ldm_f16_to_f32_row(wide, all, 65536);
    int bad_rt = 0, bad_row = 0;
    for (int i = 0; i < 65536; i++) {
        float f = ldm_f16_to_f32((uint16_t)i);
        if (memcmp(&f, &wide[i], 4) != 0 && !(isnan(f) && isnan(wide[i]))) bad_row++;
        uint16_t back = ldm_f32_to_f16(f);
        if (isnan(f) ? !isnan(ldm_f16_to_f32(back)) : back != i) bad_rt++;
    }
    CHECK(bad_rt == 0, "%d halves do not round-trip", bad_rt);
    CHECK(bad_row == 0, "%d row conversions differ from the scalar", bad_row);

    /* random floats against the double-precision reference */
    uint64_t s = 88172645463325252ull;
    int bad = 0;
    for (int i = 0; i < 400000; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        /* exponents spread over the half range and a bit beyond: 2^-27 .. 2^17 */
        uint32_t e = 100 + (uint32_t)(s >> 40) % 45;
        uint32_t u = (uint32_t)(s & 0x807fffffu) | e << 23;
        if (i % 4 == 0) u = (u & ~0x1fffu) | 0x1000u;   /* exact ties */
        float x = bits_f(u);
        double want = ref_round_half(x);
        double got = ldm_f16_to_f32(ldm_f32_to_f16(x));
        if (!(got == want)) {
            if (bad < 5) printf("  f32->f16 %.9g (%08x): got %.9g want %.9g\n", x, u, got, want);
            bad++;
        }
    }
    CHECK(bad == 0, "%d random conversions differ from the reference", bad);
    uint16_t h[3];
    float src[3] = { 1.0f, 0.5f, -65504.0f };
    ldm_f32_to_f16_row(h, src, 3);
    CHECK(h[0] == 0x3c00 && h[1] == 0x3800 && h[2] == 0xfbff, "f32->f16 row");
    CHECK(ldm_bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
}

/* ---------------------------------------------------------------- sha256 */

static int sha_is(const void *data, size_t n, const char *want) {
    uint8_t d[32];
    char hex[65];
    ldm_sha256_buf(data, n, d);
    ldm_sha256_hex(d, hex);
    if (strcmp(hex, want) != 0) printf("  sha256: got %s want %s\n", hex, want);
    return strcmp(hex, want) == 0;
}

static void test_sha256(void) {
    CHECK(sha_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "empty");
    CHECK(sha_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "abc");
    const char *m2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK(sha_is(m2, strlen(m2), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"), "448 bits");
    const char *m3 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
                     "klmnopqrlmnopqrsmnopqrstnopqrstu";
    CHECK(sha_is(m3, strlen(m3), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"), "896 bits");
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    CHECK(sha_is(a, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "million a");
    /* incremental updates in odd pieces give the same digest */
    ldm_sha256 s;
    ldm_sha256_init(&s);
    size_t at = 0, step = 1;
    while (at < 1000000) {
        size_t k = step < 1000000 - at ? step : 1000000 - at;
        ldm_sha256_update(&s, a + at, k);
        at += k;
        step = step * 3 % 1021 + 1;
    }
    uint8_t d[32];
    char hex[65];
    ldm_sha256_final(&s, d);
    ldm_sha256_hex(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "incremental million a: %s", hex);
    free(a);
}

/* ---------------------------------------------------------------- safetensors */

/* Write a safetensors file: 8-byte length (hlen, or the real length if hlen == 0),
 * the header text, then n data bytes. */
static const char *write_st(const char *name, uint64_t hlen, const char *header, const void *data,
                            size_t n) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    uint64_t len = hlen ? hlen : strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)(len >> (8 * i)) & 255, f);
    fputs(header, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

/* ldm_st_open must fail with a message containing `want`. */
static void expect_bad(const char *path, const char *want, const char *what) {
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st == NULL, "%s: opened", what);
    if (st) { ldm_st_close(st); return; }
    CHECK(strstr(ldm_last_error(), want) != NULL, "%s: error '%s' lacks '%s'", what, ldm_last_error(), want);
}

static void test_st_valid(void) {
    /* a F32 [2,3], b F16 [2], c BF16 [1], d I64 [1], e F32 [] (scalar), z U8 [0] */
    uint8_t data[24 + 4 + 2 + 8 + 4];
    float a[6] = { 1, -2, 3.5f, 0, 1e-3f, 7 };
    memcpy(data, a, 24);
    uint16_t b[2] = { 0x3c00, 0xc000 };
    memcpy(data + 24, b, 4);
    uint16_t c = 0x4040;                 /* bf16 3.0 */
    memcpy(data + 28, &c, 2);
    int64_t d = -5;
    memcpy(data + 30, &d, 8);
    float e = 42;
    memcpy(data + 38, &e, 4);
    const char *h =
        "{\"__metadata__\": {\"format\": \"pt\"}, "
        "\"d\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [30, 38]}, "
        "\"a\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}, "
        "\"b\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [24, 28]}, "
        "\"c\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [28, 30]}, "
        "\"e\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [38, 42]}, "
        "\"z\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [42, 42]}}";
    ldm_safetensors *st = ldm_st_open(write_st("ok.safetensors", 0, h, data, sizeof data));
    CHECK(st != NULL, "open: %s", ldm_last_error());
    if (!st) return;
    CHECK(ldm_st_count(st) == 6, "count %zu", ldm_st_count(st));
    CHECK(strcmp(ldm_st_at(st, 0)->name, "a") == 0, "file order: first is a");
    CHECK(ldm_st_metadata(st, "format") && strcmp(ldm_st_metadata(st, "format"), "pt") == 0, "metadata");
    const ldm_st_tensor *ta = ldm_st_find(st, "a");
    CHECK(ta && ta->dtype == LDM_ST_F32 && ta->ndim == 2 && ta->shape[0] == 2 && ta->shape[1] == 3 &&
          ta->numel == 6 && ta->nbytes == 24, "a");
    float *fa = ta ? ldm_st_to_f32(ta) : NULL;
    CHECK(fa && fa[2] == 3.5f && fa[4] == 1e-3f, "a values");
    free(fa);
    const ldm_st_tensor *tb = ldm_st_find(st, "b");
    float *fb = tb ? ldm_st_to_f32(tb) : NULL;
    CHECK(fb && fb[0] == 1.0f && fb[1] == -2.0f, "F16 values");
    free(fb);
    float *fc = ldm_st_to_f32(ldm_st_find(st, "c"));
    CHECK(fc[0] == 3.0f, "BF16 value %g", fc[0]);
    free(fc);
    float *fd = ldm_st_to_f32(ldm_st_find(st, "d"));
    CHECK(fd[0] == -5.0f, "I64 value");
    free(fd);
    const ldm_st_tensor *te = ldm_st_find(st, "e");
    CHECK(te && te->ndim == 0 && te->numel == 1, "scalar");
    CHECK(ldm_st_find(st, "z") && ldm_st_find(st, "z")->numel == 0, "empty tensor");
    CHECK(ldm_st_find(st, "nope") == NULL, "missing name");
    CHECK(ldm_st_find(st, "__metadata__") == NULL, "metadata is not a tensor");
    ldm_st_close(st);
}

static void test_st_bad(void) {
    uint8_t z[64] = { 0 };
    const char *T = "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
    char path[512];
    snprintf(path, sizeof path, "%s/short.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    expect_bad(path, "too short", "3-byte file");
    snprintf(path, sizeof path, "%s/missing.safetensors", tmpdir);
    expect_bad(path, "missing.safetensors", "missing file");
    expect_bad(write_st("huge.safetensors", 1ull << 40, T, z, 8), "exceeds", "header length 2^40");
    expect_bad(write_st("past.safetensors", 5000, T, z, 8), "past the end", "header past EOF");
    expect_bad(write_st("json.safetensors", 0, "{\"t\": {\"dtype\": ", z, 8), "not valid JSON", "malformed JSON");
    expect_bad(write_st("arr.safetensors", 0, "[1, 2]", z, 0), "not a JSON object", "array header");
    expect_bad(write_st("dup.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                        "\"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", z, 8),
               "duplicate", "duplicate key");
    expect_bad(write_st("nodt.safetensors", 0, "{\"t\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", z, 8),
               "tensor 't': missing field 'dtype'", "no dtype");
    expect_bad(write_st("nosh.safetensors", 0, "{\"t\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", z, 8),
               "missing field 'shape'", "no shape");
    expect_bad(write_st("nooff.safetensors", 0, "{\"t\": {\"dtype\": \"F32\", \"shape\": [2]}}", z, 8),
               "missing field 'data_offsets'", "no offsets");
    expect_bad(write_st("f8.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F8_E4M3\", \"shape\": [2], \"data_offsets\": [0, 2]}}", z, 2),
               "unknown dtype 'F8_E4M3'", "unknown dtype");
    expect_bad(write_st("neg.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", z, 8),
               "shape[0]", "negative dim");
    expect_bad(write_st("range.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", z, 8),
               "outside the data area", "offsets past the end");
    expect_bad(write_st("rev.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", z, 8),
               "outside the data area", "end before begin");
    expect_bad(write_st("count.safetensors", 0,
                        "{\"t\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", z, 8),
               "need 12", "shape vs byte count");
    expect_bad(write_st("overlap.safetensors", 0,
                        "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", z, 12),
               "overlaps", "overlap");
    expect_bad(write_st("hole.safetensors", 0,
                        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", z, 12),
               "hole", "hole");
    expect_bad(write_st("trail.safetensors", 0, T, z, 12), "cover 8 bytes of a 12-byte", "trailing bytes");
    expect_bad(write_st("meta.safetensors", 0, "{\"__metadata__\": 3}", z, 0), "__metadata__", "bad metadata");
    expect_bad(write_st("dims.safetensors", 0,
                        "{\"t\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}", z, 1),
               "9 dimensions", "too many dims");
}

static void write_text(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_st_sharded(void) {
    float v[2] = { 1, 2 };
    const char *h1 = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
    const char *h2 = "{\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                     "\"c\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}";
    write_st("m-1.safetensors", 0, h1, v, 8);
    write_st("m-2.safetensors", 0, h2, v, 8);
    write_text("ok.index.json", "{\"metadata\": {\"total_size\": 16}, \"weight_map\": "
               "{\"a\": \"m-1.safetensors\", \"b\": \"m-2.safetensors\", \"c\": \"m-2.safetensors\"}}");
    char path[512];
    snprintf(path, sizeof path, "%s/ok.index.json", tmpdir);
    ldm_safetensors *st = ldm_st_open(path);
    CHECK(st != NULL, "sharded open: %s", ldm_last_error());
    if (st) {
        CHECK(ldm_st_count(st) == 3, "3 tensors in 2 shards");
        const ldm_st_tensor *c = ldm_st_find(st, "c");
        float cv = 0;
        if (c) memcpy(&cv, c->data, 4);
        CHECK(cv == 2.0f, "c from shard 2");
        CHECK(c && strstr(c->file, "m-2.safetensors"), "c's file");
        ldm_st_close(st);
    }
    write_text("miss.index.json", "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"b\": \"m-9.safetensors\"}}");
    snprintf(path, sizeof path, "%s/miss.index.json", tmpdir);
    expect_bad(path, "shard 'm-9.safetensors'", "missing shard");
    write_st("m-3.safetensors", 0, h1, v, 8);   /* 'a' again */
    write_text("twice.index.json", "{\"weight_map\": {\"a\": \"m-1.safetensors\", \"b\": \"m-2.safetensors\", "
               "\"c\": \"m-2.safetensors\", \"x\": \"m-3.safetensors\"}}");
    snprintf(path, sizeof path, "%s/twice.index.json", tmpdir);
    expect_bad(path, "tensor 'a' is in two shards", "tensor in two shards");
    write_text("wrong.index.json", "{\"weight_map\": {\"a\": \"m-2.safetensors\", \"b\": \"m-2.safetensors\", "
               "\"c\": \"m-2.safetensors\"}}");
    snprintf(path, sizeof path, "%s/wrong.index.json", tmpdir);
    expect_bad(path, "tensor 'a'", "weight_map points at the wrong shard");
    write_text("nomap.index.json", "{\"metadata\": {}}");
    snprintf(path, sizeof path, "%s/nomap.index.json", tmpdir);
    expect_bad(path, "weight_map", "no weight_map");
    write_text("up.index.json", "{\"weight_map\": {\"a\": \"../m-1.safetensors\"}}");
    snprintf(path, sizeof path, "%s/up.index.json", tmpdir);
    expect_bad(path, "plain file name", "shard outside the folder");
}

static void test_fixtures(void) {
    const char *p = "tests/fixtures/models/sd2/unet/diffusion_pytorch_model.safetensors.index.json";
    if (access(p, F_OK) != 0) { printf("  (no sd2 fixture, skipped)\n"); return; }
    ldm_safetensors *st = ldm_st_open(p);
    CHECK(st != NULL, "sd2 unet shards: %s", ldm_last_error());
    if (st) {
        const ldm_st_tensor *t = ldm_st_find(st, "conv_in.weight");
        CHECK(t && t->dtype == LDM_ST_F32 && t->ndim == 4 && t->shape[0] == 32 && t->shape[1] == 4,
              "sd2 conv_in.weight");
        ldm_st_close(st);
    }
    st = ldm_st_open("tests/fixtures/models/sd2/text_encoder/model.safetensors");
    CHECK(st != NULL, "sd2 text encoder: %s", ldm_last_error());
    if (st) {
        const ldm_st_tensor *t = ldm_st_find(st, "text_model.embeddings.token_embedding.weight");
        CHECK(t && t->dtype == LDM_ST_BF16 && t->shape[0] == 49408 && t->shape[1] == 24, "bf16 embedding");
        ldm_st_close(st);
    }
    st = ldm_st_open("tests/fixtures/models/sd1/vae/diffusion_pytorch_model.safetensors");
    CHECK(st != NULL, "sd1 vae: %s", ldm_last_error());
    if (st) {
        const ldm_st_tensor *t = ldm_st_find(st, "decoder.conv_in.weight");
        CHECK(t && t->dtype == LDM_ST_F16 && t->ndim == 4, "sd1 decoder.conv_in.weight");
        ldm_st_close(st);
    }
}

/* Sizes computed from a header must not overflow; an empty header is valid; a FIFO is
 * refused without blocking.  The inputs are the fuzz corpus's (tests/fuzz/make_seeds.py). */
static void test_st_hardening(void) {
    const char *D = "tests/fuzz/corpus/safetensors/";
    char p[512];
    snprintf(p, sizeof p, "%scrash-shape-2e62.safetensors", D);
    ldm_safetensors *st = ldm_st_open(p);   /* [2^62] F32 with offsets [0, 0] was accepted */
    CHECK(st == NULL && strstr(ldm_last_error(), p) && strstr(ldm_last_error(), "'a'") &&
          strstr(ldm_last_error(), "shape too large"), "shape [2^62] F32: %s", ldm_last_error());
    ldm_st_close(st);
    snprintf(p, sizeof p, "%sshape-zero-dim-huge.safetensors", D);
    st = ldm_st_open(p);
    CHECK(st == NULL && strstr(ldm_last_error(), "shape too large"), "shape [2^62, 0]: %s", ldm_last_error());
    ldm_st_close(st);
    snprintf(p, sizeof p, "%scrash-no-tensors.safetensors", D);   /* qsort(NULL) under UBSan */
    st = ldm_st_open(p);
    CHECK(st && ldm_st_count(st) == 0 && ldm_st_find(st, "a") == NULL, "no tensors: %s", ldm_last_error());
    ldm_st_close(st);
    snprintf(p, sizeof p, "%smetadata-only.safetensors", D);
    st = ldm_st_open(p);
    CHECK(st && ldm_st_count(st) == 0 && ldm_st_metadata(st, "k") && !strcmp(ldm_st_metadata(st, "k"), "v"),
          "metadata only: %s", ldm_last_error());
    ldm_st_close(st);
    snprintf(p, sizeof p, "%sf32-f16-bf16.safetensors", D);
    st = ldm_st_open(p);
    const ldm_st_tensor *t = st ? ldm_st_find(st, "a") : NULL;
    float *f = t ? ldm_st_to_f32(t) : NULL;
    CHECK(f && f[0] == 1.0f && f[1] == -2.0f && f[3] == 65504.0f, "F32 values: %s", ldm_last_error());
    free(f);
    t = st ? ldm_st_find(st, "d") : NULL;   /* [0, 5]: no elements */
    f = t ? ldm_st_to_f32(t) : NULL;
    CHECK(t && t->numel == 0 && t->nbytes == 0 && f, "empty tensor");
    free(f);
    ldm_st_close(st);

    char fifo[400];
    snprintf(fifo, sizeof fifo, "%s/model.safetensors", tmpdir);
    mkfifo(fifo, 0644);
    alarm(20);
    st = ldm_st_open(fifo);
    CHECK(st == NULL && strstr(ldm_last_error(), fifo) && strstr(ldm_last_error(), "not a regular file"),
          "FIFO: %s", ldm_last_error());
    alarm(0);
    unlink(fifo);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ldmst.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_fp16();
    test_sha256();
    test_st_valid();
    test_st_bad();
    test_st_sharded();
    test_fixtures();
    test_st_hardening();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", tmpdir);
    TEST_END();
}
