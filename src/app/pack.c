/* pack.c - write .ldmb bundles from diffusers folders; describe and verify bundles.
 *
 * Packing runs in two passes over the source tensors so that memory stays at one
 * tensor's worth whatever the model size:
 *   pass 1 converts each tensor to fp16 (rejecting NaN/Inf and values beyond ±65504
 *          unless clamping), computes its crc32, feeds the content hash and lays it
 *          out in weights.bin;
 *   pass 2, after manifest.json and the configs are written, converts again and
 *          streams the bytes into the weights.bin member.
 * The archive goes to a new temporary file in OUTPUT's folder (ldm_tmp_create:
 * ".ldm-XXXXXX", O_EXCL) with fixed metadata (mtime 0, uid/gid 0, mode 0644) so the same
 * model always gives the same bytes; it is re-opened, verified and checked against the
 * model loaders before it is renamed into place.
 */
#include "app/pack.h"
#include "format/bundle.h"
#include "core/common.h"
#include "core/fp16.h"
#include "format/ldmb.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "backend/ops.h"
#include "format/safetensors.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---------------------------------------------------------------- small helpers */

typedef struct { char *s; size_t n, cap; } strbuf;

static void sb_add(strbuf *b, const char *fmt, ...) LDM_PRINTF(2, 3);
static void sb_add(strbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (b->s && (size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
        b->cap = (b->cap + (size_t)k + 1) * 2;
        char *ns = realloc(b->s, b->cap);
        if (!ns) { ldm_log(0, "ldm: out of memory\n"); abort(); }
        b->s = ns;
    }
}

/* A JSON string literal. */
static void sb_json_str(strbuf *b, const char *s) {
    sb_add(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') sb_add(b, "\\%c", c);
        else if (c < 0x20) sb_add(b, "\\u%04x", c);
        else sb_add(b, "%c", c);
    }
    sb_add(b, "\"");
}

static int is_dir(const char *p) { struct stat sb; return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode); }
static int is_file(const char *p) { struct stat sb; return stat(p, &sb) == 0 && S_ISREG(sb.st_mode); }
static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}
static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = ldm_xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static uint32_t crc32_buf(const void *p, uint64_t n) {
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t done = 0; done < n;) {
        uInt k = (uInt)(n - done > (1u << 30) ? (1u << 30) : n - done);
        crc = crc32(crc, (const Bytef *)p + done, k);
        done += k;
    }
    return (uint32_t)crc;
}

/* ---------------------------------------------------------------- the packer */

enum { C_UNET, C_VAE, C_TEXT, C_TOKENIZER, C_SCHEDULER, NCOMP };
static const char *COMP_NAME[NCOMP] = { "unet", "vae", "text_encoder", "tokenizer", "scheduler" };
static const char *COMP_FLAG[NCOMP] = { "--unet", "--vae", "--text-encoder", "--tokenizer", "--scheduler" };
static const char *COMP_WEIGHTS[3] = { "diffusion_pytorch_model", "diffusion_pytorch_model", "model" };
static const char *COMP_CLASS[3] = { "UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel" };

typedef struct {
    const char *name;      /* bundle member name */
    char *data;
    size_t len;
    uint32_t crc;
} cfg_member;

typedef struct {
    char *name;            /* "unet.conv_in.weight" */
    const ldm_st_tensor *src;   /* NULL: random weights */
    int ndim;
    int64_t shape[LDMB_MAX_DIMS];
    uint64_t offset, nbytes;
    uint32_t crc;
} pack_tensor;

typedef struct {
    const ldm_pack_opts *o;
    char *dir[NCOMP];
    cfg_member m[16];
    size_t nm;
    ldm_safetensors *st[3];
    pack_tensor *t;
    size_t nt;
    uint64_t ntensors[3], nparams[3];
    uint64_t wsize;
    size_t max_nbytes;
    size_t nclamped;
    char hash[65];
    char *manifest;
} packer;

static void packer_free(packer *p) {
    for (int c = 0; c < NCOMP; c++) free(p->dir[c]);
    for (size_t i = 0; i < p->nm; i++) free(p->m[i].data);
    for (int c = 0; c < 3; c++) ldm_st_close(p->st[c]);
    for (size_t i = 0; i < p->nt; i++) free(p->t[i].name);
    free(p->t);
    free(p->manifest);
}

/* Read one config/tokenizer file into the member list; JSON files must parse. */
static int add_file(packer *p, const char *dir, const char *file, const char *member, int required) {
    char *path = path_join(dir, file);
    if (!is_file(path)) {
        int rc = required ? ldm_error("%s: missing (required for %s)", path, member) : 0;
        free(path);
        return rc;
    }
    size_t len;
    char *data = ldm_read_file(path, &len);
    if (!data) { free(path); return -1; }
    if (ends_with(file, ".json")) {
        json_error_t jerr;
        json_t *j = json_loadb(data, len, 0, &jerr);
        if (!j || !json_is_object(j)) {
            int rc = j ? ldm_error("%s: not a JSON object", path)
                       : ldm_error("%s: invalid JSON: %s (line %d, column %d)", path, jerr.text,
                                   jerr.line, jerr.column);
            json_decref(j);
            free(data); free(path);
            return rc;
        }
        json_decref(j);
    }
    free(path);
    p->m[p->nm++] = (cfg_member){ member, data, len, crc32_buf(data, len) };
    return 0;
}

