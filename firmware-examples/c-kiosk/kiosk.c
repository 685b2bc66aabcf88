/* c-kiosk: a small terminal kiosk on edgelm's C API. Pick a domain (story,
 * recipe, whatever the model and its packs provide), and the text streams
 * as it is generated. Ctrl-C stops the current text; "q" quits.
 *
 *   kiosk [--models DIR] [--domain NAME] [--prompt TEXT] [--seed N]
 *         [-n MAX_TOKENS] [--temperature T] [--top-p P]
 *
 * With --domain it generates once and exits, printing exactly what
 * `edgelm generate --model DIR/base.edgelm --pack DIR/recipe.edgelm
 *  --domain NAME --prompt TEXT --seed N -n MAX_TOKENS` prints on stdout
 * (the CI compares the two). Without it, it shows a menu.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgelm.h"

static volatile sig_atomic_t interrupted = 0;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* The per-piece callback: print, and stop when Ctrl-C was pressed or stdout is gone. */
static int print_piece(const char *piece, size_t len, void *user) {
    FILE *out = user;
    if (interrupted) return 1;
    if (fwrite(piece, 1, len, out) != len || fflush(out) != 0) return 1;
    return 0;
}

/* Prints what failed and returns 1. */
static int report(const char *what, edgelm_status st) {
    fprintf(stderr, "kiosk: %s failed: %s (%s)\n", what, edgelm_last_error(), edgelm_status_name((int)st));
    return 1;
}

struct options {
    const char *models;
    const char *domain;
    const char *prompt;
    unsigned long long seed;
    size_t max_tokens;
    float temperature;
    float top_p;
};

/* One text: a fresh session (so the same seed gives the same text), the
 * prompt echoed, the generated pieces streamed, a newline. */
static int tell(edgelm_model *model, const char *domain, const struct options *o) {
    edgelm_sampler smp;
    edgelm_status st = edgelm_sampler_defaults(&smp);
    if (st != EDGELM_OK) return report("edgelm_sampler_defaults", st);
    smp.temperature = o->temperature;
    smp.top_p = o->top_p;
    smp.seed = o->seed;

    edgelm_session *session = NULL;
    st = edgelm_session_new(model, domain, 0, &smp, &session);
    if (st != EDGELM_OK) return report("edgelm_session_new", st);
    int rc = 0;
    st = edgelm_session_feed_prompt(session, o->prompt, strlen(o->prompt), NULL);
    if (st != EDGELM_OK) {
        rc = report("edgelm_session_feed_prompt", st);
    } else {
        fputs(o->prompt, stdout);
        fflush(stdout);
        edgelm_stop_reason why = EDGELM_STOP_END_OF_TEXT;
        interrupted = 0;
        st = edgelm_session_generate(session, o->max_tokens, print_piece, stdout, &why);
        putchar('\n');
        if (st != EDGELM_OK) rc = report("edgelm_session_generate", st);
        else if (why == EDGELM_STOP_CALLBACK) fprintf(stderr, "[stopped]\n");
    }
    st = edgelm_session_free(session);
    if (st != EDGELM_OK && rc == 0) rc = report("edgelm_session_free", st);
    return rc;
}

static int parse(int argc, char **argv, struct options *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        errno = 0;
        if (!v) {
            fprintf(stderr, "kiosk: %s needs a value (or unknown option)\n", a);
            return 1;
        } else if (!strcmp(a, "--models")) {
            o->models = v;
        } else if (!strcmp(a, "--domain")) {
            o->domain = v;
        } else if (!strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "--seed")) {
            o->seed = strtoull(v, &end, 10);
        } else if (!strcmp(a, "-n")) {
            o->max_tokens = (size_t)strtoull(v, &end, 10);
        } else if (!strcmp(a, "--temperature")) {
            o->temperature = strtof(v, &end);
        } else if (!strcmp(a, "--top-p")) {
            o->top_p = strtof(v, &end);
        } else {
            fprintf(stderr, "kiosk: unknown option %s\n", a);
            return 1;
        }
        if (end && (*end != '\0' || end == v || errno)) {
            fprintf(stderr, "kiosk: bad value for %s: %s\n", a, v);
            return 1;
        }
        i++;
    }
    return 0;
}

int main(int argc, char **argv) {
    /* the defaults of `edgelm generate` */
    struct options o = {"models", NULL, "", 42, 256, 0.8f, 0.9f};
    if (parse(argc, argv, &o)) return 2;

    char base[4096], pack[4096];
    snprintf(base, sizeof base, "%s/base.edgelm", o.models);
    snprintf(pack, sizeof pack, "%s/recipe.edgelm", o.models);

    edgelm_model *model = NULL;
    edgelm_status st = edgelm_model_open(base, &model);
    if (st != EDGELM_OK) return report("edgelm_model_open", st);
    st = edgelm_model_add_pack(model, pack);
    if (st != EDGELM_OK) {
        report("edgelm_model_add_pack", st);
        edgelm_model_free(model);
        return 1;
    }

    int rc = 0;
    if (o.domain) {
        rc = tell(model, o.domain, &o);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL);
        size_t n = 0;
        st = edgelm_model_domain_count(model, &n);
        if (st != EDGELM_OK) rc = report("edgelm_model_domain_count", st);
        for (unsigned round = 0; rc == 0; round++) {
            printf("\nWhat shall I write?\n");
            for (size_t i = 0; i < n; i++) {
                const char *name = NULL;
                if (edgelm_model_domain_name(model, i, &name) == EDGELM_OK) printf("  %zu) a %s\n", i + 1, name);
            }
            printf("  q) quit\n> ");
            fflush(stdout);
            char line[64];
            if (!fgets(line, sizeof line, stdin) || line[0] == 'q') break;
            char *end = NULL;
            unsigned long pick = strtoul(line, &end, 10);
            if (end == line || pick < 1 || pick > n) {
                printf("Please type a number from 1 to %zu.\n", n);
                continue;
            }
            const char *name = NULL;
            st = edgelm_model_domain_name(model, pick - 1, &name);
            if (st != EDGELM_OK) {
                rc = report("edgelm_model_domain_name", st);
                break;
            }
            struct options each = o;
            each.seed = o.seed + round; /* a new text each time */
            printf("\n");
            rc = tell(model, name, &each);
        }
    }
    st = edgelm_model_free(model);
    if (st != EDGELM_OK && rc == 0) rc = report("edgelm_model_free", st);
    return rc;
}
