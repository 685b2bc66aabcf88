/* Every function of edgelm.h with NULL or bad arguments: each call returns
 * the documented status, leaves out-pointers alone, and sets a message that
 * names the function and the argument. Nothing crashes (run under valgrind
 * in CI: no invalid access, no leak).
 *
 *   errors BASE.edgelm PACK.edgelm
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgelm.h"

static int failures = 0;
static int checks = 0;

/* Checks `got` == `want` and, for a failure, that the message mentions each
 * of `words` (NULL-terminated list). */
static void check_(int line, const char *call, edgelm_status got, edgelm_status want, const char *const *words) {
    checks++;
    const char *msg = edgelm_last_error();
    if (got != want) {
        fprintf(stderr, "line %d: %s returned %s, expected %s (message: %s)\n", line, call,
                edgelm_status_name((int)got), edgelm_status_name((int)want), msg);
        failures++;
        return;
    }
    if (want == EDGELM_OK) return;
    if (msg == NULL || msg[0] == '\0') {
        fprintf(stderr, "line %d: %s: no error message\n", line, call);
        failures++;
        return;
    }
    for (; words && *words; words++) {
        if (strstr(msg, *words) == NULL) {
            fprintf(stderr, "line %d: %s: message \"%s\" does not mention \"%s\"\n", line, call, msg, *words);
            failures++;
        }
    }
}

#define WORDS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define CHECK(call, want, ...) check_(__LINE__, #call, (call), (want), WORDS(__VA_ARGS__))
#define CHECK_OK(call) check_(__LINE__, #call, (call), EDGELM_OK, NULL)

