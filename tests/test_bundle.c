/* test_bundle.c - the .ldmb format end to end: pack the fixture models, open them,
 * look tensors up, check shapes, alignment, fp16 bits and verbatim members, packing
 * determinism, --verify on damaged bundles, every malformed bundle the reader must
 * reject, and ldmpack's input errors (values, pickles, configs that do not match). */
#include "format/bundle.h"
#include "core/common.h"
#include "core/fp16.h"
#include "backend/ops.h"
#include "app/pack.h"
#include "format/safetensors.h"
#include "test.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SD1 "tests/fixtures/models/sd1"
#define SD2 "tests/fixtures/models/sd2"

static char tmpdir[256];

static const char *tmp(const char *name) {
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int pack_dir(const char *dir, const char *out, int check) {
    ldm_pack_opts o = { .model_dir = dir, .output = out, .no_model_check = !check };
    return ldm_pack(&o);
}

static int has_error(const char *want) {
    if (strstr(ldm_last_error(), want)) return 1;
    printf("  error '%s' lacks '%s'\n", ldm_last_error(), want);
    return 0;
}

/* No temporary file (".ldm-XXXXXX", or the old OUTPUT.tmp.PID) left next to `out`. */
static int no_temp_files(const char *out) {
    const char *base = strrchr(out, '/') + 1;
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s.tmp.", base);
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 || strncmp(e->d_name, ".ldm-", 5) == 0)
            found = 1;
    closedir(d);
    return !found;
}

/* ---------------------------------------------------------------- tar rebuilding */

typedef struct { char name[256]; char *data; size_t size; } entry;

static int read_entries(const char *path, entry *out, int max) {
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK) { archive_read_free(a); return -1; }
    struct archive_entry *e;
    int n = 0;
    while (n < max && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        snprintf(out[n].name, sizeof out[n].name, "%s", archive_entry_pathname(e));
        out[n].size = (size_t)archive_entry_size(e);
        out[n].data = malloc(out[n].size + 1);
        size_t got = 0;
        while (got < out[n].size) {
            la_ssize_t r = archive_read_data(a, out[n].data + got, out[n].size - got);
            if (r <= 0) break;
            got += (size_t)r;
        }
        out[n].data[out[n].size] = '\0';
        n++;
    }
    archive_read_free(a);
    return n;
}

