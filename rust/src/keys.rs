//! A request's row keys, decoded once from where they arrived (a message's bytes, a shared
//! buffer, an array) and then handed to every call of that request without another copy.
//! Their largest value is found when they are made, so checking them against a table costs
//! nothing more (a scan happens only to name the bad key).

use crate::codec;
use crate::error::Result;
use crate::table::Table;

#[derive(Debug, Clone)]
pub struct Keys {
    values: Vec<u64>,
    max: Option<u64>,
}

impl Keys {
    pub fn new(values: Vec<u64>) -> Self {
        let max = values.iter().copied().max();
        Keys { values, max }
    }

    /// Keys packed little-endian as `dtype` ("uint64", or "int64" not negative).
    pub fn decode(bytes: &[u8], dtype: &str) -> Result<Self> {
        codec::decode_keys_of(bytes, dtype).map(Keys::new)
    }

    pub fn values(&self) -> &[u64] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Fails naming the first key outside `table`.
    pub fn check(&self, table: &Table) -> Result<()> {
        match self.max {
            Some(max) if max >= table.num_rows() => table.check_keys(&self.values),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DType;
    use crate::init::Initializer;
    use crate::table::format::Header;

    fn table(num_rows: u64) -> (tempfile::TempDir, Table) {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            dtype: DType::F32,
            num_rows,
            dim: 2,
            init: Initializer::Zeros,
            first_row: 0,
        };
        let table = Table::create(dir.path().join("t"), header).unwrap();
        (dir, table)
    }

    #[test]
    fn keys_inside_the_table_pass_and_the_first_outside_is_named() {
        let (_dir, table) = table(10);
        assert!(Keys::new(vec![9, 0, 3]).check(&table).is_ok());
        assert!(Keys::new(vec![]).check(&table).is_ok());
        let error = Keys::new(vec![2, 12, 10])
            .check(&table)
            .unwrap_err()
            .to_string();
        assert!(error.contains("keys[1] = 12"), "{error}");
    }

    #[test]
    fn decoding_keeps_the_order_and_refuses_negative_signed_keys() {
        let bytes: Vec<u8> = [5u64, 1, 7].iter().flat_map(|k| k.to_le_bytes()).collect();
        assert_eq!(Keys::decode(&bytes, "uint64").unwrap().values(), &[5, 1, 7]);
        let negative: Vec<u8> = (-1i64).to_le_bytes().to_vec();
        assert!(Keys::decode(&negative, "int64").is_err());
    }
}
