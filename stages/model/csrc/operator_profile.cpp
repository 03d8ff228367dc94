// libtorch's profiler (its legacy, CPU-only form: no Kineto trace files) for
// `src/operator_profile.rs`: started on the calling thread, whose state the autograd
// engine's and libtorch's pool threads inherit; stopped into one line per operator and
// input shapes with its calls, self time and total time, the shape of PyTorch's
// `key_averages(group_by_input_shape=True)`. And scopes of our own Rust work, recorded
// as operators (`record_function` in PyTorch), so that a profile sees them too; and the
// calling thread's state handed to threads of our own, so that a profile sees their
// operators as it sees libtorch's pool's.

#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/csrc/profiler/api.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "guarded.h"

namespace {

using torch::autograd::profiler::LegacyEvent;

struct Totals {
  int64_t calls = 0;
  double self_us = 0;
  double total_us = 0;
};

// `[8, 256, 576], [576]`-style shapes of an event's inputs.
std::string shapes_of(const LegacyEvent& e) {
  std::string out;
  for (const auto& shape : e.shapes()) {
    if (!out.empty()) out += ", ";
    out += "[";
    for (size_t i = 0; i < shape.size(); i++) {
      if (i > 0) out += ", ";
      out += std::to_string(shape[i]);
    }
    out += "]";
  }
  return out;
}

// Pairs each thread's push and pop events (they nest); self time is an event's time
// less its children's.
std::map<std::pair<std::string, std::string>, Totals> totals_of(
    const torch::autograd::profiler::thread_event_lists& lists) {
  std::map<std::pair<std::string, std::string>, Totals> totals;
  for (const auto& list : lists) {
    struct Open {
      const LegacyEvent* push;
      double children_us;
    };
    std::vector<Open> open;
    for (const auto& e : list) {
      const auto kind = e.kindStr();
      if (kind == "push") {
        open.push_back({&e, 0});
      } else if (kind == "pop" && !open.empty()) {
        const Open o = open.back();
        open.pop_back();
        const double us = o.push->cpuElapsedUs(e);
        auto& t = totals[{o.push->name(), shapes_of(*o.push)}];
        t.calls++;
        t.self_us += us - o.children_us;
        t.total_us += us;
        if (!open.empty()) open.back().children_us += us;
      }
    }
  }
  return totals;
}

}  // namespace

extern "C" {

// Starts the profiler, recording input shapes; returns an error or null.
char* lsp_profile_start() {
  return lsp::guarded([] {
    using torch::profiler::impl::ProfilerConfig;
    using torch::profiler::impl::ProfilerState;
    torch::autograd::profiler::enableProfilerLegacy(
        ProfilerConfig(ProfilerState::CPU, /*report_input_shapes=*/true));
  });
}

// Opens a scope the profiler records as an operator named `name` (a string that
// outlives the profile) while it runs; nothing when it does not. Closed by
// `lsp_scope_close`; null if it could not be opened.
void* lsp_scope_open(const char* name) noexcept {
  try {
    auto* scope = new at::RecordFunction(at::RecordScope::USER_SCOPE);
    if (scope->isActive()) scope->before(std::string_view(name), c10::ArrayRef<const c10::IValue>{});
    return scope;
  } catch (...) {
    return nullptr;
  }
}

// Closes a scope `lsp_scope_open` opened.
void lsp_scope_close(void* scope) noexcept {
  try {
    delete static_cast<at::RecordFunction*>(scope);
  } catch (...) {
  }
}

// The calling thread's state (libtorch's thread-local state: the profiler's callbacks
// and event lists among it) while a profile runs, for threads of our own to enter with
// `lsp_thread_state_enter`; null when none runs (or it could not be captured). Freed
// by `lsp_thread_state_free`.
void* lsp_thread_state_capture() noexcept {
  try {
    if (!torch::profiler::impl::profilerEnabled()) return nullptr;
    return new at::ThreadLocalState();
  } catch (...) {
    return nullptr;
  }
}

// Enters `state` on the calling thread until `lsp_thread_state_exit`; null if it could
// not.
void* lsp_thread_state_enter(const void* state) noexcept {
  try {
    return new at::ThreadLocalStateGuard(*static_cast<const at::ThreadLocalState*>(state));
  } catch (...) {
    return nullptr;
  }
}

// Leaves the state `lsp_thread_state_enter` entered (the thread's own back).
void lsp_thread_state_exit(void* guard) noexcept {
  delete static_cast<at::ThreadLocalStateGuard*>(guard);
}

// Frees a state `lsp_thread_state_capture` captured.
void lsp_thread_state_free(void* state) noexcept {
  delete static_cast<at::ThreadLocalState*>(state);
}

// Stops the profiler; `*rows` = lines of `name \t shapes \t calls \t self µs \t total
// µs`, freed by the caller with `lsp_fused_free`. Returns an error or null.
char* lsp_profile_stop(char** rows) {
  return lsp::guarded([&] {
    const auto totals = totals_of(torch::autograd::profiler::disableProfilerLegacy());
    std::string text;
    char numbers[96];
    for (const auto& [key, t] : totals) {
      std::snprintf(numbers, sizeof numbers, "\t%lld\t%.3f\t%.3f\n",
                    static_cast<long long>(t.calls), t.self_us, t.total_us);
      text += key.first + "\t" + key.second + numbers;
    }
    *rows = lsp::message(text.c_str());
  });
}

}  // extern "C"