static void write_entries(const char *path, const entry *es, int n) {
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_open_filename(a, path);
    for (int i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, es[i].name);
        archive_entry_set_size(e, (la_int64_t)es[i].size);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_write_header(a, e);
        archive_write_data(a, es[i].data, es[i].size);
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static void free_entries(entry *es, int n) {
    for (int i = 0; i < n; i++) free(es[i].data);
}

/* Rebuild `good` into `out` with the manifest's tensors[ti][field] set to value (or the
 * manifest string replaced when field is NULL: replace `from` by `to`). */
static void rebuild_manifest(const char *good, const char *out, int ti, const char *field, json_t *value) {
    entry es[16];
    int n = read_entries(good, es, 16);
    json_t *m = json_loads(es[0].data, 0, NULL);
    json_t *t = json_array_get(json_object_get(m, "tensors"), (size_t)ti);
    json_object_set_new(t, field, value);
    free(es[0].data);
    es[0].data = json_dumps(m, JSON_INDENT(1));
    es[0].size = strlen(es[0].data);
    json_decref(m);
    write_entries(out, es, n);
    free_entries(es, n);
}

static void rebuild_replace(const char *good, const char *out, const char *from, const char *to) {
    entry es[16];
    int n = read_entries(good, es, 16);
    char *p = strstr(es[0].data, from);
    if (p) {
        size_t fl = strlen(from), tl = strlen(to);
        char *nd = malloc(es[0].size - fl + tl + 1);
        memcpy(nd, es[0].data, (size_t)(p - es[0].data));
        memcpy(nd + (p - es[0].data), to, tl);
        strcpy(nd + (p - es[0].data) + tl, p + fl);
        free(es[0].data);
        es[0].data = nd;
        es[0].size = strlen(nd);
    }
    write_entries(out, es, n);
    free_entries(es, n);
}

static void expect_open_fails(const char *path, const char *want, const char *what) {
    ldm_bundle *b = ldm_bundle_open(path);
    CHECK(b == NULL, "%s: opened", what);
    if (b) { ldm_bundle_close(b); return; }
    CHECK(has_error(want), "%s", what);
}

/* ---------------------------------------------------------------- safetensors writing */

typedef struct { const char *name; const char *dtype; int ndim; int64_t shape[4]; const void *data; size_t nbytes; } st_out;

static void write_safetensors(const char *path, const st_out *ts, int n) {
    json_t *h = json_object();
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        json_t *e = json_object(), *sh = json_array();
        for (int d = 0; d < ts[i].ndim; d++) json_array_append_new(sh, json_integer(ts[i].shape[d]));
        json_object_set_new(e, "dtype", json_string(ts[i].dtype));
        json_object_set_new(e, "shape", sh);
        json_object_set_new(e, "data_offsets", json_pack("[I, I]", (json_int_t)at, (json_int_t)(at + ts[i].nbytes)));
        json_object_set_new(h, ts[i].name, e);
        at += ts[i].nbytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    FILE *f = fopen(path, "wb");
    uint64_t len = strlen(hs);
    for (int i = 0; i < 8; i++) fputc((int)(len >> (8 * i)) & 255, f);
    fputs(hs, f);
    for (int i = 0; i < n; i++) fwrite(ts[i].data, 1, ts[i].nbytes, f);
    fclose(f);
    free(hs);
}

static void copy_file(const char *from, const char *to) {
    size_t len;
    char *d = ldm_read_file(from, &len);
    FILE *f = fopen(to, "wb");
    if (d) fwrite(d, 1, len, f);
    fclose(f);
    free(d);
}

/* A vae folder: the sd1 config (optionally edited) and the sd1 tensors, where `drop`
 * is left out, `extra` is added, and `bad_value` (if not 0) is put in an F32 copy of
 * decoder.conv_in.bias. */
static const char *make_vae(const char *name, const char *drop, const char *extra, float bad_value,
                            const char *cfg_from, const char *cfg_to) {
    const char *dir = tmp(name);
    mkdir(dir, 0755);
    char path[600];
    size_t len;
    char *cfg = ldm_read_file(SD1 "/vae/config.json", &len);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    char *p = cfg_from ? strstr(cfg, cfg_from) : NULL;
    if (p) {
        fwrite(cfg, 1, (size_t)(p - cfg), f);
        fputs(cfg_to, f);
        fputs(p + strlen(cfg_from), f);
    } else {
        fputs(cfg, f);
    }
    fclose(f);
    free(cfg);
    ldm_safetensors *st = ldm_st_open(SD1 "/vae/diffusion_pytorch_model.safetensors");
    size_t n = ldm_st_count(st);
    st_out *ts = calloc(n + 1, sizeof *ts);
    float *f32 = NULL;
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        const ldm_st_tensor *t = ldm_st_at(st, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        ts[k] = (st_out){ t->name, "F16", t->ndim, { 0 }, t->data, t->nbytes };
        memcpy(ts[k].shape, t->shape, sizeof ts[k].shape);
        if (bad_value != 0 && strcmp(t->name, "decoder.conv_in.bias") == 0) {
            f32 = ldm_st_to_f32(t);
            f32[3] = bad_value;
            ts[k].dtype = "F32";
            ts[k].data = f32;
            ts[k].nbytes = (size_t)t->numel * 4;
        }
        k++;
    }
    static const uint16_t one[4] = { 0x3c00, 0x3c00, 0x3c00, 0x3c00 };
    if (extra) ts[k++] = (st_out){ extra, "F16", 1, { 4 }, one, 8 };
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    write_safetensors(path, ts, k);
    free(ts);
    free(f32);
    ldm_st_close(st);
    return dir;
}

/* ---------------------------------------------------------------- tests */

static void test_pack_open(void) {
    char b1[512], b1b[512], b2[512];
    snprintf(b1, sizeof b1, "%s", tmp("sd1.ldmb"));
    snprintf(b1b, sizeof b1b, "%s", tmp("sd1b.ldmb"));
    snprintf(b2, sizeof b2, "%s", tmp("sd2.ldmb"));
    CHECK(pack_dir(SD1, b1, 0) == 0, "pack sd1: %s", ldm_last_error());
    CHECK(pack_dir(SD1, b1b, 0) == 0, "pack sd1 again: %s", ldm_last_error());
    CHECK(pack_dir(SD2, b2, 1) == 0, "pack sd2 (fp32 shards, bf16), with the model check: %s", ldm_last_error());
    CHECK(no_temp_files(b1) && no_temp_files(b2), "temporary files left");

    size_t l1, l2;
    char *d1 = ldm_read_file(b1, &l1), *d2 = ldm_read_file(b1b, &l2);
    CHECK(d1 && d2 && l1 == l2 && memcmp(d1, d2, l1) == 0, "packing twice gives identical bytes");
    free(d1);
    free(d2);

    ldm_bundle *b = ldm_bundle_open(b1);
    CHECK(b != NULL, "open sd1: %s", ldm_last_error());
    if (!b) return;
    ldm_bundle *bb = ldm_bundle_open(b1b), *c = ldm_bundle_open(b2);
    CHECK(bb && strcmp(ldm_bundle_hash(b), ldm_bundle_hash(bb)) == 0, "same hash twice");
    CHECK(c && strcmp(ldm_bundle_hash(b), ldm_bundle_hash(c)) != 0, "sd1 and sd2 hashes differ");
    CHECK(strlen(ldm_bundle_hash(b)) == 64, "hash is 64 hex digits");
    CHECK(ldm_bundle_verify(b) == 0, "verify sd1: %s", ldm_last_error());
    CHECK(c && ldm_bundle_verify(c) == 0, "verify sd2: %s", ldm_last_error());
    CHECK(strcmp(ldm_bundle_path(b), b1) == 0, "path");

    /* members: manifest first, weights last, configs verbatim */
    size_t nm = ldm_bundle_member_count(b);
    CHECK(nm == 11, "sd1 has 11 members, found %zu", nm);
    CHECK(strcmp(ldm_bundle_member_name(b, 0), "manifest.json") == 0, "manifest first");
    CHECK(strcmp(ldm_bundle_member_name(b, nm - 1), "weights.bin") == 0, "weights.bin last");
    CHECK(ldm_bundle_member_offset(b, nm - 1) % 512 == 0, "weights.bin data 512-aligned");
    static const char *files[][2] = {
        { "model_index.json", SD1 "/model_index.json" }, { "unet/config.json", SD1 "/unet/config.json" },
        { "vae/config.json", SD1 "/vae/config.json" }, { "text_encoder/config.json", SD1 "/text_encoder/config.json" },
        { "tokenizer/vocab.json", "tests/fixtures/clip/vocab.json" }, { "tokenizer/merges.txt", "tests/fixtures/clip/merges.txt" },
        { "tokenizer/tokenizer_config.json", SD1 "/tokenizer/tokenizer_config.json" },
        { "tokenizer/special_tokens_map.json", SD1 "/tokenizer/special_tokens_map.json" },
        { "scheduler/scheduler_config.json", SD1 "/scheduler/scheduler_config.json" },
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t ml, fl;
        const char *m = ldm_bundle_member(b, files[i][0], &ml);
        char *f = ldm_read_file(files[i][1], &fl);
        CHECK(m && f && ml == fl && memcmp(m, f, fl) == 0 && m[ml] == '\0', "member %s verbatim", files[i][0]);
        free(f);
    }
    CHECK(ldm_bundle_member(b, "weights.bin", NULL) == NULL, "weights.bin is not copied");
    CHECK(ldm_bundle_member(b, "nope.json", NULL) == NULL, "missing member");
    CHECK(ldm_bundle_has_component(b, "unet") && ldm_bundle_has_component(b, "scheduler") &&
          !ldm_bundle_has_component(b, "controlnet"), "components");

    /* tensors: aligned, fp16 bits equal to the fp16 source */
    ldm_safetensors *src[3] = { ldm_st_open(SD1 "/unet/diffusion_pytorch_model.safetensors"),
                                ldm_st_open(SD1 "/vae/diffusion_pytorch_model.safetensors"),
                                ldm_st_open(SD1 "/text_encoder/model.safetensors") };
    static const char *pre[3] = { "unet.", "vae.", "text_encoder." };
    size_t want = 0;
    for (int i = 0; i < 3; i++) want += ldm_st_count(src[i]);
    CHECK(ldm_bundle_tensor_count(b) == want, "tensor count %zu, sources have %zu", ldm_bundle_tensor_count(b), want);
    int misaligned = 0, differ = 0, missing = 0;
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; j < ldm_st_count(src[i]); j++) {
            const ldm_st_tensor *s = ldm_st_at(src[i], j);
            char name[512];
            snprintf(name, sizeof name, "%s%s", pre[i], s->name);
            ldm_tensor *t = ldm_bundle_tensor(b, name);
            if (!t) { missing++; continue; }
            if ((uintptr_t)t->f16 % 64) misaligned++;
            if (t->numel != s->numel || memcmp(t->f16, s->data, s->nbytes) != 0) differ++;
        }
    CHECK(missing == 0 && misaligned == 0 && differ == 0, "sd1 tensors: %d missing, %d misaligned, %d differ",
          missing, misaligned, differ);
    for (int i = 0; i < 3; i++) ldm_st_close(src[i]);

    ldm_tensor *emb = ldm_bundle_tensor(b, "text_encoder.text_model.embeddings.token_embedding.weight");
    CHECK(emb && emb->ndim == 2 && emb->shape[0] == 49408 && emb->shape[1] == 32 && emb->numel == 49408 * 32,
          "token embedding shape");
    CHECK(emb && emb->dtype == LDM_DT_F16 && emb->crc32 != 0, "token embedding fields");
    CHECK(ldm_bundle_tensor(b, "vae.decoder.conv_in.weight") != NULL, "vae.decoder.conv_in.weight");
    CHECK(ldm_bundle_tensor(b, "unet.conv_in.weight") != NULL, "unet.conv_in.weight");
    CHECK(ldm_bundle_tensor(b, "conv_in.weight") == NULL, "names carry the component");

    /* ldm_bundle_need */
    ldm_tensor *vin = ldm_bundle_tensor(b, "vae.decoder.conv_in.weight");
    CHECK(vin && !vin->used, "not used before need");
    if (vin) {
        int64_t sh[4] = { vin->shape[0], vin->shape[1], vin->shape[2], vin->shape[3] };
        CHECK(ldm_bundle_need(b, "vae.decoder.conv_in.weight", 4, sh) == vin && vin->used, "need marks used");
        sh[1] += 1;
        CHECK(ldm_bundle_need(b, "vae.decoder.conv_in.weight", 4, sh) == NULL, "wrong shape");
        CHECK(has_error("vae.decoder.conv_in.weight") && has_error("expected shape [") && has_error("found ["),
              "wrong-shape message");
        CHECK(ldm_bundle_need(b, "vae.decoder.conv_in.weight", 3, sh) == NULL, "wrong ndim");
        CHECK(ldm_bundle_need(b, "vae.decoder.nope", 1, sh) == NULL && has_error("vae.decoder.nope") &&
              has_error("missing"), "missing tensor");
        ldm_bundle_clear_used(b);
        CHECK(!vin->used, "clear_used");
    }

    /* sd2: fp32 and bf16 sources narrowed with round-to-nearest-even */
    if (c) {
        ldm_safetensors *u = ldm_st_open(SD2 "/unet/diffusion_pytorch_model.safetensors.index.json");
        ldm_safetensors *te = ldm_st_open(SD2 "/text_encoder/model.safetensors");
        int bad = 0;
        for (int which = 0; which < 2; which++) {
            ldm_safetensors *st = which ? te : u;
            for (size_t j = 0; st && j < ldm_st_count(st); j++) {
                const ldm_st_tensor *s = ldm_st_at(st, j);
                if (strstr(s->name, "position_ids")) continue;
                char name[512];
                snprintf(name, sizeof name, "%s%s", which ? "text_encoder." : "unet.", s->name);
                ldm_tensor *t = ldm_bundle_tensor(c, name);
                float *f = ldm_st_to_f32(s);
                if (!t || t->numel != s->numel) { bad++; free(f); continue; }
                for (int64_t k = 0; k < s->numel; k++)
                    if (t->f16[k] != ldm_f32_to_f16(f[k])) { bad++; break; }
                free(f);
            }
        }
        CHECK(u && te && bad == 0, "sd2: %d tensors not equal to the rounded source", bad);
        ldm_st_close(u);
        ldm_st_close(te);
    }
    ldm_bundle_close(b);
    ldm_bundle_close(bb);
    ldm_bundle_close(c);
}

