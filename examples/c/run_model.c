/* run_model: runs a model compiled by `kiln compile` through its C ABI.
 *
 * Works with any kiln library: the header and the symbol prefix are chosen
 * when this file is compiled, and everything else comes from the library's
 * tensor descriptors.
 *
 *   kiln compile model.onnx -o libgpt2.so --header gpt2.h --dim batch=1 --dim seq=16
 *   cc -std=c11 -O2 -DKILN_HEADER='"gpt2.h"' -DKILN_NAME=gpt2 -I. \
 *      examples/c/run_model.c -L. -lgpt2 -Wl,-rpath,'$ORIGIN' -o run_model
 *   ./run_model [--threads N] input_0.bin input_1.bin
 *
 * --threads N runs on N threads (default 0: libomp's default, which is
 * OMP_NUM_THREADS or every core). Each other argument is the raw data of one input, in order: row-major,
 * little-endian, exactly as many bytes as the input's descriptor says.
 * Every output is printed as a line `output INDEX NAME DTYPE [DIMS]`
 * followed by its elements, one per line (floats with enough digits to
 * read them back exactly). Errors go to stderr with exit status 1.
 */
#include KILN_HEADER

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KILN_CAT2(a, b) a##_##b
#define KILN_CAT(a, b) KILN_CAT2(a, b)
/* KILN_FN(run) is gpt2_run when KILN_NAME is gpt2. */
#define KILN_FN(f) KILN_CAT(KILN_NAME, f)

typedef KILN_FN(model) model_t;

static const char *dtype_name(int32_t dtype) {
    switch (dtype) {
    case KILN_DTYPE_F32: return "f32";
    case KILN_DTYPE_F64: return "f64";
    case KILN_DTYPE_F16: return "f16";
    case KILN_DTYPE_BF16: return "bf16";
    case KILN_DTYPE_I8: return "i8";
    case KILN_DTYPE_U8: return "u8";
    case KILN_DTYPE_I16: return "i16";
    case KILN_DTYPE_I32: return "i32";
    case KILN_DTYPE_I64: return "i64";
    case KILN_DTYPE_BOOL: return "bool";
    default: return "?";
    }
}

/* IEEE half-precision bits to float. */
static float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
        float magnitude = (float)mantissa / 16777216.0f; /* mantissa * 2^-24 */
        return sign ? -magnitude : magnitude;
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void print_element(const kiln_tensor_desc *d, const unsigned char *data, uint64_t i) {
    switch (d->dtype) {
    case KILN_DTYPE_F32: { float v; memcpy(&v, data + 4 * i, 4); printf("%.9g\n", v); break; }
    case KILN_DTYPE_F64: { double v; memcpy(&v, data + 8 * i, 8); printf("%.17g\n", v); break; }
    case KILN_DTYPE_F16: { uint16_t v; memcpy(&v, data + 2 * i, 2); printf("%.9g\n", f16_to_float(v)); break; }
    case KILN_DTYPE_BF16: {
        uint16_t v;
        memcpy(&v, data + 2 * i, 2);
        uint32_t bits = (uint32_t)v << 16;
        float f;
        memcpy(&f, &bits, 4);
        printf("%.9g\n", f);
        break;
    }
    case KILN_DTYPE_I8: printf("%d\n", (int)((const int8_t *)data)[i]); break;
    case KILN_DTYPE_U8: printf("%u\n", (unsigned)data[i]); break;
    case KILN_DTYPE_BOOL: printf("%u\n", data[i] ? 1u : 0u); break;
    case KILN_DTYPE_I16: { int16_t v; memcpy(&v, data + 2 * i, 2); printf("%d\n", (int)v); break; }
    case KILN_DTYPE_I32: { int32_t v; memcpy(&v, data + 4 * i, 4); printf("%ld\n", (long)v); break; }
    case KILN_DTYPE_I64: { int64_t v; memcpy(&v, data + 8 * i, 8); printf("%lld\n", (long long)v); break; }
    default: printf("?\n"); break;
    }
}

/* Reads a whole file that must hold exactly `bytes` bytes; NULL on error. */
static void *read_input(const char *path, const kiln_tensor_desc *d) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "run_model: cannot open `%s` for input `%s`\n", path, d->name);
        return NULL;
    }
    void *data = malloc(d->bytes ? d->bytes : 1);
    size_t got = data ? fread(data, 1, d->bytes, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (!data || got != d->bytes || extra) {
        fprintf(stderr, "run_model: `%s` must hold exactly %llu bytes for input `%s` (%s, %d dims)\n", path,
                (unsigned long long)d->bytes, d->name, dtype_name(d->dtype), (int)d->rank);
        free(data);
        return NULL;
    }
    return data;
}

int main(int argc, char **argv) {
    size_t n_in = KILN_FN(num_inputs)(), n_out = KILN_FN(num_outputs)();
    int threads = 0;
    if (argc >= 3 && strcmp(argv[1], "--threads") == 0) {
        threads = atoi(argv[2]);
        argv += 2;
        argc -= 2;
    }
    if ((size_t)(argc - 1) != n_in) {
        fprintf(stderr, "run_model: the model takes %zu inputs, given %d files\n", n_in, argc - 1);
        for (size_t i = 0; i < n_in; i++)
            fprintf(stderr, "  input %zu: %s (%s, %llu bytes)\n", i, KILN_FN(input)(i)->name,
                    dtype_name(KILN_FN(input)(i)->dtype), (unsigned long long)KILN_FN(input)(i)->bytes);
        return 1;
    }
    const void **inputs = calloc(n_in + 1, sizeof *inputs);
    void **outputs = calloc(n_out + 1, sizeof *outputs);
    if (!inputs || !outputs) return 1;
    int status = 1;
    model_t *model = NULL;
    for (size_t i = 0; i < n_in; i++) {
        if (!(inputs[i] = read_input(argv[i + 1], KILN_FN(input)(i)))) goto done;
    }
    for (size_t i = 0; i < n_out; i++) {
        if (!(outputs[i] = malloc(KILN_FN(output)(i)->bytes ? KILN_FN(output)(i)->bytes : 1))) goto done;
    }
    if (KILN_FN(create)(&model, threads) != KILN_OK) {
        fprintf(stderr, "run_model: %s\n", KILN_FN(last_error)());
        goto done;
    }
    if (KILN_FN(run)(model, inputs, outputs) != KILN_OK) {
        fprintf(stderr, "run_model: %s\n", KILN_FN(last_error)());
        goto done;
    }
    for (size_t i = 0; i < n_out; i++) {
        const kiln_tensor_desc *d = KILN_FN(output)(i);
        printf("output %zu %s %s [", i, d->name, dtype_name(d->dtype));
        for (int32_t k = 0; k < d->rank; k++) printf(k ? ", %lld" : "%lld", (long long)d->shape[k]);
        printf("]\n");
        for (uint64_t e = 0; e < d->count; e++) print_element(d, outputs[i], e);
    }
    status = 0;
done:
    KILN_FN(destroy)(model);
    for (size_t i = 0; i < n_in; i++) free((void *)inputs[i]);
    for (size_t i = 0; i < n_out; i++) free(outputs[i]);
    free(inputs);
    free(outputs);
    return status;
}