/* Find a component's safetensors (single file or sharded index). */
static char *find_weights(const char *dir, int c) {
    char name[256];
    snprintf(name, sizeof name, "%s.safetensors", COMP_WEIGHTS[c]);
    char *path = path_join(dir, name);
    if (is_file(path)) return path;
    free(path);
    snprintf(name, sizeof name, "%s.safetensors.index.json", COMP_WEIGHTS[c]);
    path = path_join(dir, name);
    if (is_file(path)) return path;
    free(path);
    /* Other names (variants such as model.fp16.safetensors): exactly one index, else
     * exactly one file. */
    DIR *d = opendir(dir);
    if (!d) { ldm_error("%s: %s", dir, strerror(errno)); return NULL; }
    char *index = NULL, *single = NULL, *pickle = NULL;
    int nindex = 0, nsingle = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (ends_with(n, ".safetensors.index.json")) { nindex++; free(index); index = ldm_xstrdup(n); }
        else if (ends_with(n, ".safetensors")) { nsingle++; free(single); single = ldm_xstrdup(n); }
        else if (!pickle && (ends_with(n, ".bin") || ends_with(n, ".ckpt") || ends_with(n, ".pt") ||
                             ends_with(n, ".pth") || ends_with(n, ".bin.index.json")))
            pickle = ldm_xstrdup(n);
    }
    closedir(d);
    char *res = NULL;
    if (nindex == 1) res = path_join(dir, index);
    else if (nindex > 1) ldm_error("%s: %d sharded weight indexes; expected %s.safetensors.index.json",
                                   dir, nindex, COMP_WEIGHTS[c]);
    else if (nsingle == 1) res = path_join(dir, single);
    else if (nsingle > 1) ldm_error("%s: %d .safetensors files and no index; expected %s.safetensors",
                                    dir, nsingle, COMP_WEIGHTS[c]);
    else if (pickle)
        ldm_error("%s/%s: pickle weights are not read (loading them can run code). Re-save the "
                  "model as safetensors with Python: model = %s.from_pretrained(\"%s\"); "
                  "model.save_pretrained(\"%s\", safe_serialization=True)",
                  dir, pickle, COMP_CLASS[c], dir, dir);
    else
        ldm_error("%s: no weights found (expected %s.safetensors or %s.safetensors.index.json)",
                  dir, COMP_WEIGHTS[c], COMP_WEIGHTS[c]);
    free(index); free(single); free(pickle);
    return res;
}

static int cmp_pack_tensor(const void *a, const void *b) {
    return strcmp(((const pack_tensor *)a)->name, ((const pack_tensor *)b)->name);
}

/* A CLIPTextModel state-dict key: 0 = "text_model.*" (transformers 4), 1 = one of the
 * text model's own modules without that prefix (transformers 5), -1 = neither (such as
 * a projection: left as it is, and refused as unused by the model check). */
static int text_key_kind(const char *key) {
    if (strncmp(key, "text_model.", 11) == 0) return 0;
    static const char *mods[3] = {"embeddings.", "encoder.", "final_layer_norm."};
    for (int i = 0; i < 3; i++)
        if (strncmp(key, mods[i], strlen(mods[i])) == 0) return 1;
    return -1;
}

/* Collect the tensors of the three weight components, sorted by full name. */
static int collect_tensors(packer *p) {
    const ldm_st_tensor *te_first[2] = {NULL, NULL};   /* first prefixed / unprefixed */
    size_t total = 0;
    for (int c = 0; c < 3; c++) if (p->st[c]) total += ldm_st_count(p->st[c]);
    p->t = ldm_xcalloc(total ? total : 1, sizeof *p->t);
    for (int c = 0; c < 3; c++) {
        if (!p->st[c]) continue;
        for (size_t i = 0; i < ldm_st_count(p->st[c]); i++) {
            const ldm_st_tensor *s = ldm_st_at(p->st[c], i);
            /* A registered buffer older transformers saved with CLIP; not a weight. */
            if (c == C_TEXT && ends_with(s->name, "embeddings.position_ids")) {
                ldm_log(2, "skipping %s (%s), an index buffer, not a weight\n", s->name, s->file);
                continue;
            }
            if (s->dtype != LDM_ST_F32 && s->dtype != LDM_ST_F16 && s->dtype != LDM_ST_BF16)
                return ldm_error("%s: tensor '%s': dtype %s is not supported (weights must be F32, "
                                 "F16 or BF16)", s->file, s->name, ldm_st_dtype_name(s->dtype));
            if (s->ndim > LDMB_MAX_DIMS)
                return ldm_error("%s: tensor '%s': %d dimensions, at most %d supported", s->file,
                                 s->name, s->ndim, LDMB_MAX_DIMS);
            /* transformers 5 saves CLIPTextModel without the "text_model." prefix of
             * transformers 4; the bundle keeps the transformers 4 names. */
            const char *pfx = "";
            if (c == C_TEXT) {
                int kind = text_key_kind(s->name);
                if (kind == 1) pfx = "text_model.";
                if (kind >= 0 && !te_first[kind]) te_first[kind] = s;
                if (te_first[0] && te_first[1])
                    return ldm_error("%s: text encoder tensor names mix two layouts: '%s' (%s) has the "
                                     "\"text_model.\" prefix that transformers 4 writes, '%s' (%s) has "
                                     "not (transformers 5); a checkpoint must use one", p->dir[C_TEXT],
                                     te_first[0]->name, te_first[0]->file, te_first[1]->name,
                                     te_first[1]->file);
            }
            pack_tensor *t = &p->t[p->nt++];
            size_t n = strlen(COMP_NAME[c]) + strlen(pfx) + strlen(s->name) + 2;
            t->name = ldm_xmalloc(n);
            snprintf(t->name, n, "%s.%s%s", COMP_NAME[c], pfx, s->name);
            t->src = s;
            t->ndim = s->ndim;
            for (int d = 0; d < s->ndim; d++) t->shape[d] = s->shape[d];
            t->nbytes = (uint64_t)s->numel * 2;
            if (t->nbytes > p->max_nbytes) p->max_nbytes = (size_t)t->nbytes;
            p->ntensors[c]++;
            p->nparams[c] += (uint64_t)s->numel;
        }
    }
    qsort(p->t, p->nt, sizeof *p->t, cmp_pack_tensor);
    return 0;
}

