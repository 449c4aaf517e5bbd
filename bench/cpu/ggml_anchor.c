// ggml_anchor.c - same-machine CPU anchor: times ggml's CPU kernels for the
// sequence mixers that mixc compiles, so mixc's CPU numbers can be compared
// against ggml's on the same box.  Built and run by bench/cpu/ggml.sh.
//
// Shapes: f32, B = 1, H = 16, D = Dk = Dv = 128, T from the command line.
// Ops (one output line each: "op T ms GFLOP/s", then a "# min .. max .." comment):
//   gla            ggml_gated_linear_attn, prefill, zero initial state,
//                  scale 1/sqrt(128).  ggml's GLA takes the decay as a
//                  multiplier, so we pass exp(g) with g = logsigmoid(x)/16.
//   ssm_scan       ggml_ssm_scan in its Mamba-2 form (A is [1, H]: one scalar
//                  decay per head and token) = "simple GLA".  head_dim 128,
//                  d_state 128, 16 heads, 1 group; x plays v, B plays k, C
//                  plays q.  A = -1/16 and dt ~ N(0,1), so the per-token log
//                  decay softplus(dt)*A = logsigmoid(-dt)/16 has the same
//                  distribution as GLA's g.  No scale argument exists (and
//                  ggml multiplies x by softplus(dt)).
//   gdn            ggml_gated_delta_net (scalar gate per head and token,
//                  beta = sigmoid(x), q and k L2-normalised per head, log
//                  decay g = logsigmoid(x)/16; ggml hard-codes scale
//                  1/sqrt(128)); K = 1 state snapshot.
//   fa             causal ggml_flash_attn_ext; q f32, K/V f16 by default
//                  (--kv f32 for f32 K/V; the CPU path accepts both), f16
//                  causal mask [T, T] (0 / -inf), scale 1/sqrt(128).
//   gla_decode16   ggml_gated_linear_attn, one token for each of 16
//                  sequences, state [16 seqs x 16 heads x 128 x 128] f32
//                  (16 MiB in, 16 MiB out: ggml writes the new state into
//                  the op's output, not in place).  A 64 MiB buffer is
//                  written and read before every timed run to evict the
//                  caches (cold cache).
//
// Nominal FLOP counts (what the GFLOP/s column divides by):
//   gla, ssm_scan, gdn, gla_decode16:  4 * B * H * T * Dk * Dv
//       (recurrent form: state update ~2*Dk*Dv + readout 2*Dk*Dv per token
//        and head; for decode T = 1 token and B = 16 sequences)
//   fa (causal):                        2 * B * H * T^2 * D
//       (= QK^T and PV, 2*T^2*D each, halved by the causal mask)
//
// Timing: only ggml_graph_compute() with a plan for N threads on a persistent
// ggml threadpool (pthreads, hybrid polling; ggml built without OpenMP).
// Graph building, planning, work-buffer allocation and input filling are
// outside the timed region.  1 warm-up run, then the median of R runs.
//
// Usage: ggml_anchor [T] [-t threads] [-r runs] [--fa-T T] [--kv f16|f32]
//                    [--ops gla,ssm_scan,gdn,fa,gla_decode16]
//        --fa-T 0 skips attention; default --fa-T is T.

#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { H = 16, D = 128, DECODE_SEQS = 16 };

static int g_threads = 2;
static int g_runs = 5;
static struct ggml_threadpool *g_pool;
static double g_min_ms, g_max_ms; // spread of the last time_graph() call
static int g_last_runs;

// ---------------------------------------------------------------- helpers

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(void) { // (0, 1)
    return ((float)(rng_next() >> 40) + 0.5f) / 16777216.0f;
}

static float rng_normal(void) { // Box-Muller, one value per call
    float u1 = rng_uniform(), u2 = rng_uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

static float logsigmoid(float x) { // numerically stable
    return x >= 0.0f ? -log1pf(expf(-x)) : x - log1pf(expf(x));
}

static void fill_normal(float *p, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) p[i] = scale * rng_normal();
}

// decay in log space: logsigmoid(N(0,1)) / 16 (negative, small)
static void fill_logdecay(float *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = logsigmoid(rng_normal()) / 16.0f;
}

static void fill_decay_mult(float *p, int64_t n) { // exp of the above
    for (int64_t i = 0; i < n; i++) p[i] = expf(logsigmoid(rng_normal()) / 16.0f);
}

