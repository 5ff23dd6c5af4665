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
    /// Not `<Method>=<cost>` with a cost of 1-1000.
    #[error("{0:?}: expected <Method>=<cost>, a cost of 1-1000, e.g. StartRuns=10")]
    Cost(String),
    /// A method the service does not have.
    #[error("unknown method {name:?}; the methods are {known}")]
    UnknownMethod {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
}
