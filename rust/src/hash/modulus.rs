//! Division-free `x mod p` for a fixed modulus.
//!
//! Hashing reduces every n-gram mix by 8-16 different primes per token; a 64-bit hardware
//! division per head would dominate the kernel, so each modulus precomputes a Barrett
//! reciprocal and reduces with one widening multiply, one multiply and one conditional
//! subtraction.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    p: u64,
    /// floor(2^64 / p): the Barrett reciprocal.
    reciprocal: u64,
    /// 2^64 mod p, to turn the unsigned remainder of a negative value into its floor modulo.
    two_pow_64_mod_p: u64,
}

impl Modulus {
    /// `p` must be at least 2 (a modulus of 0 or 1 has no use as a table size).
    pub fn new(p: u64) -> Option<Self> {
        if p < 2 {
            return None;
        }
        let two_pow_64 = 1u128 << 64;
        Some(Modulus {
            p,
            reciprocal: (two_pow_64 / u128::from(p)) as u64,
            two_pow_64_mod_p: (two_pow_64 % u128::from(p)) as u64,
        })
    }

    pub fn value(&self) -> u64 {
        self.p
    }

    /// `x mod p` for any u64 `x`.
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        // q underestimates floor(x / p) by at most one, so r < 2p.
        let q = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
        let r = x.wrapping_sub(q.wrapping_mul(self.p));
        if r >= self.p {
            r - self.p
        } else {
            r
        }
    }

    /// Floor modulo of a signed value, in `[0, p)`: what numpy's `%` gives for int64.
    #[inline(always)]
    pub fn floor_mod(&self, x: i64) -> u64 {
        let r = self.reduce(x as u64);
        if x >= 0 {
            r
        } else if r >= self.two_pow_64_mod_p {
            // Rare in practice: the reference bounds multipliers so that valid mixes do not
            // overflow, which keeps this branch predictable.
            // x = (x as u64) - 2^64, so x mod p = (r - 2^64 mod p) mod p.
            r - self.two_pow_64_mod_p
        } else {
            r + self.p - self.two_pow_64_mod_p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_euclidean_remainder_on_edge_values() {
        let values = [
            0i64,
            1,
            -1,
            2,
            -2,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
            i64::MAX - 1,
            1 << 40,
            -(1 << 40),
            123_456_789_012_345,
            -987_654_321_098_765,
        ];
        let primes = [2u64, 3, 5, 40961, 41257, 1_000_000_007, (1 << 61) - 1];
        for &p in &primes {
            let m = Modulus::new(p).unwrap();
            for &x in &values {
                assert_eq!(m.floor_mod(x), x.rem_euclid(p as i64) as u64, "x={x} p={p}");
                assert_eq!(m.reduce(x as u64), (x as u64) % p, "x={x} p={p}");
            }
        }
    }

    #[test]
    fn matches_euclidean_remainder_on_pseudo_random_values() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for p in [7u64, 65_537, 4_294_967_311, u64::MAX / 3] {
            let m = Modulus::new(p).unwrap();
            for _ in 0..100_000 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let x = state as i64;
                assert_eq!(m.floor_mod(x), x.rem_euclid(p as i64) as u64);
                assert_eq!(m.reduce(state), state % p);
            }
        }
    }

    #[test]
    fn rejects_degenerate_moduli() {
        assert!(Modulus::new(0).is_none());
        assert!(Modulus::new(1).is_none());
    }
}
