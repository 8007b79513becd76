//! Table sizes of the reference: every head of every n-gram order of every layer gets its
//! own prime, the next one above the search start that no earlier head has taken.

use std::collections::HashSet;

/// Deterministic Miller-Rabin: these bases decide primality for every 64-bit integer.
pub fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for &p in &BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let mut d = n - 1;
    let mut s = 0;
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    'witness: for &a in &BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut result = 1u64;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    result
}

/// The smallest prime strictly greater than `start` that is not in `taken`.
pub fn next_unused_prime(start: u64, taken: &HashSet<u64>) -> Option<u64> {
    let mut candidate = start.checked_add(1)?;
    loop {
        if is_prime(candidate) && !taken.contains(&candidate) {
            return Some(candidate);
        }
        candidate = candidate.checked_add(1)?;
    }
}

/// `sizes[layer][order - 2][head]`, following the reference's order of search: layers in the
/// given order, then n-gram orders 2..=max, then heads; each order's search starts at
/// `vocab_sizes[order - 2] - 1` and continues from the previous head's prime.
pub fn table_sizes(
    vocab_sizes: &[u64],
    n_head: usize,
    n_layers: usize,
) -> Option<Vec<Vec<Vec<u64>>>> {
    let mut taken = HashSet::new();
    let mut layers = Vec::with_capacity(n_layers);
    for _ in 0..n_layers {
        let mut orders = Vec::with_capacity(vocab_sizes.len());
        for &vocab in vocab_sizes {
            let mut heads = Vec::with_capacity(n_head);
            let mut start = vocab.checked_sub(1)?;
            for _ in 0..n_head {
                let prime = next_unused_prime(start, &taken)?;
                taken.insert(prime);
                heads.push(prime);
                start = prime;
            }
            orders.push(heads);
        }
        layers.push(orders);
    }
    Some(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primality_agrees_with_trial_division() {
        for n in 0u64..20_000 {
            let trial = n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
            assert_eq!(is_prime(n), trial, "n={n}");
        }
    }

    #[test]
    fn primality_of_large_known_values() {
        assert!(is_prime((1 << 61) - 1));
        assert!(is_prime(18_446_744_073_709_551_557)); // largest 64-bit prime
        assert!(!is_prime(3_215_031_751)); // strong pseudoprime to bases 2, 3, 5, 7
        assert!(!is_prime(u64::MAX));
    }

    #[test]
    fn heads_take_distinct_primes_across_layers() {
        let sizes = table_sizes(&[40960, 40960], 8, 2).unwrap();
        // From the published reference (shared/reference/engram-hash/cases.json).
        assert_eq!(
            sizes[0][0],
            vec![40961, 40973, 40993, 41011, 41017, 41023, 41039, 41047]
        );
        assert_eq!(sizes[1][1][7], 41257);
        let all: Vec<u64> = sizes.iter().flatten().flatten().copied().collect();
        let unique: HashSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn search_start_of_one_is_allowed_and_zero_is_not() {
        assert_eq!(table_sizes(&[1], 2, 1).unwrap(), vec![vec![vec![2, 3]]]);
        assert!(table_sizes(&[0], 1, 1).is_none());
    }
}
