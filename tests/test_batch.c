/* test_batch.c - the pieces of ldmgen --prompts that need no model: shard arithmetic
 * (--shard, Slurm job arrays, Kubernetes indices), -o patterns and file-name-safe text,
 * numbered names, and prompt files (text, JSON lines, malformed lines, seeds). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/batch.h"
#include "app/outname.h"
#include "core/common.h"
#include "test.h"

static char dir[256];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void test_shards(void) {
    ldm_shard s;
    CHECK(ldm_shard_parse("0/1", &s) == 0 && s.k == 0 && s.n == 1, "0/1");
    CHECK(ldm_shard_parse("3/4", &s) == 0 && s.k == 3 && s.n == 4, "3/4");
    const char *bad[] = {"4/4", "5/4", "0/0", "1/0", "a/b", "1/x", "1", "", "/4", "1/", "-1/4", "1/-4",
                         "+1/4", " 1/4", "1/4 ", "1.0/4", "1/4/5", "99999999999999999999/4"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = ldm_shard_parse(bad[i], &s);
        CHECK(rc != 0 && ldm_last_status() == LDM_USAGE, "--shard \"%s\" refused as a usage error", bad[i]);
    }
    CHECK(ldm_shard_parse("4/4", &s) != 0 && strstr(ldm_last_error(), "K must be below N"), "K >= N says so: %s",
          ldm_last_error());
    CHECK(ldm_shard_parse("0/0", &s) != 0 && strstr(ldm_last_error(), "at least 1"), "N = 0 says so: %s",
          ldm_last_error());

    /* Slurm: --array=0-3 */
    CHECK(ldm_shard_from_slurm("2", "0", "1", "4", &s) == 0 && s.k == 2 && s.n == 4, "slurm 2 of 0-3");
    /* --array=1-7:2 -> ids 1, 3, 5, 7 are ranks 0..3 */
    CHECK(ldm_shard_from_slurm("5", "1", "2", "4", &s) == 0 && s.k == 2 && s.n == 4, "slurm 5 of 1-7:2 -> %d/%d", s.k, s.n);
    CHECK(ldm_shard_from_slurm("7", "1", "2", "4", &s) == 0 && s.k == 3, "slurm 7 of 1-7:2");
    /* --array=10-12 */
    CHECK(ldm_shard_from_slurm("12", "10", NULL, "3", &s) == 0 && s.k == 2 && s.n == 3, "slurm 12 of 10-12");
    CHECK(ldm_shard_from_slurm("4", "1", "2", "4", &s) != 0 && ldm_last_status() == LDM_USAGE, "slurm id off the step");
    CHECK(ldm_shard_from_slurm("9", "1", "2", "4", &s) != 0, "slurm id past the range");
    CHECK(ldm_shard_from_slurm("0", "1", "1", "4", &s) != 0, "slurm id below the min");
    CHECK(ldm_shard_from_slurm("x", "0", "1", "4", &s) != 0 && strstr(ldm_last_error(), "SLURM_ARRAY_TASK_ID"),
          "slurm id not a number names the variable: %s", ldm_last_error());
    CHECK(ldm_shard_from_slurm("1", "0", "0", "4", &s) != 0 && strstr(ldm_last_error(), "SLURM_ARRAY_TASK_STEP"),
          "slurm step 0");
    CHECK(ldm_shard_from_slurm("1", "0", "1", NULL, &s) != 0 && strstr(ldm_last_error(), "SLURM_ARRAY_TASK_COUNT"),
          "slurm without a count");
    CHECK(ldm_shard_from_slurm("1", "0", "1", "0", &s) != 0, "slurm count 0");

    /* Kubernetes */
    CHECK(ldm_shard_from_index("3", "JOB_COMPLETION_INDEX", 5, &s) == 0 && s.k == 3 && s.n == 5, "k8s 3 of 5");
    CHECK(ldm_shard_from_index("5", "JOB_COMPLETION_INDEX", 5, &s) != 0 && strstr(ldm_last_error(), "not below"),
          "k8s index = count");
    CHECK(ldm_shard_from_index("-1", "JOB_COMPLETION_INDEX", 5, &s) != 0, "k8s negative");
    CHECK(ldm_shard_from_index("1", "JOB_COMPLETION_INDEX", 0, &s) != 0, "k8s count 0");
}

static int expands_to(const char *pat, const ldm_name_fields *f, const char *want) {
    char *s = ldm_name_expand(pat, f);
    int ok = s && !strcmp(s, want);
    if (!ok) printf("  %s -> %s (want %s; %s)\n", pat, s ? s : "NULL", want, s ? "" : ldm_last_error());
    free(s);
    return ok;
}

