/* entrolab native CPU kernels for the policy losses' per-token statistics (float32).
 *
 * Why this file exists: at 64k tokens a policy loss is a few dozen elementwise passes, and on a CPU each eager PyTorch
 * pass costs 10-40 us of dispatch and memory traffic for about 1 us of arithmetic.  The entropy interventions add
 * their own statistics on top of PPO's surrogate (STEER's |Omega| and weights, HAPO's normalised log-entropy and
 * per-token clip range, AEPO-EB's entropy z-score, the Cov(log pi, A) of Clip-Cov and KL-Cov); these loops compute
 * each in one or two fused passes.  entrolab/losses/_fast.py calls them through ctypes and falls back to the PyTorch
 * path (which computes the same numbers, and which the tests compare against) when they are unavailable.
 *
 * Conventions: tensors are (B, T) row-major and contiguous; the mask is one byte per token (0 padding, else valid);
 * the advantage of token (i, t) is adv[i * ars + t * ats] (ars = 1, ats = 0 for per-sequence advantages; abuf is then
 * a caller-provided scratch row of T floats, see adv_row).  Values at
 * padding may be anything (NaN included): every output is exactly 0 there, and no statistic reads them.  The loops
 * are branch-free so that the compiler vectorises them; exp and log are the polynomial versions below (relative
 * error about 2e-7), not libm calls, for the same reason.  Measured lessons: one `if` on a knob inside a loop, or a
 * strided (broadcast) load of the advantages, kept a whole loop scalar (STEER's kernel went from 1 ms to 73 us at 64k
 * tokens once both were gone); and counts kept as int64 conditional reductions in these simd loops came out wrong
 * (cause not pinned down), so every count is a float sum, exact below 2^24 tokens a row.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vmath.h"

/* min and max as plain compares (vminps/vmaxps); fminf/fmaxf are library calls unless -ffinite-math-only.  The
 * operands are never NaN where the result is used (inputs are validated, padding is selected away). */
static inline float fmin_(float a, float b) { return a < b ? a : b; }
static inline float fmax_(float a, float b) { return a > b ? a : b; }

/* exp for the clamped arguments below (within [-87, 88]): the shared polynomial of vmath.h */
static inline float vexp(float x) { return exp_core(x); }

static inline float vlog(float x) { /* log(x) for finite x > 0 (normal numbers): x = m 2^e, m in [sqrt(1/2), sqrt(2)) */
    int32_t bits;
    memcpy(&bits, &x, 4);
    int32_t e = ((bits >> 23) & 0xff) - 127;
    int32_t mb = (bits & 0x007fffff) | 0x3f800000; /* m in [1, 2) */
    float m;
    memcpy(&m, &mb, 4);
    int32_t big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e += big;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p + (float)e * 0.693147180559945309f;
}

/* HAPO's ell = log(max(H, 1e-8)) of a valid token; 0 at padding (the one expression every HAPO pass recomputes) */
static inline float hapo_ell(float h, uint8_t valid) { return valid ? vlog(fmax_(valid ? h : 1.0f, 1e-8f)) : 0.0f; }

static inline float finite_or_zero(float x) { /* NaN and +-inf -> 0, branch-free */
    uint32_t u;
    memcpy(&u, &x, 4);
    return ((u & 0x7f800000u) != 0x7f800000u) ? x : 0.0f;
}

/* Row i of the advantages as a contiguous array: the row itself for per-token advantages (ats = 1), else buf filled
 * with the sequence's advantage.  A strided or broadcast load in the loops below would keep them scalar. */
static inline const float *adv_row(const float *adv, int64_t i, int64_t ars, int64_t ats, int64_t T, float *buf) {
    if (ats) return adv + i * ars;
    const float v = adv[i * ars];
    for (int64_t t = 0; t < T; t++) buf[t] = v;
    return buf;
}

/* Append the valid entries of a row to packed + n; returns the new n.  rc is the row's valid count and last its last
 * valid position (-1 for none), both from the row's vectorised loop: when the valid entries are exactly a prefix (the
 * usual right-padded batch) this is one memcpy, else a scalar compaction (which stores one past the last entry). */
static inline int64_t pack_row(float *packed, int64_t n, const float *row, const uint8_t *mk, int64_t T, float rc,
                               float last) {
    if (last + 1.0f == rc) {
        memcpy(packed + n, row, (size_t)rc * sizeof(float));
        return n + (int64_t)rc;
    }
    for (int64_t t = 0; t < T; t++) {
        packed[n] = row[t];
        n += mk[t] ? 1 : 0;
    }
    return n;
}

int entrolab_losses_abi_version(void) { return 1; }

