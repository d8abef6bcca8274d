/* Scalar maths shared by kernels.c and losses.c, written so that the compiler vectorises the loops that call it. */
#ifndef ENTROLAB_VMATH_H
#define ENTROLAB_VMATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for -87 <= x <= 88 (kernels.c uses x <= 0): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 Taylor polynomial
 * (relative error < 2e-7).  exp_neg() returns an exact 0 below -87; callers clamp their input at CLAMP_LO first, so
 * that -inf never reaches it and the products e * t stay 0 * finite = 0. */
#define CLAMP_LO (-100.0f)
static inline float exp_core(float x) {
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
    /* p * 2^n by adding n to the exponent field (p is in [0.7, 1.5]; the result stays a normal float for -87 <= x <= 88) */
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += (int32_t)n << 23;
    memcpy(&p, &bits, 4);
    return p;
}

#endif
