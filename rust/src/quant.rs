//! Quantized rows, for serving tables imported from quantized checkpoints.
//!
//! Two formats, both with one scale per group of [`GROUP`] consecutive values and both laid
//! out per row as the row's value bytes followed by its scales, so that a row is one
//! contiguous read:
//! - FP8 E4M3 (the `float8_e4m3fn` encoding: no infinities, codes 0x7F and 0xFF are NaN)
//!   with an E8M0 scale byte per group, worth 2^(code - 127) (code 255 is NaN): 264 bytes
//!   for 256 values;
//! - int8 with a little-endian float32 scale per group: 288 bytes for 256 values.
//!
//! Dequantization is exact: a value is its code's float32 value times the group's scale,
//! one float32 multiplication by a power of two (FP8) or by the scale (int8), bit for bit
//! what `fp8.float() * 2.0 ** (scale - 127)` gives in torch.
//!
//! Quantization (exporting a float table) follows the UE8M0 rule of DeepSeek's released
//! inference kernels and of vLLM's reference quantizers: a group's scale is the smallest
//! power of two not below `amax / 448`, computed exactly from the float32 quotient's bits
//! (`torch.log2` may round a quotient just above a power of two down), and each value is
//! `value / scale` rounded to the nearest E4M3 value, ties to even. A group of zeros gets
//! scale 2^-127. int8 uses `scale = amax / 127` and rounds `value / scale` to the nearest
//! integer, ties to even (a group of zeros gets scale 1).

/// Values per scale.
pub const GROUP: usize = 32;
/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The largest int8 magnitude used (symmetric: -127..=127).
const INT8_MAX: f32 = 127.0;

const fn e4m3_bits(code: u8) -> u32 {
    let sign = ((code >> 7) as u32) << 31;
    let exponent = ((code >> 3) & 0xF) as u32;
    let mantissa = (code & 7) as u32;
    if exponent == 0xF && mantissa == 7 {
        return sign | 0x7FC0_0000;
    }
    if exponent == 0 {
        if mantissa == 0 {
            return sign;
        }
        // mantissa x 2^-9, normalised: its leading bit sets the exponent.
        let lead = 31 - mantissa.leading_zeros();
        let fraction = (mantissa << (23 - lead)) & 0x7F_FFFF;
        return sign | ((127 - 9 + lead) << 23) | fraction;
    }
    sign | ((exponent + 127 - 7) << 23) | (mantissa << 20)
}

const fn e4m3_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = e4m3_bits(code as u8);
        code += 1;
    }
    table
}

/// The float32 bits of every E4M3 code.
static E4M3_BITS: [u32; 256] = e4m3_table();

/// The float32 value of an E4M3 code.
pub fn e4m3_to_f32(code: u8) -> f32 {
    f32::from_bits(E4M3_BITS[code as usize])
}

/// The value of an E8M0 scale code: 2^(code - 127); 255 is NaN.
pub fn e8m0_to_f32(code: u8) -> f32 {
    match code {
        255 => f32::NAN,
        // 2^-127 is a float32 subnormal.
        0 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits((code as u32) << 23),
    }
}

/// The E4M3 code nearest to `value` (ties to even); NaN for NaN and for magnitudes above
/// 464, which round beyond the largest finite value, 448 (as torch's conversion does).
pub fn f32_to_e4m3(value: f32) -> u8 {
    let sign = if value.is_sign_negative() { 0x80 } else { 0 };
    let magnitude = value.abs();
    if magnitude.is_nan() || magnitude >= 480.0 {
        return sign | 0x7F;
    }
    // Below 2^-6 the codes are subnormal: multiples of 2^-9 (code = the multiple, which
    // also reaches the first normal code, 8, at 2^-6).
    if magnitude < f32::from_bits((127 - 6) << 23) {
        let multiple = (magnitude * 512.0).round_ties_even();
        return sign | multiple as u8;
    }
    // A normal code keeps the top 3 of float32's 23 fraction bits, rounded to nearest even
    // on the 20 it drops: integer work, no division.
    let bits = magnitude.to_bits();
    let exponent = ((bits >> 23) as i32) - 127;
    let dropped = bits & 0xF_FFFF;
    let mut fraction = (bits >> 20) & 0x7;
    if dropped > 0x8_0000 || (dropped == 0x8_0000 && fraction & 1 == 1) {
        fraction += 1;
    }
    let mut biased = (exponent + 7) as u32;
    if fraction == 8 {
        fraction = 0;
        biased += 1;
    }
    sign | ((biased << 3) | fraction) as u8
}

