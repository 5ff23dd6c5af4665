//! Topics, patterns and offsets.

use std::{fmt, str::FromStr};

use crate::BusError;

/// Checks a concrete topic: 1-256 characters, dot-separated non-empty segments of
/// `[A-Za-z0-9_-]`.
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    if topic.is_empty() || topic.len() > 256 {
        return Err(BusError::Invalid("topic must be 1-256 characters".into()));
    }
    for segment in topic.split('.') {
        if segment.is_empty() || !segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(BusError::Invalid(format!(
                "topic {topic:?}: segments must be non-empty and use only letters, digits, '_' and '-'"
            )));
        }
    }
    Ok(())
}

/// A subscription pattern: `*` matches one segment, `>` (last only) one or more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<String>,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(pattern: &str) -> Result<Self, BusError> {
        if pattern.is_empty() || pattern.len() > 256 {
            return Err(BusError::Invalid("pattern must be 1-256 characters".into()));
        }
        let segments: Vec<String> = pattern.split('.').map(str::to_string).collect();
        for (i, seg) in segments.iter().enumerate() {
            let ok = match seg.as_str() {
                "*" => true,
                ">" => i == segments.len() - 1,
                s => !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            };
            if !ok {
                return Err(BusError::Invalid(format!(
                    "pattern {pattern:?}: segment {seg:?} is invalid ('*' matches one segment, '>' only last)"
                )));
            }
        }
        Ok(Pattern { segments })
    }

    /// True when the pattern has no wildcard.
    pub fn is_concrete(&self) -> bool {
        self.segments.iter().all(|s| s != "*" && s != ">")
    }

    /// The pattern as a topic (when concrete).
    pub fn as_topic(&self) -> String {
        self.segments.join(".")
    }

    /// Does `topic` match?
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for seg in &self.segments {
            match seg.as_str() {
                ">" => return parts.next().is_some(),
                "*" => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                s => {
                    if parts.next() != Some(s) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// A Redis PSUBSCRIBE glob covering at least the pattern's topics (matches are
    /// re-checked locally, since a glob `*` also crosses dots). Glob metacharacters cannot
    /// appear in validated segments.
    pub fn redis_glob(&self, channel_prefix: &str) -> String {
        let mut glob = String::from(channel_prefix);
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                glob.push('.');
            }
            match seg.as_str() {
                ">" | "*" => glob.push('*'),
                s => glob.push_str(s),
            }
        }
        glob
    }
}

/// A position in a topic: the topic history's epoch and the event's number in it (events
/// of a topic are numbered 1, 2, 3... without gaps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offset {
    /// Changes when Redis lost the topic's history.
    pub epoch: String,
    /// The event's number within the epoch.
    pub n: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.n)
    }
}

impl FromStr for Offset {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        let bad = || BusError::Invalid(format!("offset {s:?} is not of the form <epoch>:<number>"));
        let (epoch, n) = s.split_once(':').ok_or_else(bad)?;
        if epoch.is_empty() || !epoch.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        Ok(Offset { epoch: epoch.to_string(), n: n.parse().map_err(|_| bad())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        let p = Pattern::parse("runs.*").unwrap();
        assert!(p.matches("runs.abc"));
        assert!(!p.matches("runs.abc.def"));
        assert!(!p.matches("runs"));
        let p = Pattern::parse("workflows.>").unwrap();
        assert!(p.matches("workflows.a"));
        assert!(p.matches("workflows.a.b"));
        assert!(!p.matches("workflows"));
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("a.b[").is_err());
    }

    #[test]
    fn offsets_round_trip() {
        let o: Offset = "ep1:42".parse().unwrap();
        assert_eq!(o, Offset { epoch: "ep1".into(), n: 42 });
        assert_eq!(o.to_string(), "ep1:42");
        assert!("nope".parse::<Offset>().is_err());
        assert!("e:12-3".parse::<Offset>().is_err());
    }
}
