//! The attention masks of a pass, and the positions that RoPE rotates by, both
//! from a key mask (1 = real token, 0 = padding).

use tch::{Kind, Tensor};

/// Which attention mask a forward pass needs.
#[derive(Debug)]
pub enum AttentionMask {
    /// Causal over the new tokens only; no padding and nothing cached.
    Causal,
    /// Every cached and new position is visible (one new token, no padding).
    None,
    /// `[batch, 1, new, total]` additive mask: 0 where visible, a large negative
    /// elsewhere (finite, so rows of padding give uniform weights rather than NaN).
    Additive(Tensor),
    /// A decoding step's additive mask laid out for its attention, `[batch ·
    /// kv_heads, 1, total]` ([`AttentionMask::group`]), built once for every layer.
    Grouped(Tensor),
}

impl AttentionMask {
    /// The mask for `new` tokens after `past` cached positions, given which of the
    /// `past + new` positions are real tokens (`key_mask`, `[batch, total]`, 1 = real).
    pub fn build(key_mask: &Tensor, past: i64, new: i64, kind: Kind) -> Self {
        let padded = key_mask.min().int64_value(&[]) == 0;
        if !padded {
            return match (past, new) {
                (0, _) => Self::Causal,
                (_, 1) => Self::None,
                _ => Self::Additive(Self::additive(key_mask, past, new, kind)),
            };
        }
        Self::Additive(Self::additive(key_mask, past, new, kind))
    }

    /// An additive mask of one new position (`[batch, 1, 1, total]`) repeated for each
    /// key/value head: `[batch · kv_heads, 1, total]`.
    pub fn group(mask: &Tensor, kv_heads: i64) -> Tensor {
        let (b, total) = (mask.size()[0], mask.size()[3]);
        mask.expand([b, kv_heads, 1, total], false)
            .reshape([b * kv_heads, 1, total])
    }

    fn additive(key_mask: &Tensor, past: i64, new: i64, kind: Kind) -> Tensor {
        let device = key_mask.device();
        let total = past + new;
        let keys = Tensor::arange(total, (Kind::Int64, device)).view([1, 1, 1, total]);
        let queries = (Tensor::arange(new, (Kind::Int64, device)) + past).view([1, 1, new, 1]);
        let causal = keys.le_tensor(&queries);
        let real = key_mask.ne(0).view([-1, 1, 1, total]);
        Self::from_visible(&causal.logical_and(&real), kind)
    }

    /// The additive mask in `kind` of a boolean one (true = visible), same shape.
    pub fn from_visible(visible: &Tensor, kind: Kind) -> Tensor {
        let device = visible.device();
        let blocked = match kind {
            Kind::Half => -6e4,
            _ => f32::MIN as f64 / 2.0,
        };
        Tensor::zeros([1], (kind, device))
            .where_self(visible, &Tensor::full([1], blocked, (kind, device)))
    }
}

/// Positions of each token, counting only real tokens (so left padding does not
/// shift them): `cumsum(mask) − 1`, with padding at 0. `[batch, total]`.
pub fn positions(key_mask: &Tensor) -> Tensor {
    let pos = key_mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1;
    pos.clamp_min(0)
}