static void test_damage(void) {
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s", tmp("sd1.ldmb"));
    snprintf(bad, sizeof bad, "%s", tmp("damaged.ldmb"));
    ldm_bundle *b = ldm_bundle_open(good);
    if (!b) return;
    const char *victim = "unet.down_blocks.0.resnets.1.conv2.weight";
    ldm_tensor *t = ldm_bundle_tensor(b, victim);
    size_t nm = ldm_bundle_member_count(b);
    uint64_t at = ldm_bundle_member_offset(b, nm - 1) + (t ? t->offset : 0) + 100;
    uint64_t cfg_at = ldm_bundle_member_offset(b, 2) + 10;   /* unet/config.json */
    CHECK(t && strcmp(ldm_bundle_member_name(b, 2), "unet/config.json") == 0, "layout as expected");
    ldm_bundle_close(b);

    size_t len;
    char *d = ldm_read_file(good, &len);
    d[at] ^= 0x55;
    FILE *f = fopen(bad, "wb");
    fwrite(d, 1, len, f);
    fclose(f);
    b = ldm_bundle_open(bad);
    CHECK(b != NULL, "a damaged tensor still opens (checksums are checked by verify)");
    if (b) {
        CHECK(ldm_bundle_verify(b) != 0, "verify catches the flipped byte");
        CHECK(has_error(victim) && has_error("1 damaged"), "verify names the tensor");
        CHECK(!strstr(ldm_last_error(), "unet.conv_in.weight"), "only that tensor");
        ldm_bundle_close(b);
    }
    CHECK(ldm_pack_verify(bad, stdout) != 0 && has_error(victim), "ldm_pack_verify");
    d[at] ^= 0x55;
    d[cfg_at] ^= 0x01;
    f = fopen(bad, "wb");
    fwrite(d, 1, len, f);
    fclose(f);
    b = ldm_bundle_open(bad);
    CHECK(b && ldm_bundle_verify(b) != 0 && has_error("member unet/config.json"), "damaged config member named");
    ldm_bundle_close(b);
    free(d);
}

