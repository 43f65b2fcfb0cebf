// The per-row loss and its gradient factors, shared by the alignment and Bridge kernels (semantics:
// oprd_kernels/reference/rowwise.py). For rows s, t of width n: loss and (a, b) with dloss/ds = a * s + b * t.
#pragma once

#include <cmath>
#include <cstdint>

namespace oprd {
namespace OPRD_ISA {

enum LossType : int { kMse = 0, kNmse = 1, kCosine = 2 };

constexpr double kNormEps = 1e-6;  // oprd_kernels.reference.NORM_EPS

template <typename Acc>
inline Acc inverse_norm(Acc sq) {
  const Acc eps_sq = static_cast<Acc>(kNormEps * kNormEps);
  return sq >= eps_sq ? Acc(1) / std::sqrt(sq) : Acc(0);
}

template <typename Acc>
struct RowTerms {
  Acc loss, a, b;
};

template <typename Acc>
RowTerms<Acc> row_terms(const Acc* s, const Acc* t, int64_t n, int loss_type) {
  const Acc inv_n = Acc(1) / static_cast<Acc>(n);
  if (loss_type == kMse) {
    Acc sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < n; ++i) {
      const Acc d = s[i] - t[i];
      sq += d * d;
    }
    return {sq * inv_n, 2 * inv_n, -2 * inv_n};
  }
  Acc ss = 0, tt = 0, st = 0;
#pragma omp simd reduction(+ : ss, tt, st)
  for (int64_t i = 0; i < n; ++i) {
    ss += s[i] * s[i];
    tt += t[i] * t[i];
    st += s[i] * t[i];
  }
  const Acc inv_s = inverse_norm(ss), inv_t = inverse_norm(tt);
  const Acc cos = st * inv_s * inv_t;
  if (loss_type == kNmse) {
    const Acc scale = 2 * inv_n;
    return {(ss * inv_s * inv_s + tt * inv_t * inv_t - 2 * cos) * inv_n, scale * cos * inv_s * inv_s,
            -scale * inv_s * inv_t};
  }
  return {1 - cos, cos * inv_s * inv_s, -inv_s * inv_t};
}

// g += coef * (a * s + b * t)
template <typename Acc>
inline void add_row_gradient(Acc* g, const Acc* s, const Acc* t, int64_t n, Acc coef, const RowTerms<Acc>& r) {
  const Acc ca = coef * r.a, cb = coef * r.b;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) g[i] += ca * s[i] + cb * t[i];
}

}  // namespace OPRD_ISA
}  // namespace oprd