/* STEER (arXiv 2510.10150, eq. 9): |Omega_t| = |A / p_old x (1 - x) (log x + H)|, x = clamp(p, 1e-8, 1 - 1e-8),
 * p_old = clamp(exp(old), 1e-8, 1); weights w = clamp(exp(-k |Omega|), lmin, 1) with k = -log(lmin) / max(hi, 0.02)
 * (mode 0, "exp") or clamp(lmax - (|Omega| - lo)(lmax - lmin)/(hi - lo), lmin, lmax) (mode 1, "linear"; the midpoint
 * when hi == lo).  lo/hi are the min/max of |Omega| over valid tokens unless have_range.  Writes aw = A w (0 at
 * padding); mag is (B, T) scratch that holds |Omega| between the two passes; stats = [sum w, min w, lo, hi, valid
 * count] over valid tokens (min w = +inf without any). */
void entrolab_steer_f32(const float *lp, const float *old, const float *adv, int64_t ars, int64_t ats, float *abuf,
                        const float *ent, const uint8_t *mask, int64_t B, int64_t T, int32_t mode, float lmin,
                        float lmax, int32_t have_range, float lo_in, float hi_in, float *mag_out, float *aw,
                        double *stats) {
    float hi = 0.0f, lo = INFINITY;
    double count = 0.0;
    for (int64_t i = 0; i < B; i++) {
        const float *l = lp + i * T, *o = old + i * T, *h = ent + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        float *mag = mag_out + i * T;
        float rhi = 0.0f, rlo = INFINITY;
        float rc = 0.0f; /* per-row counts as floats: exact below 2^24 tokens a row, and vectorised like the sums */
#pragma omp simd reduction(max : rhi) reduction(min : rlo) reduction(+ : rc)
        for (int64_t t = 0; t < T; t++) {
            float v = mk[t] ? 1.0f : 0.0f;
            float lv = mk[t] ? l[t] : 0.0f, ov = mk[t] ? o[t] : 0.0f, hv = mk[t] ? h[t] : 0.0f;
            float av = mk[t] ? a[t] : 0.0f;
            /* x = clamp(exp(lp), 1e-8, 1 - 1e-8) (1 - 1e-8 is 1 in float32), so log x = clamp(lp, log 1e-8, 0) */
            float lx = fmin_(fmax_(lv, -18.420680744f), 0.0f);
            float x = fmin_(fmax_(vexp(lx), 1e-8f), 1.0f);
            float po = fmin_(fmax_(vexp(fmin_(fmax_(ov, -87.0f), 0.0f)), 1e-8f), 1.0f);
            float om = fabsf(finite_or_zero(av / po * x * (1.0f - x) * (lx + hv))) * v;
            mag[t] = om;
            rhi = fmax_(rhi, om);
            rlo = fmin_(rlo, mk[t] ? om : INFINITY);
            rc += mk[t] ? 1.0f : 0.0f;
        }
        hi = fmax_(hi, rhi);
        lo = fmin_(lo, rlo);
        count += rc;
    }
    if (have_range) {
        lo = lo_in;
        hi = hi_in;
    } else if (count == 0.0) {
        lo = 0.0f;
    }
    float k = -logf(lmin) / fmax_(hi, 0.02f), span = hi - lo;
    /* linear: lmax at lo down to lmin at hi, or the midpoint everywhere when hi == lo */
    float slope = span > 0.0f ? (lmax - lmin) / span : 0.0f, base = span > 0.0f ? lmax : 0.5f * (lmin + lmax);
    double wsum = 0.0;
    float wmin = INFINITY;
    for (int64_t i = 0; i < B; i++) {
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        const float *wr = mag_out + i * T;
        float *awr = aw + i * T;
        float rs = 0.0f, rmin = INFINITY;
#pragma omp simd reduction(+ : rs) reduction(min : rmin)
        for (int64_t t = 0; t < T; t++) {
            float m = wr[t];
            float we = fmin_(fmax_(vexp(fmax_(-k * m, -87.0f)), lmin), 1.0f);
            float wl = fmin_(fmax_(base - (m - lo) * slope, lmin), lmax);
            float wt = mode == 0 ? we : wl; /* both computed: a branch here would keep the loop scalar */
            awr[t] = mk[t] ? a[t] * wt : 0.0f;
            rs += mk[t] ? wt : 0.0f;
            rmin = fmin_(rmin, mk[t] ? wt : INFINITY);
        }
        wsum += rs;
        wmin = fmin_(wmin, rmin);
    }
    stats[0] = wsum;
    stats[1] = wmin;
    stats[2] = lo;
    stats[3] = hi;
    stats[4] = count;
}

