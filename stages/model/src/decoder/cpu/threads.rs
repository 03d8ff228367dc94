//! libtorch's intra-op pool handed to the CPU decoder's team while it decodes.

/// Holds the calling thread's libtorch pool at one thread while alive, for a team of
/// several threads, and gives it back on drop. libgomp's idle workers spin after each
/// parallel region, and with the team's helpers beside them batch-1 decoding fell
/// from ~50 to 9 tok/s. libtorch keeps the pool size per thread once a thread has
/// used it (OpenMP's setting is the calling thread's), so decoders on several threads
/// (the workers of a run) each hold their own; one is created and dropped on the same
/// thread, inside one generation.
#[derive(Debug)]
pub(super) struct TorchThreads(Option<i32>);

impl TorchThreads {
    /// Takes the cores from this thread's libtorch pool for a team of `team`
    /// threads (nothing for one).
    pub(super) fn hand_to_team(team: usize) -> Self {
        let before = tch::get_num_threads();
        if team <= 1 || before <= 1 {
            return Self(None);
        }
        tch::set_num_threads(1);
        Self(Some(before))
    }
}

impl Drop for TorchThreads {
    fn drop(&mut self) {
        if let Some(threads) = self.0 {
            tch::set_num_threads(threads);
        }
    }
}
