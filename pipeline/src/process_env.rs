//! Settings that libraries read from the environment once, when the process starts
//! using them, and that `pipeline` needs set. Where the user has not set one, the
//! binary re-executes itself with it before doing anything else (`exec`: the same
//! process id, arguments, standard streams and signal handling; no child process).
//! Rust cannot set a variable for the running process without `unsafe`, which this
//! workspace forbids, and libtorch's oneDNN reads its settings only from there.

use std::ffi::OsString;

use lsp_model::decoder::{ATEN_VAR, CEILING_VAR, Ceiling};

/// Each setting, its value, and why.
// (glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ were set here until the
// binary took mimalloc as its allocator, libtorch's allocations included: `main.rs`.)
const SETTINGS: [(&str, &str); 4] = [
    // oneDNN keeps the kernels it compiles for each product shape, up to 1024 by
    // default, and libtorch's ideep layer keeps its own cache of them (its
    // LRU_CACHE_CAPACITY, also 1024). bf16 passes (mixed precision) over batches of
    // many sequence lengths make a new shape almost every pass, and each kept kernel
    // holds memory: a GRPO run's peak grew by about 0.8 GB in 8 iterations at 1024,
    // and was 3.97 / 4.14 GB at 128, 3.70 / 3.74 at 64, 3.63 / 3.65 at 32 (mixed
    // precision, `examples/bench-grpo.yaml`). 32 holds every shape a training step
    // cycles through (15 products by ONEDNN_VERBOSE, attention's included) with room;
    // log-probs, rollouts at 32 sequences and the training step were no slower than
    // at 128 (alternated); at 4 every step recompiles and a GRPO iteration took twice
    // as long.
    ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32"),
    ("LRU_CACHE_CAPACITY", "32"),
    // mimalloc (the binary's allocator, libtorch's allocations included: `main.rs`)
    // gives freed memory back to the system after a second unused, and a training step
    // that frees its activations and allocates them again a few seconds later then
    // faults every page in afresh and has the kernel zero it: `pipeline bench
    // train-step --micro-batch 8 --precision mixed_bf16` made 183k page faults in two
    // steps (perf stat), 56k at 10 s, 40k never giving back; the kernel's page zeroing
    // was 7% of its profile. Whole processes alternated with the default (4 pairs):
    // 0.85× the time, sys time 2.2 against 4.5 s, peak 5.17 against 4.99 GiB. A GRPO
    // run (`examples/bench-grpo.yaml`, mixed) took the same time (two pairs, medians
    // 10.45 / 10.85 s against 9.90 / 11.25) at 3.58 GB against 3.48. 10 s is shorter
    // than a slow step, though: on a Zen 4 whose 8 × 256 mixed step took ~8 s, 10 s
    // still faulted 176k pages a step (perf stat, 1 step against 3), where 60 s or
    // never purging faulted almost none; whole processes alternated, five pairs: 304 /
    // 288 / 325 / 256 / 278 tok/s at 60 s against 279 / 235 / 285 / 229 / 231 at 10
    // (+9 to +22%), peak 5.24-5.32 GB against 5.18; the GRPO benchmark two pairs
    // within noise at 3.46 GB against 3.43. Memory unused for a minute (a phase of a
    // run that ended) still goes back.
    ("MIMALLOC_PURGE_DELAY", "60000"),
    // mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`), and on a
    // kernel that grants them only where asked (`madvise`, the usual default) a fault
    // then zeroes 2 MiB, a purge splits the page again, and memory in use rounds up to
    // whole huge pages. A GRPO run (`examples/bench-grpo.yaml`, mixed precision, AMD
    // EPYC Zen 4) alternated with and without, four pairs: 10.15 / 10.3 / 12.55 / 11.8 s
    // an iteration with them against 9.8 / 9.05 / 10.45 / 11.05 without (medians of
    // iterations 2-5), system time 12-20 s against 7-8 s a run, peak 3.51-3.55 GB against
    // 3.42-3.45; rollouts and the training step showed no difference beyond the VM's noise.
    ("MIMALLOC_ALLOW_THP", "0"),
];

