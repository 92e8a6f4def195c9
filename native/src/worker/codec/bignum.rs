//! Natural numbers of any size, for the element and byte counts status messages print.
//!
//! Python computes `math.prod(shape) * itemsize` with unbounded integers and prints the exact
//! value: a shape of 64 dimensions of 2^63 - 1 needs about 4,000 bits. Only multiplication by
//! a `u64`, comparison with a machine integer and decimal printing are needed.

use std::fmt;

/// A natural number: little-endian 64-bit limbs without trailing zero limbs (0 has none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Natural {
    limbs: Vec<u64>,
}

impl Natural {
    pub fn from_u64(value: u64) -> Natural {
        let mut n = Natural { limbs: vec![value] };
        n.trim();
        n
    }

    /// The product of `factors` (1 for none, as `math.prod`).
    pub fn product(factors: impl IntoIterator<Item = u64>) -> Natural {
        let mut n = Natural::from_u64(1);
        for f in factors {
            n.mul_u64(f);
        }
        n
    }

    pub fn mul_u64(&mut self, factor: u64) {
        let mut carry = 0u128;
        for limb in &mut self.limbs {
            let wide = u128::from(*limb) * u128::from(factor) + carry;
            *limb = wide as u64;
            carry = wide >> 64;
        }
        if carry > 0 {
            self.limbs.push(carry as u64);
        }
        self.trim();
    }

    /// The value when it fits in a `u64`.
    pub fn to_u64(&self) -> Option<u64> {
        match self.limbs.as_slice() {
            [] => Some(0),
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Whether the value equals `n`.
    pub fn equals(&self, n: u64) -> bool {
        self.to_u64() == Some(n)
    }

    fn trim(&mut self) {
        while self.limbs.last() == Some(&0) {
            self.limbs.pop();
        }
    }
}

impl fmt::Display for Natural {
    /// Decimal, as Python's `str(int)` writes a non-negative integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CHUNK: u64 = 10_000_000_000_000_000_000; // 10^19, the largest power in a u64
        let mut rest = self.limbs.clone();
        let mut chunks = Vec::new(); // base 10^19, least significant first
        while !rest.is_empty() {
            let mut rem = 0u128;
            for limb in rest.iter_mut().rev() {
                let cur = (rem << 64) | u128::from(*limb);
                *limb = (cur / u128::from(CHUNK)) as u64;
                rem = cur % u128::from(CHUNK);
            }
            chunks.push(rem as u64);
            while rest.last() == Some(&0) {
                rest.pop();
            }
        }
        let mut out = String::with_capacity(chunks.len() * 19 + 1);
        match chunks.split_last() {
            None => out.push('0'),
            Some((top, lower)) => {
                out.push_str(&top.to_string());
                for c in lower.iter().rev() {
                    out.push_str(&format!("{c:019}"));
                }
            }
        }
        f.pad(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_and_zero() {
        assert_eq!(Natural::product([]).to_string(), "1");
        assert_eq!(Natural::product([3, 0, 7]).to_string(), "0");
        assert_eq!(Natural::product([2, 3, 4]).to_u64(), Some(24));
        assert!(Natural::product([2, 3, 4]).equals(24));
        assert_eq!(
            Natural::from_u64(u64::MAX).to_string(),
            u64::MAX.to_string()
        );
    }

    #[test]
    fn products_beyond_64_bits_are_exact() {
        let max = i64::MAX as u64;
        let n = Natural::product([max, max, 8]);
        assert_eq!(n.to_u64(), None);
        // (2^63 - 1)^2 * 8, as Python prints it.
        assert_eq!(n.to_string(), "680564733841876926779175262273860009992");
        assert_eq!(
            Natural::product([10_000_000_000_000_000_000, 10_000_000_000_000_000_000, 7])
                .to_string(),
            format!("7{}", "0".repeat(38))
        );
    }

    #[test]
    fn sixty_four_huge_dims_print_every_digit() {
        // (2^63 - 1)^64 * 8: compare with the value computed digit by digit in base 10.
        let max = i64::MAX as u64;
        let n = Natural::product(std::iter::repeat_n(max, 64).chain([8]));
        let mut digits = vec![1u32]; // least significant first
        for f in std::iter::repeat_n(max, 64).chain([8]) {
            let mut carry = 0u128;
            for d in &mut digits {
                let v = u128::from(*d) * u128::from(f) + carry;
                *d = (v % 10) as u32;
                carry = v / 10;
            }
            while carry > 0 {
                digits.push((carry % 10) as u32);
                carry /= 10;
            }
        }
        let want: String = digits.iter().rev().map(|d| d.to_string()).collect();
        assert_eq!(n.to_string(), want);
        assert_eq!(want.len(), 1215);
    }
}