static void l2norm_rows(float *p, int64_t rows, int64_t len) {
    for (int64_t r = 0; r < rows; r++) {
        float *x = p + r * len;
        double s = 0.0;
        for (int64_t i = 0; i < len; i++) s += (double)x[i] * x[i];
        float inv = (float)(1.0 / sqrt(s + 1e-12));
        for (int64_t i = 0; i < len; i++) x[i] *= inv;
    }
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct ggml_context *make_ctx(size_t data_bytes, int n_tensors) {
    struct ggml_init_params ip = {
        .mem_size = data_bytes + (size_t)n_tensors * (ggml_tensor_overhead() + 64) +
                    ggml_graph_overhead() + (1u << 20),
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) {
        fprintf(stderr, "ggml_init failed (%zu bytes)\n", ip.mem_size);
        exit(1);
    }
    return ctx;
}

static size_t bytes_f32(int64_t n) { return (size_t)n * sizeof(float); }

// Eviction buffer for the cold-cache decode measurement.
static unsigned char *g_evict;
static size_t g_evict_n = (size_t)64 << 20;
static volatile uint64_t g_sink;

static void evict_caches(void) {
    static unsigned char v = 1;
    memset(g_evict, v++, g_evict_n);
    uint64_t s = 0;
    for (size_t i = 0; i < g_evict_n; i += 64) s += g_evict[i];
    g_sink += s;
}

// Times the graph computing `out`.  Returns median ms over g_runs runs after
// one warm-up; `cold` evicts the caches before every run (untimed).
static double time_graph(struct ggml_context *ctx, struct ggml_tensor *out, int runs, int cold) {
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);

    struct ggml_cplan plan = ggml_graph_plan(gf, g_threads, g_pool);
    void *work = NULL;
    if (plan.work_size > 0) {
        work = aligned_alloc(64, (plan.work_size + 63) & ~(size_t)63);
        plan.work_data = work;
    }

    double *ms = calloc((size_t)runs, sizeof(double));
    for (int r = -1; r < runs; r++) {
        if (cold) evict_caches();
        double t0 = now_ms();
        enum ggml_status st = ggml_graph_compute(gf, &plan);
        double t1 = now_ms();
        if (st != GGML_STATUS_SUCCESS) {
            fprintf(stderr, "ggml_graph_compute failed: %d\n", (int)st);
            exit(1);
        }
        if (r >= 0) ms[r] = t1 - t0;
    }
    qsort(ms, (size_t)runs, sizeof(double), cmp_double);
    double med = runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
    g_min_ms = ms[0];
    g_max_ms = ms[runs - 1];
    g_last_runs = runs;

    // sanity: the result must be finite (checked on the output rows only)
    const float *o = (const float *)out->data;
    int64_t n = ggml_nelements(out);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i += 97) sum += o[i];
    if (!isfinite(sum)) fprintf(stderr, "warning: %s output not finite\n", ggml_op_desc(out));

    free(ms);
    free(work);
    return med;
}

static void report(const char *op, int64_t T, double ms, double flop) {
    // columns 1-4 are the result; the comment gives the spread (noise check)
    printf("%-16s %6lld %10.3f %8.2f   # min %.3f max %.3f n=%d\n", op, (long long)T, ms,
           flop / (ms * 1e-3) / 1e9, g_min_ms, g_max_ms, g_last_runs);
    fflush(stdout);
}

// ---------------------------------------------------------------- ops

// GLA. ggml layout: k, v, q, g: [D, H, T] (token-major, heads inside);
// state: [D*D*H, n_seqs] with state[h][i_k][j_v]; T tokens are split evenly
// over the n_seqs sequences.  Output: [D*H, T + D*n_seqs] (y, then state).
static double run_gla(int64_t T, int64_t n_seqs, int runs, int cold) {
    int64_t n = (int64_t)D * H * T;
    struct ggml_context *ctx = make_ctx(bytes_f32(4 * n) + bytes_f32((int64_t)D * D * H * n_seqs) +
                                            bytes_f32((int64_t)D * H * (T + D * n_seqs)),
                                        8);
    struct ggml_tensor *k = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, T);
    struct ggml_tensor *v = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, T);
    struct ggml_tensor *q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, T);
    struct ggml_tensor *g = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, H, T);
    struct ggml_tensor *s = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, (int64_t)D * D * H, n_seqs);
    fill_normal(k->data, n, 1.0f);
    fill_normal(v->data, n, 1.0f);
    fill_normal(q->data, n, 1.0f);
    fill_decay_mult(g->data, n);
    memset(s->data, 0, ggml_nbytes(s));
    struct ggml_tensor *out = ggml_gated_linear_attn(ctx, k, v, q, g, s, 1.0f / sqrtf((float)D));
    double ms = time_graph(ctx, out, runs, cold);
    ggml_free(ctx);
    return ms;
}

