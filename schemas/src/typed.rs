//! Typed wrappers around `RecordBatch`: a stage can only be handed a batch whose schema
//! is the boundary's, checked once when the wrapper is built.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, SchemaError};

/// A `RecordBatch` known to have the schema of one stage boundary.
///
/// Implemented by [`typed_batch!`](crate::typed_batch) for each boundary; build one with
/// [`TypedBatch::try_new`] (schema checked) or [`TypedBatch::from_rows`].
pub trait TypedBatch: Sized {
    /// One row of the batch as a plain struct, for tests and small tables.
    type Row: Serialize + DeserializeOwned;
    /// The wrapper's name, used in errors.
    const NAME: &'static str;

    /// The boundary's schema.
    fn schema() -> SchemaRef;

    /// Wraps a batch whose schema was already checked. Use [`TypedBatch::try_new`].
    #[doc(hidden)]
    fn from_checked(batch: RecordBatch) -> Self;

    /// The underlying batch.
    fn batch(&self) -> &RecordBatch;

    /// Checks `batch` against the boundary's schema and wraps it.
    fn try_new(batch: RecordBatch) -> Result<Self> {
        check_schema(Self::NAME, &Self::schema(), batch.schema_ref())?;
        Ok(Self::from_checked(batch))
    }

    /// Builds the batch from columns in schema order (`RecordBatch::try_new` checks them).
    fn from_columns(columns: Vec<ArrayRef>) -> Result<Self> {
        let batch =
            RecordBatch::try_new(Self::schema(), columns).map_err(|e| SchemaError::Mismatch {
                batch: Self::NAME,
                problem: e.to_string(),
            })?;
        Ok(Self::from_checked(batch))
    }

    /// Builds the batch from `previous`'s columns followed by `new` ones: how a stage
    /// hands on its input with what it adds (the schema is checked).
    fn extend(previous: &impl TypedBatch, new: Vec<ArrayRef>) -> Result<Self> {
        let mut columns = previous.batch().columns().to_vec();
        columns.extend(new);
        Self::from_columns(columns)
    }

    /// Builds the batch from rows.
    fn from_rows(rows: &[Self::Row]) -> Result<Self> {
        let fields: Vec<FieldRef> = Self::schema().fields().iter().cloned().collect();
        let batch =
            serde_arrow::to_record_batch(&fields, &rows).map_err(|source| SchemaError::Rows {
                batch: Self::NAME,
                source,
            })?;
        Self::try_new(batch)
    }

    /// The batch as rows.
    fn to_rows(&self) -> Result<Vec<Self::Row>> {
        serde_arrow::from_record_batch(self.batch()).map_err(|source| SchemaError::Rows {
            batch: Self::NAME,
            source,
        })
    }

    /// Number of rows.
    fn num_rows(&self) -> usize {
        self.batch().num_rows()
    }

    /// The column called `name`, downcast to the array type `A`.
    fn column<A: Array + 'static>(&self, name: &str) -> Result<&A> {
        let batch = self.batch();
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| SchemaError::Mismatch {
                batch: Self::NAME,
                problem: format!("no column `{name}`"),
            })?;
        column
            .as_any()
            .downcast_ref::<A>()
            .ok_or_else(|| SchemaError::Mismatch {
                batch: Self::NAME,
                problem: format!(
                    "column `{name}` is {}, not {}",
                    column.data_type(),
                    std::any::type_name::<A>()
                ),
            })
    }
}

/// Declares a typed batch wrapper: `typed_batch!(QueryBatch, QueryRow, query_schema)`.
#[macro_export]
macro_rules! typed_batch {
    ($(#[$doc:meta])* $name:ident, $row:ty, $schema:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(::arrow::array::RecordBatch);

        impl $crate::TypedBatch for $name {
            type Row = $row;
            const NAME: &'static str = stringify!($name);

            fn schema() -> ::arrow::datatypes::SchemaRef {
                $schema()
            }

            fn from_checked(batch: ::arrow::array::RecordBatch) -> Self {
                Self(batch)
            }

            fn batch(&self) -> &::arrow::array::RecordBatch {
                &self.0
            }
        }

        impl From<$name> for ::arrow::array::RecordBatch {
            fn from(batch: $name) -> Self {
                batch.0
            }
        }
    };
}

/// Checks that `actual` has exactly the fields of `expected` (names, types,
/// nullability, order); metadata is ignored.
pub fn check_schema(batch: &'static str, expected: &Schema, actual: &Schema) -> Result<()> {
    let mismatch = |problem: String| Err(SchemaError::Mismatch { batch, problem });
    if expected.fields().len() != actual.fields().len() {
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return mismatch(format!(
            "has {} columns [{}], expected {} [{}]",
            actual.fields().len(),
            names(actual),
            expected.fields().len(),
            names(expected)
        ));
    }
    for (i, (e, a)) in expected.fields().iter().zip(actual.fields()).enumerate() {
        if e.name() != a.name() || !same_type(e, a) || e.is_nullable() != a.is_nullable() {
            return mismatch(format!(
                "column {i} is `{}: {}{}`, expected `{}: {}{}`",
                a.name(),
                a.data_type(),
                if a.is_nullable() { " (nullable)" } else { "" },
                e.name(),
                e.data_type(),
                if e.is_nullable() { " (nullable)" } else { "" },
            ));
        }
    }
    Ok(())
}

/// Types equal, where list item fields may differ in name and nullability only as
/// writers of other tools name them (`item` / `element`).
fn same_type(e: &Field, a: &Field) -> bool {
    use arrow::datatypes::DataType::List;
    match (e.data_type(), a.data_type()) {
        (List(ei), List(ai)) => ei.data_type() == ai.data_type(),
        (et, at) => et == at,
    }
}

/// Builds a schema from fields; a helper for the boundary definitions.
pub(crate) fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}