/* HAPO, first pass (arXiv 2509.16591, sec. 3.1): ell = log(max(H, 1e-8)) at valid tokens (0 at padding) into row i of
 * ell at ell + i * ell_stride (ell_stride 0: a scratch row, when only the packed values are wanted);
 * the valid values, row-major, into packed (the pivot quantile is taken over them); stats = [valid count, sum ell,
 * sum ell^2, max ell, min ell, count of H < 0]. */
void entrolab_hapo_log_entropy_f32(const float *ent, const uint8_t *mask, int64_t B, int64_t T, float *ell,
                                   int64_t ell_stride, float *packed, double *stats) {
    double s1 = 0.0, s2 = 0.0;
    float mx = -INFINITY, mn = INFINITY;
    int64_t count = 0;
    double negative = 0.0;
    for (int64_t i = 0; i < B; i++) {
        const float *h = ent + i * T;
        const uint8_t *mk = mask + i * T;
        float *out = ell + i * ell_stride; /* ell_stride 0: one scratch row, only the packed values are kept */
        float r1 = 0.0f, r2 = 0.0f, rmx = -INFINITY, rmn = INFINITY;
        float rneg = 0.0f, rc = 0.0f, rlast = -1.0f;
#pragma omp simd reduction(+ : r1, r2, rneg, rc) reduction(max : rmx, rlast) reduction(min : rmn)
        for (int64_t t = 0; t < T; t++) {
            float hv = mk[t] ? h[t] : 1.0f;
            float e = hapo_ell(h[t], mk[t]);
            out[t] = e;
            r1 += e;
            r2 += e * e;
            rmx = fmax_(rmx, mk[t] ? e : -INFINITY);
            rmn = fmin_(rmn, mk[t] ? e : INFINITY);
            rneg += hv < 0.0f ? 1.0f : 0.0f;
            rc += mk[t] ? 1.0f : 0.0f;
            rlast = fmax_(rlast, mk[t] ? (float)t : -1.0f);
        }
        count = pack_row(packed, count, out, mk, T, rc, rlast);
        s1 += r1;
        s2 += r2;
        mx = fmax_(mx, rmx);
        mn = fmin_(mn, rmn);
        negative += rneg;
    }
    stats[0] = (double)count;
    stats[1] = s1;
    stats[2] = s2;
    stats[3] = mx;
    stats[4] = mn;
    stats[5] = negative;
}

/* Moments of valid x: stats = [count, sum x, sum x^2] (double accumulation; AEPO-EB's entropy mean and std). */
void entrolab_masked_sums_f32(const float *x, const uint8_t *mask, int64_t B, int64_t T, double *stats) {
    double s1 = 0.0, s2 = 0.0, count = 0.0;
    for (int64_t i = 0; i < B; i++) {
        const float *xr = x + i * T;
        const uint8_t *mk = mask + i * T;
        double r1 = 0.0, r2 = 0.0, rc = 0.0;
#pragma omp simd reduction(+ : r1, r2, rc)
        for (int64_t t = 0; t < T; t++) {
            float xv = mk[t] ? xr[t] : 0.0f;
            r1 += xv;
            r2 += (double)xv * (double)xv;
            rc += mk[t] ? 1.0 : 0.0;
        }
        s1 += r1;
        s2 += r2;
        count += rc;
    }
    stats[0] = count;
    stats[1] = s1;
    stats[2] = s2;
}

/* Spread of HAPO's ell = log(max(H, 1e-8)) (recomputed from the entropy) around a centre c: stats = [sum (ell - c)^2,
 * max (ell - c), min (ell - c)] over valid tokens (its scale and the extremes of the normalised entropy, once the pivot
 * is known; -inf / +inf without valid tokens). */
void entrolab_sq_dev_f32(const float *ent, const uint8_t *mask, int64_t B, int64_t T, float c, double *stats) {
    double sq = 0.0;
    float mx = -INFINITY, mn = INFINITY;
    for (int64_t i = 0; i < B; i++) {
        const float *xr = ent + i * T;
        const uint8_t *mk = mask + i * T;
        double rs = 0.0;
        float rmx = -INFINITY, rmn = INFINITY;
#pragma omp simd reduction(+ : rs) reduction(max : rmx) reduction(min : rmn)
        for (int64_t t = 0; t < T; t++) {
            float d = mk[t] ? hapo_ell(xr[t], mk[t]) - c : 0.0f;
            rs += (double)d * (double)d;
            rmx = fmax_(rmx, mk[t] ? d : -INFINITY);
            rmn = fmin_(rmn, mk[t] ? d : INFINITY);
        }
        sq += rs;
        mx = fmax_(mx, rmx);
        mn = fmin_(mn, rmn);
    }
    stats[0] = sq;
    stats[1] = mx;
    stats[2] = mn;
}