/* --random-weights: biases 0, norm weights 1 (GroupNorm/LayerNorm scales: "norm" in the
 * module's name), everything else nearly N(0, 0.02) from a generator seeded with the FNV-1a
 * hash of the name (the same values whatever the order or the other tensors). */
static void random_tensor(const pack_tensor *t, uint16_t *out) {
    const size_t n = (size_t)(t->nbytes / 2);
    const char *dot = strrchr(t->name, '.');
    const int bias = dot && !strcmp(dot, ".bias");
    int norm = 0;
    if (dot && !strcmp(dot, ".weight")) {
        const char *mod = dot;
        while (mod > t->name && mod[-1] != '.') mod--;   /* the module's own name */
        norm = strstr(mod, "norm") != NULL && t->ndim == 1;
    }
    if (bias || norm) {
        const uint16_t v = ldm_f32_to_f16(bias ? 0.0f : 1.0f);
        for (size_t i = 0; i < n; i++) out[i] = v;
        return;
    }
    uint64_t h = 1469598103934665603ull;
    for (const char *c = t->name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
    /* splitmix64; each value the sum of four 16-bit uniforms on (-1, 1), scaled to unit
     * variance (Irwin-Hall: nearly normal, tails cut at 3.46 sigma).  No transcendental
     * function: a full SD-1.5 bundle takes seconds.  Fixed by this code alone. */
    const float scale = 0.02f * 0.8660254f / 32768.0f;   /* sqrt(3/4): var of the sum is 4/3 */
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (h += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        int32_t sum = 0;
        for (int k = 0; k < 4; k++) sum += (int32_t)((z >> (16 * k)) & 0xffff) - 32768;
        out[i] = ldm_f32_to_f16(scale * ((float)sum + 2.0f));   /* +2: centre the four halves */
    }
}

/* Convert one source tensor to fp16, checking every value. */
static int convert(packer *p, const pack_tensor *t, uint16_t *out, int count_clamps) {
    if (!t->src) {
        random_tensor(t, out);
        return 0;
    }
    const ldm_st_tensor *s = t->src;
    size_t n = (size_t)s->numel;
    const uint8_t *src = s->data;
    for (size_t i = 0; i < n; i++) {
        float v;
        uint16_t h;
        if (s->dtype == LDM_ST_F16) {
            memcpy(&h, src + 2 * i, 2);
            if ((h & 0x7c00u) == 0x7c00u)
                return ldm_error("%s: tensor '%s': %s at index %zu (weights must be finite)",
                                 s->file, s->name, (h & 0x3ffu) ? "NaN" : "Inf", i);
            out[i] = h;
            continue;
        }
        if (s->dtype == LDM_ST_F32) memcpy(&v, src + 4 * i, 4);
        else { memcpy(&h, src + 2 * i, 2); v = ldm_bf16_to_f32(h); }
        if (isnan(v) || isinf(v))
            return ldm_error("%s: tensor '%s': %s at index %zu (weights must be finite)", s->file,
                             s->name, isnan(v) ? "NaN" : "Inf", i);
        if (fabsf(v) > LDM_F16_MAX) {
            if (!p->o->clamp)
                return ldm_error("%s: tensor '%s': value %g at index %zu is outside the fp16 range "
                                 "±65504 (use --clamp to clamp it)", s->file, s->name, (double)v, i);
            v = v > 0 ? LDM_F16_MAX : -LDM_F16_MAX;
            if (count_clamps) p->nclamped++;
        }
        out[i] = ldm_f32_to_f16(v);
    }
    return 0;
}

/* Pass 1: convert, checksum, hash, lay out. */
static int pass1(packer *p) {
    uint16_t *buf = ldm_xmalloc(p->max_nbytes ? p->max_nbytes : 1);
    ldm_sha256 s;
    ldmb_hash_begin(&s);
    for (size_t i = 0; i < p->nm; i++) ldmb_hash_member(&s, p->m[i].name, p->m[i].data, p->m[i].len);
    uint64_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < p->nt && !rc; i++) {
        pack_tensor *t = &p->t[i];
        if ((rc = convert(p, t, buf, 1)) != 0) break;
        t->crc = crc32_buf(buf, t->nbytes);
        ldmb_hash_tensor_head(&s, t->name, t->ndim, t->shape, t->nbytes);
        ldm_sha256_update(&s, buf, (size_t)t->nbytes);
        at = (at + LDMB_ALIGN - 1) / LDMB_ALIGN * LDMB_ALIGN;
        t->offset = at;
        at += t->nbytes;
    }
    free(buf);
    p->wsize = (at + LDMB_ALIGN - 1) / LDMB_ALIGN * LDMB_ALIGN;
    uint8_t d[32];
    ldm_sha256_final(&s, d);
    ldm_sha256_hex(d, p->hash);
    return rc;
}

