//! Identifier newtypes shared by the whole cluster, and the fixed resource -> partition hash.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A data node, chosen by the operator (`tandem node --id N`).
    NodeId(u32)
);
id_newtype!(
    /// A partition, `0..P`; `resource -> partition` never changes.
    PartitionId(u32)
);
id_newtype!(
    /// A partition's leadership generation: bumped at every primary change.
    Term(u64)
);
id_newtype!(
    /// The cluster map's version: bumped at every map change.
    Epoch(u64)
);

impl Term {
    /// The term that follows this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl Epoch {
    /// The epoch that follows this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// The fixed shard hash: `xxh3_64(resource) % partitions`.
///
/// Every node and every controller computes the same answer (xxh3 with its
/// default seed, never a per-process random hasher). `partitions` comes from a
/// validated map and is at least 1; 0 is treated as 1 rather than panicking.
#[inline]
pub fn partition_of(resource: &[u8], partitions: u32) -> PartitionId {
    let p = u64::from(partitions.max(1));
    let hash = xxhash_rust::xxh3::xxh3_64(resource);
    // The same remainder; a mask for the usual power of two, where a
    // 64-bit division was a tenth of routing a Graphite line.
    let at = if p.is_power_of_two() {
        hash & (p - 1)
    } else {
        hash % p
    };
    PartitionId(at as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(resource: &str, partitions: u32, expected: u32) {
        assert_eq!(
            partition_of(resource.as_bytes(), partitions),
            PartitionId(expected),
            "{resource} over {partitions}"
        );
    }

    #[test]
    fn partition_of_is_the_fixed_xxh3_hash() {
        // Frozen values: changing the hash would silently move every resource.
        let h = xxhash_rust::xxh3::xxh3_64(b"collectd.web01");
        check("collectd.web01", 1024, (h % 1024) as u32);
        check("collectd.web01", 1, 0);
        check("collectd.web01", 0, 0);
        check("", 7, (xxhash_rust::xxh3::xxh3_64(b"") % 7) as u32);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06800538d394c2);
    }

    #[test]
    fn partition_of_is_the_remainder_for_every_count() {
        for partitions in (1..=1100).chain([1 << 16, u32::MAX]) {
            for r in 0..20 {
                let resource = format!("dc1.vm{r}");
                let h = xxhash_rust::xxh3::xxh3_64(resource.as_bytes());
                check(&resource, partitions, (h % u64::from(partitions)) as u32);
            }
        }
    }

    #[test]
    fn ids_display_and_serialize_as_plain_numbers() {
        assert_eq!(NodeId(7).to_string(), "7");
        assert_eq!(serde_json::to_string(&Term(3)).unwrap(), "3");
        assert_eq!(serde_json::from_str::<Epoch>("9").unwrap(), Epoch(9));
        assert_eq!(Term(3).next(), Term(4));
    }
}