/* ------------------------------------------------------------------------------------------------------------------
 * Clip-Cov and KL-Cov (arXiv 2505.22617, eqs. 11-13): the per-token centred product Cov_t = (A_t - mean A)(lp_t - mean
 * lp) over valid tokens.  No dense float (B, T) tensor is written: the selections are a few hundred tokens of 64k, so
 * the kernels return the chosen flat indices (a heap for KL-Cov's usual k), the valid covariances packed (for the
 * order statistic of a large k), or one flag byte per token (Clip-Cov's candidates), and the losses act on the chosen
 * tokens only.  The centre is the float32 cast of the double mean, and Cov_t is (a - ma) * (l - ml) in float32, the
 * PyTorch path's arithmetic.
 */

/* Sums over valid tokens: stats = [count, sum A, sum lp]. */
void entrolab_cov_sums_f32(const float *lp, const float *adv, int64_t ars, int64_t ats, float *abuf, const uint8_t *mask,
                           int64_t B, int64_t T, double *stats) {
    double sa = 0.0, sl = 0.0, count = 0.0;
    for (int64_t i = 0; i < B; i++) {
        const float *l = lp + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        double ra = 0.0, rl = 0.0;
        float rc = 0.0f;
#pragma omp simd reduction(+ : ra, rl, rc)
        for (int64_t t = 0; t < T; t++) {
            ra += mk[t] ? (double)a[t] : 0.0;
            rl += mk[t] ? (double)l[t] : 0.0;
            rc += mk[t] ? 1.0f : 0.0f;
        }
        sa += ra;
        sl += rl;
        count += rc;
    }
    stats[0] = count;
    stats[1] = sa;
    stats[2] = sl;
}

/* The valid Cov_t, row-major, into packed (valid count entries); stats = [sum Cov]. */
void entrolab_cov_pack_f32(const float *lp, const float *adv, int64_t ars, int64_t ats, float *abuf,
                           const uint8_t *mask, int64_t B, int64_t T, float ma, float ml, float *row, float *packed,
                           double *stats) {
    double s = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < B; i++) {
        const float *l = lp + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        float rs = 0.0f, rc = 0.0f, rlast = -1.0f;
#pragma omp simd reduction(+ : rs, rc) reduction(max : rlast)
        for (int64_t t = 0; t < T; t++) {
            float c = mk[t] ? (a[t] - ma) * (l[t] - ml) : 0.0f;
            row[t] = c;
            rs += c;
            rc += mk[t] ? 1.0f : 0.0f;
            rlast = fmax_(rlast, mk[t] ? (float)t : -1.0f);
        }
        n = pack_row(packed, n, row, mk, T, rc, rlast);
        s += rs;
    }
    stats[0] = s;
}

/* KL-Cov's selection: the flat indices of the k valid tokens with the largest Cov_t, ties at the k-th value kth broken
 * by row-major position: every token with Cov > kth (in order), then tokens with Cov == kth (in order) up to k.
 * Returns the number written (k, or fewer when fewer tokens are valid). */
int64_t entrolab_cov_top_f32(const float *lp, const float *adv, int64_t ars, int64_t ats, float *abuf,
                             const uint8_t *mask, int64_t B, int64_t T, float ma, float ml, float kth, int64_t k,
                             float *row, int64_t *idx) {
    int64_t n = 0;
    for (int64_t pass = 0; pass < 2 && n < k; pass++) {
        for (int64_t i = 0; i < B && n < k; i++) {
            const float *l = lp + i * T;
            const float *a = adv_row(adv, i, ars, ats, T, abuf);
            const uint8_t *mk = mask + i * T;
            float rt = 0.0f;
#pragma omp simd reduction(+ : rt)
            for (int64_t t = 0; t < T; t++) {
                float c = (a[t] - ma) * (l[t] - ml);
                float hit = pass == 0 ? (c > kth ? 1.0f : 0.0f) : (c == kth ? 1.0f : 0.0f);
                row[t] = mk[t] ? hit : 0.0f;
                rt += mk[t] ? hit : 0.0f;
            }
            if (rt == 0.0f) continue;
            for (int64_t t = 0; t < T && n < k; t++) {
                idx[n] = i * T + t;
                n += row[t] != 0.0f ? 1 : 0;
            }
        }
    }
    return n;
}

/* Clip-Cov's candidates: the valid tokens that PPO's clip left unclipped (clipped, the surrogate's 0/1 indicator that
 * the clipped branch is strictly larger, 0 at padding) and whose Cov_t lies in the open window (lb, ub), with the
 * centre computed here (have_center 0, a first pass) or given.  Writes flags (one byte per token, 1 for a candidate)
 * and each row's candidate count into rows; stats = [valid count, sum Cov over valid tokens]; returns the candidate
 * count.  (No index list: Clip-Cov draws a handful of ranks among the candidates, and entrolab_flag_ranks_u8 finds
 * those, which costs far less than listing 10k candidates one scalar store at a time.) */
