//! Key names. A logical queue is split into partitions; every key of one partition shares
//! one hash tag, so each Lua script touches a single Redis Cluster slot, and different
//! partitions land on different slots (and so on different cluster nodes).

/// CRC16/XMODEM, the hash Redis Cluster uses for key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The Redis Cluster slot of a hash tag.
pub fn slot(tag: &str) -> u16 {
    crc16(tag.as_bytes()) % 16384
}

/// The key space of one AURA installation: a prefix and `partitions` hash tags.
#[derive(Clone, Debug)]
pub struct Keyspace {
    prefix: String,
    partitions: Vec<String>,
}

impl Keyspace {
    /// Partition `i`'s tag is chosen so that its slot falls in the i-th of `count` equal
    /// slot ranges: a cluster whose nodes own equal contiguous ranges (what
    /// `redis-cli --cluster create` sets up) then gets the partitions spread evenly.
    pub fn new(prefix: &str, count: usize) -> Self {
        let count = count.max(1);
        let partitions = (0..count)
            .map(|i| {
                let lo = (i * 16384 / count) as u16;
                let hi = ((i + 1) * 16384 / count) as u16;
                (0u32..)
                    .map(|k| format!("{i}.{k}"))
                    .find(|tag| (lo..hi).contains(&slot(tag)))
                    .expect("some tag hashes into every slot range")
            })
            .map(|tag| format!("{prefix}:{{{tag}}}:"))
            .collect();
        Keyspace { prefix: prefix.to_string(), partitions }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The key prefix of partition `p` (ends with `:`).
    pub fn partition(&self, p: usize) -> &str {
        &self.partitions[p]
    }

    /// The key that routes a partition's scripts.
    pub fn route_key(&self, p: usize) -> String {
        format!("{}seq", self.partitions[p])
    }

    /// The pub/sub channel prefix that wakes blocked claimers of a lane.
    pub fn wake_prefix(&self) -> String {
        format!("{}:wake:", self.prefix)
    }

    /// Partition of a job key (`p` encoded in ids by the caller) or of any string, by hash.
    pub fn partition_of(&self, s: &str) -> usize {
        usize::from(crc16(s.as_bytes())) % self.partitions.len()
    }

    /// Installation-wide prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis_reference() {
        // From the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn partitions_spread_over_equal_slot_ranges() {
        let ks = Keyspace::new("aura", 3);
        for p in 0..3 {
            let tag = ks.partition(p).split('{').nth(1).unwrap().split('}').next().unwrap().to_string();
            let s = usize::from(slot(&tag));
            assert!(s >= p * 16384 / 3 && s < (p + 1) * 16384 / 3, "partition {p} slot {s}");
        }
    }
}
