// Minimal test harness for the csrc unit tests (no external framework).
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace sidmlp_test {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, fn}); }
};

inline int run_all() {
  int failed_tests = 0;
  for (const auto& t : registry()) {
    const int before = failures();
    t.fn();
    const bool ok = failures() == before;
    std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", t.name);
    if (!ok) ++failed_tests;
  }
  std::printf("%zu tests, %d failed\n", registry().size(), failed_tests);
  return failed_tests == 0 ? 0 : 1;
}

}  // namespace sidmlp_test

#define SIDMLP_CAT2(a, b) a##b
#define SIDMLP_CAT(a, b) SIDMLP_CAT2(a, b)
#define TEST_CASE(name)                                                             \
  static void name();                                                               \
  static sidmlp_test::Register SIDMLP_CAT(register_, name)(#name, name);            \
  static void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::printf("  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);         \
      ++sidmlp_test::failures();                                                     \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                               \
  do {                                                                               \
    const auto va_ = (a);                                                            \
    const auto vb_ = (b);                                                            \
    if (!(va_ == vb_)) {                                                             \
      std::printf("  %s:%d: CHECK_EQ failed: %s (%lld) != %s (%lld)\n", __FILE__,   \
                  __LINE__, #a, static_cast<long long>(va_), #b,                     \
                  static_cast<long long>(vb_));                                      \
      ++sidmlp_test::failures();                                                     \
    }                                                                                \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                        \
  do {                                                                               \
    const double va_ = (a);                                                          \
    const double vb_ = (b);                                                          \
    const bool same_inf_ = std::isinf(va_) && std::isinf(vb_) && (va_ > 0) == (vb_ > 0); \
    if (!same_inf_ && !(std::fabs(va_ - vb_) <= (tol))) {                            \
      std::printf("  %s:%d: CHECK_NEAR failed: %s (%.9g) vs %s (%.9g)\n", __FILE__,  \
                  __LINE__, #a, va_, #b, vb_);                                       \
      ++sidmlp_test::failures();                                                     \
    }                                                                                \
  } while (0)

#define TEST_MAIN() \
  int main() { return sidmlp_test::run_all(); }
