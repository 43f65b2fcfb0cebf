// Reading and writing rows of hidden states given as raw pointers, strides and dtype codes (no torch headers).
//
// A *layer table* describes L tensors at once: a base pointer plus int64 [L, 4] rows of (element offset from the
// base, stride_b, stride_s, stride_d); row n of layer l starts at base + offset + (n / S) stride_b + (n % S) stride_s.
// Rows are converted to the accumulation type Acc (float, or double for fp64 inputs) in a small scratch buffer
// that stays in L1, so the arithmetic loops run on contiguous arrays the compiler vectorises.
#pragma once

#include <cstdint>
#include <cstring>

namespace oprd {
namespace OPRD_ISA {

// Dtype codes shared with the Python wrappers (oprd_kernels/cpu_ops/_args.py).
enum Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

inline int element_size(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as torch does; NaN stays a (quiet) NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

struct LayerTable {
  const char* base;
  const int64_t* table;  // [L, 4]
  int64_t seq_len;
  int dtype;

  const char* row(int64_t layer, int64_t n) const {
    const int64_t* e = table + 4 * layer;
    const int64_t sample = n / seq_len;
    const int64_t offset = e[0] + sample * e[1] + (n - sample * seq_len) * e[2];
    return base + offset * element_size(dtype);
  }
  int64_t stride_d(int64_t layer) const { return table[4 * layer + 3]; }
};

template <typename Acc>
void load_row(const char* p, int dtype, int64_t stride, int64_t n, Acc* out) {
  switch (dtype) {
    case kFloat32: {
      const float* x = reinterpret_cast<const float*>(p);
      if (stride == 1) {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(x[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(x[i * stride]);
      }
      break;
    }
    case kBFloat16: {
      const uint16_t* x = reinterpret_cast<const uint16_t*>(p);
      if (stride == 1) {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(bf16_to_float(x[i]));
      } else {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(bf16_to_float(x[i * stride]));
      }
      break;
    }
    case kFloat16: {
      const uint16_t* x = reinterpret_cast<const uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(half_to_float(x[i * stride]));
      break;
    }
    default: {
      const double* x = reinterpret_cast<const double*>(p);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(x[i * stride]);
    }
  }
}

template <typename Acc>
void store_row(char* p, int dtype, int64_t n, const Acc* in) {
  switch (dtype) {
    case kFloat32: {
      float* y = reinterpret_cast<float*>(p);
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(in[i]);
      break;
    }
    case kBFloat16: {
      uint16_t* y = reinterpret_cast<uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) y[i] = float_to_bf16(static_cast<float>(in[i]));
      break;
    }
    case kFloat16: {
      uint16_t* y = reinterpret_cast<uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) y[i] = float_to_half(static_cast<float>(in[i]));
      break;
    }
    default: {
      double* y = reinterpret_cast<double*>(p);
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<double>(in[i]);
    }
  }
}

// Row-slot grouping of the selected entries (computed by the Python wrapper, see oprd_kernels/_tables.py): slot u
// owns entries order[slot_start[u] .. slot_start[u + 1]) which all read student row slot_rows[u] (-1: unused).
// Without rows (all null), slot u is entry u is row u.
struct Slots {
  const int64_t* order;
  const int64_t* slot_rows;
  const int64_t* slot_start;

  bool identity() const { return order == nullptr; }
  int64_t row(int64_t u) const { return identity() ? u : slot_rows[u]; }
  int64_t begin(int64_t u) const { return identity() ? u : slot_start[u]; }
  int64_t end(int64_t u) const { return identity() ? u + 1 : slot_start[u + 1]; }
  int64_t entry(int64_t j) const { return identity() ? j : order[j]; }
};

}  // namespace OPRD_ISA
}  // namespace oprd