static void build_manifest(packer *p) {
    strbuf b = { 0 };
    sb_add(&b, "{\n \"format\": \"ldmb\",\n \"format_version\": %d,\n", LDMB_FORMAT_VERSION);
    sb_add(&b, " \"ldm_version\": \"%s\",\n \"created_by\": \"ldmpack %s\",\n", LDM_VERSION, LDM_VERSION);
    sb_add(&b, " \"content_hash\": \"%s\",\n \"components\": {", p->hash);
    int first = 1;
    for (int c = 0; c < NCOMP; c++) {
        if (!p->dir[c]) continue;
        sb_add(&b, "%s\n  \"%s\": {", first ? "" : ",", COMP_NAME[c]);
        first = 0;
        if (c < 3) {
            sb_add(&b, "\"config\": \"%s/config.json\", \"tensors\": %" PRIu64 ", \"parameters\": %" PRIu64 "}",
                   COMP_NAME[c], p->ntensors[c], p->nparams[c]);
        } else if (c == C_SCHEDULER) {
            sb_add(&b, "\"config\": \"scheduler/scheduler_config.json\"}");
        } else {
            sb_add(&b, "\"files\": [");
            int f = 1;
            for (size_t i = 0; i < p->nm; i++)
                if (strncmp(p->m[i].name, "tokenizer/", 10) == 0) {
                    sb_add(&b, "%s\"%s\"", f ? "" : ", ", p->m[i].name);
                    f = 0;
                }
            sb_add(&b, "]}");
        }
    }
    sb_add(&b, "\n },\n \"members\": [");
    for (size_t i = 0; i < p->nm; i++)
        sb_add(&b, "%s\n  {\"name\": \"%s\", \"size\": %zu, \"crc32\": %u}", i ? "," : "", p->m[i].name,
               p->m[i].len, (unsigned)p->m[i].crc);
    sb_add(&b, "\n ],\n \"weights\": {\"member\": \"%s\", \"size\": %" PRIu64 ", \"alignment\": %d, "
           "\"dtype\": \"F16\"},\n \"tensors\": [", LDMB_WEIGHTS, p->wsize, LDMB_ALIGN);
    for (size_t i = 0; i < p->nt; i++) {
        const pack_tensor *t = &p->t[i];
        sb_add(&b, "%s\n  {\"name\": ", i ? "," : "");
        sb_json_str(&b, t->name);
        sb_add(&b, ", \"dtype\": \"F16\", \"shape\": [");
        for (int d = 0; d < t->ndim; d++) sb_add(&b, "%s%" PRId64, d ? ", " : "", t->shape[d]);
        sb_add(&b, "], \"offset\": %" PRIu64 ", \"nbytes\": %" PRIu64 ", \"crc32\": %u}", t->offset,
               t->nbytes, (unsigned)t->crc);
    }
    sb_add(&b, "\n ]\n}\n");
    p->manifest = b.s;
}

/* ---------------------------------------------------------------- tar writing */

static struct archive_entry *file_entry(const char *name, uint64_t size) {
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    return e;
}

/* libarchive's message with the system's reason: its fd writer says only "Write error"
 * for a full disk or a file size limit (EFBIG), the errno says which. */
static const char *arch_reason(struct archive *a) {
    static _Thread_local char buf[512];
    const char *s = archive_error_string(a);
    int e = archive_errno(a);
    if (e > 0) snprintf(buf, sizeof buf, "%s: %s", s ? s : "error", strerror(e));
    else snprintf(buf, sizeof buf, "%s", s ? s : "unknown error");
    return buf;
}

