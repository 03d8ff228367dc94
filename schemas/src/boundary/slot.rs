//! Driver → challenger: one row per query a worker writes in an iteration.

use std::sync::LazyLock;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::TypedBatch;
use crate::columns::*;
use crate::error::Result;
use crate::field;
use crate::typed::schema_of;

/// Schema of [`SlotBatch`].
pub fn slot_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> =
        LazyLock::new(|| schema_of(vec![field::u64(ITERATION), field::u32(QUERY_ID)]));
    SCHEMA.clone()
}

/// One query to be written: its iteration and its number among the iteration's N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRow {
    /// Iteration number.
    pub iteration: u64,
    /// Index of the query within the iteration.
    pub query_id: u32,
}

crate::typed_batch!(
    /// Driver → challenger: the queries of an iteration one worker writes (its share).
    SlotBatch,
    SlotRow,
    slot_schema
);

impl SlotBatch {
    /// The slots `query_ids` of `iteration`.
    pub fn of(iteration: u64, query_ids: &[u32]) -> Result<Self> {
        let rows: Vec<SlotRow> = query_ids
            .iter()
            .map(|&query_id| SlotRow {
                iteration,
                query_id,
            })
            .collect();
        Self::from_rows(&rows)
    }

    /// Every one of `iteration`'s `n` queries.
    pub fn all(iteration: u64, n: u32) -> Result<Self> {
        Self::of(iteration, &(0..n).collect::<Vec<_>>())
    }

    /// The query numbers, in order.
    pub fn query_ids(&self) -> Result<Vec<u32>> {
        Ok(self
            .column::<arrow::array::UInt32Array>(QUERY_ID)?
            .values()
            .to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_their_numbers() {
        let slots = SlotBatch::of(4, &[3, 0, 7]).unwrap();
        assert_eq!(slots.query_ids().unwrap(), [3, 0, 7]);
        assert_eq!(
            slots.to_rows().unwrap()[1],
            SlotRow {
                iteration: 4,
                query_id: 0
            }
        );
        assert_eq!(
            SlotBatch::all(1, 3).unwrap().query_ids().unwrap(),
            [0, 1, 2]
        );
        assert_eq!(SlotBatch::all(1, 0).unwrap().num_rows(), 0);
    }
}