// Mamba-2 scan. s: [d_state, head_dim, H, 1]; x: [head_dim, H, T, 1];
// dt: [H, T, 1]; A: [1, H]; B, C: [d_state, n_group=1, T, 1]; ids: [1].
static double run_ssm_scan(int64_t T, int runs) {
    const int64_t N = D, P = D, G = 1;
    struct ggml_context *ctx =
        make_ctx(bytes_f32(N * P * H) + bytes_f32(P * H * T) + bytes_f32(H * T) + bytes_f32(H) +
                     2 * bytes_f32(N * G * T) + 64 + bytes_f32(P * H * T + N * P * H),
                 10);
    struct ggml_tensor *s = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, N, P, H, 1);
    struct ggml_tensor *x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, P, H, T, 1);
    struct ggml_tensor *dt = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, H, T, 1);
    struct ggml_tensor *A = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, H);
    struct ggml_tensor *Bm = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, N, G, T, 1);
    struct ggml_tensor *Cm = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, N, G, T, 1);
    struct ggml_tensor *ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 1);
    memset(s->data, 0, ggml_nbytes(s));
    fill_normal(x->data, P * H * T, 1.0f);
    fill_normal(dt->data, H * T, 1.0f);
    for (int h = 0; h < H; h++) ((float *)A->data)[h] = -1.0f / 16.0f;
    fill_normal(Bm->data, N * G * T, 1.0f);
    fill_normal(Cm->data, N * G * T, 1.0f / sqrtf((float)N));
    ((int32_t *)ids->data)[0] = 0;
    struct ggml_tensor *out = ggml_ssm_scan(ctx, s, x, dt, A, Bm, Cm, ids, 1);
    double ms = time_graph(ctx, out, runs, 0);
    ggml_free(ctx);
    return ms;
}

// Gated delta net. q, k: [D, H, T, 1]; v: [D, H, T, 1]; g, beta: [1, H, T, 1];
// state: [D, D, H, 1].  Output: [D*H, T + D] (y, then the final state).
static double run_gdn(int64_t T, int runs) {
    int64_t n = (int64_t)D * H * T;
    struct ggml_context *ctx = make_ctx(bytes_f32(3 * n) + 2 * bytes_f32(H * T) +
                                            bytes_f32((int64_t)D * D * H) +
                                            bytes_f32((int64_t)D * H * (T + D)),
                                        10);
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, H, T, 1);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, H, T, 1);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, H, T, 1);
    struct ggml_tensor *g = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, H, T, 1);
    struct ggml_tensor *beta = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, H, T, 1);
    struct ggml_tensor *s = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, D, H, 1);
    fill_normal(q->data, n, 1.0f);
    fill_normal(k->data, n, 1.0f);
    l2norm_rows(q->data, H * T, D);
    l2norm_rows(k->data, H * T, D);
    fill_normal(v->data, n, 1.0f);
    fill_logdecay(g->data, H * T);
    float *b = beta->data;
    for (int64_t i = 0; i < H * T; i++) b[i] = 1.0f / (1.0f + expf(-rng_normal()));
    memset(s->data, 0, ggml_nbytes(s));
    struct ggml_tensor *out = ggml_gated_delta_net(ctx, q, k, v, g, beta, s, 1);
    double ms = time_graph(ctx, out, runs, 0);
    ggml_free(ctx);
    return ms;
}