static void test_patterns(void) {
    ldm_name_fields f;
    ldm_name_fields_init(&f);
    f.index = 42;
    f.line = 45;
    f.shard = 2;
    f.has_seed = 1;
    f.seed = 18446744073709551615ull;
    f.prompt = "a red/blue apple: \"ripe\"?";
    CHECK(expands_to("out/{index:05}-{seed}.png", &f, "out/00042-18446744073709551615.png"), "index, seed");
    CHECK(expands_to("{line}_{shard:03}.png", &f, "45_002.png"), "line, shard");
    CHECK(expands_to("{prompt}.png", &f, "a_red_blue_apple_ripe.png"), "prompt made safe");
    CHECK(expands_to("{prompt:5}.png", &f, "a_red.png"), "prompt cut");
    CHECK(expands_to("{{literal}}-{index}.png", &f, "{literal}-42.png"), "escaped braces");
    CHECK(expands_to("plain.png", &f, "plain.png"), "no fields");
    /* {id}: kept for the second pass (with the escapes), then filled in */
    char *p1 = ldm_name_expand("{{x}}-{index}-{id:04}-{prompt:3}.png", &f);
    CHECK(p1 && !strcmp(p1, "{{x}}-42-{id:04}-a_r.png"), "first pass keeps {id}: %s", p1 ? p1 : ldm_last_error());
    ldm_name_fields g;
    ldm_name_fields_init(&g);
    g.id = 7;
    CHECK(p1 && expands_to(p1, &g, "{x}-42-0007-a_r.png"), "second pass fills in {id}");
    free(p1);
    CHECK(ldm_name_uses("a-{id}.png", "id") && ldm_name_uses("a-{id:05}.png", "id"), "uses id");
    CHECK(!ldm_name_uses("a-{{id}}.png", "id") && !ldm_name_uses("a-{index}.png", "id"), "does not use id");
    /* errors */
    const char *bad[] = {"{nope}.png", "{index.png", "a}.png", "{index:5}.png", "{index:0}.png", "{prompt:0}.png",
                         "{prompt:x}.png", "{index:0999}.png", "{}.png"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *s = ldm_name_expand(bad[i], &f);
        CHECK(!s && ldm_last_status() == LDM_USAGE, "pattern %s refused (%s)", bad[i], ldm_last_error());
        free(s);
        CHECK(ldm_name_check(bad[i]) != 0, "check refuses %s", bad[i]);
    }
    ldm_name_fields none;
    ldm_name_fields_init(&none);
    none.prompt = "x";
    char *s = ldm_name_expand("{index}.png", &none);
    CHECK(!s && strstr(ldm_last_error(), "--prompts"), "{index} outside a prompt file: %s", ldm_last_error());
    free(s);

    /* file-name-safe text */
    const struct { const char *in; size_t max; const char *want; } t[] = {
        {"red apple", 60, "red_apple"},
        {"  ../../etc/passwd  ", 60, "etc_passwd"},
        {"-rf *", 60, "rf"},
        {"café crème", 60, "café_crème"},
        {"水墨画 of a crane", 60, "水墨画_of_a_crane"},
        {"emoji 🎨 paint", 60, "emoji_paint"},
        {"tab\there\nnew\x01line", 60, "tab_here_new_line"},
        {"bad \xff byte", 60, "bad_byte"},
        {"!!!", 60, "_"},
        {"", 60, "_"},
        {"水墨画", 4, "水"},      /* 3 bytes each: cut at a character boundary */
        {"abc.", 60, "abc"},
        {"a:b|c<d>e\"f?g*h\\i", 60, "a_b_c_d_e_f_g_h_i"},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        char *o = ldm_name_safe_text(t[i].in, t[i].max);
        CHECK(!strcmp(o, t[i].want), "safe(\"%s\") = \"%s\", want \"%s\"", t[i].in, o, t[i].want);
        free(o);
    }
    char longp[400];
    memset(longp, 'x', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    f.prompt = longp;
    char *lo = ldm_name_expand("{prompt}", &f);
    CHECK(lo && strlen(lo) == 60, "a long prompt is cut to 60 bytes (%zu)", lo ? strlen(lo) : 0);
    free(lo);
}

static void test_numbered(void) {
    char base[512], p[600];
    snprintf(base, sizeof base, "%s/num", dir);
    mkdir(base, 0755);
    snprintf(p, sizeof p, "%s/out.png", base);
    CHECK(ldm_name_highest_number(p) == 0, "no numbered files yet");
    char *n1 = ldm_name_numbered(p, 1);
    snprintf(p, sizeof p, "%s/out-1.png", base);
    CHECK(!strcmp(n1, p), "out.png -> out-1.png (%s)", n1);
    free(n1);
    const char *files[] = {"out.png", "out-1.png", "out-7.png", "out-0001.png", "out-0002.png", "out-3-0001.png",
                           "out-x.png", "outer-9.png", "out-12.jpg"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", base, files[i]);
        write_text(p, "x");
    }
    snprintf(p, sizeof p, "%s/out.png", base);
    CHECK(ldm_name_highest_number(p) == 7, "highest is 7 (batch files -0001 and others ignored): %d",
          ldm_name_highest_number(p));
    snprintf(p, sizeof p, "%s/replay-3.png", base);
    CHECK(ldm_name_highest_number(p) == 0, "another stem");
}

static ldm_prompt_file read_pf(const char *name, const char *text, ldm_status *st) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_text(p, text);
    ldm_prompt_file pf;
    *st = ldm_prompt_file_read(p, &pf);
    return pf;
}

