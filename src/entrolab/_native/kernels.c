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

#define BLK 4096 /* 16 KiB of float32: the block stays in L1 between the two passes */

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

#include "vmath.h"

static inline float exp_neg(float x) { return x < -87.0f ? 0.0f : exp_core(x); }

/* AVX-512 version of the forward exp-and-sum loop (used when the compiler targets AVX-512F): the same reduction and
 * polynomial as exp_core(), with vscalefps for the 2^n and two accumulators, about half the instructions of the
 * auto-vectorised loop.  Handles whole 16-lane groups; the caller finishes the tail with the portable loop. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512_FWD 1
static inline __m512 exp16(__m512 x) { /* exact 0 below -87, like exp_neg(); the mask makes it free */
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(live, p, n);
}
static inline __m512 load16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 load16_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#ifdef ENTROLAB_HAVE_FLOAT16
static inline __m512 load16_f16(const _Float16 *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
#endif
/* sum e and sum e * t over the first (n / 16) * 16 entries, t = max((x - m) * inv_t, CLAMP_LO); returns entries done */
#define DEFINE_FWD16(NAME, T)                                                                                  \
static inline int64_t fwd16_##NAME(const T *x, int64_t n, float m, float inv_t, float *bs, float *bd) {        \
    const __m512 vm = _mm512_set1_ps(m), vi = _mm512_set1_ps(inv_t), lo = _mm512_set1_ps(CLAMP_LO);           \
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps(); \
    int64_t j = 0;                                                                                             \
    for (; j + 32 <= n; j += 32) {                                                                             \
        __m512 t0 = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(load16_##NAME(x + j), vm), vi), lo);              \
        __m512 t1 = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(load16_##NAME(x + j + 16), vm), vi), lo);         \
        __m512 e0 = exp16(t0), e1 = exp16(t1);                                                                 \
        s0 = _mm512_add_ps(s0, e0);                                                                            \
        s1 = _mm512_add_ps(s1, e1);                                                                            \
        d0 = _mm512_fmadd_ps(e0, t0, d0);                                                                      \
        d1 = _mm512_fmadd_ps(e1, t1, d1);                                                                      \
    }                                                                                                          \
    for (; j + 16 <= n; j += 16) {                                                                             \
        __m512 t0 = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(load16_##NAME(x + j), vm), vi), lo);              \
        __m512 e0 = exp16(t0);                                                                                 \
        s0 = _mm512_add_ps(s0, e0);                                                                            \
        d0 = _mm512_fmadd_ps(e0, t0, d0);                                                                      \
    }                                                                                                          \
    *bs = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));                                                         \
    *bd = _mm512_reduce_add_ps(_mm512_add_ps(d0, d1));                                                         \
    return j;                                                                                                  \
}
DEFINE_FWD16(f32, float)
DEFINE_FWD16(bf16, uint16_t)
#ifdef ENTROLAB_HAVE_FLOAT16
DEFINE_FWD16(f16, _Float16)
#endif
#define FWD16(NAME, x, n, m, inv_t, bs, bd) fwd16_##NAME(x, n, m, inv_t, bs, bd)
#else
#define FWD16(NAME, x, n, m, inv_t, bs, bd) ((void)(x), (void)(n), (void)(m), (void)(inv_t), (void)(bs), (void)(bd), (int64_t)0)
#endif

#define DEFINE_KERNELS(NAME, T, LOAD, STORE)                                                                   \
void entrolab_stats_##NAME(const T *base, const int64_t *off, int64_t rows, int64_t V, float inv_t,           \
                           float *m_out, float *s_out, float *d_out, int32_t *bad_out) {                      \
    for (int64_t i = 0; i < rows; ++i) {                                                                       \
        const T *x = base + off[i];                                                                            \
        float m = -INFINITY, s = 0.0f, d = 0.0f;                                                               \
        int32_t bad = 0;                                                                                       \
        for (int64_t j0 = 0; j0 < V; j0 += BLK) {                                                              \
            const T *xb = x + j0;                                                                              \
            int64_t n = V - j0 < BLK ? V - j0 : BLK;                                                           \
            /* pass 1 over the block (from memory): its max, and a count of NaN / +inf entries.  The count tests  \
             * the exponent bits as integers: float tests such as v * 0 != v * 0 are folded away by the compiler  \
             * under -fassociative-math, integer ones cannot be.  -inf (0xff800000) is allowed. */             \
            float bm = -INFINITY;                                                                              \
            int32_t bb = 0;                                                                                    \
            _Pragma("omp simd reduction(max:bm) reduction(+:bb)")                                              \
            for (int64_t j = 0; j < n; ++j) {                                                                  \
                float v = LOAD(xb[j]);                                                                         \
                uint32_t u;                                                                                    \
                memcpy(&u, &v, 4);                                                                             \
                bb += ((u & 0x7f800000u) == 0x7f800000u) & (u != 0xff800000u);                                 \
                bm = v > bm ? v : bm;                                                                          \
            }                                                                                                  \
            if (bb) { bad += bb; continue; }                                                                   \
            if (bm > m) {                                                                                      \
                if (s > 0.0f) {                                                                                \
                    float r = expf((m - bm) * inv_t);                                                          \
                    d = r * (d + s * (m - bm) * inv_t);                                                        \
                    s = r * s;                                                                                 \
                }                                                                                              \
                m = bm;                                                                                        \
            }                                                                                                  \
            if (m == -INFINITY) continue;                                                                      \
            /* pass 2 over the block (now in L1): exp and both sums */                                         \
            float bs = 0.0f, bd = 0.0f;                                                                        \
            int64_t done = FWD16(NAME, xb, n, m, inv_t, &bs, &bd);                                             \
            _Pragma("omp simd reduction(+:bs,bd)")                                                             \
            for (int64_t j = done; j < n; ++j) {                                                               \
                float t = (LOAD(xb[j]) - m) * inv_t;                                                           \
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