// Causal flash attention. q: [D, T, H, 1] f32; k, v: [D, T, H, 1] (f16 or
// f32, not transposed); mask: [T_kv, T_q] f16.  Output: [D, H, T, 1].
static double run_fa(int64_t T, enum ggml_type kv_type, int runs) {
    int64_t n = (int64_t)D * H * T;
    size_t kv_bytes = (size_t)n * ggml_type_size(kv_type);
    struct ggml_context *ctx = make_ctx(bytes_f32(n) + 2 * kv_bytes + (size_t)T * T * sizeof(ggml_fp16_t) +
                                            bytes_f32(n),
                                        8);
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, T, H, 1);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, kv_type, D, T, H, 1);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, kv_type, D, T, H, 1);
    struct ggml_tensor *mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, T, T);
    fill_normal(q->data, n, 1.0f);
    float *tmp = malloc(bytes_f32(n));
    struct ggml_tensor *kv[2] = {k, v};
    for (int i = 0; i < 2; i++) {
        fill_normal(tmp, n, 1.0f);
        if (kv_type == GGML_TYPE_F16)
            ggml_fp32_to_fp16_row(tmp, kv[i]->data, n);
        else
            memcpy(kv[i]->data, tmp, bytes_f32(n));
    }
    free(tmp);
    ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
    ggml_fp16_t *m = mask->data;
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < T; j++) m[i * T + j] = j <= i ? zero : ninf;
    struct ggml_tensor *out = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f / sqrtf((float)D), 0.0f, 0.0f);
    // default precision: the CPU path accumulates in f32 either way
    double ms = time_graph(ctx, out, runs, 0);
    ggml_free(ctx);
    return ms;
}

// ---------------------------------------------------------------- main

static int want(const char *ops, const char *name) {
    size_t n = strlen(name);
    for (const char *p = ops; (p = strstr(p, name)) != NULL; p += n)
        if ((p == ops || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: ggml_anchor [T] [-t threads] [-r runs] [--fa-T T] [--kv f16|f32]\n"
                    "                   [--ops gla,ssm_scan,gdn,fa,gla_decode16]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int64_t T = 8192, T_fa = -1;
    int runs_set = 0;
    enum ggml_type kv_type = GGML_TYPE_F16;
    const char *ops = "gla,ssm_scan,gdn,fa,gla_decode16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-t") && i + 1 < argc) g_threads = atoi(argv[++i]);
        else if (!strcmp(a, "-r") && i + 1 < argc) g_runs = atoi(argv[++i]), runs_set = 1;
        else if (!strcmp(a, "--fa-T") && i + 1 < argc) T_fa = atoll(argv[++i]);
        else if (!strcmp(a, "--ops") && i + 1 < argc) ops = argv[++i];
        else if (!strcmp(a, "--kv") && i + 1 < argc) {
            const char *t = argv[++i];
            if (!strcmp(t, "f16")) kv_type = GGML_TYPE_F16;
            else if (!strcmp(t, "f32")) kv_type = GGML_TYPE_F32;
            else usage();
        } else if (a[0] >= '0' && a[0] <= '9') T = atoll(a);
        else usage();
    }
    if (T_fa < 0) T_fa = T;
    if (T <= 0 || g_threads <= 0 || g_runs <= 0) usage();

    ggml_cpu_init();
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(g_threads);
    g_pool = ggml_threadpool_new(&tpp);
    g_evict = malloc(g_evict_n);
    memset(g_evict, 0, g_evict_n);

    printf("# ggml %s (commit %s), %d threads, f32, B=1 H=%d D=%d; AVX2=%d FMA=%d AVX512=%d F16C=%d\n",
           ggml_version(), ggml_commit(), g_threads, H, D, ggml_cpu_has_avx2(), ggml_cpu_has_fma(),
           ggml_cpu_has_avx512(), ggml_cpu_has_f16c());
    printf("# %-14s %6s %10s %8s\n", "op", "T", "ms", "GFLOP/s");

    const double rec_flop = 4.0 * 1 * H * (double)T * D * D;
    if (want(ops, "gla")) report("gla", T, run_gla(T, 1, g_runs, 0), rec_flop);
    if (want(ops, "ssm_scan")) report("ssm_scan", T, run_ssm_scan(T, g_runs), rec_flop);
    if (want(ops, "gdn")) report("gdn", T, run_gdn(T, g_runs), rec_flop);
    if (want(ops, "fa") && T_fa > 0) {
        int r = runs_set ? g_runs : 3;
        char name[32];
        snprintf(name, sizeof name, "fa_causal_%s", kv_type == GGML_TYPE_F16 ? "kvf16" : "kvf32");
        report(name, T_fa, run_fa(T_fa, kv_type, r), 2.0 * 1 * H * (double)T_fa * T_fa * D);
    }
    if (want(ops, "gla_decode16")) {
        int r = runs_set ? g_runs : 51;
        // T = 16 tokens split over 16 sequences = one token per sequence
        report("gla_decode16", 1, run_gla(DECODE_SEQS, DECODE_SEQS, r, 1),
               4.0 * DECODE_SEQS * H * 1.0 * D * D);
    }

    ggml_threadpool_free(g_pool);
    free(g_evict);
    return 0;
}
