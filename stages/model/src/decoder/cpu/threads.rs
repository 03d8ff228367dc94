//! libtorch's intra-op pool handed to the CPU decoder's team while it decodes.

use std::sync::Mutex;

/// While decoding teams hold the cores: how many of them, and libtorch's threads
/// before the first.
static HANDED: Mutex<Option<(usize, i32)>> = Mutex::new(None);

/// Holds libtorch's intra-op pool at one thread while alive, for a team of several
/// threads; the last of these dropped gives libtorch its threads back. libgomp's idle
/// workers spin after each parallel region, and with the team's helpers beside them
/// batch-1 decoding fell from ~50 to 9 tok/s. The pool size is process-wide, so
/// decoders alive at once (generations on several threads) count themselves here.
#[derive(Debug)]
pub(super) struct TorchThreads(bool);

impl TorchThreads {
    /// Takes the cores from libtorch for a team of `team` threads (nothing for one).
    pub(super) fn hand_to_team(team: usize) -> Self {
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        match (*handed, team > 1) {
            (_, false) => return Self(false),
            (Some((guards, threads)), true) => *handed = Some((guards + 1, threads)),
            (None, true) => {
                let threads = tch::get_num_threads();
                if threads <= 1 {
                    return Self(false);
                }
                tch::set_num_threads(1);
                *handed = Some((1, threads));
            }
        }
        Self(true)
    }
}

impl Drop for TorchThreads {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        match *handed {
            Some((1, threads)) => {
                tch::set_num_threads(threads);
                *handed = None;
            }
            Some((guards, threads)) => *handed = Some((guards - 1, threads)),
            None => {}
        }
    }
}
