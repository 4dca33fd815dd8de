//! Reading, request and batch ids: UUIDv7 (RFC 9562), time-ordered so the collector's index
//! stays append-mostly, with 74 random bits from the host's CSPRNG via `getrandom`.

/// Draws the randomness for `count` ids in one call: on Workers each `getrandom` call is a
/// crossing into JavaScript's `crypto.getRandomValues`, so a 500-reading batch costs one, not 500.
pub struct IdSource {
    unix_ms: u64,
    entropy: Vec<u8>,
    next: usize,
}

const BYTES_PER_ID: usize = 10;

#[derive(Debug)]
pub struct EntropyUnavailable;

impl IdSource {
    pub fn new(unix_ms: u64, count: usize) -> Result<Self, EntropyUnavailable> {
        let mut entropy = vec![0u8; count * BYTES_PER_ID];
        // getRandomValues refuses more than 65536 bytes per call.
        for chunk in entropy.chunks_mut(65_536) {
            getrandom::fill(chunk).map_err(|_| EntropyUnavailable)?;
        }
        Ok(Self {
            unix_ms,
            entropy,
            next: 0,
        })
    }

    /// The next id, or None once the `count` ids asked for are used up.
    pub fn next_id(&mut self) -> Option<String> {
        let rand = self.entropy.get(self.next..self.next + BYTES_PER_ID)?;
        self.next += BYTES_PER_ID;
        Some(uuid_v7(self.unix_ms, rand.try_into().ok()?))
    }
}

/// One fresh id, for requests and batches.
pub fn new_id(unix_ms: u64) -> Result<String, EntropyUnavailable> {
    IdSource::new(unix_ms, 1)?
        .next_id()
        .ok_or(EntropyUnavailable)
}

pub(crate) fn uuid_v7(unix_ms: u64, rand: [u8; BYTES_PER_ID]) -> String {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&rand);
    b[6] = 0x70 | (b[6] & 0x0f); // version 7
    b[8] = 0x80 | (b[8] & 0x3f); // RFC 9562 variant
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v7_layout() {
        let id = uuid_v7(0x0189_abcd_ef01, [0xff; 10]);
        assert_eq!(id, "0189abcd-ef01-7fff-bfff-ffffffffffff");
    }

    #[test]
    fn ids_are_unique_and_counted() {
        let mut src = IdSource::new(1_700_000_000_000, 1000).unwrap();
        let mut ids: Vec<_> = std::iter::from_fn(|| src.next_id()).collect();
        assert_eq!(ids.len(), 1000);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 36 && &i[14..15] == "7"));
    }
}