static int write_all(struct archive *a, const char *tmp, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        size_t k = n > (64u << 20) ? (64u << 20) : n;
        la_ssize_t w = archive_write_data(a, p, k);
        if (w <= 0) return ldm_error("%s: write failed: %s", tmp, arch_reason(a));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_member(struct archive *a, const char *tmp, const char *name, const void *data, size_t n) {
    struct archive_entry *e = file_entry(name, n);
    int r = archive_write_header(a, e);
    archive_entry_free(e);
    if (r != ARCHIVE_OK) return ldm_error("%s: writing header of %s: %s", tmp, name, arch_reason(a));
    return write_all(a, tmp, data, n);
}

static int write_bundle(packer *p, int fd, const char *tmp) {
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    int rc = 0;
    if (archive_write_open_fd(a, fd) != ARCHIVE_OK) {
        rc = ldm_error("%s: %s", tmp, arch_reason(a));
        archive_write_free(a);
        return rc;
    }
    rc = write_member(a, tmp, LDMB_MANIFEST, p->manifest, strlen(p->manifest));
    for (size_t i = 0; i < p->nm && !rc; i++) rc = write_member(a, tmp, p->m[i].name, p->m[i].data, p->m[i].len);
    if (!rc) {
        struct archive_entry *e = file_entry(LDMB_WEIGHTS, p->wsize);
        if (archive_write_header(a, e) != ARCHIVE_OK)
            rc = ldm_error("%s: writing header of weights.bin: %s", tmp, arch_reason(a));
        archive_entry_free(e);
    }
    if (!rc) {   /* pass 2 */
        static const uint8_t zeros[LDMB_ALIGN];
        uint16_t *buf = ldm_xmalloc(p->max_nbytes ? p->max_nbytes : 1);
        uint64_t at = 0;
        for (size_t i = 0; i < p->nt && !rc; i++) {
            const pack_tensor *t = &p->t[i];
            if (t->offset > at) rc = write_all(a, tmp, zeros, (size_t)(t->offset - at));
            if (!rc) rc = convert(p, t, buf, 0);
            if (!rc && crc32_buf(buf, t->nbytes) != t->crc)
                rc = ldm_error("%s: tensor %s changed while packing", tmp, t->name);
            if (!rc) rc = write_all(a, tmp, buf, (size_t)t->nbytes);
            at = t->offset + t->nbytes;
        }
        if (!rc && p->wsize > at) rc = write_all(a, tmp, zeros, (size_t)(p->wsize - at));
        free(buf);
    }
    if (archive_write_close(a) != ARCHIVE_OK && !rc)
        rc = ldm_error("%s: write failed: %s", tmp, arch_reason(a));
    archive_write_free(a);
    return rc;
}

/* ---------------------------------------------------------------- temp file cleanup */

static char g_tmp[4096];
static volatile sig_atomic_t g_tmp_live;

static void on_signal(int sig) {
    if (g_tmp_live) unlink(g_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* ---------------------------------------------------------------- model check hook */

int ldm_pack_check_models(const ldm_bundle *b) {
    ldm_bundle *bm = (ldm_bundle *)b;   /* only the used flags change */
    ldm_bundle_clear_used(bm);
    ldm_backend *dry = ldm_backend_new("dry", NULL);
    int bad = 0;
    if (ldm_bundle_has_component(b, "text_encoder")) {
        ldm_clip *m = ldm_clip_load(b, dry);
        if (!m) bad = ldm_error_prefix("text_encoder does not match its config");
        ldm_clip_free(m);
    }
    if (!bad && ldm_bundle_has_component(b, "unet")) {
        ldm_unet *m = ldm_unet_load(b, dry);
        if (!m) bad = ldm_error_prefix("unet does not match its config");
        ldm_unet_free(m);
    }
    if (!bad && ldm_bundle_has_component(b, "vae")) {
        ldm_vae *m = ldm_vae_load(b, dry);
        if (!m) bad = ldm_error_prefix("vae does not match its config");
        ldm_vae_free(m);
    }
    ldm_backend_free(dry);
    if (bad) return -1;
    /* Every tensor must be used by some loader, except the VAE encoder half (kept for
     * image-to-image, not needed to decode). */
    strbuf msg = { 0 };
    size_t extra = 0;
    for (size_t i = 0; i < ldm_bundle_tensor_count(b); i++) {
        const ldm_tensor *t = ldm_bundle_tensor_at(b, i);
        if (t->used || strncmp(t->name, "vae.encoder.", 12) == 0 ||
            strncmp(t->name, "vae.quant_conv.", 15) == 0)
            continue;
        if (extra < 5) sb_add(&msg, "%s'%s'", extra ? ", " : "", t->name);
        extra++;
    }
    if (extra) {
        ldm_error("%zu tensor%s not used by the model its config describes: %s%s", extra,
                  extra > 1 ? "s" : "", msg.s, extra > 5 ? ", ..." : "");
        free(msg.s);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- ldm_pack */

static int resolve_dirs(packer *p) {
    const ldm_pack_opts *o = p->o;
    const char *over[NCOMP] = { o->unet, o->vae, o->text_encoder, o->tokenizer, o->scheduler };
    if (o->model_dir && !is_dir(o->model_dir))
        return ldm_error("%s: %s", o->model_dir, access(o->model_dir, F_OK) ? strerror(errno) : "not a directory");
    for (int c = 0; c < NCOMP; c++) {
        if (over[c]) {
            if (!is_dir(over[c]))
                return ldm_error("%s %s: %s", COMP_FLAG[c], over[c],
                                 access(over[c], F_OK) ? strerror(errno) : "not a directory");
            p->dir[c] = ldm_xstrdup(over[c]);
        } else if (o->model_dir) {
            char *d = path_join(o->model_dir, COMP_NAME[c]);
            if (!is_dir(d)) {
                ldm_error("%s: missing component folder (a diffusers model has unet/, vae/, "
                          "text_encoder/, tokenizer/ and scheduler/; or give %s DIR)", d, COMP_FLAG[c]);
                free(d);
                return -1;
            }
            p->dir[c] = d;
        }
    }
    return 0;
}

/* The tokenizer files: vocab.json + merges.txt when both exist (transformers 4 and every
 * SD checkpoint), else tokenizer.json (transformers 5 writes only that); then the
 * optional configs.  The files must make a tokenizer: errors name the source file. */
static int gather_tokenizer(packer *p, const char *d) {
    char *vp = path_join(d, "vocab.json"), *mp = path_join(d, "merges.txt"), *jp = path_join(d, "tokenizer.json");
    int pair = is_file(vp) && is_file(mp), json = !pair && is_file(jp);
    if (!pair && !json) {
        ldm_error("%s: missing (a tokenizer needs vocab.json and merges.txt, or tokenizer.json)",
                  is_file(vp) ? mp : vp);
        free(vp); free(mp); free(jp);
        return -1;
    }
    free(vp); free(mp); free(jp);
    size_t first = p->nm;
    if (json ? add_file(p, d, "tokenizer.json", "tokenizer/tokenizer.json", 1)
             : add_file(p, d, "vocab.json", "tokenizer/vocab.json", 1) ||
                   add_file(p, d, "merges.txt", "tokenizer/merges.txt", 1))
        return -1;
    if (add_file(p, d, "tokenizer_config.json", "tokenizer/tokenizer_config.json", 0) ||
        add_file(p, d, "special_tokens_map.json", "tokenizer/special_tokens_map.json", 0))
        return -1;
    ldm_tokenizer_files f = {0};
    f.dir = d;
    for (size_t i = first; i < p->nm; i++) {
        const cfg_member *m = &p->m[i];
        if (!strcmp(m->name, "tokenizer/vocab.json")) { f.vocab_json = m->data; f.vocab_len = m->len; }
        else if (!strcmp(m->name, "tokenizer/merges.txt")) { f.merges = m->data; f.merges_len = m->len; }
        else if (!strcmp(m->name, "tokenizer/tokenizer.json")) { f.tokenizer_json = m->data; f.tokenizer_json_len = m->len; }
        else if (!strcmp(m->name, "tokenizer/tokenizer_config.json")) f.config_json = m->data;
        else if (!strcmp(m->name, "tokenizer/special_tokens_map.json")) f.special_json = m->data;
    }
    ldm_tokenizer *t = ldm_tokenizer_load(&f);
    if (!t) return -1;
    ldm_tokenizer_free(t);
    return 0;
}

/* --random-weights: the weights the three configs need, as the loaders list them. */
typedef struct { packer *p; int c; size_t cap; } want_ctx;

static void want_tensor(void *user, const char *name, int ndim, const int64_t *shape) {
    want_ctx *w = user;
    packer *p = w->p;
    if (p->nt == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 1024;
        pack_tensor *nt = ldm_xmalloc(w->cap * sizeof *nt);
        if (p->nt) memcpy(nt, p->t, p->nt * sizeof *nt);
        free(p->t);
        p->t = nt;
    }
    pack_tensor *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->name = ldm_xstrdup(name);
    t->ndim = ndim;
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) { t->shape[d] = shape[d]; numel *= (uint64_t)shape[d]; }
    t->nbytes = numel * 2;
    if (t->nbytes > p->max_nbytes) p->max_nbytes = (size_t)t->nbytes;
    p->ntensors[w->c]++;
    p->nparams[w->c] += numel;
}

static int random_tensors(packer *p) {
    static int (*const list[3])(const char *, ldm_weight_list_fn, void *) = {
        ldm_unet_list_weights, ldm_vae_list_weights, ldm_clip_list_weights};
    want_ctx w = {p, 0, 0};
    for (int c = 0; c < 3; c++) {
        if (!p->dir[c]) continue;
        const cfg_member *m = NULL;
        for (size_t i = 0; i < p->nm; i++)
            if (!strncmp(p->m[i].name, COMP_NAME[c], strlen(COMP_NAME[c])) && ends_with(p->m[i].name, "/config.json"))
                m = &p->m[i];
        if (!m) return ldm_error("%s: no config.json", p->dir[c]);
        char *text = ldm_xmalloc(m->len + 1);
        memcpy(text, m->data, m->len);
        text[m->len] = '\0';
        w.c = c;
        int rc = list[c](text, want_tensor, &w);
        free(text);
        if (rc) return ldm_error_prefix("%s", p->dir[c]);
    }
    if (!p->nt) return ldm_error("--random-weights: no unet, vae or text_encoder config to make weights for");
    qsort(p->t, p->nt, sizeof *p->t, cmp_pack_tensor);
    for (size_t i = 1; i < p->nt; i++)
        if (!strcmp(p->t[i].name, p->t[i - 1].name))
            return ldm_error("--random-weights: tensor %s asked for twice", p->t[i].name);
    return 0;
}

static int gather(packer *p) {
    if (resolve_dirs(p)) return -1;
    if (p->o->model_dir && add_file(p, p->o->model_dir, "model_index.json", "model_index.json", 0)) return -1;
    static const char *cfg_member[3] = { "unet/config.json", "vae/config.json", "text_encoder/config.json" };
    for (int c = 0; c < 3; c++)
        if (p->dir[c] && add_file(p, p->dir[c], "config.json", cfg_member[c], 1)) return -1;
    if (p->dir[C_TOKENIZER] && gather_tokenizer(p, p->dir[C_TOKENIZER])) return -1;
    if (p->dir[C_SCHEDULER] &&
        add_file(p, p->dir[C_SCHEDULER], "scheduler_config.json", "scheduler/scheduler_config.json", 1))
        return -1;
    if (p->o->random_weights) return random_tensors(p);
    for (int c = 0; c < 3; c++) {
        if (!p->dir[c]) continue;
        char *w = find_weights(p->dir[c], c);
        if (!w) return -1;
        ldm_log(2, "%s: reading %s\n", COMP_NAME[c], w);
        p->st[c] = ldm_st_open(w);
        free(w);
        if (!p->st[c]) return -1;
    }
    return collect_tensors(p);
}

int ldm_pack(const ldm_pack_opts *o) {
    packer p = { .o = o };
    int rc = -1, fd = -1;
    struct sigaction sa = { 0 }, old_int, old_term, old_hup;
    if (!o->output) return ldm_error("no output file given (-o FILE)");
    if (!o->model_dir && !o->unet && !o->vae && !o->text_encoder && !o->tokenizer && !o->scheduler)
        return ldm_error("nothing to pack: give MODEL_DIR or component folders");
    if (ldm_check_output(o->output)) return -1;   /* -o /dev/null, a FIFO, a folder */
    if (gather(&p) || pass1(&p)) goto done;
    if (p.nclamped) ldm_warn("%zu value%s beyond ±65504 clamped (--clamp)", p.nclamped, p.nclamped > 1 ? "s" : "");
    build_manifest(&p);

    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    fd = ldm_tmp_create(o->output, g_tmp, sizeof g_tmp);   /* O_EXCL | O_NOFOLLOW */
    if (fd < 0) goto restore;
    g_tmp_live = 1;
    /* messages name the output (the temporary's name means nothing to the user) */
    if (write_bundle(&p, fd, o->output)) goto fail;
    if (fsync(fd) != 0) { ldm_error("%s: write failed: %s", o->output, strerror(errno)); goto fail; }
    if (close(fd) != 0) { fd = -1; ldm_error("%s: write failed: %s", o->output, strerror(errno)); goto fail; }
    fd = -1;
    {
        ldm_bundle *b = ldm_bundle_open(g_tmp);
        if (!b) { ldm_error_prefix("re-reading the new bundle"); goto fail; }
        int bad = ldm_bundle_verify(b);
        if (!bad && strcmp(ldm_bundle_hash(b), p.hash) != 0)
            bad = ldm_error("%s: content hash changed on re-reading", g_tmp);
        if (!bad && !o->no_model_check) bad = ldm_pack_check_models(b);
        ldm_bundle_close(b);
        if (bad) goto fail;
    }
    if (rename(g_tmp, o->output) != 0) {
        ldm_error("%s: cannot rename %s into place: %s", o->output, g_tmp, strerror(errno));
        goto fail;
    }
    g_tmp_live = 0;
    rc = 0;
    goto restore;
fail:
    if (fd >= 0) close(fd);
    g_tmp_live = 0;
    unlink(g_tmp);
restore:
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
done:
    packer_free(&p);
    return rc;
}

/* ---------------------------------------------------------------- --verify */

int ldm_pack_verify(const char *path, FILE *out) {
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return -1;
    int rc = ldm_bundle_verify(b);
    if (!rc)
        fprintf(out, "%s: OK (%zu tensors, content hash %s)\n", path, ldm_bundle_tensor_count(b),
                ldm_bundle_hash(b));
    ldm_bundle_close(b);
    return rc;
}

/* ---------------------------------------------------------------- --info */

static const char *const INFO_KEYS[][16] = {
    { "_class_name", "in_channels", "out_channels", "sample_size", "block_out_channels",
      "layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
      "upcast_attention", "down_block_types", "up_block_types", NULL },
    { "_class_name", "in_channels", "out_channels", "latent_channels", "block_out_channels",
      "layers_per_block", "norm_num_groups", "sample_size", "scaling_factor", NULL },
    { "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "max_position_embeddings", "vocab_size", "hidden_act",
      "projection_dim", NULL },
    { "model_max_length", "pad_token", "bos_token", "eos_token", NULL },
    { "_class_name", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
      "prediction_type", "timestep_spacing", "steps_offset", "clip_sample", "set_alpha_to_one", NULL },
};
static const char *INFO_CONFIG[NCOMP] = { "unet/config.json", "vae/config.json", "text_encoder/config.json",
                                          "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json" };

static json_t *member_json(const ldm_bundle *b, const char *name) {
    size_t len;
    const char *s = ldm_bundle_member(b, name, &len);
    return s ? json_loadb(s, len, 0, NULL) : NULL;
}

/* The summary of one component as a JSON object. */
static json_t *component_info(const ldm_bundle *b, int c) {
    json_t *o = json_object();
    if (c < 3) {
        uint64_t nt = 0, np = 0;
        size_t plen = strlen(COMP_NAME[c]);
        for (size_t i = 0; i < ldm_bundle_tensor_count(b); i++) {
            const ldm_tensor *t = ldm_bundle_tensor_at(b, i);
            if (strncmp(t->name, COMP_NAME[c], plen) == 0 && t->name[plen] == '.') { nt++; np += (uint64_t)t->numel; }
        }
        json_object_set_new(o, "tensors", json_integer((json_int_t)nt));
        json_object_set_new(o, "parameters", json_integer((json_int_t)np));
        json_object_set_new(o, "bytes", json_integer((json_int_t)(np * 2)));
    }
    json_t *cfg = member_json(b, INFO_CONFIG[c]);
    if (c == C_TOKENIZER) {
        json_t *sp = member_json(b, "tokenizer/special_tokens_map.json");
        json_t *vocab = member_json(b, "tokenizer/vocab.json");
        size_t len = 0, merges = 0;
        const char *m = ldm_bundle_member(b, "tokenizer/merges.txt", &len);
        for (const char *l = m; l && *l;) {
            const char *e = strchr(l, '\n');
            if (strncmp(l, "#version", 8) != 0 && (e ? e - l : (long)strlen(l)) > 0) merges++;
            l = e ? e + 1 : l + strlen(l);
        }
        if (!vocab || !m) {   /* the vocabulary and merges inside tokenizer.json */
            json_t *tj = member_json(b, "tokenizer/tokenizer.json");
            json_t *model = json_object_get(tj, "model");
            if (json_is_object(json_object_get(model, "vocab"))) {
                json_decref(vocab);
                vocab = json_incref(json_object_get(model, "vocab"));
                merges = json_array_size(json_object_get(model, "merges"));
                json_object_set_new(o, "source", json_string("tokenizer/tokenizer.json"));
            }
            json_decref(tj);
        }
        if (vocab) json_object_set_new(o, "vocab_size", json_integer((json_int_t)json_object_size(vocab)));
        json_object_set_new(o, "merges", json_integer((json_int_t)merges));
        if (cfg && sp) json_object_update_missing(cfg, sp);
        else if (sp) { cfg = sp; sp = NULL; }
        json_decref(sp);
        json_decref(vocab);
    }
    if (cfg) {
        json_t *sum = json_object();
        for (int k = 0; INFO_KEYS[c][k]; k++) {
            json_t *v = json_object_get(cfg, INFO_KEYS[c][k]);
            if (json_is_object(v) && json_object_get(v, "content")) v = json_object_get(v, "content");
            if (v) json_object_set(sum, INFO_KEYS[c][k], v);
        }
        json_object_set_new(o, "config", sum);
        json_decref(cfg);
    }
    return o;
}

static void human_size(char *buf, size_t n, uint64_t bytes) {
    if (bytes < 10000) snprintf(buf, n, "%" PRIu64 " B", bytes);
    else if (bytes < 10000000) snprintf(buf, n, "%.1f kB", (double)bytes / 1e3);
    else if (bytes < 10000000000ull) snprintf(buf, n, "%.1f MB", (double)bytes / 1e6);
    else snprintf(buf, n, "%.2f GB", (double)bytes / 1e9);
}

int ldm_pack_info(const char *path, int as_json, FILE *out) {
    ldm_bundle *b = ldm_bundle_open(path);
    if (!b) return -1;
    json_t *man = member_json(b, LDMB_MANIFEST);
    json_t *info = json_object();
    json_object_set_new(info, "file", json_string(path));
    json_object_set_new(info, "size", json_integer((json_int_t)ldm_bundle_file_size(b)));
    json_object_set(info, "format", json_object_get(man, "format"));
    json_object_set(info, "format_version", json_object_get(man, "format_version"));
    json_t *v;
    if ((v = json_object_get(man, "ldm_version"))) json_object_set(info, "ldm_version", v);
    if ((v = json_object_get(man, "created_by"))) json_object_set(info, "created_by", v);
    json_object_set_new(info, "content_hash", json_string(ldm_bundle_hash(b)));
    json_object_set_new(info, "tensors", json_integer((json_int_t)ldm_bundle_tensor_count(b)));
    json_t *comps = json_object();
    for (int c = 0; c < NCOMP; c++)
        if (ldm_bundle_has_component(b, COMP_NAME[c])) json_object_set_new(comps, COMP_NAME[c], component_info(b, c));
    json_object_set_new(info, "components", comps);
    /* what the bundle can do: an inpainting UNet (in_channels = 2 * latent + 1) needs an
     * init image and a mask; image to image and inpainting need the VAE encoder */
    json_t *ucfg = member_json(b, "unet/config.json"), *vcfg = member_json(b, "vae/config.json");
    json_int_t uin = json_integer_value(json_object_get(ucfg, "in_channels"));
    json_int_t lat = json_object_get(vcfg, "latent_channels") ? json_integer_value(json_object_get(vcfg, "latent_channels")) : 4;
    const int inpainting = ucfg && uin == 2 * lat + 1;
    int has_encoder = 0;
    for (size_t i = 0; i < ldm_bundle_tensor_count(b) && !has_encoder; i++)
        has_encoder = strncmp(ldm_bundle_tensor_at(b, i)->name, "vae.encoder.", 12) == 0;
    json_object_set_new(info, "model_type", json_string(inpainting ? "inpainting" : "text-to-image"));
    json_object_set_new(info, "vae_encoder", json_boolean(has_encoder));
    json_decref(ucfg);
    json_decref(vcfg);
    json_t *mem = json_array();
    for (size_t i = 0; i < ldm_bundle_member_count(b); i++) {
        json_t *m = json_object();
        json_object_set_new(m, "name", json_string(ldm_bundle_member_name(b, i)));
        json_object_set_new(m, "size", json_integer((json_int_t)ldm_bundle_member_size(b, i)));
        json_array_append_new(mem, m);
    }
    json_object_set_new(info, "members", mem);

    if (as_json) {
        char *s = json_dumps(info, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
        fprintf(out, "%s\n", s);
        free(s);
    } else {
        char sz[32];
        human_size(sz, sizeof sz, ldm_bundle_file_size(b));
        fprintf(out, "file          %s (%s)\n", path, sz);
        fprintf(out, "format        %s version %lld, written by %s (ldm %s)\n",
                json_string_value(json_object_get(info, "format")),
                (long long)json_integer_value(json_object_get(info, "format_version")),
                json_string_value(json_object_get(info, "created_by")) ? json_string_value(json_object_get(info, "created_by")) : "?",
                json_string_value(json_object_get(info, "ldm_version")) ? json_string_value(json_object_get(info, "ldm_version")) : "?");
        fprintf(out, "content hash  %s\n", ldm_bundle_hash(b));
        if (inpainting)
            fprintf(out, "model type    inpainting (unet in_channels %lld): ldmgen --init-img FILE --mask MASK%s\n",
                    (long long)uin, has_encoder ? "" : " (but no VAE encoder: it cannot run)");
        else
            fprintf(out, "model type    text to image%s\n",
                    has_encoder ? "; image to image and inpainting (VAE encoder present)" : " (no VAE encoder: no image to image)");
        fprintf(out, "components\n");
        const char *key;
        json_t *ci;
        json_object_foreach(comps, key, ci) {
            fprintf(out, "  %-13s", key);
            int counted = 0;
            if (json_object_get(ci, "parameters")) {
                human_size(sz, sizeof sz, (uint64_t)json_integer_value(json_object_get(ci, "bytes")));
                fprintf(out, "%lld parameters in %lld tensors, %s",
                        (long long)json_integer_value(json_object_get(ci, "parameters")),
                        (long long)json_integer_value(json_object_get(ci, "tensors")), sz);
                counted = 1;
            }
            if (json_object_get(ci, "vocab_size")) {
                fprintf(out, "%lld tokens, %lld merges", (long long)json_integer_value(json_object_get(ci, "vocab_size")),
                        (long long)json_integer_value(json_object_get(ci, "merges")));
                if (json_object_get(ci, "source"))
                    fprintf(out, " (from %s)", json_string_value(json_object_get(ci, "source")));
                counted = 1;
            }
            json_t *cfg = json_object_get(ci, "config");
            if (cfg && json_object_size(cfg)) {
                if (counted) fprintf(out, "\n  %-13s", "");
                const char *k2;
                json_t *x;
                int col = 15;
                json_object_foreach(cfg, k2, x) {
                    char *s = json_dumps(x, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
                    int w = (int)(strlen(k2) + strlen(s) + 2);
                    if (col + w > 100 && col > 15) { fprintf(out, "\n  %-13s", ""); col = 15; }
                    fprintf(out, "%s%s=%s", col > 15 ? " " : "", k2, s);
                    col += w;
                    free(s);
                }
            }
            fprintf(out, "\n");
        }
        fprintf(out, "members\n");
        for (size_t i = 0; i < ldm_bundle_member_count(b); i++)
            fprintf(out, "  %-36s %12" PRIu64 " bytes at offset %" PRIu64 "\n", ldm_bundle_member_name(b, i),
                    ldm_bundle_member_size(b, i), ldm_bundle_member_offset(b, i));
    }
    json_decref(info);
    json_decref(man);
    ldm_bundle_close(b);
    return 0;
}
