//! ggml storage types and their dequantization to f32, following the block layouts
//! of ggml's `ggml-quants.c`.

/// A ggml tensor type this importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 weights: f16 scale, 16 bytes of 4-bit values offset by 8.
    Q4_0,
    /// 32 weights: f16 scale, f16 minimum, 16 bytes of 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 32 signed bytes.
    Q8_0,
    /// 256 weights in 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// As Q4_K with a fifth bit per value.
    Q5K,
    /// 256 weights in 16 sub-blocks with 8-bit scales, 6-bit values.
    Q6K,
}

impl GgmlType {
    /// The type of ggml id `id`, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// (weights per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes holding `elements` weights; `None` unless a whole number of blocks.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let (per_block, bytes) = self.block();
        elements
            .is_multiple_of(per_block)
            .then_some(elements / per_block * bytes)
    }

    /// Dequantizes `data` (a whole number of blocks) to f32.
    pub fn dequantize(self, data: &[u8]) -> Vec<f32> {
        let (per_block, bytes) = self.block();
        let blocks = data.chunks_exact(bytes as usize);
        let mut out = Vec::with_capacity(blocks.len() * per_block as usize);
        for block in blocks {
            match self {
                Self::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
                Self::F16 => out.push(f16(block, 0)),
                Self::Bf16 => out.push(f32::from_bits(
                    (u16::from_le_bytes([block[0], block[1]]) as u32) << 16,
                )),
                Self::Q4_0 => q4_0(block, &mut out),
                Self::Q4_1 => q4_1(block, &mut out),
                Self::Q8_0 => q8_0(block, &mut out),
                Self::Q4K => q4_k(block, &mut out),
                Self::Q5K => q5_k(block, &mut out),
                Self::Q6K => q6_k(block, &mut out),
            }
        }
        out
    }
}

