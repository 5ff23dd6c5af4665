//! The crate's one error type: limits that cannot be parsed. Decisions never fail (Redis
//! trouble is a [`crate::Decision`]).

/// A limit in configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not `<rps>/<burst>` with two positive integers.
    #[error("{0:?}: expected <rps>/<burst>, two positive integers, e.g. 5000/10000")]
    Limit(String),
    /// Not `<group>=<rps>/<burst>`.
    #[error("{0:?}: expected <group>=<rps>/<burst>, e.g. tasks=5000/10000")]
    Group(String),
    /// A group name the gateway does not have.
    #[error("unknown method group {name:?}; the groups are {known}")]
    UnknownGroup {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The same group twice.
    #[error("method group {0:?} is given twice")]
    DuplicateGroup(String),
}
