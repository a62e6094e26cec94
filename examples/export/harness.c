/* Runs a model exported by `tinycomp export` (name "model") and prints what it computes.
 *
 *   harness INPUT.f32 [-i INPUT1.f32]... [-w WEIGHTS.bin] [-r REPEAT] [-s SEED -o OFFSET] BATCH...
 *
 * INPUT.f32 holds rows of MODEL_INPUT_ROW_FLOATS little-endian float32 values. A model of several
 * inputs (MODEL_INPUTS, up to 4) takes one -i file per input after the first, in forward()'s order:
 * at least MODEL_INPUT<i>_FLOATS(batch) floats (rows for a batched input, the whole array for a shared
 * one). For each BATCH, the first BATCH rows go through model_forward and one line is printed:
 * "out BATCH" followed by the bit pattern of every output float in hex (exact, and the same text
 * on every target). With -r, batch 1 is then run REPEAT more times and "us_per_call T" printed
 * (clock(): a sanity figure).
 * -w binds the weights of an export made with weights="external". An export made with
 * training=True (MODEL_TRAINING) takes -s SEED -o OFFSET, its dropout stream (default 0 0), as
 * decimal numbers.
 * The same source builds for Linux (host, aarch64 under qemu-aarch64) and, with the startup code
 * in cortex_m/, for a bare-metal Cortex-M4 whose files and console are semihosted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

#ifndef MODEL_INPUTS
#define MODEL_INPUTS 1
#endif
#if MODEL_INPUTS > 4
#error "harness.c runs models of at most 4 inputs"
#endif
/* the floats each input after the first holds at `batch` rows */
static int64_t more_floats(int k, int64_t batch) {
    (void)batch;
    switch (k) {
#if MODEL_INPUTS > 1
    case 0: return MODEL_INPUT1_FLOATS(batch);
#endif
#if MODEL_INPUTS > 2
    case 1: return MODEL_INPUT2_FLOATS(batch);
#endif
#if MODEL_INPUTS > 3
    case 2: return MODEL_INPUT3_FLOATS(batch);
#endif
    default: return 0;
    }
}

#ifdef MODEL_TRAINING
#define HARNESS_STREAM , seed, offset
#else
#define HARNESS_STREAM
#endif
static uint64_t seed, offset; /* -s, -o: the dropout stream of a training export */

static int forward(float *const *in, float *y, int64_t batch, void *scratch) {
#if MODEL_INPUTS == 1
    return model_forward(in[0], y, batch, scratch HARNESS_STREAM);
#elif MODEL_INPUTS == 2
    return model_forward(in[0], in[1], y, batch, scratch HARNESS_STREAM);
#elif MODEL_INPUTS == 3
    return model_forward(in[0], in[1], in[2], y, batch, scratch HARNESS_STREAM);
#else
    return model_forward(in[0], in[1], in[2], in[3], y, batch, scratch HARNESS_STREAM);
#endif
}

static void *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    long cap = 1 << 16, len = 0;
    char *buf = malloc((size_t)cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, (size_t)(cap - len), f)) > 0) {
        len += (long)got;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, (size_t)cap);
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "out of memory reading %s\n", path);
        exit(2);
    }
    *size = len;
    return buf;
}

static void print_output(int64_t batch, const float *y) {
    printf("out %ld", (long)batch);
    for (int64_t i = 0; i < batch * MODEL_OUTPUT_ROW_FLOATS; i++) {
        uint32_t bits;
        memcpy(&bits, &y[i], sizeof bits);
        printf(" %08lx", (unsigned long)bits);
    }
    printf("\n");
}

int main(int argc, char **argv) {
    const char *input = NULL, *weights = NULL, *more[4] = {NULL, NULL, NULL, NULL};
    int n_more = 0;
    long repeat = 0;
    int64_t batches[16];
    int n_batches = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-w") == 0 && i + 1 < argc) {
            weights = argv[++i];
        } else if (strcmp(argv[i], "-i") == 0 && i + 1 < argc && n_more < MODEL_INPUTS - 1) {
            more[n_more++] = argv[++i];
        } else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            seed = (uint64_t)strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            offset = (uint64_t)strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            repeat = atol(argv[++i]);
        } else if (!input) {
            input = argv[i];
        } else if (n_batches < 16) {
            batches[n_batches++] = atol(argv[i]);
        }
    }
    if (!input || n_batches == 0 || n_more != MODEL_INPUTS - 1) {
        fprintf(stderr, "usage: %s INPUT.f32 [-i INPUT1.f32]... [-w WEIGHTS.bin] [-r REPEAT] [-s SEED -o OFFSET] BATCH... "
                "(this model takes %d -i files)\n", argv[0], MODEL_INPUTS - 1);
        return 2;
    }
    long in_bytes;
    float *in[4];
    in[0] = read_file(input, &in_bytes);
    int64_t rows = in_bytes / (long)(sizeof(float) * MODEL_INPUT_ROW_FLOATS);
    long more_bytes[4];
    for (int k = 0; k < n_more; k++)
        in[k + 1] = read_file(more[k], &more_bytes[k]);
#ifdef MODEL_WEIGHTS_EXTERNAL
    long w_bytes = 0;
    void *w = weights ? read_file(weights, &w_bytes) : NULL;
    if (w && w_bytes != MODEL_WEIGHTS_BYTES) {  /* model_bind_weights reads that many bytes: it takes no length */
        fprintf(stderr, "%s has %ld bytes; this model's weights file has %ld\n", weights, w_bytes,
                (long)MODEL_WEIGHTS_BYTES);
        return 3;
    }
    if (model_bind_weights(w) != MODEL_OK) {
        fprintf(stderr, "model_bind_weights refused %s (%ld bytes)\n", weights ? weights : "no file", w_bytes);
        return 3;
    }
#else
    (void)weights;
#endif
    for (int b = 0; b < n_batches; b++) {
        int64_t batch = batches[b];
        if (batch > rows) {
            fprintf(stderr, "batch %ld: %s holds %ld rows\n", (long)batch, input, (long)rows);
            return 2;
        }
        for (int k = 0; k < n_more; k++) {
            if (more_bytes[k] / (long)sizeof(float) < more_floats(k, batch)) {
                fprintf(stderr, "batch %ld: %s holds %ld floats, input %d needs %ld\n", (long)batch, more[k],
                        more_bytes[k] / (long)sizeof(float), k + 1, (long)more_floats(k, batch));
                return 2;
            }
        }
        float *y = malloc(sizeof(float) * (size_t)(batch * MODEL_OUTPUT_ROW_FLOATS + 1));
        void *scratch = malloc((size_t)MODEL_SCRATCH_BYTES(batch) + 1);
        int rc = forward(in, y, batch, scratch);
        if (rc != MODEL_OK) {
            printf("error %d at batch %ld\n", rc, (long)batch);
            return 1;
        }
        print_output(batch, y);
        if (repeat > 0 && batch == 1) {
            clock_t start = clock();
            for (long r = 0; r < repeat; r++)
                forward(in, y, 1, scratch);
            double us = 1e6 * (double)(clock() - start) / CLOCKS_PER_SEC / (double)repeat;
            printf("us_per_call %.3f\n", us);
        }
        free(scratch);
        free(y);
    }
    printf("done\n");
    return 0;
}