int64_t entrolab_cov_candidates_f32(const float *lp, const float *clipped, const float *adv, int64_t ars, int64_t ats,
                                    float *abuf, const uint8_t *mask, int64_t B, int64_t T, int32_t have_center,
                                    float ma_in, float ml_in, float lb, float ub, uint8_t *flags, int64_t *rows,
                                    double *stats) {
    double cs[3];
    entrolab_cov_sums_f32(lp, adv, ars, ats, abuf, mask, B, T, cs);
    const double nn = cs[0] > 1.0 ? cs[0] : 1.0;
    const float ma = have_center ? ma_in : (float)(cs[1] / nn), ml = have_center ? ml_in : (float)(cs[2] / nn);
    double s = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < B; i++) {
        const float *l = lp + i * T, *cl = clipped + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        uint8_t *fl = flags + i * T;
        float rs = 0.0f, rn = 0.0f;
#pragma omp simd reduction(+ : rs, rn)
        for (int64_t t = 0; t < T; t++) {
            float lv = mk[t] ? l[t] : 0.0f, av = mk[t] ? a[t] : 0.0f;
            float c = mk[t] ? (av - ma) * (lv - ml) : 0.0f;
            float cand = (mk[t] ? 1.0f : 0.0f) * (1.0f - cl[t]) * (c > lb ? 1.0f : 0.0f) * (c < ub ? 1.0f : 0.0f);
            fl[t] = (uint8_t)cand;
            rs += c;
            rn += cand;
        }
        s += rs;
        rows[i] = (int64_t)rn;
        n += (int64_t)rn;
    }
    stats[0] = cs[0];
    stats[1] = s;
    return n;
}

/* The flat index of the r-th set flag (0-based, row-major) for each of the k ranks, given each row's count of set flags
 * (rows); ranks must be < the total.  Rows are skipped by their counts, so the cost is B plus a scan of the rows that
 * hold a rank. */
