//! Redis key names of a topic instance. Every key of one instance carries the same hash tag
//! (`{T}`), so on a Redis Cluster they live in one slot and one script may touch them all.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha1::{Digest, Sha1};

use crate::hub::TopicKey;

/// Everything but unreserved characters is escaped: `{`, `}` (the hash tag), `:` (our
/// separator) and `/` can never appear raw in an id.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The keys of one topic instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceKeys {
    /// `name/param…[#identity]`, readable in `redis-cli`.
    pub id: String,
    pub meta: String,
    pub log: String,
    pub lease: String,
    pub channel: String,
    idem_prefix: String,
}

impl InstanceKeys {
    pub fn new(prefix: &str, key: &TopicKey) -> Self {
        let mut id = utf8_percent_encode(&key.name, ESCAPED).to_string();
        for param in &key.params {
            id.push('/');
            id.extend(utf8_percent_encode(param, ESCAPED));
        }
        if !key.forwarded.is_empty() {
            // Instances opened with other credentials are other instances; the digest tells
            // them apart without writing credentials into key names.
            let mut digest = Sha1::new();
            for (name, value) in &key.forwarded {
                digest.update(name.to_ascii_lowercase().as_bytes());
                digest.update([0]);
                digest.update(value.as_bytes());
                digest.update([0]);
            }
            let digest = digest.finalize();
            id.push('#');
            for byte in &digest[..8] {
                id.push_str(&format!("{byte:02x}"));
            }
        }
        let base = format!("{prefix}:{{{id}}}");
        InstanceKeys {
            meta: format!("{base}:meta"),
            log: format!("{base}:log"),
            lease: format!("{base}:lease"),
            channel: format!("{base}:ch"),
            idem_prefix: format!("{base}:idem:"),
            id,
        }
    }

    /// The key remembering one push `Idempotency-Key`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}{}", self.idem_prefix, utf8_percent_encode(key, ESCAPED))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hash_tag_per_instance_and_nothing_raw_inside_it() {
        let keys = InstanceKeys::new("ss", &TopicKey::new("prices", vec!["A}B:{c/d".into()]));
        assert_eq!(keys.id, "prices/A%7DB%3A%7Bc%2Fd");
        assert_eq!(keys.meta, "ss:{prices/A%7DB%3A%7Bc%2Fd}:meta");
        for key in [
            &keys.meta,
            &keys.log,
            &keys.lease,
            &keys.channel,
            &keys.idempotency("k{1}"),
        ] {
            let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
            assert_eq!(tag, keys.id, "{key}");
        }
    }

    #[test]
    fn identities_are_other_instances_and_never_spelled_out() {
        let plain = TopicKey::new("me", vec![]);
        let alice = plain
            .clone()
            .with_forwarded(vec![("Authorization".into(), "Bearer alice".into())]);
        let bob = plain
            .clone()
            .with_forwarded(vec![("Authorization".into(), "Bearer bob".into())]);
        let [plain, alice, bob] = [plain, alice, bob].map(|k| InstanceKeys::new("ss", &k).id);
        assert_ne!(alice, bob);
        assert_ne!(plain, alice);
        assert!(!alice.contains("alice"));
    }
}
