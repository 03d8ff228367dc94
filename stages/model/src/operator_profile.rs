//! Where a piece of work's time went, operator by operator: libtorch's profiler
//! (`csrc/operator_profile.cpp`) around it, its events summed per operator name and
//! input shapes (PyTorch's `key_averages(group_by_input_shape=True)`), self time being
//! an operator's time less the operators it called.
//!
//! It sees what runs on the calling thread, the autograd engine's threads and
//! libtorch's pool (which inherit the profiler's state), and threads of our own that
//! enter the caller's state (`ThreadState`: `update.parallelism: sequences`' passes),
//! their self times summed over the threads (so that the shares of wall time can add up
//! past 100%). The fused nodes
//! (`fused/`) record themselves as `lsp::…` operators, and Rust work outside any
//! operator does so through `scope`. Recording input shapes costs a little per
//! operator, so a profiled run is slightly slower than an unprofiled one.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::error::{ModelError, Result};
use crate::fused::taken;

unsafe extern "C" {
    fn lsp_profile_start() -> *mut c_char;
    fn lsp_profile_stop(rows: *mut *mut c_char) -> *mut c_char;
    fn lsp_scope_open(name: *const c_char) -> *mut c_void;
    fn lsp_scope_close(scope: *mut c_void);
    fn lsp_thread_state_capture() -> *mut c_void;
    fn lsp_thread_state_enter(state: *const c_void) -> *mut c_void;
    fn lsp_thread_state_exit(guard: *mut c_void);
    fn lsp_thread_state_free(state: *mut c_void);
}

/// The calling thread's libtorch state while a profile runs, for threads of our own
/// to work in ([`ThreadState::within`]) so that the profile sees their operators;
/// nothing when no profile runs.
pub(crate) struct ThreadState(*mut c_void);

// SAFETY: the state is a value each entering thread copies (`at::ThreadLocalStateGuard`
// reads it); nothing writes it between its capture and its free.
unsafe impl Send for ThreadState {}
// SAFETY: as above: threads only read it.
unsafe impl Sync for ThreadState {}

impl ThreadState {
    /// The calling thread's state if a profile runs.
    pub(crate) fn capture() -> Self {
        // SAFETY: no arguments; null or a state this value frees.
        Self(unsafe { lsp_thread_state_capture() })
    }

    /// Runs `work` on the calling thread in the captured state (as it is when none was
    /// captured), the thread's own state back after it, a panic included.
    pub(crate) fn within<T>(&self, work: impl FnOnce() -> T) -> T {
        /// Leaves the state when dropped, on the thread that entered it.
        struct Entered(*mut c_void);
        impl Drop for Entered {
            fn drop(&mut self) {
                if !self.0.is_null() {
                    // SAFETY: a guard `lsp_thread_state_enter` made on this thread, once.
                    unsafe { lsp_thread_state_exit(self.0) };
                }
            }
        }
        let _entered = Entered(match self.0.is_null() {
            true => std::ptr::null_mut(),
            // SAFETY: a live state this value owns.
            false => unsafe { lsp_thread_state_enter(self.0) },
        });
        work()
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the state `lsp_thread_state_capture` made, freed once; no thread is
            // within it (`within` borrows `self`).
            unsafe { lsp_thread_state_free(self.0) };
        }
    }
}

/// Runs `work` as an operator named `name` in a profile (PyTorch's
/// `record_function`); costs an allocation when no profiler runs.
pub(crate) fn scope<T>(name: &'static CStr, work: impl FnOnce() -> T) -> T {
    /// Closes the scope when dropped, a panic included.
    struct Open(*mut c_void);
    impl Drop for Open {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: a scope `lsp_scope_open` made, closed once.
                unsafe { lsp_scope_close(self.0) };
            }
        }
    }
    // SAFETY: a NUL-terminated static name, which outlives any profile.
    let _open = Open(unsafe { lsp_scope_open(name.as_ptr()) });
    work()
}

/// One operator at one set of input shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorRow {
    /// libtorch's name (`aten::mm`, `autograd::engine::evaluate_function: MmBackward0`,
    /// `lsp::swiglu_bf16`).
    pub name: String,
    /// Its inputs' shapes, `[2048, 576], [576, 960]` (empty where it reports none).
    pub shapes: String,
    /// How many times it ran.
    pub calls: u64,
    /// Its time less that of the operators it called.
    pub self_time: Duration,
    /// Its time.
    pub total_time: Duration,
}