/// The IEEE half at `block[at..at + 2]` as f32.
fn f16(block: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([block[at], block[at + 1]]) as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant · 2^-24.
            let value = mant as f32 * (1.0 / (1 << 24) as f32);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0xf) as f32 - 8.0) * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as f32 - 8.0) * d));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// Scale and minimum of sub-block `j` from the 12 packed bytes of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        out.extend(q.iter().map(|&v| d * sc1 * (v & 0xf) as f32 - dmin * m1));
        out.extend(q.iter().map(|&v| d * sc2 * (v >> 4) as f32 - dmin * m2));
    }
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let high = |l: usize, bit: u8| if qh[l] & bit != 0 { 16.0 } else { 0.0 };
        out.extend(
            q.iter()
                .enumerate()
                .map(|(l, &v)| d * sc1 * ((v & 0xf) as f32 + high(l, u1)) - dmin * m1),
        );
        out.extend(
            q.iter()
                .enumerate()
                .map(|(l, &v)| d * sc2 * ((v >> 4) as f32 + high(l, u2)) - dmin * m2),
        );
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Little-endian bytes of the halves 0.5 (0x3800), 1.0 (0x3c00), -2.0 (0xc000),
    /// 0.25 (0x3400).
    const HALF: f32 = 0.5;
    const H_HALF: [u8; 2] = [0x00, 0x38];
    const H_ONE: [u8; 2] = [0x00, 0x3c];
    const H_MINUS_TWO: [u8; 2] = [0x00, 0xc0];
    const H_QUARTER: [u8; 2] = [0x00, 0x34];

    #[test]
    fn halves_convert_exactly() {
        assert_eq!(f16(&H_HALF, 0), HALF);
        assert_eq!(f16(&H_MINUS_TWO, 0), -2.0);
        assert_eq!(f16(&[0x01, 0x00], 0), 2f32.powi(-24)); // smallest subnormal
        assert_eq!(f16(&[0xff, 0x7b], 0), 65504.0); // largest normal
        assert!(f16(&[0x00, 0x7c], 0).is_infinite());
        assert_eq!(GgmlType::Bf16.dequantize(&[0x80, 0x3f]), [1.0]);
        assert_eq!(
            GgmlType::F16.dequantize(&[0x00, 0x3c, 0x00, 0xc0]),
            [1.0, -2.0]
        );
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high_offset_by_8() {
        let mut b = H_HALF.to_vec();
        b.extend((0..16u8).map(|i| (15 - i) << 4 | i)); // low = i, high = 15 - i
        let y = GgmlType::Q4_0.dequantize(&b);
        assert_eq!(y.len(), 32);
        assert_eq!(y[0], -4.0); // (0 - 8) · 0.5
        assert_eq!(y[15], 3.5); // (15 - 8) · 0.5
        assert_eq!(y[16], 3.5); // high nibble of byte 0: 15
        assert_eq!(y[31], -4.0);
    }

    #[test]
    fn q4_1_adds_the_minimum() {
        let mut b = H_HALF.to_vec();
        b.extend(H_MINUS_TWO);
        b.extend((0..16u8).map(|i| 3 << 4 | i));
        let y = GgmlType::Q4_1.dequantize(&b);
        assert_eq!(y[0], -2.0);
        assert_eq!(y[10], 3.0); // 10 · 0.5 − 2
        assert_eq!(y[16], -0.5); // 3 · 0.5 − 2
    }

    #[test]
    fn q8_0_is_signed_bytes_times_scale() {
        let mut b = H_QUARTER.to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = GgmlType::Q8_0.dequantize(&b);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 3.75);
    }

    /// 12 scale bytes giving sub-block j the scale j + 1 and the minimum 2j (the
    /// packing of `ggml`'s `get_scale_min_k4`, written out by hand).
    fn k_scales() -> [u8; 12] {
        let sc: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
        let m: [u8; 8] = [0, 2, 4, 6, 8, 10, 12, 14];
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4);
        }
        q
    }

    #[test]
    fn k_scale_unpacking_round_trips() {
        let q = k_scales();
        for j in 0..8 {
            assert_eq!(
                scale_min_k4(j, &q),
                ((j + 1) as f32, (2 * j) as f32),
                "sub-block {j}"
            );
        }
    }

    #[test]
    fn q4_k_scales_each_sub_block() {
        let mut b = H_ONE.to_vec(); // d
        b.extend(H_HALF); // dmin
        b.extend(k_scales());
        // Byte l of chunk c: low nibble 1, high nibble 2.
        b.extend(std::iter::repeat_n(0x21u8, 128));
        let y = GgmlType::Q4K.dequantize(&b);
        assert_eq!(y.len(), 256);
        // Sub-block 2c takes the low nibbles: d·(2c+1)·1 − dmin·(2·2c).
        for c in 0..4 {
            let (lo, hi) = (2 * c, 2 * c + 1);
            assert_eq!(y[64 * c], (lo + 1) as f32 - 0.5 * (2 * lo) as f32);
            assert_eq!(
                y[64 * c + 32],
                (hi + 1) as f32 * 2.0 - 0.5 * (2 * hi) as f32
            );
        }
    }

    #[test]
    fn q5_k_adds_sixteen_for_each_high_bit() {
        let mut b = H_ONE.to_vec();
        b.extend(H_HALF);
        b.extend(k_scales());
        // High bits: weight l of every sub-block has its bit set when l is odd.
        b.extend((0..32).map(|l| if l % 2 == 1 { 0xff } else { 0x00 }));
        b.extend(std::iter::repeat_n(0x21u8, 128));
        let y = GgmlType::Q5K.dequantize(&b);
        assert_eq!(y.len(), 256);
        assert_eq!(y[0], 1.0); // sub-block 0: 1·1 − 0
        assert_eq!(y[1], 17.0); // (1 + 16)·1 − 0
        assert_eq!(y[32 + 1], 2.0 * 18.0 - 1.0); // sub-block 1: 2·(2 + 16) − 0.5·2
    }

    #[test]
    fn q6_k_six_bit_values_signed_scales() {
        let mut b = vec![0u8; 210];
        // ql: every low nibble 5, high nibble 1; qh: all bits 0 except weight 0's
        // upper pair set to 3 (→ +48).
        for v in &mut b[0..128] {
            *v = 0x15;
        }
        b[128] = 0x03;
        // Scales: sub-block s has scale s − 8 (so some are negative).
        for s in 0..16 {
            b[192 + s] = (s as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&H_HALF);
        let y = GgmlType::Q6K.dequantize(&b);
        assert_eq!(y.len(), 256);
        // Weight 0: q = 5 | 3<<4 = 53, −32 → 21; scale −8: 0.5·(−8)·21.
        assert_eq!(y[0], 0.5 * -8.0 * 21.0);
        // Weight 1: q = 5 − 32 = −27, scale −8.
        assert_eq!(y[1], 0.5 * -8.0 * -27.0);
        // Weight 64 (third group of the first half): high nibble 1 − 32, scale index 4.
        assert_eq!(y[64], 0.5 * -4.0 * -31.0);
        // Weight 128 (second half, first group): scales start at 8 → 0.
        assert_eq!(y[128], 0.0);
        // Weight 144: second half, l = 16, scale index 8 + 1 = 9 → 1.
        assert_eq!(y[144], 0.5 * 1.0 * -27.0);
    }
}
