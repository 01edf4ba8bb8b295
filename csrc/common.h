// Shared definitions for the C++/CUDA core of catalog-constrained decoding.
//
// Everything here is plain C++17 (no torch, no Python) so the same headers
// compile with g++ for the CPU ops and the ctest suite, and with nvcc for the
// CUDA kernels. Functions used on both sides are marked SIDMLP_HD.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SIDMLP_HD __host__ __device__
#define SIDMLP_INLINE __forceinline__
#else
#define SIDMLP_HD
#define SIDMLP_INLINE inline
#endif

namespace sidmlp {

// Deepest SID the index supports; fixes the size of the by-value IndexView
// that CUDA kernels receive as an argument.
constexpr int kMaxLevels = 16;
// Version of the flat index layout (meta[0]); bumped when the layout changes.
constexpr int64_t kIndexFormat = 1;

// Error codes shared by host and device code. Device kernels write the first
// one they hit into a flag; host code returns it in a Status.
enum ErrorCode : int32_t {
  kOk = 0,
  kStateOutOfRange = 1,    // a beam state is not -1 and not a node of the level
  kBadLogit = 2,           // NaN or +inf logit at a valid child
  kBadBeamScore = 3,       // NaN or +inf beam score
  kCorruptIndex = 4,       // index arrays disagree with each other
  kCodeOutOfRange = 5,     // a code digit outside [0, K_l)
  kBadScore = 6,           // NaN or +inf score passed to finalize
  kParentOutOfRange = 7,   // a kept slot's parent beam is not in [0, width)
  kRowOutOfRange = 8,      // a live beam's hidden row is not in [0, rows)
};

SIDMLP_HD SIDMLP_INLINE const char* error_name(int32_t code) {
  switch (code) {
    case kOk: return "ok";
    case kStateOutOfRange: return "state out of range";
    case kBadLogit: return "NaN or +inf logit";
    case kBadBeamScore: return "NaN or +inf beam score";
    case kCorruptIndex: return "corrupt index";
    case kCodeOutOfRange: return "code outside the codebook";
    case kBadScore: return "NaN or +inf score";
    case kParentOutOfRange: return "parent beam out of range";
    case kRowOutOfRange: return "hidden row out of range";
    default: return "unknown error";
  }
}

// Where an error happened: row/column of the offending input and its value.
struct Status {
  int32_t code = kOk;
  int64_t row = -1;
  int64_t col = -1;
  double value = 0.0;
  SIDMLP_HD bool ok() const { return code == kOk; }
};

SIDMLP_HD SIDMLP_INLINE Status make_error(int32_t code, int64_t row, int64_t col, double value) {
  Status s;
  s.code = code;
  s.row = row;
  s.col = col;
  s.value = value;
  return s;
}

// Element type of the logits. Half types are read as raw 16-bit patterns
// and widened here, so the core needs neither c10 nor cuda_fp16 types.
enum class LogitType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

SIDMLP_HD SIDMLP_INLINE float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

SIDMLP_HD SIDMLP_INLINE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

SIDMLP_HD SIDMLP_INLINE float bf16_bits_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN).
SIDMLP_HD SIDMLP_INLINE float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24 is exact in float.
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_to_float(sign | 0x7F800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

SIDMLP_HD SIDMLP_INLINE float load_logit(const void* base, int64_t i, LogitType type) {
  switch (type) {
    case LogitType::kBFloat16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    case LogitType::kFloat16:
      return f16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

SIDMLP_HD SIDMLP_INLINE bool is_nan(float x) { return x != x; }
SIDMLP_HD SIDMLP_INLINE bool is_pos_inf(float x) { return x > 3.4028234663852886e38f; }
SIDMLP_HD SIDMLP_INLINE bool is_neg_inf(float x) { return x < -3.4028234663852886e38f; }
SIDMLP_HD SIDMLP_INLINE float neg_inf() { return bits_to_float(0xFF800000u); }

}  // namespace sidmlp