void entrolab_flag_ranks_u8(const uint8_t *flags, const int64_t *rows, int64_t B, int64_t T, const int64_t *ranks,
                            int64_t k, int64_t *out) {
    for (int64_t j = 0; j < k; j++) {
        int64_t r = ranks[j], i = 0;
        while (i < B && r >= rows[i]) r -= rows[i++];
        out[j] = -1;
        if (i == B) continue;
        const uint8_t *fl = flags + i * T;
        for (int64_t t = 0; t < T; t++) {
            if (fl[t] && r-- == 0) {
                out[j] = i * T + t;
                break;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------------
 * The 80/20 forking-token mask (arXiv 2506.01939, eq. 6).
 */

/* The valid x, row-major, into packed; stats = [valid count, count of non-finite valid x, sum of the finite valid x]. */
void entrolab_pack_valid_f32(const float *x, const uint8_t *mask, int64_t B, int64_t T, float *packed, double *stats) {
    int64_t n = 0;
    double bad = 0.0, sum = 0.0;
    for (int64_t i = 0; i < B; i++) {
        const float *xr = x + i * T;
        const uint8_t *mk = mask + i * T;
        /* float row sums: a double accumulator next to these float ones (with a short-circuit && in its condition)
         * gave wrong sums under gcc 12.2 -O3 for T = 129; the cause was not pinned down */
        float rb = 0.0f, rc = 0.0f, rlast = -1.0f, rs = 0.0f;
#pragma omp simd reduction(+ : rb, rc, rs) reduction(max : rlast)
        for (int64_t t = 0; t < T; t++) {
            uint32_t u;
            memcpy(&u, &xr[t], 4);
            float ok = ((mk[t] != 0) & ((u & 0x7f800000u) != 0x7f800000u)) ? 1.0f : 0.0f;
            rb += mk[t] ? 1.0f - ok : 0.0f;
            rc += mk[t] ? 1.0f : 0.0f;
            rs += ok != 0.0f ? xr[t] : 0.0f;
            rlast = fmax_(rlast, mk[t] ? (float)t : -1.0f);
        }
        n = pack_row(packed, n, xr, mk, T, rc, rlast);
        bad += rb;
        sum += rs;
    }
    stats[0] = (double)n;
    stats[1] = bad;
    stats[2] = sum;
}

/* keep = valid and x >= tau, one byte per token (a torch.bool tensor); returns the kept count. */
int64_t entrolab_ge_mask_f32(const float *x, const uint8_t *mask, int64_t B, int64_t T, float tau, uint8_t *keep) {
    int64_t n = 0;
    for (int64_t i = 0; i < B; i++) {
        const float *xr = x + i * T;
        const uint8_t *mk = mask + i * T;
        uint8_t *kr = keep + i * T;
        float rn = 0.0f;
#pragma omp simd reduction(+ : rn)
        for (int64_t t = 0; t < T; t++) {
            int v = (mk[t] != 0) & (xr[t] >= tau);
            kr[t] = (uint8_t)v;
            rn += v ? 1.0f : 0.0f;
        }
        n += (int64_t)rn;
    }
    return n;
}

/* ------------------------------------------------------------------------------------------------------------------
 * Fused surrogates of the two interventions that change PPO's clip itself: HAPO's per-token clip range with its
 * ratio-zone advantage, and AEPO-EB's stop-gradient high clip on entropy-aware advantages.  Each computes its
 * per-token knobs and PPO's clipped surrogate (dual-clip included) in one pass, writing only the loss and the gradient
 * coefficient d loss / d logp; the arithmetic is entrolab.losses.ppo._PPOSurrogate's, token by token.
 */

typedef struct {
    float loss, coef, log_ratio, ratio, clipped, lower, top;
} ppo_tok;

/* d = lp - old (0 at padding), v = 1 valid / 0 padding, av = advantage (0 at padding), bounds lo_b <= hi_b; dual > 0
 * enables dual-clip with constant c; topg keeps (1 + eps_high)(-A) as the gradient of top-clipped tokens. */
static inline ppo_tok ppo_token(float d, float v, float av, float lo_b, float hi_b, int dual, float c, int topg) {
    ppo_tok o;
    float lr = fmin_(fmax_(d, -20.0f), 20.0f);
    float r = vexp(lr) * v;
    float na = -av;
    float unc = na * r;
    float clp = na * fmin_(fmax_(r, lo_b), hi_b);
    float pt = fmax_(unc, clp);
    float sel = pt > unc ? 1.0f : 0.0f;
    float keep = 1.0f - sel;
    float top = topg ? sel * (r > hi_b ? 1.0f : 0.0f) : 0.0f;
    float lower = 0.0f;
    if (dual) {
        float fl = fabsf(av) * c;
        lower = pt > fl ? 1.0f : 0.0f;
        pt = fmin_(pt, fl);
        keep *= 1.0f - lower;
        top *= 1.0f - lower;
    }
    float inside = d == lr ? 1.0f : 0.0f;
    float coef = unc * keep + (topg ? (na * hi_b) * top : 0.0f);
    o.loss = pt;
    o.coef = coef * inside;
    o.log_ratio = lr * v;
    o.ratio = r;
    o.clipped = sel;
    o.lower = lower;
    o.top = top;
    return o;
}

/* HAPO (arXiv 2509.16591, eqs. 6-9) and its dual-clip PPO surrogate.  With h = (ell - pivot) / scale and h_hat =
 * clamp(h+ / pos_max + h- / neg_scale, -1, 1): eps_low' = eps_low (1 - alpha min(h_hat, 0)), eps_high' = eps_high
 * (1 + alpha max(h_hat, 0)); with r = exp(clamp(lp - old, -20, 20)), in_zone = (1 - eps_low'/2 < r < 1 + eps_high'/2),
 * use_ent = (h_hat > 0) xor in_zone, a' = A (1 + beta h_hat use_ent); then PPO with the bounds 1 - eps_low',
 * 1 + eps_high' on a'.
 * stats = [sum clipped, sum log-ratio, sum ratio, sum lower, sum h_hat, count h_hat > 0, count changed]. */
static inline void hapo_ppo_rows(const float *ent, const float *lp, const float *old, const float *adv, int64_t ars,
                                 int64_t ats, float *abuf, const uint8_t *mask, int64_t B, int64_t T, float pivot,
                                 float scale, float pos_max, float neg_scale, float eps_low, float eps_high, float alpha,
                                 float beta, const int dual, float c, float *loss, float *coef, double *stats) {
    double s[7] = {0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < B; i++) {
        const float *e = ent + i * T, *l = lp + i * T, *o = old + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        float r0 = 0, r1 = 0, r2 = 0, r3 = 0, r4 = 0, r5 = 0, r6 = 0;
#pragma omp simd reduction(+ : r0, r1, r2, r3, r4, r5, r6)
        for (int64_t t = 0; t < T; t++) {
            float v = mk[t] ? 1.0f : 0.0f;
            float h = (hapo_ell(e[t], mk[t]) - pivot) / scale * v;
            float hh = fmin_(fmax_(fmax_(h, 0.0f) / pos_max + fmin_(h, 0.0f) / neg_scale, -1.0f), 1.0f) * v;
            float lo_eps = eps_low * (1.0f - alpha * fmin_(hh, 0.0f));
            float hi_eps = eps_high * (1.0f + alpha * fmax_(hh, 0.0f));
            float d = mk[t] ? l[t] - o[t] : 0.0f;
            float r = vexp(fmin_(fmax_(d, -20.0f), 20.0f));
            float zone = (r > 1.0f - 0.5f * lo_eps) && (r < 1.0f + 0.5f * hi_eps) ? 1.0f : 0.0f;
            float high = hh > 0.0f ? 1.0f : 0.0f;
            float use = high + zone - 2.0f * high * zone;
            float av = mk[t] ? a[t] : 0.0f;
            float a2 = av * (1.0f + beta * hh * use);
            ppo_tok p = ppo_token(d, v, a2, 1.0f - lo_eps, 1.0f + hi_eps, dual, c, 0);
            loss[i * T + t] = p.loss;
            coef[i * T + t] = p.coef;
            r0 += p.clipped;
            r1 += p.log_ratio;
            r2 += p.ratio;
            r3 += p.lower;
            r4 += hh;
            r5 += v * high;
            r6 += v * use * (hh != 0.0f ? 1.0f : 0.0f);
        }
        s[0] += r0, s[1] += r1, s[2] += r2, s[3] += r3, s[4] += r4, s[5] += r5, s[6] += r6;
    }
    for (int k = 0; k < 7; k++) stats[k] = s[k];
}

void entrolab_hapo_ppo_f32(const float *ent, const float *lp, const float *old, const float *adv, int64_t ars,
                           int64_t ats, float *abuf, const uint8_t *mask, int64_t B, int64_t T, float pivot, float scale,
                           float pos_max, float neg_scale, float eps_low, float eps_high, float alpha, float beta,
                           float dual_clip, float *loss, float *coef, double *stats) {
    if (dual_clip > 0.0f) /* two instantiations: a knob tested inside the loop would keep it scalar */
        hapo_ppo_rows(ent, lp, old, adv, ars, ats, abuf, mask, B, T, pivot, scale, pos_max, neg_scale, eps_low,
                      eps_high, alpha, beta, 1, dual_clip, loss, coef, stats);
    else
        hapo_ppo_rows(ent, lp, old, adv, ars, ats, abuf, mask, B, T, pivot, scale, pos_max, neg_scale, eps_low,
                      eps_high, alpha, beta, 0, 0.0f, loss, coef, stats);
}

/* AEPO-EB (arXiv 2510.14545, eqs. 10-12): a' = A (1 + coef (H - mean) / std) (coef 0: A itself; ent may then be any
 * finite-at-valid array), PPO's surrogate with the stop-gradient high clip and optional dual-clip.
 * stats = [sum clipped, sum log-ratio, sum ratio, sum lower, sum top, sum a']. */
static inline void balanced_ppo_rows(const float *ent, const float *lp, const float *old, const float *adv,
                                     int64_t ars, int64_t ats, float *abuf, const uint8_t *mask, int64_t B, int64_t T,
                                     float mean, float std, float ecoef, float lo_b, float hi_b, const int dual,
                                     float c, float *loss, float *coef, double *stats) {
    double s[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < B; i++) {
        const float *e = ent + i * T, *l = lp + i * T, *o = old + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        float r0 = 0, r1 = 0, r2 = 0, r3 = 0, r4 = 0, r5 = 0;
#pragma omp simd reduction(+ : r0, r1, r2, r3, r4, r5)
        for (int64_t t = 0; t < T; t++) {
            float v = mk[t] ? 1.0f : 0.0f;
            float z = mk[t] ? (e[t] - mean) / std : 0.0f;
            float a2 = mk[t] ? a[t] * (1.0f + ecoef * z) : 0.0f;
            float d = mk[t] ? l[t] - o[t] : 0.0f;
            ppo_tok p = ppo_token(d, v, a2, lo_b, hi_b, dual, c, 1);
            loss[i * T + t] = p.loss;
            coef[i * T + t] = p.coef;
            r0 += p.clipped;
            r1 += p.log_ratio;
            r2 += p.ratio;
            r3 += p.lower;
            r4 += p.top;
            r5 += a2;
        }
        s[0] += r0, s[1] += r1, s[2] += r2, s[3] += r3, s[4] += r4, s[5] += r5;
    }
    for (int k = 0; k < 6; k++) stats[k] = s[k];
}

void entrolab_balanced_ppo_f32(const float *ent, const float *lp, const float *old, const float *adv, int64_t ars,
                               int64_t ats, float *abuf, const uint8_t *mask, int64_t B, int64_t T, float mean,
                               float std, float ecoef, float eps_low, float eps_high, float dual_clip, float *loss,
                               float *coef, double *stats) {
    const float lo_b = 1.0f - eps_low, hi_b = 1.0f + eps_high;
    if (dual_clip > 0.0f)
        balanced_ppo_rows(ent, lp, old, adv, ars, ats, abuf, mask, B, T, mean, std, ecoef, lo_b, hi_b, 1, dual_clip,
                          loss, coef, stats);
    else
        balanced_ppo_rows(ent, lp, old, adv, ars, ats, abuf, mask, B, T, mean, std, ecoef, lo_b, hi_b, 0, 0.0f, loss,
                          coef, stats);
}

/* ------------------------------------------------------------------------------------------------------------------
 * KL-Cov's top-k for the usual small k (k = 0.2% of the tokens): centre and selection in one call, no packed copy.
 */

/* Sift-down of a min-heap of (value, index) with the smallest value at the root (ties: the larger index nearer it). */
static void heap_down(float *hv, int64_t *hi, int64_t n, int64_t j) {
    float v = hv[j];
    int64_t x = hi[j];
    for (;;) {
        int64_t c = 2 * j + 1;
        if (c >= n) break;
        if (c + 1 < n && (hv[c + 1] < hv[c] || (hv[c + 1] == hv[c] && hi[c + 1] > hi[c]))) c++;
        if (!(hv[c] < v || (hv[c] == v && hi[c] > x))) break;
        hv[j] = hv[c];
        hi[j] = hi[c];
        j = c;
    }
    hv[j] = v;
    hi[j] = x;
}

/* The flat indices (into idx, in heap order) of the k valid tokens with the largest Cov_t, ties broken by row-major
 * position (a later token never displaces an equal earlier one), with the centre computed here (have_center 0) or given,
 * and k = max(1, floor(ratio N (1 + 1e-9))) of the N valid tokens (entrolab.losses.cov._select_count), at most N and
 * at most kmax (the caller's buffers: row of T floats, hv of kmax floats, idx of kmax indices).  stats = [N, sum Cov,
 * mean A, mean lp]; returns the number selected. */
int64_t entrolab_cov_topk_f32(const float *lp, const float *adv, int64_t ars, int64_t ats, float *abuf,
                              const uint8_t *mask, int64_t B, int64_t T, int32_t have_center, float ma_in, float ml_in,
                              double ratio, int64_t kmax, float *row, float *hv, int64_t *idx, double *stats) {
    double cs[3];
    entrolab_cov_sums_f32(lp, adv, ars, ats, abuf, mask, B, T, cs);
    const double count = cs[0], sa = cs[1], sl = cs[2];
    const double nn = count > 1.0 ? count : 1.0;
    int64_t k = (int64_t)floor(ratio * count + 1e-9 * ratio * count);
    k = k < 1 ? 1 : k;
    k = k > (int64_t)count ? (int64_t)count : k;
    k = k > kmax ? kmax : k;
    const float ma = have_center ? ma_in : (float)(sa / nn), ml = have_center ? ml_in : (float)(sl / nn);
    double s = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < B; i++) {
        const float *l = lp + i * T;
        const float *a = adv_row(adv, i, ars, ats, T, abuf);
        const uint8_t *mk = mask + i * T;
        float rs = 0.0f, rmax = -INFINITY;
#pragma omp simd reduction(+ : rs) reduction(max : rmax)
        for (int64_t t = 0; t < T; t++) {
            float c = mk[t] ? (a[t] - ma) * (l[t] - ml) : 0.0f;
            row[t] = mk[t] ? c : -INFINITY;
            rs += c;
            rmax = fmax_(rmax, mk[t] ? c : -INFINITY);
        }
        s += rs;
        if (n == k && !(rmax > hv[0])) continue; /* nothing in this row enters a full heap: skip the scalar scan */
        for (int64_t t = 0; t < T; t++) {
            float c = row[t];
            if (n < k) {
                if (!mk[t]) continue; /* k <= N, so the heap fills before the valid tokens run out */
                hv[n] = c;
                idx[n] = i * T + t;
                n++;
                if (n == k)
                    for (int64_t j = k / 2 - 1; j >= 0; j--) heap_down(hv, idx, k, j);
            } else if (c > hv[0]) { /* strictly: an equal later token loses the tie */
                hv[0] = c;
                idx[0] = i * T + t;
                heap_down(hv, idx, k, 0);
            }
        }
    }
    stats[0] = count;
    stats[1] = s;
    stats[2] = ma;
    stats[3] = ml;
    return n;
}