/// The E8M0 code of the smallest power of two not below `amax / 448` (clamped to the
/// codes 0..=254), exact from the float32 quotient's bits.
pub fn e8m0_scale_for(amax: f32) -> u8 {
    let quotient = amax / E4M3_MAX;
    if quotient.is_nan() || quotient == 0.0 {
        return 0;
    }
    if quotient.is_infinite() {
        return 254;
    }
    let bits = quotient.to_bits();
    let (exponent, exact) = if bits >> 23 == 0 {
        // A subnormal quotient: below 2^-126, so at most 2^-126, code 1 (or 0 for 2^-127).
        let exponent = -149 + (31 - bits.leading_zeros() as i32);
        (exponent, bits.is_power_of_two())
    } else {
        (((bits >> 23) as i32) - 127, bits & 0x7F_FFFF == 0)
    };
    let ceiling = if exact { exponent } else { exponent + 1 };
    (ceiling + 127).clamp(0, 254) as u8
}

/// The largest magnitude of a group (0 for an empty one).
fn amax_of(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Bytes of a quantized run of `values` values with `scale_bytes` per group.
pub const fn packed_bytes(values: usize, scale_bytes: usize) -> usize {
    values + values / GROUP * scale_bytes
}

/// Dequantizes one FP8 row (`dim` codes then `dim / GROUP` scales) into float32 `out`.
pub fn fp8_row_to_f32(row: &[u8], out: &mut [f32]) {
    let dim = out.len();
    let (codes, scales) = row.split_at(dim);
    for ((values, codes), &scale) in out
        .chunks_exact_mut(GROUP)
        .zip(codes.chunks_exact(GROUP))
        .zip(scales)
    {
        let scale = e8m0_to_f32(scale);
        for (value, &code) in values.iter_mut().zip(codes) {
            *value = e4m3_to_f32(code) * scale;
        }
    }
}

/// Dequantizes one FP8 row into bfloat16 `out` (little-endian, 2 bytes a value), equal to
/// rounding [`fp8_row_to_f32`]'s values to nearest even. Compiled twice, for the baseline
/// CPU and for AVX2 (twice the lanes), chosen at run time.
pub fn fp8_row_to_bf16(row: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2, checked just above.
        return unsafe { fp8_row_to_bf16_avx2(row, out) };
    }
    fp8_row_to_bf16_portable(row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fp8_row_to_bf16_avx2(row: &[u8], out: &mut [u8]) {
    fp8_row_to_bf16_portable(row, out);
}

/// Scale codes (2^+-100) that keep every E4M3 value's product a normal bfloat16 number.
const NORMAL_SCALES: std::ops::RangeInclusive<u8> = 127 - 100..=127 + 100;

/// A group whose scale keeps every product a normal number takes an integer path: the
/// shortest ([`normal_group_to_bf16`]) where it has no zero, subnormal or NaN code, as almost
/// every group of a trained table, else [`fp8_group_to_bf16`] (shorter where the group has
/// no subnormal code). A group of any other scale computes each float32 product and rounds
/// it.
#[inline(always)]
fn fp8_row_to_bf16_portable(row: &[u8], out: &mut [u8]) {
    let dim = out.len() / 2;
    let (codes, scales) = row.split_at(dim);
    for ((out, codes), &scale_code) in out
        .chunks_exact_mut(2 * GROUP)
        .zip(codes.chunks_exact(GROUP))
        .zip(scales)
    {
        let codes: &[u8; GROUP] = codes.try_into().expect("a group is GROUP codes");
        if NORMAL_SCALES.contains(&scale_code) {
            let out: &mut [u8; 2 * GROUP] = out.try_into().expect("a group is 2 x GROUP bytes");
            if !codes
                .iter()
                .fold(false, |any, &code| any | is_special(code))
            {
                normal_group_to_bf16(codes, scale_code, out);
                continue;
            }
            let values = if codes
                .iter()
                .fold(false, |any, &code| any | is_subnormal(code))
            {
                fp8_group_to_bf16::<true>(codes, scale_code)
            } else {
                fp8_group_to_bf16::<false>(codes, scale_code)
            };
            out.copy_from_slice(le_bytes_of(&values));
        } else {
            let scale = e8m0_to_f32(scale_code);
            for (dst, &code) in out.chunks_exact_mut(2).zip(codes) {
                let value = e4m3_to_f32(code) * scale;
                dst.copy_from_slice(&half::bf16::from_f32(value).to_le_bytes());
            }
        }
    }
}

/// Whether an E4M3 code is zero, subnormal or NaN: a code that [`normal_group_to_bf16`]
/// cannot take (magnitudes 0..=7 and 0x7F, the ones that adding one, modulo 128, puts at or
/// below 8).
#[inline(always)]
fn is_special(code: u8) -> bool {
    (code.wrapping_add(1) & 0x7F) <= 8
}

/// One group of normal codes (no zero, subnormal or NaN: almost every group of a trained
/// table), for a scale within 2^+-100: the code sign-extended and shifted puts its sign at
/// bfloat16's sign bit and its magnitude bits at their places, and adding the exponent's
/// offset (the scale's less E4M3's bias, 7) cannot carry into the sign (the field is at
/// most 15 + 227 - 7 = 235). Three integer operations a value, which the compiler vectorises.
#[inline(always)]
fn normal_group_to_bf16(codes: &[u8; GROUP], scale_code: u8, out: &mut [u8; 2 * GROUP]) {
    let offset = (u16::from(scale_code) - 7) << 7;
    for (dst, &code) in out.chunks_exact_mut(2).zip(codes) {
        let widened = i16::from(code as i8) as u16;
        let bits = ((widened << 4) & 0x87F0) + offset;
        dst.copy_from_slice(&bits.to_le_bytes());
    }
}

/// Whether an E4M3 code is subnormal (a nonzero multiple of 2^-9 below 2^-6).
#[inline(always)]
fn is_subnormal(code: u8) -> bool {
    (code & 0x7F).wrapping_sub(1) < 7
}

/// One group's bfloat16 bits, for a scale within 2^+-100. Every E4M3 value times such a
/// scale is a normal bfloat16, exact, and its bits come from integer arithmetic alone: a
/// normal code's magnitude bits moved into bfloat16's places, its exponent raised by the
/// bias difference and the scale's exponent (7 is E4M3's bias); a subnormal code's
/// mantissa m (worth m x 2^-9) normalised by its leading bit, work compiled in only where
/// `SUBNORMALS` says the group may hold one. Written branch-free, with masks, over 16-bit
/// lanes so that the compiler vectorises it: this loop is most of what an FP8 serving
/// lookup costs.
#[inline(always)]
fn fp8_group_to_bf16<const SUBNORMALS: bool>(codes: &[u8; GROUP], scale_code: u8) -> [u16; GROUP] {
    let mask = |condition: bool| 0u16.wrapping_sub(u16::from(condition));
    let scale_exponent = u16::from(scale_code);
    let mut out = [0u16; GROUP];
    for (value, &code) in out.iter_mut().zip(codes) {
        let code = u16::from(code);
        let magnitude = code & 0x7F;
        let sign = (code & 0x80) << 8;
        let mut bits = (magnitude << 4) + ((scale_exponent - 7) << 7);
        if SUBNORMALS {
            // m x 2^(s - 136), m in 1..=7: exponent field s - 9 + lead, where lead is m's
            // leading bit; shifting that bit to bit 7 adds the one that the field needs.
            let at_least_2 = mask(magnitude >= 2);
            let at_least_4 = mask(magnitude >= 4);
            let lead = (at_least_2 & 1) + (at_least_4 & 1);
            let normalised = (magnitude << 7) & !at_least_2
                | (magnitude << 6) & at_least_2 & !at_least_4
                | (magnitude << 5) & at_least_4;
            let subnormal = normalised + ((scale_exponent + lead - 10) << 7);
            let is_subnormal = mask(magnitude < 8);
            bits = subnormal & is_subnormal | bits & !is_subnormal;
        }
        bits &= !mask(magnitude == 0);
        let is_nan = mask(magnitude == 0x7F);
        *value = (bits & !is_nan | 0x7FC0 & is_nan) | sign;
    }
    out
}

/// The bytes of `values` as stored little-endian (this crate builds only for little-endian
/// targets: see lib.rs), viewed in place.
fn le_bytes_of(values: &[u16; GROUP]) -> &[u8] {
    // SAFETY: u16s are plain bytes, u8 has no alignment, and the length is exact.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), 2 * GROUP) }
}

/// Quantizes float32 `values` into one FP8 row (`values.len()` codes then the scales).
pub fn f32_to_fp8_row(values: &[f32], row: &mut [u8]) {
    let dim = values.len();
    let (codes, scales) = row.split_at_mut(dim);
    for ((values, codes), scale_code) in values
        .chunks_exact(GROUP)
        .zip(codes.chunks_exact_mut(GROUP))
        .zip(scales.iter_mut())
    {
        *scale_code = e8m0_scale_for(amax_of(values));
        // The reciprocal of a power of two (2^-127..2^127) is one too, so multiplying by it
        // rounds exactly as dividing would.
        let inverse = e8m0_to_f32(254 - *scale_code);
        for (code, &value) in codes.iter_mut().zip(values) {
            *code = f32_to_e4m3(value * inverse);
        }
    }
}

/// Dequantizes one int8 row (`dim` values then `dim / GROUP` float32 scales) into `out`.
pub fn int8_row_to_f32(row: &[u8], out: &mut [f32]) {
    let dim = out.len();
    let (codes, scales) = row.split_at(dim);
    for ((values, codes), scale) in out
        .chunks_exact_mut(GROUP)
        .zip(codes.chunks_exact(GROUP))
        .zip(scales.chunks_exact(4))
    {
        let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        for (value, &code) in values.iter_mut().zip(codes) {
            *value = f32::from(code as i8) * scale;
        }
    }
}

/// Quantizes float32 `values` into one int8 row.
pub fn f32_to_int8_row(values: &[f32], row: &mut [u8]) {
    let dim = values.len();
    let (codes, scales) = row.split_at_mut(dim);
    for ((values, codes), scale_bytes) in values
        .chunks_exact(GROUP)
        .zip(codes.chunks_exact_mut(GROUP))
        .zip(scales.chunks_exact_mut(4))
    {
        let amax = amax_of(values);
        let scale = if amax > 0.0 && amax.is_finite() {
            amax / INT8_MAX
        } else {
            1.0
        };
        scale_bytes.copy_from_slice(&scale.to_le_bytes());
        for (code, &value) in codes.iter_mut().zip(values) {
            let q = (value / scale).round_ties_even().clamp(-INT8_MAX, INT8_MAX);
            *code = q as i8 as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_codes_decode_to_their_values() {
        // Spot values of the float8_e4m3fn encoding.
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert!(e4m3_to_f32(0x80).is_sign_negative());
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x3C), 1.5);
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        // Every other code of exponent 15 is finite (no infinities in this encoding).
        assert_eq!(e4m3_to_f32(0x78), 256.0);
    }

    #[test]
    fn every_finite_code_encodes_back_to_itself() {
        for code in 0..=255u8 {
            let value = e4m3_to_f32(code);
            if value.is_nan() {
                assert_eq!(f32_to_e4m3(value) & 0x7F, 0x7F);
            } else {
                assert_eq!(f32_to_e4m3(value), code, "{code:#x} = {value}");
            }
        }
    }

    /// The encoder as first written (by division), kept to check the integer one against.
    fn e4m3_by_division(value: f32) -> u8 {
        let sign = if value.is_sign_negative() { 0x80 } else { 0 };
        let magnitude = value.abs();
        if magnitude.is_nan() || magnitude >= 480.0 {
            return sign | 0x7F;
        }
        if magnitude < f32::from_bits((127 - 6) << 23) {
            return sign | (magnitude * 512.0).round_ties_even() as u8;
        }
        let exponent = ((magnitude.to_bits() >> 23) as i32) - 127;
        let scaled = magnitude / f32::from_bits(((exponent + 127) as u32) << 23);
        let mut fraction = ((scaled - 1.0) * 8.0).round_ties_even() as u32;
        let mut biased = (exponent + 7) as u32;
        if fraction == 8 {
            fraction = 0;
            biased += 1;
        }
        sign | ((biased << 3) | fraction) as u8
    }

    #[test]
    fn the_integer_encoder_agrees_with_division_on_every_4096th_float() {
        for high in 0..(1u32 << 20) {
            let value = f32::from_bits(high << 12 | (high & 0xFFF));
            assert_eq!(f32_to_e4m3(value), e4m3_by_division(value), "{value:e}");
        }
        // And on every tie and its neighbours between codes.
        for code in 0..0x7Eu8 {
            let (low, high) = (e4m3_to_f32(code), e4m3_to_f32(code + 1));
            let middle = (low + high) / 2.0;
            for value in [middle, middle.next_up(), middle.next_down()] {
                assert_eq!(f32_to_e4m3(value), e4m3_by_division(value), "{value:e}");
            }
        }
    }

    #[test]
    fn quantizing_by_the_inverse_scale_is_dividing_by_the_scale() {
        for scale_code in 0..=254u8 {
            let scale = e8m0_to_f32(scale_code);
            let inverse = e8m0_to_f32(254 - scale_code);
            for value in [1.0f32, 447.9, 3.3e-5, -7.1, 1e30, 2.2e-38] {
                assert_eq!((value * inverse).to_bits(), (value / scale).to_bits());
            }
        }
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_overflows_to_nan() {
        // Between 1.0 (0x38, even) and 1.125 (0x39): the tie goes to the even code.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.0626), 0x39);
        // Between 1.125 (0x39) and 1.25 (0x3A, even).
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        assert_eq!(f32_to_e4m3(464.0), 0x7E);
        assert_eq!(f32_to_e4m3(464.1), 0x7F);
        assert_eq!(f32_to_e4m3(480.0), 0x7F);
        assert_eq!(f32_to_e4m3(-1e9), 0xFF);
        // Half the smallest subnormal rounds to zero (even), just above it to the subnormal.
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00);
        assert_eq!(f32_to_e4m3(2f32.powi(-10) * 1.01), 0x01);
        // The largest subnormal rounds up into the first normal code.
        assert_eq!(f32_to_e4m3(7.5 * 2f32.powi(-9)), 0x08);
    }

    #[test]
    fn e8m0_scales_are_powers_of_two() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(128), 2.0);
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
        assert!(e8m0_to_f32(255).is_nan());
    }

    #[test]
    fn a_groups_scale_is_the_smallest_power_of_two_that_fits_its_largest_value() {
        assert_eq!(e8m0_scale_for(448.0), 127);
        assert_eq!(e8m0_scale_for(448.0 * 1.0001), 128);
        assert_eq!(e8m0_scale_for(224.0), 126);
        assert_eq!(e8m0_scale_for(1.0), 127 - 8); // 1/448 -> 2^-8
        assert_eq!(e8m0_scale_for(0.0), 0);
        // f32::MAX / 448 is just below 2^120.
        assert_eq!(e8m0_scale_for(f32::MAX), 127 + 120);
        assert_eq!(e8m0_scale_for(f32::INFINITY), 254);
    }

    #[test]
    fn fp8_rows_round_trip_through_their_values() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let mut row = vec![0u8; packed_bytes(64, 1)];
        f32_to_fp8_row(&values, &mut row);
        let mut back = vec![0f32; 64];
        fp8_row_to_f32(&row, &mut back);
        for (a, b) in values.iter().zip(&back) {
            // Three mantissa bits: within 1/16 relative, or a subnormal step.
            assert!((a - b).abs() <= a.abs() / 16.0 + 1e-3, "{a} -> {b}");
        }
    }

    #[test]
    fn bfloat16_rows_equal_rounded_float32_rows_at_every_code_and_scale() {
        // Every code, so half the groups hold subnormal codes; then every code but the
        // subnormal ones (zeros and NaNs among them), so that every group takes the path
        // of groups without subnormals; then only normal codes, each group on the path of
        // groups with no special code.
        let not_subnormal: Vec<u8> = (0..=255u8).filter(|&c| !is_subnormal(c)).collect();
        let normal: Vec<u8> = (0..=255u8).filter(|&c| !is_special(c)).collect();
        let rows_of_codes: [Vec<u8>; 3] = [
            (0..=255u8).collect(),
            not_subnormal.iter().copied().cycle().take(256).collect(),
            normal.iter().copied().cycle().take(512).collect(),
        ];
        for codes in rows_of_codes {
            check_bfloat16_rows_at_every_scale(&codes);
        }
    }

    #[test]
    fn special_codes_are_zeros_subnormals_and_nans() {
        let special: Vec<u8> = (0..=255u8).filter(|&c| is_special(c)).collect();
        let expected: Vec<u8> = (0..=7)
            .chain([0x7F])
            .chain(0x80..=0x87)
            .chain([0xFF])
            .collect();
        assert_eq!(special, expected);
    }

    fn check_bfloat16_rows_at_every_scale(codes: &[u8]) {
        let dim = codes.len();
        for scale in 0..=255u8 {
            let mut row = codes.to_vec();
            row.extend(std::iter::repeat_n(scale, dim / GROUP));
            let mut exact = vec![0f32; dim];
            fp8_row_to_f32(&row, &mut exact);
            // The build for this CPU (AVX2 where it has it) and the baseline build alike.
            let mut dispatched = vec![0u8; 2 * dim];
            fp8_row_to_bf16(&row, &mut dispatched);
            let mut portable = vec![0u8; 2 * dim];
            fp8_row_to_bf16_portable(&row, &mut portable);
            for fast in [dispatched, portable] {
                for (value, bits) in exact.iter().zip(fast.chunks_exact(2)) {
                    let got = half::bf16::from_le_bytes([bits[0], bits[1]]);
                    let expected = half::bf16::from_f32(*value);
                    if value.is_nan() {
                        assert!(got.is_nan());
                    } else {
                        assert_eq!(got.to_bits(), expected.to_bits(), "scale {scale}: {value}");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_rows_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..32).map(|i| (i as f32).sin() * 3.0).collect();
        let mut row = vec![0u8; packed_bytes(32, 4)];
        f32_to_int8_row(&values, &mut row);
        let mut back = vec![0f32; 32];
        int8_row_to_f32(&row, &mut back);
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 127.0 / 2.0 * 1.0001, "{a} -> {b}");
        }
        let zeros = [0f32; 32];
        f32_to_int8_row(&zeros, &mut row);
        int8_row_to_f32(&row, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
    }
}
