//! Short constructors for the fields the boundaries use.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};

/// A non-null unsigned 64-bit column.
pub(crate) fn u64(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

/// A non-null unsigned 32-bit column.
pub(crate) fn u32(name: &str) -> Field {
    Field::new(name, DataType::UInt32, false)
}

/// A non-null float column.
pub(crate) fn f64(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}

/// A nullable float column.
pub(crate) fn f64_or_null(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}

/// A non-null string column.
pub(crate) fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// A nullable string column.
pub(crate) fn utf8_or_null(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// A non-null boolean column.
pub(crate) fn bool(name: &str) -> Field {
    Field::new(name, DataType::Boolean, false)
}

/// A non-null list of token ids.
pub(crate) fn token_ids(name: &str) -> Field {
    let item = Field::new("item", DataType::UInt32, false);
    Field::new(name, DataType::List(Arc::new(item)), false)
}

/// A non-null list of per-token log-probs.
pub(crate) fn token_logprobs(name: &str) -> Field {
    let item = Field::new("item", DataType::Float32, false);
    Field::new(name, DataType::List(Arc::new(item)), false)
}

/// A nullable list of a sum reward's parts (`RewardPart`'s fields).
pub(crate) fn reward_parts(name: &str) -> Field {
    let part = DataType::Struct(
        vec![
            utf8("name"),
            f64("weight"),
            f64("reward"),
            utf8("reward_status"),
        ]
        .into(),
    );
    let item = Field::new("element", part, false);
    Field::new(name, DataType::List(Arc::new(item)), true)
}

/// A non-null list of strings.
pub(crate) fn utf8_list(name: &str) -> Field {
    let item = Field::new("item", DataType::Utf8, false);
    Field::new(name, DataType::List(Arc::new(item)), false)
}
