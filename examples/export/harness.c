/* Runs a model exported by `tinycomp export` (name "model") and prints what it computes.
 *
 *   harness INPUT.f32 [-w WEIGHTS.bin] [-r REPEAT] BATCH...
 *
 * INPUT.f32 holds rows of MODEL_INPUT_ROW_FLOATS little-endian float32 values. For each BATCH, the
 * first BATCH rows go through model_forward and one line is printed: "out BATCH" followed by the
 * bit pattern of every output float in hex (exact, and the same text on every target). With -r,
 * batch 1 is then run REPEAT more times and "us_per_call T" printed (clock(): a sanity figure).
 * -w binds the weights of an export made with weights="external".
 * The same source builds for Linux (host, aarch64 under qemu-aarch64) and, with the startup code
 * in cortex_m/, for a bare-metal Cortex-M4 whose files and console are semihosted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

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
    const char *input = NULL, *weights = NULL;
    long repeat = 0;
    int64_t batches[16];
    int n_batches = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-w") == 0 && i + 1 < argc) {
            weights = argv[++i];
        } else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            repeat = atol(argv[++i]);
        } else if (!input) {
            input = argv[i];
        } else if (n_batches < 16) {
            batches[n_batches++] = atol(argv[i]);
        }
    }
    if (!input || n_batches == 0) {
        fprintf(stderr, "usage: %s INPUT.f32 [-w WEIGHTS.bin] [-r REPEAT] BATCH...\n", argv[0]);
        return 2;
    }
    long in_bytes;
    float *x = read_file(input, &in_bytes);
    int64_t rows = in_bytes / (long)(sizeof(float) * MODEL_INPUT_ROW_FLOATS);
#ifdef MODEL_WEIGHTS_EXTERNAL
    long w_bytes = 0;
    void *w = weights ? read_file(weights, &w_bytes) : NULL;
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
        float *y = malloc(sizeof(float) * (size_t)(batch * MODEL_OUTPUT_ROW_FLOATS + 1));
        void *scratch = malloc((size_t)MODEL_SCRATCH_BYTES(batch) + 1);
        int rc = model_forward(x, y, batch, scratch);
        if (rc != MODEL_OK) {
            printf("error %d at batch %ld\n", rc, (long)batch);
            return 1;
        }
        print_output(batch, y);
        if (repeat > 0 && batch == 1) {
            clock_t start = clock();
            for (long r = 0; r < repeat; r++)
                model_forward(x, y, 1, scratch);
            double us = 1e6 * (double)(clock() - start) / CLOCKS_PER_SEC / (double)repeat;
            printf("us_per_call %.3f\n", us);
        }
        free(scratch);
        free(y);
    }
    printf("done\n");
    return 0;
}
