//! A product's output shared out among the team's threads by columns: each thread
//! writes its own columns of every row straight into the one row-major output.
//!
//! Before, each thread filled a zeroed buffer of its own and the caller then copied
//! the buffers side by side into another zeroed output, alone, while the other
//! threads waited: at batch 32 a step made ~50 MB of such allocations and copies
//! (perf on a Zen 2, w8a8 rollouts: memset, memmove and page clearing about 6% of a
//! step's samples, the helper spinning meanwhile).
//!
//! [`Shared`] hands each part its column range once ([`Shared::take`]); a
//! [`Columns`] writes only within its range, checked on every write, so that the
//! parts' writes never meet.

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

/// A row-major output of `rows × stride` values whose column ranges the parts of a
/// [`super::team::Team::each`] call take, one each.
pub struct Shared<'a> {
    ptr: *mut f32,
    rows: usize,
    stride: usize,
    bounds: Vec<(usize, usize)>,
    taken: Vec<AtomicBool>,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: the output is reached only through `take`, which hands each of the
// disjoint column ranges out once, so threads sharing a `Shared` write apart.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    /// `out` (`rows × stride`) cut into the column ranges `bounds` (`first..end`,
    /// in order, apart).
    pub fn new(out: &'a mut [f32], rows: usize, bounds: Vec<(usize, usize)>) -> Self {
        assert!(rows > 0 && out.len().is_multiple_of(rows), "{rows} rows");
        let stride = out.len() / rows;
        assert!(
            bounds
                .iter()
                .all(|&(first, end)| first <= end && end <= stride)
                && bounds.windows(2).all(|w| w[0].1 <= w[1].0),
            "column ranges {bounds:?} of {stride}"
        );
        let taken = bounds.iter().map(|_| AtomicBool::new(false)).collect();
        Self {
            ptr: out.as_mut_ptr(),
            rows,
            stride,
            bounds,
            taken,
            _out: PhantomData,
        }
    }

    /// The columns of range `i`, for the one part that writes them.
    ///
    /// # Panics
    /// If range `i` was taken before.
    pub fn take(&self, i: usize) -> Columns<'_> {
        assert!(
            !self.taken[i].swap(true, Ordering::Relaxed),
            "column range {i} taken twice"
        );
        let (first, end) = self.bounds[i];
        Columns {
            // SAFETY: `first ≤ stride` (checked in `new`): within or one past the
            // output's first row.
            ptr: unsafe { self.ptr.add(first) },
            rows: self.rows,
            stride: self.stride,
            first,
            width: end - first,
            _out: PhantomData,
        }
    }
}

/// Columns `first..first + width` of every row of a row-major output, written by one
/// thread.
pub struct Columns<'a> {
    /// Row 0, column `first`.
    ptr: *mut f32,
    rows: usize,
    stride: usize,
    first: usize,
    width: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Columns` is the only way to its columns (`Shared::take`, or the whole
// of an exclusive borrow), so moving it to another thread moves that access.
unsafe impl Send for Columns<'_> {}

impl<'a> Columns<'a> {
    /// Every column of `y` (`rows × stride`).
    #[cfg(test)]
    pub fn whole(y: &'a mut [f32], rows: usize) -> Self {
        assert!(rows > 0 && y.len().is_multiple_of(rows), "{rows} rows");
        let stride = y.len() / rows;
        Self {
            ptr: y.as_mut_ptr(),
            rows,
            stride,
            first: 0,
            width: stride,
            _out: PhantomData,
        }
    }

    /// Rows of the output.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns this holds.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Its first column in the output.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Row `r`'s columns `column..column + n` (counted from [`Columns::first`]).
    pub fn segment(&mut self, r: usize, column: usize, n: usize) -> &mut [f32] {
        self.check(r, column, 1, n);
        // SAFETY: within this range's columns of row `r` (checked), which no other
        // `Columns` reaches; `&mut self` keeps the slice the only one.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.stride + column), n) }
    }

    /// Where a kernel writes a tile of `rows` rows from `r` by `n` columns from
    /// `column`: the tile's first value and the values between two of its rows.
    pub fn tile(&mut self, r: usize, column: usize, rows: usize, n: usize) -> (*mut f32, usize) {
        self.check(r, column, rows, n);
        // SAFETY: within the output (checked).
        (
            unsafe { self.ptr.add(r * self.stride + column) },
            self.stride,
        )
    }

    fn check(&self, r: usize, column: usize, rows: usize, n: usize) {
        assert!(
            rows > 0 && r + rows <= self.rows && column + n <= self.width,
            "rows {r}..{} columns {column}..{} of {} × {}",
            r + rows,
            column + n,
            self.rows,
            self.width
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_write_their_own_columns_of_every_row() {
        let mut out = vec![0f32; 3 * 10];
        let shared = Shared::new(&mut out, 3, vec![(0, 4), (4, 4), (4, 10)]);
        std::thread::scope(|s| {
            for i in [2, 0, 1] {
                let shared = &shared;
                s.spawn(move || {
                    let mut columns = shared.take(i);
                    for r in 0..columns.rows() {
                        let first = columns.first();
                        for (c, v) in columns
                            .segment(r, 0, columns.width())
                            .iter_mut()
                            .enumerate()
                        {
                            *v = (r * 100 + first + c) as f32;
                        }
                    }
                });
            }
        });
        let want: Vec<f32> = (0..3)
            .flat_map(|r| (0..10).map(move |c| (r * 100 + c) as f32))
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    #[should_panic(expected = "taken twice")]
    fn a_range_is_taken_once() {
        let mut out = vec![0f32; 4];
        let shared = Shared::new(&mut out, 1, vec![(0, 2), (2, 4)]);
        let _first = shared.take(1);
        let _again = shared.take(1);
    }

    #[test]
    #[should_panic(expected = "columns 2..5")]
    fn writes_stay_within_the_range() {
        let mut out = vec![0f32; 8];
        let shared = Shared::new(&mut out, 2, vec![(0, 2), (2, 4)]);
        let mut columns = shared.take(1);
        let _ = columns.tile(0, 2, 1, 3);
    }

    #[test]
    #[should_panic(expected = "column ranges")]
    fn ranges_may_not_overlap() {
        let mut out = vec![0f32; 8];
        let _ = Shared::new(&mut out, 2, vec![(0, 3), (2, 4)]);
    }
}
