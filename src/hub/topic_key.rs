//! The identity of a topic instance.

use std::fmt;
use std::sync::Arc;

/// Identifies a topic instance: the topic's name, the values of its path variables, and
/// the forwarded request headers (credentials) it was opened with, so that two identities
/// never share an instance.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub name: Arc<str>,
    pub params: Vec<String>,
    /// `(header, value)` pairs sent upstream for this instance. Never printed.
    pub forwarded: Vec<(String, String)>,
}

impl TopicKey {
    pub fn new(name: impl Into<Arc<str>>, params: Vec<String>) -> Self {
        TopicKey {
            name: name.into(),
            params,
            forwarded: Vec::new(),
        }
    }

    /// A short stable id of the whole identity (name, variables, forwarded headers) for
    /// URLs such as the admin API's `/api/topics/{id}`: it shows no credential.
    pub fn instance_id(&self) -> String {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same instance has the same id for the life of the binary.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    pub fn with_forwarded(mut self, forwarded: Vec<(String, String)>) -> Self {
        self.forwarded = forwarded;
        self
    }
}

impl fmt::Display for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for param in &self.params {
            write!(f, "/{param}")?;
        }
        if !self.forwarded.is_empty() {
            // A short digest tells identities apart in logs without showing credentials.
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.forwarded.hash(&mut hasher);
            write!(f, "[identity {:08x}]", hasher.finish() as u32)?;
        }
        Ok(())
    }
}

impl fmt::Debug for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicKey({self})")
    }
}