static void test_prompt_files(void) {
    ldm_status st;
    ldm_prompt_file pf = read_pf("p.txt", "\xef\xbb\xbf# a comment\nred apple\n\n   \n  smiling cat face  \r\n"
                                 "#another\nthumbs up", &st);
    CHECK(st == LDM_OK && pf.n == 3 && !pf.jsonl, "text: 3 entries (%d)", pf.n);
    if (st == LDM_OK && pf.n == 3) {
        CHECK(!strcmp(pf.e[0].prompt, "red apple") && pf.e[0].line == 2 && pf.e[0].index == 0, "entry 0");
        CHECK(!strcmp(pf.e[1].prompt, "smiling cat face") && pf.e[1].line == 5, "entry 1 trimmed, CRLF");
        CHECK(!strcmp(pf.e[2].prompt, "thumbs up") && pf.e[2].line == 7 && pf.e[2].index == 2, "last line without newline");
        CHECK(pf.abs_path[0] == '/', "absolute path %s", pf.abs_path);
        ldm_gen_params base = ldm_gen_params_default();
        base.steps = 9;
        ldm_gen_params p = ldm_prompt_entry_params(&pf.e[2], &base, 100);
        CHECK(p.seed == 102 && p.steps == 9 && !strcmp(p.prompt, "thumbs up"), "seed base + index, defaults kept");
        p = ldm_prompt_entry_params(&pf.e[0], &base, UINT64_MAX);
        CHECK(p.seed == UINT64_MAX, "seed base + 0");
        p = ldm_prompt_entry_params(&pf.e[1], &base, UINT64_MAX);
        CHECK(p.seed == 0, "seed wraps modulo 2^64");
    }
    uint64_t cs = pf.content_seed;
    ldm_prompt_file_free(&pf);
    pf = read_pf("p2.txt", "\xef\xbb\xbf# a comment\nred apple\n\n   \n  smiling cat face  \r\n#another\nthumbs up", &st);
    CHECK(pf.content_seed == cs && cs <= 0xffffffffu, "content seed: the same file, the same seed (%llu)",
          (unsigned long long)cs);
    ldm_prompt_file_free(&pf);
    pf = read_pf("p3.txt", "red apple\n", &st);
    CHECK(pf.content_seed != cs, "another file, another seed");
    ldm_prompt_file_free(&pf);

    pf = read_pf("empty.txt", "# nothing\n\n", &st);
    CHECK(st == LDM_DATA && strstr(ldm_last_error(), "no prompts"), "no entries: %s", ldm_last_error());
    pf = read_pf("bad.txt", "ok\nbad \xff utf8\n", &st);
    CHECK(st == LDM_OK && pf.n == 2 && !pf.e[0].error && pf.e[1].error && strstr(pf.e[1].error, "UTF-8"),
          "invalid UTF-8 line is an entry with an error");
    ldm_prompt_file_free(&pf);
    char nofile[512];
    snprintf(nofile, sizeof nofile, "%s/none.txt", dir);
    CHECK(ldm_prompt_file_read(nofile, &pf) == LDM_RUNTIME && strstr(ldm_last_error(), "none.txt"), "missing file");

    /* JSON lines */
    pf = read_pf("p.jsonl",
                 "# sweep\n"
                 "{\"prompt\": \"red apple\", \"seed\": 7, \"steps\": 3, \"guidance\": 5.5, \"negative\": \"blurry\"}\n"
                 "{\"prompt\": \"cat\", \"scheduler\": \"euler_a\", \"width\": 64, \"height\": 48, \"clip_skip\": 2, \"batch\": 2}\n"
                 "{\"prompt\": \"broken\", \"steps\": }\n"
                 "{\"prompt\": \"x\", \"stpes\": 3}\n"
                 "{\"prompt\": \"x\", \"steps\": 0}\n"
                 "{\"prompt\": \"x\", \"width\": 60}\n"
                 "[\"not an object\"]\n"
                 "{\"negative\": \"no prompt\"}\n"
                 "{\"prompt\": \"big\", \"seed\": \"18446744073709551615\", \"karras\": true, \"eta\": 0.5, "
                 "\"timestep_spacing\": \"trailing\", \"output\": \"big-{seed}.png\", \"negative_prompt\": \"n\"}\n"
                 "{\"prompt\": \"x\", \"seed\": -1}\n"
                 "{\"prompt\": \"x\", \"scheduler\": \"nope\"}\n"
                 "{\"prompt\": \"x\", \"prompt\": \"y\"}\n",
                 &st);
    CHECK(st == LDM_OK && pf.jsonl && pf.n == 12, "jsonl: 12 entries (%d)", pf.n);
    if (st == LDM_OK && pf.n == 12) {
        ldm_gen_params base = ldm_gen_params_default();
        ldm_prompt_entry *e = pf.e;
        CHECK(!e[0].error && e[0].line == 2, "line 2 ok: %s", e[0].error ? e[0].error : "");
        ldm_gen_params p = ldm_prompt_entry_params(&e[0], &base, 100);
        CHECK(p.seed == 7 && p.steps == 3 && p.guidance == 5.5 && !strcmp(p.negative, "blurry"), "line 2 options");
        p = ldm_prompt_entry_params(&e[1], &base, 100);
        CHECK(!e[1].error && p.seed == 101 && p.width == 64 && p.height == 48 && p.clip_skip == 2 && p.batch == 2 &&
              p.scheduler >= 0 && p.steps == 50, "line 3 options and defaults");
        CHECK(e[2].error && strstr(e[2].error, "not valid JSON"), "malformed JSON: %s", e[2].error ? e[2].error : "");
        CHECK(e[2].index == 2 && e[2].line == 4, "a malformed line keeps its index");
        CHECK(e[3].error && strstr(e[3].error, "unknown key \"stpes\""), "unknown key: %s", e[3].error ? e[3].error : "");
        CHECK(e[4].error && strstr(e[4].error, "\"steps\""), "steps 0: %s", e[4].error ? e[4].error : "");
        CHECK(e[5].error && strstr(e[5].error, "multiple of 8"), "width 60");
        CHECK(e[6].error && strstr(e[6].error, "JSON object"), "an array");
        CHECK(e[7].error && strstr(e[7].error, "\"prompt\""), "no prompt");
        p = ldm_prompt_entry_params(&e[8], &base, 100);
        CHECK(!e[8].error && p.seed == UINT64_MAX && p.karras && p.eta == 0.5 && p.spacing >= 0 &&
              !strcmp(e[8].output, "big-{seed}.png") && !strcmp(p.negative, "n"), "line 10: %s",
              e[8].error ? e[8].error : "");
        CHECK(e[9].error && strstr(e[9].error, "seed"), "seed -1");
        CHECK(e[10].error && strstr(e[10].error, "scheduler"), "unknown scheduler");
        CHECK(e[11].error && strstr(e[11].error, "JSON"), "duplicate key: %s", e[11].error ? e[11].error : "");
    }
    ldm_prompt_file_free(&pf);
    /* sniffing: no extension, the first entry starts with { */
    pf = read_pf("sniffed", "# c\n{\"prompt\": \"a\"}\n", &st);
    CHECK(st == LDM_OK && pf.jsonl && pf.n == 1 && !pf.e[0].error, "sniffed as JSON lines");
    ldm_prompt_file_free(&pf);
    pf = read_pf("text.txt", "{red|blue} car\n", &st);
    CHECK(st == LDM_OK && !pf.jsonl && !strcmp(pf.e[0].prompt, "{red|blue} car"), ".txt is text even with {");
    ldm_prompt_file_free(&pf);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/ldm_test_batch.XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    test_shards();
    test_patterns();
    test_numbered();
    test_prompt_files();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    TEST_END();
}