static void test_bad_bundles(void) {
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s", tmp("sd1.ldmb"));
    snprintf(bad, sizeof bad, "%s", tmp("bad.ldmb"));
    size_t len;
    char *d = ldm_read_file(good, &len);
    if (!d) return;
    FILE *f;

    f = fopen(bad, "wb"); fwrite(d, 1, len / 2, f); fclose(f);
    expect_open_fails(bad, "truncated", "truncated at half");
    f = fopen(bad, "wb"); fwrite(d, 1, len - 1024, f); fclose(f);
    expect_open_fails(bad, "truncated", "truncated at the end");
    f = fopen(bad, "wb"); for (int i = 0; i < 300; i++) fputs("hello world\n", f); fclose(f);
    expect_open_fails(bad, "not a tar archive", "text file");
    f = fopen(bad, "wb"); fputs("tiny", f); fclose(f);
    expect_open_fails(bad, "not an ldm bundle", "tiny file");
    expect_open_fails(tmp("nonexistent.ldmb"), "nonexistent.ldmb", "missing file");
    /* a corrupt header checksum in the second member */
    {
        ldm_bundle *b = ldm_bundle_open(good);
        uint64_t h = ldm_bundle_member_offset(b, 1) - 512;
        ldm_bundle_close(b);
        d[h + 3] ^= 0x20;
        f = fopen(bad, "wb"); fwrite(d, 1, len, f); fclose(f);
        expect_open_fails(bad, "corrupt tar header", "bad header checksum");
        d[h + 3] ^= 0x20;
    }
    free(d);

    entry es[16];
    int n = read_entries(good, es, 16);
    CHECK(n == 11, "read %d entries", n);
    write_entries(bad, es + 1, n - 1);
    expect_open_fails(bad, "no member manifest.json", "no manifest");
    write_entries(bad, es, n - 1);
    expect_open_fails(bad, "no member weights.bin", "no weights.bin");
    entry dup[16];
    memcpy(dup, es, sizeof(entry) * (size_t)n);
    dup[n] = dup[n - 1];
    dup[n - 1] = es[3];
    write_entries(bad, dup, n + 1);
    expect_open_fails(bad, "duplicate member 'vae/config.json'", "duplicate member");
    memcpy(dup, es, sizeof(entry) * (size_t)n);
    snprintf(dup[2].name, sizeof dup[2].name, "unet/../../etc/passwd");
    write_entries(bad, dup, n);
    expect_open_fails(bad, "'..'", "'..' in a member name");
    snprintf(dup[2].name, sizeof dup[2].name, "/etc/passwd");
    write_entries(bad, dup, n);
    expect_open_fails(bad, "leading '/'", "absolute member name");
    write_entries(bad, es, n);
    ldm_bundle *ok = ldm_bundle_open(bad);
    CHECK(ok != NULL, "a bundle rewritten by another tar writer opens: %s", ldm_last_error());
    CHECK(ok && ldm_bundle_verify(ok) == 0, "and verifies: %s", ldm_last_error());
    ldm_bundle_close(ok);
    free_entries(es, n);

    rebuild_replace(good, bad, "\"format_version\": 1", "\"format_version\": 2");
    expect_open_fails(bad, "format version 2", "format version 2");
    CHECK(has_error("version 1"), "says which version is supported");
    rebuild_replace(good, bad, "\"format\": \"ldmb\"", "\"format\": \"zip\"");
    expect_open_fails(bad, "not an ldm bundle", "format zip");
    rebuild_replace(good, bad, "\"content_hash\": \"", "\"content_hash\": \"x");
    expect_open_fails(bad, "content_hash", "bad hash field");
    rebuild_manifest(good, bad, 0, "offset", json_integer(1 << 30));
    expect_open_fails(bad, "outside weights.bin", "offset out of range");
    rebuild_manifest(good, bad, 1, "offset", json_integer(0));
    expect_open_fails(bad, "overlap", "overlapping tensors");
    rebuild_manifest(good, bad, 0, "offset", json_integer(32));
    expect_open_fails(bad, "aligned", "misaligned tensor");
    rebuild_manifest(good, bad, 0, "dtype", json_string("F32"));
    expect_open_fails(bad, "only F16", "dtype F32");
    rebuild_manifest(good, bad, 0, "nbytes", json_integer(6));
    expect_open_fails(bad, "nbytes 6", "nbytes mismatch");
    rebuild_manifest(good, bad, 0, "shape", json_pack("[i,i,i,i,i]", 1, 1, 1, 1, 1));
    expect_open_fails(bad, "shape", "5-d shape");
    rebuild_manifest(good, bad, 0, "crc32", json_integer(-1));
    expect_open_fails(bad, "crc32", "negative crc");
    rebuild_manifest(good, bad, 0, "crc32", json_integer(1));
    ldm_bundle *b = ldm_bundle_open(bad);
    CHECK(b && ldm_bundle_verify(b) != 0, "wrong crc in the manifest fails verify");
    ldm_bundle_close(b);
}

