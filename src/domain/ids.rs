//! Reading, request and batch ids: UUIDv7 (RFC 9562), time-ordered so the collector's index
//! stays append-mostly, with 74 random bits each. The randomness comes from the caller (the
//! host's CSPRNG through the `Entropy` port), so tests can fix it.

/// Ids from randomness drawn at once for all of them: on Workers each draw is a crossing into
/// JavaScript's `crypto.getRandomValues`, so a 500-reading batch costs one, not 500.
pub struct IdSource {
    unix_ms: u64,
    entropy: Vec<u8>,
    next: usize,
}

/// Random bytes each id takes.
pub const BYTES_PER_ID: usize = 10;

impl IdSource {
    /// Ids at `unix_ms` from `random`: `random.len() / BYTES_PER_ID` of them.
    pub fn new(unix_ms: u64, random: Vec<u8>) -> Self {
        Self {
            unix_ms,
            entropy: random,
            next: 0,
        }
    }

    /// The next id, or None once the `count` ids asked for are used up.
    pub fn next_id(&mut self) -> Option<String> {
        let rand = self.entropy.get(self.next..self.next + BYTES_PER_ID)?;
        self.next += BYTES_PER_ID;
        Some(uuid_v7(self.unix_ms, rand.try_into().ok()?))
    }
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
        // Distinct bytes per id: its index.
        let random: Vec<u8> = (0u32..1000)
            .flat_map(|i| {
                let mut b = [0u8; BYTES_PER_ID];
                b[6..].copy_from_slice(&i.to_be_bytes());
                b
            })
            .collect();
        let mut src = IdSource::new(1_700_000_000_000, random);
        let mut ids: Vec<_> = std::iter::from_fn(|| src.next_id()).collect();
        assert_eq!(ids.len(), 1000);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|i| i.len() == 36 && &i[14..15] == "7"));
    }
}