/// Set to any value: `pipeline` runs with the environment it was given.
const KEEP: &str = "LSP_KEEP_ENVIRONMENT";

/// Set by the restart: the settings it added, for the log.
const ADDED: &str = "LSP_ENVIRONMENT_ADDED";

/// The settings the environment lacks, with their values: [`SETTINGS`], then, under
/// an instruction-set ceiling (`LSP_CPU_ISA`), the variables that cap libtorch's
/// kernels to it, so that the whole process runs as on such a CPU.
fn missing(
    ceiling: Option<Ceiling>,
    present: impl Fn(&str) -> bool,
) -> Vec<(&'static str, &'static str)> {
    let capped = ceiling.map_or(&[][..], Ceiling::library_settings);
    SETTINGS
        .iter()
        .chain(capped)
        .copied()
        .filter(|(name, _)| !present(name))
        .collect()
}

/// The ceiling `LSP_CPU_ISA` and `ATEN_CPU_CAPABILITY` set ([`Ceiling::from_env`]).
/// Read here, not through [`Ceiling::of_process`], which logs and keeps its answer:
/// this runs before logging is set up, and a bad value is said once the process runs
/// for good.
fn ceiling() -> Option<Ceiling> {
    let var = |name| std::env::var(name).ok();
    Ceiling::from_env(var(CEILING_VAR).as_deref(), var(ATEN_VAR).as_deref())
}

/// Re-executes the binary with the missing settings, unless none is missing or
/// [`KEEP`] is set; returns only when it did not (then with why, if it failed).
#[cfg(unix)]
pub fn complete() -> Option<String> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(KEEP).is_some() {
        return None;
    }
    let missing = missing(ceiling(), |name| std::env::var_os(name).is_some());
    if missing.is_empty() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(format!("cannot find the running binary: {e}")),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("pipeline"));
    let error = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .envs(missing.iter().map(|&(name, value)| (name, value)))
        .env(ADDED, added(&missing))
        .exec();
    Some(format!(
        "could not restart {} with {missing:?}: {error}",
        exe.display()
    ))
}

/// `NAME=value` of each setting, space-separated.
fn added(settings: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = settings.iter().map(|(n, v)| format!("{n}={v}")).collect();
    pairs.join(" ")
}

/// The settings a restart added to this process's environment, if it was restarted.
pub fn restarted_with() -> Option<String> {
    std::env::var(ADDED).ok()
}

/// Elsewhere the environment is left as it is.
#[cfg(not(unix))]
pub fn complete() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unset_settings_are_added() {
        assert_eq!(
            missing(None, |name| name != "LRU_CACHE_CAPACITY"),
            [("LRU_CACHE_CAPACITY", "32")]
        );
        assert_eq!(
            missing(None, |name| name == "LRU_CACHE_CAPACITY"),
            [
                ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32"),
                ("MIMALLOC_PURGE_DELAY", "60000"),
                ("MIMALLOC_ALLOW_THP", "0")
            ]
        );
        assert_eq!(missing(None, |_| false).len(), SETTINGS.len());
        assert!(missing(None, |_| true).is_empty());
        // Under a ceiling, libtorch's own caps follow, a value the user set kept.
        assert_eq!(
            missing(Some(Ceiling::Avx2), |name| name != "ONEDNN_MAX_CPU_ISA"),
            [("ONEDNN_MAX_CPU_ISA", "AVX2")]
        );
        assert_eq!(
            missing(Some(Ceiling::Avx2), |_| false).len(),
            SETTINGS.len() + 3
        );
        assert_eq!(
            missing(Some(Ceiling::Avx512Bf16), |_| false).len(),
            SETTINGS.len()
        );
        assert_eq!(added(&[("A", "1"), ("B", "x")]), "A=1 B=x");
    }
}