static int count_pieces(const char *piece, size_t len, void *user) {
    (void)piece;
    (void)len;
    (*(int *)user)++;
    return 0;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s BASE.edgelm PACK.edgelm\n", argv[0]);
        return 2;
    }
    const char *base_path = argv[1], *pack_path = argv[2];
    /* sentinels: a failed call must not write its out-pointers */
    edgelm_model *const MODEL_SENTINEL = (edgelm_model *)(void *)0x1;
    edgelm_session *const SESSION_SENTINEL = (edgelm_session *)(void *)0x1;

    /* --- library ------------------------------------------------------ */
    CHECK(edgelm_sampler_defaults(NULL), EDGELM_ERR_NULL_POINTER, "edgelm_sampler_defaults", "out");
    CHECK(edgelm_sampler_check(NULL), EDGELM_ERR_NULL_POINTER, "edgelm_sampler_check", "sampler");
    edgelm_sampler smp;
    CHECK_OK(edgelm_sampler_defaults(&smp));
    CHECK_OK(edgelm_sampler_check(&smp));
    if (strcmp(edgelm_status_name(EDGELM_ERR_IO), "EDGELM_ERR_IO") != 0 || strcmp(edgelm_status_name(-1), "unknown status") != 0) {
        fprintf(stderr, "edgelm_status_name is wrong\n");
        failures++;
    }
    if (edgelm_version() == NULL || edgelm_version()[0] == '\0') {
        fprintf(stderr, "edgelm_version is empty\n");
        failures++;
    }

    /* invalid sampling values */
    const float bad_temperatures[] = {-1.0f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad_temperatures / sizeof *bad_temperatures; i++) {
        edgelm_sampler s = smp;
        s.temperature = bad_temperatures[i];
        CHECK(edgelm_sampler_check(&s), EDGELM_ERR_INVALID_ARGUMENT, "temperature");
    }
    const float bad_top_p[] = {0.0f, -0.5f, 1.5f, NAN};
    for (size_t i = 0; i < sizeof bad_top_p / sizeof *bad_top_p; i++) {
        edgelm_sampler s = smp;
        s.top_p = bad_top_p[i];
        CHECK(edgelm_sampler_check(&s), EDGELM_ERR_INVALID_ARGUMENT, "top-p");
    }
    const float bad_penalty[] = {0.0f, -1.0f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad_penalty / sizeof *bad_penalty; i++) {
        edgelm_sampler s = smp;
        s.repeat_penalty = bad_penalty[i];
        CHECK(edgelm_sampler_check(&s), EDGELM_ERR_INVALID_ARGUMENT, "repeat penalty");
    }

    /* --- models --------------------------------------------------------- */
    edgelm_model *m = MODEL_SENTINEL;
    CHECK(edgelm_model_open(NULL, &m), EDGELM_ERR_NULL_POINTER, "edgelm_model_open", "path");
    CHECK(edgelm_model_open(base_path, NULL), EDGELM_ERR_NULL_POINTER, "edgelm_model_open", "out");
    CHECK(edgelm_model_open("", &m), EDGELM_ERR_INVALID_ARGUMENT, "path", "empty");
    CHECK(edgelm_model_open("/nonexistent/base.edgelm", &m), EDGELM_ERR_IO, "/nonexistent/base.edgelm");
    CHECK(edgelm_model_open(pack_path, &m), EDGELM_ERR_WRONG_FILE, "pack");
    static const unsigned char garbage[256] = {1, 2, 3};
    CHECK(edgelm_model_open_buffer(NULL, 100, &m), EDGELM_ERR_NULL_POINTER, "edgelm_model_open_buffer", "data");
    CHECK(edgelm_model_open_buffer(NULL, 0, &m), EDGELM_ERR_NULL_POINTER, "data");
    CHECK(edgelm_model_open_buffer(garbage, sizeof garbage, NULL), EDGELM_ERR_NULL_POINTER, "out");
    CHECK(edgelm_model_open_buffer(garbage, 0, &m), EDGELM_ERR_CORRUPT_FILE, "edgelm_model_open_buffer");
    CHECK(edgelm_model_open_buffer(garbage, sizeof garbage, &m), EDGELM_ERR_CORRUPT_FILE, "magic");
    CHECK(edgelm_model_open_buffer(garbage, SIZE_MAX, &m), EDGELM_ERR_INVALID_ARGUMENT, "length");
    if (m != MODEL_SENTINEL) {
        fprintf(stderr, "a failed open wrote its out-pointer\n");
        failures++;
    }

    /* open options, and models read in place (no copy) */
    CHECK(edgelm_open_options_defaults(NULL), EDGELM_ERR_NULL_POINTER, "edgelm_open_options_defaults", "out");
    edgelm_open_options oo;
    CHECK_OK(edgelm_open_options_defaults(&oo));
    if (oo.threads != 1 || oo.verify_checksum == 0) {
        fprintf(stderr, "edgelm_open_options_defaults: threads %u, verify %d\n", oo.threads, oo.verify_checksum);
        failures++;
    }
    CHECK(edgelm_model_open_with(NULL, &oo, &m), EDGELM_ERR_NULL_POINTER, "edgelm_model_open_with", "path");
    CHECK(edgelm_model_open_with(base_path, NULL, &m), EDGELM_ERR_NULL_POINTER, "options");
    CHECK(edgelm_model_open_with(base_path, &oo, NULL), EDGELM_ERR_NULL_POINTER, "out");
    CHECK(edgelm_model_open_with(pack_path, &oo, &m), EDGELM_ERR_WRONG_FILE, "pack");
    edgelm_open_options bad_oo = oo;
    bad_oo.threads = 0;
    CHECK(edgelm_model_open_with(base_path, &bad_oo, &m), EDGELM_ERR_INVALID_ARGUMENT, "threads");
    bad_oo.threads = 4000000000u;
    CHECK(edgelm_model_open_with(base_path, &bad_oo, &m), EDGELM_ERR_INVALID_ARGUMENT, "threads");
    static _Alignas(64) const unsigned char aligned_garbage[256] = {1, 2, 3};
    CHECK(edgelm_model_open_buffer_in_place(NULL, 10, &oo, &m), EDGELM_ERR_NULL_POINTER,
          "edgelm_model_open_buffer_in_place", "data");
    CHECK(edgelm_model_open_buffer_in_place(aligned_garbage, sizeof aligned_garbage, NULL, &m),
          EDGELM_ERR_NULL_POINTER, "options");
    CHECK(edgelm_model_open_buffer_in_place(aligned_garbage, sizeof aligned_garbage, &oo, NULL),
          EDGELM_ERR_NULL_POINTER, "out");
    CHECK(edgelm_model_open_buffer_in_place(aligned_garbage, SIZE_MAX, &oo, &m), EDGELM_ERR_INVALID_ARGUMENT, "length");
    CHECK(edgelm_model_open_buffer_in_place(aligned_garbage, sizeof aligned_garbage, &oo, &m), EDGELM_ERR_CORRUPT_FILE,
          "magic");
    {
        size_t blen = 0, plen = 0;
        unsigned char *b = read_file(base_path, &blen), *p = read_file(pack_path, &plen);
        /* aligned copies, and one a byte off the 64-byte grid */
        unsigned char *ab = b ? aligned_alloc(64, (blen + 64 + 63) / 64 * 64) : NULL;
        unsigned char *ap = p ? aligned_alloc(64, (plen + 63) / 64 * 64) : NULL;
        if (!ab || !ap) {
            fprintf(stderr, "cannot read %s or %s\n", base_path, pack_path);
            return 2;
        }
        memcpy(ab + 1, b, blen);
        CHECK(edgelm_model_open_buffer_in_place(ab + 1, blen, &oo, &m), EDGELM_ERR_INVALID_ARGUMENT, "aligned");
        memcpy(ab, b, blen);
        memcpy(ap, p, plen);
        edgelm_model *mi = NULL;
        CHECK_OK(edgelm_model_open_buffer_in_place(ab, blen, &oo, &mi));
        CHECK(edgelm_model_add_pack_buffer_in_place(NULL, ap, plen), EDGELM_ERR_NULL_POINTER,
              "edgelm_model_add_pack_buffer_in_place", "model");
        CHECK(edgelm_model_add_pack_buffer_in_place(mi, NULL, plen), EDGELM_ERR_NULL_POINTER, "data");
        CHECK(edgelm_model_add_pack_buffer_in_place(mi, ap, SIZE_MAX), EDGELM_ERR_INVALID_ARGUMENT, "length");
        CHECK(edgelm_model_add_pack_buffer_in_place(mi, ab, blen), EDGELM_ERR_WRONG_FILE, "base");
        CHECK_OK(edgelm_model_add_pack_buffer_in_place(mi, ap, plen));
        CHECK_OK(edgelm_model_free(mi));
        /* the buffers are the caller's, freed after the model */
        free(ab);
        free(ap);
        free(b);
        free(p);
    }
    if (m != MODEL_SENTINEL) {
        fprintf(stderr, "a failed open wrote its out-pointer\n");
        failures++;
    }

    /* a base read into memory, with its length wrong */
    size_t base_len = 0;
    unsigned char *base_bytes = read_file(base_path, &base_len);
    if (!base_bytes) {
        fprintf(stderr, "cannot read %s\n", base_path);
        return 2;
    }
    CHECK(edgelm_model_open_buffer(base_bytes, base_len - 1, &m), EDGELM_ERR_CORRUPT_FILE, "edgelm_model_open_buffer");
    CHECK(edgelm_model_open_buffer(base_bytes, base_len / 2, &m), EDGELM_ERR_CORRUPT_FILE, "edgelm_model_open_buffer");
    CHECK_OK(edgelm_model_open_buffer(base_bytes, base_len, &m));
    free(base_bytes); /* the library copied it */

    CHECK(edgelm_model_add_pack(NULL, pack_path), EDGELM_ERR_NULL_POINTER, "edgelm_model_add_pack", "model");
    CHECK(edgelm_model_add_pack(m, NULL), EDGELM_ERR_NULL_POINTER, "edgelm_model_add_pack", "path");
    CHECK(edgelm_model_add_pack(m, "/nonexistent/pack.edgelm"), EDGELM_ERR_IO, "/nonexistent/pack.edgelm");
    CHECK(edgelm_model_add_pack(m, base_path), EDGELM_ERR_WRONG_FILE, "base");
    CHECK(edgelm_model_add_pack_buffer(NULL, garbage, sizeof garbage), EDGELM_ERR_NULL_POINTER, "model");
    CHECK(edgelm_model_add_pack_buffer(m, NULL, 10), EDGELM_ERR_NULL_POINTER, "data");
    CHECK(edgelm_model_add_pack_buffer(m, garbage, sizeof garbage), EDGELM_ERR_CORRUPT_FILE, "edgelm_model_add_pack_buffer");
    CHECK(edgelm_model_add_pack_buffer(m, garbage, SIZE_MAX), EDGELM_ERR_INVALID_ARGUMENT, "length");

    size_t n = 0;
    CHECK(edgelm_model_domain_count(NULL, &n), EDGELM_ERR_NULL_POINTER, "model");
    CHECK(edgelm_model_domain_count(m, NULL), EDGELM_ERR_NULL_POINTER, "count");
    CHECK_OK(edgelm_model_domain_count(m, &n));
    if (n != 1) {
        fprintf(stderr, "a base with refused packs has %zu domains, expected 1\n", n);
        failures++;
    }
    CHECK_OK(edgelm_model_add_pack(m, pack_path));
    CHECK(edgelm_model_add_pack(m, pack_path), EDGELM_ERR_WRONG_FILE, "already loaded");
    CHECK_OK(edgelm_model_domain_count(m, &n));
    if (n != 2) {
        fprintf(stderr, "base + pack has %zu domains, expected 2\n", n);
        failures++;
    }
    const char *name = NULL;
    CHECK(edgelm_model_domain_name(NULL, 0, &name), EDGELM_ERR_NULL_POINTER, "model");
    CHECK(edgelm_model_domain_name(m, 0, NULL), EDGELM_ERR_NULL_POINTER, "name");
    CHECK(edgelm_model_domain_name(m, n, &name), EDGELM_ERR_INVALID_ARGUMENT, "out of range");
    CHECK(edgelm_model_domain_name(m, SIZE_MAX, &name), EDGELM_ERR_INVALID_ARGUMENT, "out of range");
    if (name != NULL) {
        fprintf(stderr, "a failed edgelm_model_domain_name wrote its out-pointer\n");
        failures++;
    }
    CHECK_OK(edgelm_model_domain_name(m, 1, &name));

    size_t max_seq = 0, arena_len = 0;
    CHECK(edgelm_model_max_seq(NULL, &max_seq), EDGELM_ERR_NULL_POINTER, "model");
    CHECK(edgelm_model_max_seq(m, NULL), EDGELM_ERR_NULL_POINTER, "max_seq");
    CHECK_OK(edgelm_model_max_seq(m, &max_seq));
    CHECK(edgelm_model_arena_size(NULL, 0, &arena_len), EDGELM_ERR_NULL_POINTER, "model");
    CHECK(edgelm_model_arena_size(m, 0, NULL), EDGELM_ERR_NULL_POINTER, "bytes");
    CHECK(edgelm_model_arena_size(m, max_seq + 1, &arena_len), EDGELM_ERR_INVALID_ARGUMENT, "context");
    CHECK(edgelm_model_arena_size(m, SIZE_MAX, &arena_len), EDGELM_ERR_INVALID_ARGUMENT, "context");
    CHECK_OK(edgelm_model_arena_size(m, 16, &arena_len));

    /* --- sessions ------------------------------------------------------- */
    edgelm_session *s = SESSION_SENTINEL;
    CHECK(edgelm_session_new(NULL, NULL, 0, NULL, &s), EDGELM_ERR_NULL_POINTER, "edgelm_session_new", "model");
    CHECK(edgelm_session_new(m, NULL, 0, NULL, NULL), EDGELM_ERR_NULL_POINTER, "out");
    CHECK(edgelm_session_new(m, "poetry", 0, NULL, &s), EDGELM_ERR_UNKNOWN_DOMAIN, "poetry");
    CHECK(edgelm_session_new(m, "", 0, NULL, &s), EDGELM_ERR_UNKNOWN_DOMAIN, "domain");
    CHECK(edgelm_session_new(m, "\xff\xfe", 0, NULL, &s), EDGELM_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK(edgelm_session_new(m, NULL, max_seq + 1, NULL, &s), EDGELM_ERR_INVALID_ARGUMENT, "context");
    edgelm_sampler bad = smp;
    bad.top_p = 2.0f;
    CHECK(edgelm_session_new(m, NULL, 0, &bad, &s), EDGELM_ERR_INVALID_ARGUMENT, "top-p");
    unsigned char *arena = malloc(arena_len);
    CHECK(edgelm_session_new_in_arena(m, NULL, 16, NULL, NULL, arena_len, &s), EDGELM_ERR_NULL_POINTER, "arena");
    CHECK(edgelm_session_new_in_arena(m, NULL, 16, NULL, arena, arena_len - 1, &s), EDGELM_ERR_INVALID_ARGUMENT, "arena");
    CHECK(edgelm_session_new_in_arena(m, NULL, 16, NULL, arena, 0, &s), EDGELM_ERR_INVALID_ARGUMENT, "arena");
    CHECK(edgelm_session_new_in_arena(m, NULL, 32, NULL, arena, arena_len, &s), EDGELM_ERR_INVALID_ARGUMENT, "arena");
    CHECK(edgelm_session_new_in_arena(m, "poetry", 16, NULL, arena, arena_len, &s), EDGELM_ERR_UNKNOWN_DOMAIN, "poetry");
    CHECK(edgelm_session_new_in_arena(m, NULL, 16, NULL, arena, SIZE_MAX, &s), EDGELM_ERR_INVALID_ARGUMENT, "arena_len");
    CHECK(edgelm_session_new_in_arena(m, NULL, 16, NULL, arena, arena_len, NULL), EDGELM_ERR_NULL_POINTER, "out");
    if (s != SESSION_SENTINEL) {
        fprintf(stderr, "a failed session_new wrote its out-pointer\n");
        failures++;
    }
    CHECK_OK(edgelm_session_new_in_arena(m, name, 16, &smp, arena, arena_len, &s));

    /* packs and frees are refused while a session is open */
    CHECK(edgelm_model_add_pack(m, pack_path), EDGELM_ERR_BUSY, "session");
    CHECK(edgelm_model_free(m), EDGELM_ERR_BUSY, "session");

    size_t tokens = 0;
    CHECK(edgelm_session_feed_prompt(NULL, "x", 1, &tokens), EDGELM_ERR_NULL_POINTER, "session");
    CHECK(edgelm_session_feed_prompt(s, NULL, 5, &tokens), EDGELM_ERR_NULL_POINTER, "text");
    CHECK(edgelm_session_feed_prompt(s, "ab\xff", 3, &tokens), EDGELM_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK(edgelm_session_feed_prompt(s, "x", SIZE_MAX, &tokens), EDGELM_ERR_INVALID_ARGUMENT, "length");
    char long_prompt[4096];
    memset(long_prompt, 'a', sizeof long_prompt);
    for (size_t i = 0; i < sizeof long_prompt; i += 6) long_prompt[i] = ' ';
    CHECK(edgelm_session_feed_prompt(s, long_prompt, sizeof long_prompt, &tokens), EDGELM_ERR_PROMPT_TOO_LONG, "prompt");
    CHECK_OK(edgelm_session_feed_prompt(s, NULL, 0, &tokens)); /* empty prompt: BOS only */
    CHECK_OK(edgelm_session_feed_prompt(s, "Title:", 6, NULL));

    int pieces = 0;
    edgelm_stop_reason reason = EDGELM_STOP_END_OF_TEXT;
    CHECK(edgelm_session_generate(NULL, 4, count_pieces, &pieces, &reason), EDGELM_ERR_NULL_POINTER, "session");
    CHECK_OK(edgelm_session_generate(s, 0, count_pieces, &pieces, &reason));
    CHECK_OK(edgelm_session_generate(s, 4, NULL, NULL, NULL)); /* text discarded */
    CHECK_OK(edgelm_session_generate(s, SIZE_MAX, count_pieces, &pieces, &reason)); /* stops at the 16-token context or end of text */
    if (reason != EDGELM_STOP_CONTEXT_FULL && reason != EDGELM_STOP_END_OF_TEXT) {
        fprintf(stderr, "generating past a 16-token context stopped by %d\n", (int)reason);
        failures++;
    }
    CHECK(edgelm_session_token_count(NULL, &tokens), EDGELM_ERR_NULL_POINTER, "session");
    CHECK(edgelm_session_token_count(s, NULL), EDGELM_ERR_NULL_POINTER, "count");
    CHECK_OK(edgelm_session_token_count(s, &tokens));
    if (tokens == 0 || tokens > 16) {
        fprintf(stderr, "a 16-token session holds %zu tokens\n", tokens);
        failures++;
    }
    CHECK(edgelm_session_reset(NULL), EDGELM_ERR_NULL_POINTER, "session");
    CHECK_OK(edgelm_session_reset(s));

    /* NULL frees are no-ops, as free(3) */
    CHECK_OK(edgelm_session_free(NULL));
    CHECK_OK(edgelm_model_free(NULL));
    CHECK_OK(edgelm_session_free(s));
    free(arena);
    CHECK_OK(edgelm_model_free(m));

    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("errors.c: %d checks passed\n", checks);
    return 0;
}