/// The operators of one profiled piece of work.
#[derive(Debug, Clone)]
pub struct OperatorProfile {
    /// Every operator and shapes seen, most self time first.
    pub rows: Vec<OperatorRow>,
    /// The work's wall time.
    pub wall: Duration,
}

/// Stops the profiler when dropped, so that a panic in the work does not leave it on.
struct Running;

impl Running {
    /// Starts the profiler, or says why libtorch would not (one already running).
    fn start() -> Result<Self> {
        // SAFETY: no arguments; the C++ side returns null or a message.
        match unsafe { taken(lsp_profile_start()) } {
            None => Ok(Self),
            Some(text) => Err(profiler_error(text)),
        }
    }

    /// Stops the profiler; its rows, unsorted.
    fn stop(self) -> Result<Vec<OperatorRow>> {
        std::mem::forget(self);
        let text = stop_profiler().map_err(profiler_error)?;
        text.lines().map(parse_row).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = stop_profiler();
    }
}

/// Stops the profiler: its rows as the C++ side writes them, or libtorch's message.
fn stop_profiler() -> std::result::Result<String, String> {
    let mut text = std::ptr::null_mut();
    // SAFETY: `text` receives a message the C++ side allocated, freed by `taken`
    // (null only if allocation failed).
    unsafe {
        match taken(lsp_profile_stop(&mut text)) {
            Some(error) => Err(error),
            None => Ok(taken(text).unwrap_or_default()),
        }
    }
}

fn profiler_error(text: String) -> ModelError {
    ModelError::Torch(tch::TchError::Torch(format!("operator profiler: {text}")))
}

/// One `name \t shapes \t calls \t self µs \t total µs` line of the C++ side.
fn parse_row(line: &str) -> Result<OperatorRow> {
    let bad = || profiler_error(format!("unreadable row {line:?}"));
    let mut fields = line.rsplitn(4, '\t');
    let total: f64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let own: f64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let calls = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let (name, shapes) = fields
        .next()
        .and_then(|f| f.split_once('\t'))
        .ok_or_else(bad)?;
    let name = readable(name);
    let time = |us: f64| Duration::from_secs_f64(us.max(0.0) / 1e6);
    Ok(OperatorRow {
        name,
        shapes: shapes.to_owned(),
        calls,
        self_time: time(own),
        total_time: time(total),
    })
}

/// `name` with our C++ nodes' backward passes, which libtorch calls
/// `torch::autograd::CppNode<(anonymous namespace)::Node>`, as `Node (backward)`.
fn readable(name: &str) -> String {
    const NODE: &str = "torch::autograd::CppNode<(anonymous namespace)::";
    match name.split_once(NODE) {
        Some((before, rest)) => match rest.split_once('>') {
            Some((node, after)) => format!("{before}{node} (backward){after}"),
            None => name.to_owned(),
        },
        None => name.to_owned(),
    }
}

/// Runs `work` under the profiler: its result and where its time went.
pub fn profile<T>(work: impl FnOnce() -> T) -> Result<(T, OperatorProfile)> {
    let running = Running::start()?;
    let start = Instant::now();
    let out = work();
    let wall = start.elapsed();
    let mut rows = running.stop()?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.self_time));
    Ok((out, OperatorProfile { rows, wall }))
}

impl OperatorProfile {
    /// The self time of every operator together.
    pub fn in_operators(&self) -> Duration {
        self.rows.iter().map(|r| r.self_time).sum()
    }