static void test_pack_errors(void) {
    char out[512];
    snprintf(out, sizeof out, "%s", tmp("out.ldmb"));
    ldm_pack_opts o = { .model_dir = tmp("no-such-model"), .output = out };
    CHECK(ldm_pack(&o) != 0 && has_error("no-such-model"), "missing model folder");
    CHECK(access(out, F_OK) != 0 && no_temp_files(out), "no output after a failure");

    /* a failed pack leaves an existing OUTPUT alone */
    {
        FILE *f = fopen(out, "w");
        fputs("old", f);
        fclose(f);
    }
    CHECK(ldm_pack(&o) != 0, "fails again");
    size_t len;
    char *old = ldm_read_file(out, &len);
    CHECK(old && strcmp(old, "old") == 0 && no_temp_files(out), "existing output untouched");
    free(old);
    unlink(out);

    /* single components */
    ldm_pack_opts v = { .vae = SD1 "/vae", .output = tmp("vae.ldmb") };
    CHECK(ldm_pack(&v) == 0, "vae only: %s", ldm_last_error());
    ldm_bundle *b = ldm_bundle_open(tmp("vae.ldmb"));
    CHECK(b && ldm_bundle_has_component(b, "vae") && !ldm_bundle_has_component(b, "unet") &&
          ldm_bundle_tensor_count(b) == 180 && ldm_bundle_member(b, "vae/config.json", NULL) != NULL, "vae-only bundle");
    ldm_bundle_close(b);
    ldm_pack_opts mix = { .model_dir = SD1, .vae = SD2 "/vae", .output = tmp("mix.ldmb"), .no_model_check = 1 };
    CHECK(ldm_pack(&mix) == 0, "sd1 with the sd2 vae: %s", ldm_last_error());
    ldm_pack_opts nocomp = { .model_dir = SD1, .unet = tmp("nope"), .output = out };
    CHECK(ldm_pack(&nocomp) != 0 && has_error("--unet") && has_error("nope"), "missing --unet folder");

    /* values */
    o = (ldm_pack_opts){ .vae = make_vae("vae_nan", NULL, NULL, NAN, NULL, NULL), .output = out };
    CHECK(ldm_pack(&o) != 0 && has_error("decoder.conv_in.bias") && has_error("NaN"), "NaN");
    o.vae = make_vae("vae_inf", NULL, NULL, -INFINITY, NULL, NULL);
    CHECK(ldm_pack(&o) != 0 && has_error("decoder.conv_in.bias") && has_error("Inf"), "Inf");
    o.vae = make_vae("vae_big", NULL, NULL, 1e5f, NULL, NULL);
    CHECK(ldm_pack(&o) != 0 && has_error("decoder.conv_in.bias") && has_error("100000") && has_error("--clamp"),
          "out of fp16 range");
    CHECK(access(out, F_OK) != 0 && no_temp_files(out), "no output after value errors");
    o.clamp = 1;
    CHECK(ldm_pack(&o) == 0, "--clamp: %s", ldm_last_error());
    b = ldm_bundle_open(out);
    ldm_tensor *t = b ? ldm_bundle_tensor(b, "vae.decoder.conv_in.bias") : NULL;
    CHECK(t && t->f16[3] == 0x7bff, "clamped to 65504");
    ldm_bundle_close(b);
    unlink(out);
    o.clamp = 0;
    o.vae = make_vae("vae_ok", NULL, NULL, 65504.0f, NULL, NULL);
    CHECK(ldm_pack(&o) == 0, "65504 is in range: %s", ldm_last_error());
    unlink(out);

    /* configs that do not match the weights (model loaders) */
    o.vae = make_vae("vae_extra", NULL, "decoder.extra.weight", 0, NULL, NULL);
    CHECK(ldm_pack(&o) != 0 && has_error("vae.decoder.extra.weight"), "extra tensor");
    o.vae = make_vae("vae_missing", "decoder.conv_out.bias", NULL, 0, NULL, NULL);
    CHECK(ldm_pack(&o) != 0 && has_error("vae.decoder.conv_out.bias"), "missing tensor");
    o.vae = make_vae("vae_shape", NULL, NULL, 0, "\"latent_channels\": 4", "\"latent_channels\": 8");
    CHECK(ldm_pack(&o) != 0 && has_error("vae.") && has_error("shape"), "wrong shape");
    o.vae = make_vae("vae_encoder", "encoder.conv_in.weight", NULL, 0, NULL, NULL);
    CHECK(ldm_pack(&o) == 0, "the encoder half is optional: %s", ldm_last_error());
    unlink(out);
    CHECK(access(out, F_OK) != 0 && no_temp_files(out), "no output after config errors");

    /* pickles, unsupported dtypes, missing files */
    char pk[512];
    snprintf(pk, sizeof pk, "%s", tmp("pickle"));
    mkdir(pk, 0755);
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/config.json", pk);
    copy_file(SD1 "/vae/config.json", p1);
    snprintf(p2, sizeof p2, "%s/diffusion_pytorch_model.bin", pk);
    copy_file(SD1 "/vae/config.json", p2);
    o.vae = pk;
    CHECK(ldm_pack(&o) != 0 && has_error("diffusion_pytorch_model.bin") && has_error("safe_serialization=True") &&
          has_error("AutoencoderKL.from_pretrained"), "pickle weights");
    unlink(p2);
    CHECK(ldm_pack(&o) != 0 && has_error("no weights"), "no weights at all");
    int64_t ids[2] = { 0, 1 };
    st_out it = { "decoder.conv_in.weight", "I64", 1, { 2 }, ids, 16 };
    snprintf(p2, sizeof p2, "%s/diffusion_pytorch_model.safetensors", pk);
    write_safetensors(p2, &it, 1);
    CHECK(ldm_pack(&o) != 0 && has_error("decoder.conv_in.weight") && has_error("I64"), "unsupported dtype");
    unlink(p1);
    CHECK(ldm_pack(&o) != 0 && has_error("config.json"), "missing config.json");
    FILE *f = fopen(p1, "w");
    fputs("{\"a\": 1,", f);
    fclose(f);
    CHECK(ldm_pack(&o) != 0 && has_error("config.json") && has_error("invalid JSON"), "malformed config.json");
    CHECK(access(out, F_OK) != 0 && no_temp_files(out), "no output after input errors");
}

