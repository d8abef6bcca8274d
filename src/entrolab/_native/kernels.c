/* entrolab native CPU kernels: one-pass softmax statistics and the logits gradient.
 *
 * Why this file exists: on a CPU the log-prob + entropy of materialised logits is bound by one read of the logits
 * and one exp per element.  Eager PyTorch needs five or six passes over each row (max, subtract, exp, sum, dot);
 * these loops do one online pass per row (blockwise max, then exp and both sums while the block is in L1), and one
 * pass for the gradient.  They are compiled on first use by entrolab/_native/__init__.py and called through ctypes;
 * when no C compiler is available, entrolab uses its pure-PyTorch chunked path instead, which computes the same
 * quantities.
 *
 * Conventions: rows are contiguous along the vocabulary; row i starts at base + off[i] elements.  All statistics
 * are float32.  For a raw row x and inv_t = 1 / temperature, with t_j = (x_j - m) * inv_t:
 *   m = max_j x_j (raw),  s = sum_j exp(t_j),  d = sum_j exp(t_j) * t_j
 * so that lse = m * inv_t + log s and H = log s - d / s.  Subtracting the raw maximum before scaling keeps float32
 * precision for shifted rows; terms with x_j = -inf contribute exactly 0 (no 0 * inf products).
 * bad[i] counts NaN and +inf entries of the row (the caller turns it into a ValueError).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLK 512

typedef uint16_t bf16_t;

static inline float bf16_to_f32(bf16_t v) {
    uint32_t u = ((uint32_t)v) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (bf16_t)(u >> 16);
}

/* exp(x) for x <= 0 (callers clamp below at CLAMP_LO); exact 0 below the float32 normal range.  Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 Taylor polynomial: relative error < 2e-7. */
#define CLAMP_LO (-100.0f)
static inline float exp_neg(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float n = floorf(x * log2e + 0.5f);
    float r = x - n * ln2_hi - n * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return x < -87.0f ? 0.0f : p * scale;
}

#define DEFINE_KERNELS(NAME, T, LOAD, STORE)                                                                   \
void entrolab_stats_##NAME(const T *base, const int64_t *off, int64_t rows, int64_t V, float inv_t,           \
                           float *m_out, float *s_out, float *d_out, int32_t *bad_out) {                      \
    float buf[BLK];                                                                                            \
    for (int64_t i = 0; i < rows; ++i) {                                                                       \
        const T *x = base + off[i];                                                                            \
        float m = -INFINITY, s = 0.0f, d = 0.0f;                                                               \
        int32_t bad = 0;                                                                                       \
        for (int64_t j0 = 0; j0 < V; j0 += BLK) {                                                              \
            int64_t n = V - j0 < BLK ? V - j0 : BLK;                                                           \
            float bm = -INFINITY;                                                                              \
            int32_t bb = 0;                                                                                    \
            _Pragma("omp simd reduction(max:bm) reduction(+:bb)")                                              \
            for (int64_t j = 0; j < n; ++j) {                                                                  \
                float v = LOAD(x[j0 + j]);                                                                     \
                buf[j] = v;                                                                                    \
                bb += (v != v) | (v > 3.4028234e38f);                                                          \
                bm = v > bm ? v : bm;                                                                          \
            }                                                                                                  \
            bad += bb;                                                                                         \
            if (bb) continue;                                                                                  \
            if (bm > m) {                                                                                      \
                if (s > 0.0f) {                                                                                \
                    float r = expf((m - bm) * inv_t);                                                          \
                    d = r * (d + s * (m - bm) * inv_t);                                                        \
                    s = r * s;                                                                                 \
                }                                                                                              \
                m = bm;                                                                                        \
            }                                                                                                  \
            if (m == -INFINITY) continue;                                                                      \
            float bs = 0.0f, bd = 0.0f;                                                                        \
            _Pragma("omp simd reduction(+:bs,bd)")                                                             \
            for (int64_t j = 0; j < n; ++j) {                                                                  \
                float t = (buf[j] - m) * inv_t;                                                                \
                t = t < CLAMP_LO ? CLAMP_LO : t;                                                               \
                float e = exp_neg(t);                                                                          \
                bs += e;                                                                                       \
                bd += e * t;                                                                                   \
            }                                                                                                  \
            s += bs;                                                                                           \
            d += bd;                                                                                           \
        }                                                                                                      \
        m_out[i] = m;                                                                                          \
        s_out[i] = s;                                                                                          \
        d_out[i] = d;                                                                                          \
        bad_out[i] = bad;                                                                                      \
    }                                                                                                          \
}                                                                                                              \
                                                                                                               \
/* dz_j = inv_t * (g_lp * [j == y] - p_j * (g_lp + g_h * (log p_j + H))),  log p_j = (x_j - m) inv_t - log s.  \
 * out may alias the input (in-place on a scratch tile).  label < 0 means no log-prob term for the row. */     \
void entrolab_grad_##NAME(const T *base, const int64_t *off, T *out, const int64_t *out_off, int64_t rows,    \
                          int64_t V, float inv_t, const float *mx, const float *logs, const float *ent,        \
                          const float *g_lp, const float *g_h, const int64_t *label) {                         \
    for (int64_t i = 0; i < rows; ++i) {                                                                       \
        const T *x = base + off[i];                                                                            \
        T *o = out + out_off[i];                                                                               \
        const float mi = mx[i], l = logs[i], h = ent[i], a = g_lp[i], b = g_h[i];                              \
        const float c = a + b * h;                                                                             \
        const int64_t y = label[i];                                                                            \
        _Pragma("omp simd")                                                                                    \
        for (int64_t j = 0; j < V; ++j) {                                                                      \
            float t = (LOAD(x[j]) - mi) * inv_t - l;                                                           \
            t = t < CLAMP_LO ? CLAMP_LO : t;                                                                   \
            float p = exp_neg(t);                                                                              \
            /* the one-hot term is added before rounding to T: for p ~ 1 the two terms cancel */               \
            float onehot = j == y ? a : 0.0f;                                                                  \
            o[j] = STORE(inv_t * (onehot - p * (c + b * t)));                                                  \
        }                                                                                                      \
    }                                                                                                          \
}

#define ID(v) (v)
DEFINE_KERNELS(f32, float, ID, ID)
DEFINE_KERNELS(bf16, bf16_t, bf16_to_f32, f32_to_bf16)
#ifdef ENTROLAB_HAVE_FLOAT16
#define H2F(v) ((float)(v))
#define F2H(v) ((_Float16)(v))
DEFINE_KERNELS(f16, _Float16, H2F, F2H)
#endif

int entrolab_abi_version(void) { return 3; }