    /// The rows summed over shapes: one per operator name, most self time first.
    pub fn by_name(&self) -> Vec<OperatorRow> {
        let mut named: BTreeMap<&str, OperatorRow> = BTreeMap::new();
        for row in &self.rows {
            let sum = named.entry(&row.name).or_insert_with(|| OperatorRow {
                name: row.name.clone(),
                shapes: String::new(),
                calls: 0,
                self_time: Duration::ZERO,
                total_time: Duration::ZERO,
            });
            sum.calls += row.calls;
            sum.self_time += row.self_time;
            sum.total_time += row.total_time;
        }
        let mut rows: Vec<_> = named.into_values().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.self_time));
        rows
    }

    /// A table of the `top` operators by self time, summed per name and then per
    /// name and shapes, each with its share of the wall time.
    pub fn table(&self, top: usize) -> String {
        let wall = self.wall.as_secs_f64();
        let mut out = format!(
            "operator profile: {:.3} s wall, {:.3} s in operators (self time; libtorch's \
             profiler)\n",
            wall,
            self.in_operators().as_secs_f64()
        );
        let mut section = |title: &str, rows: &[OperatorRow]| {
            let _ = writeln!(out, "{title}\n   self ms   share    calls  operator");
            for row in rows.iter().take(top) {
                let ms = row.self_time.as_secs_f64() * 1e3;
                let _ = writeln!(
                    out,
                    "{ms:10.1} {:6.1}% {:8}  {}{}{}",
                    100.0 * ms / 1e3 / wall.max(f64::MIN_POSITIVE),
                    row.calls,
                    row.name,
                    if row.shapes.is_empty() { "" } else { "  " },
                    row.shapes
                );
            }
        };
        section("by operator:", &self.by_name());
        section("by operator and input shapes:", &self.rows);
        out
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn a_profile_names_the_products_with_their_shapes_and_counts_every_call() {
        let a = Tensor::randn([64, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::randn([32, 16], (Kind::Float, Device::Cpu));
        let ((), seen) = profile(|| {
            for _ in 0..3 {
                a.mm(&b).sum(Kind::Float).backward();
            }
        })
        .unwrap();
        let mm: Vec<_> = seen.rows.iter().filter(|r| r.name == "aten::mm").collect();
        let forward = mm.iter().find(|r| r.shapes == "[64, 32], [32, 16]");
        assert_eq!(forward.map(|r| r.calls), Some(3), "{mm:?}");
        // The backward pass's product, on the autograd engine's thread: dA = dY · Bᵀ.
        let backward = mm.iter().find(|r| r.shapes == "[64, 16], [16, 32]");
        assert_eq!(backward.map(|r| r.calls), Some(3), "{mm:?}");
        for row in &seen.rows {
            assert!(row.self_time <= row.total_time, "{row:?}");
        }
        assert!(seen.in_operators() <= seen.wall);
        let named = seen.by_name();
        let mm_total = named.iter().find(|r| r.name == "aten::mm").unwrap();
        assert_eq!(mm_total.calls, 6);
        let ((), scoped) = profile(|| scope(c"lsp::test_scope", || drop(a.mm(&b)))).unwrap();
        let ours = scoped.by_name();
        let ours = ours.iter().find(|r| r.name == "lsp::test_scope");
        assert_eq!(ours.map(|r| r.calls), Some(1), "{:?}", scoped.rows);
        // Its product is its child: the scope's total holds it, its self time not.
        let mm = scoped.rows.iter().find(|r| r.name == "aten::mm").unwrap();
        assert!(ours.unwrap().total_time >= mm.total_time);
        let table = seen.table(5);
        assert!(table.contains("aten::mm  [64, 32], [32, 16]"), "{table}");
        // Not two at once: libtorch refuses, and the first still stops cleanly.
        let (nested, outer) = profile(|| profile(|| ()).map(|_| ())).unwrap();
        assert!(nested.is_err());
        assert!(outer.rows.is_empty() || outer.in_operators() <= outer.wall);
    }

    #[test]
    fn a_profiler_row_that_cannot_be_read_is_an_error_not_a_guess() {
        let row = parse_row("aten::mm\t[2, 3], [3, 4]\t7\t12.5\t20.0").unwrap();
        assert_eq!(row.calls, 7);
        assert_eq!(row.shapes, "[2, 3], [3, 4]");
        assert_eq!(row.self_time, Duration::from_nanos(12_500));
        assert!(parse_row("aten::mm\t7\t12.5").is_err());
        let node = "torch::autograd::CppNode<(anonymous namespace)::SwigluBf16>\t[2]\t1\t1\t1";
        assert_eq!(parse_row(node).unwrap().name, "SwigluBf16 (backward)");
        let engine = format!("autograd::engine::evaluate_function: {node}");
        assert_eq!(
            parse_row(&engine).unwrap().name,
            "autograd::engine::evaluate_function: SwigluBf16 (backward)"
        );
        assert!(parse_row("aten::mm\t[]\tseven\t1\t2").is_err());
    }
}
