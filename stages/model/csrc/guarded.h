// What every entry point of `csrc/` shares: libtorch's exceptions caught and handed
// to Rust as a message the caller frees with `lsp_fused_free`; nothing unwinds into
// Rust.

#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

namespace lsp {

// A copy of `what` the caller frees with `lsp_fused_free`.
inline char* message(const char* what) {
  const size_t n = std::strlen(what) + 1;
  char* out = static_cast<char*>(std::malloc(n));
  if (out != nullptr) std::memcpy(out, what, n);
  return out;
}

// Runs `f`; null, or the message of what it threw.
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

}  // namespace lsp
