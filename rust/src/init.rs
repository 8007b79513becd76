//! Initial values of rows that were never written.
//!
//! A table of billions of rows cannot be initialised eagerly, so a row's initial value is a
//! pure function of (table seed, row index, column): Philox4x32-10 (Salmon et al., "Parallel
//! random numbers: as easy as 1, 2, 3", the generator of cuRAND, JAX and PyTorch) keyed by
//! the seed and counted by (row, column group), turned into normals by Box-Muller. The
//! transcendental functions come from the pure-Rust `libm`, so every machine computes the
//! same bits.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Initializer {
    Zeros,
    /// Normal with mean 0 and standard deviation `std`.
    Normal {
        std: f64,
        seed: u64,
    },
    /// Every element the same value (optimizer accumulators start this way).
    Constant(f32),
}

impl Initializer {
    pub fn normal(std: f64, seed: u64) -> Result<Self> {
        if !std.is_finite() || std < 0.0 {
            return Err(Error::invalid(format!(
                "init std must be finite and non-negative, got {std}"
            )));
        }
        Ok(Initializer::Normal { std, seed })
    }

    /// Fills `row` with the initial value of row `row_index`.
    pub fn fill_row(&self, row_index: u64, row: &mut [f32]) {
        match *self {
            Initializer::Zeros => row.fill(0.0),
            Initializer::Constant(value) => row.fill(value),
            Initializer::Normal { std, seed } => {
                for (group, values) in row.chunks_mut(4).enumerate() {
                    let normals = standard_normals(seed, row_index, group as u64);
                    for (v, n) in values.iter_mut().zip(normals) {
                        *v = (n * std) as f32;
                    }
                }
            }
        }
    }
}

/// Four independent standard normals for counter (row, group) under key `seed`.
fn standard_normals(seed: u64, row: u64, group: u64) -> [f64; 4] {
    let counter = [
        row as u32,
        (row >> 32) as u32,
        group as u32,
        (group >> 32) as u32,
    ];
    let bits = philox4x32_10(counter, [seed as u32, (seed >> 32) as u32]);
    let (a, b) = box_muller(bits[0], bits[1]);
    let (c, d) = box_muller(bits[2], bits[3]);
    [a, b, c, d]
}

fn box_muller(u_bits: u32, v_bits: u32) -> (f64, f64) {
    // (0, 1] so the logarithm is finite.
    let u = (f64::from(u_bits) + 1.0) / 4_294_967_296.0;
    let v = f64::from(v_bits) / 4_294_967_296.0;
    let radius = libm::sqrt(-2.0 * libm::log(u));
    let angle = 2.0 * std::f64::consts::PI * v;
    (radius * libm::cos(angle), radius * libm::sin(angle))
}

/// The Philox4x32 bijection with the standard ten rounds.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let p0 = M0 * u64::from(ctr[0]);
        let p1 = M1 * u64::from(ctr[2]);
        ctr = [
            ((p1 >> 32) as u32) ^ ctr[1] ^ key[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ ctr[3] ^ key[1],
            p0 as u32,
        ];
    }
    ctr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_published_known_answers() {
        // Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32 10 rounds).
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn rows_are_deterministic_and_distinct() {
        let init = Initializer::normal(0.02, 42).unwrap();
        let mut a = vec![0f32; 61];
        let mut b = vec![0f32; 61];
        init.fill_row(123_456_789_012, &mut a);
        init.fill_row(123_456_789_012, &mut b);
        assert_eq!(a, b);
        init.fill_row(123_456_789_013, &mut b);
        assert_ne!(a, b);
        let other_seed = Initializer::normal(0.02, 43).unwrap();
        other_seed.fill_row(123_456_789_012, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn normal_rows_have_the_requested_moments() {
        let init = Initializer::normal(0.5, 7).unwrap();
        let mut row = vec![0f32; 64];
        let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
        for r in 0..4000 {
            init.fill_row(r, &mut row);
            for &v in &row {
                sum += f64::from(v);
                sum_sq += f64::from(v) * f64::from(v);
                n += 1.0;
            }
        }
        let mean = sum / n;
        let std = (sum_sq / n - mean * mean).sqrt();
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((std - 0.5).abs() < 0.01, "std {std}");
    }

    #[test]
    fn zeros_and_invalid_std() {
        let mut row = vec![1f32; 5];
        Initializer::Zeros.fill_row(3, &mut row);
        assert_eq!(row, vec![0.0; 5]);
        assert!(Initializer::normal(-1.0, 0).is_err());
        assert!(Initializer::normal(f64::NAN, 0).is_err());
    }
}