/* ---------------------------------------------------------------- hardening */

/* The crafted bundles of the fuzz corpus (tests/fuzz/make_seeds.py): each must be refused
 * with a message naming the file and the problem (the first two read past the mapping). */
static void test_crafted(void) {
    static const char *cases[][2] = {
        {"crash-pax-size-wrap.ldmb", "says 18446744073709551104 bytes"},
        {"crash-pax-record-length.ldmb", "malformed pax header at offset 0"},
        {"numel-wrap.ldmb", "'vae.decoder.conv_in.bias': shape has more than 2^40 elements"},
        {"tensor-twice.ldmb", "tensor 'vae.decoder.conv_in.bias' listed twice"},
        {"manifest-second.ldmb", "manifest.json must be the first member, but 'vae/config.json' comes first"},
        {"weights-not-last.ldmb", "weights.bin must be the last member"},
        {"duplicate.ldmb", "duplicate member 'vae/config.json'"},
        {"truncated.ldmb", "truncated"},
    };
    char path[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "tests/fuzz/corpus/bundle/%s", cases[i][0]);
        expect_open_fails(path, cases[i][1], cases[i][0]);
        CHECK(has_error(path), "%s: message does not name the file", cases[i][0]);
    }
    static const char *good[] = {"vae-tiny.ldmb", "scheduler-only.ldmb", "pax-long-name.ldmb"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "tests/fuzz/corpus/bundle/%s", good[i]);
        ldm_bundle *b = ldm_bundle_open(path);
        CHECK(b != NULL, "%s: %s", good[i], ldm_last_error());
        CHECK(b && ldm_bundle_verify(b) == 0, "%s verify: %s", good[i], ldm_last_error());
        if (b && i == 0) CHECK(ldm_pack_check_models(b) == 0, "vae-tiny models: %s", ldm_last_error());
        ldm_bundle_close(b);
    }

    /* a FIFO given as a bundle is refused at once (open() used to block) */
    const char *fifo = tmp("pipe.ldmb");
    mkfifo(fifo, 0644);
    alarm(20);
    expect_open_fails(fifo, "not a regular file (a FIFO)", "FIFO bundle");
    alarm(0);
    unlink(fifo);
}

/* 50,000 members: the duplicate check is O(n log n) (it was quadratic: 2.5 s). */
static void test_many_members(void) {
    entry es[16];
    int n = read_entries(tmp("sd1.ldmb"), es, 16);
    if (n != 11) { CHECK(0, "read %d entries", n); free_entries(es, n); return; }
    const int N = 50000;
    entry *all = ldm_xcalloc((size_t)N + 16, sizeof *all);
    all[0] = es[0];
    for (int i = 0; i < N; i++) {
        snprintf(all[1 + i].name, sizeof all[1 + i].name, "pad/%05d", (i * 7919) % N);
        all[1 + i].data = "";
    }
    for (int i = 1; i < n; i++) all[N + i] = es[i];
    write_entries(tmp("many.ldmb"), all, N + n);
    clock_t t0 = clock();
    ldm_bundle *b = ldm_bundle_open(tmp("many.ldmb"));
    double cpu = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(b != NULL, "50,000 members: %s", ldm_last_error());
    CHECK(b && ldm_bundle_member_count(b) == (size_t)N + 11, "member count");
    CHECK(b && ldm_bundle_member(b, "unet/config.json", NULL) != NULL, "lookup among 50,000");
    ldm_bundle_close(b);
    printf("opening a bundle of 50,011 members: %.2f s CPU\n", cpu);
    CHECK(cpu < 1.5, "opening 50,011 members took %.2f s CPU", cpu);
    /* and a duplicate among them is found, by name */
    snprintf(all[N].name, sizeof all[N].name, "pad/%05d", 12345);
    write_entries(tmp("many.ldmb"), all, N + n);
    expect_open_fails(tmp("many.ldmb"), "duplicate member 'pad/12345'", "duplicate among 50,000");
    unlink(tmp("many.ldmb"));
    free(all);
    free_entries(es, n);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ldmbundle.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    if (access(SD1 "/model_index.json", F_OK) != 0 || access(SD2 "/model_index.json", F_OK) != 0) {
        printf("FAIL: fixture models missing (tests/fixtures/models)\n");
        test_failed++;
    } else {
        test_pack_open();
        test_damage();
        test_bad_bundles();
        test_pack_errors();
        test_crafted();
        test_many_members();
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", tmpdir);
    TEST_END();
}
