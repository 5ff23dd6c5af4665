//! Limits as operators write them (`rps`/`burst`, per method group) and as the limiter
//! applies them (a [`Quota`]: so many requests per unit of time, a bucket of `burst`).

use std::{collections::BTreeMap, time::Duration};

use crate::ConfigError;

/// A per-second quota: `rps` tokens per second, up to `burst` at once. What the flags
/// (`--rate-limit-rps`/`--rate-limit-burst`, `--rate-limit-group`) and the per-tenant
/// overrides in Redis set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Sustained rate, per second (> 0).
    pub rps: u32,
    /// Bucket capacity (> 0).
    pub burst: u32,
}

impl std::str::FromStr for Limit {
    type Err = ConfigError;

    /// `<rps>/<burst>`, e.g. `5000/10000`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Limit(s.to_string());
        let (rps, burst) = s.split_once('/').ok_or_else(bad)?;
        let limit = Limit {
            rps: rps.trim().parse().map_err(|_| bad())?,
            burst: burst.trim().parse().map_err(|_| bad())?,
        };
        if limit.rps == 0 || limit.burst == 0 {
            return Err(bad());
        }
        Ok(limit)
    }
}

/// A per-tenant override as stored in Redis: `rps,burst`.
pub(crate) fn parse_override(s: &str) -> Option<Limit> {
    let (rps, burst) = s.split_once(',')?;
    let limit = Limit { rps: rps.trim().parse().ok()?, burst: burst.trim().parse().ok()? };
    (limit.rps > 0 && limit.burst > 0).then_some(limit)
}

/// Per-method-group limits from `name=rps/burst` items (`tasks=5000/10000`), the form of
/// `--rate-limit-group` and `AURA_RATE_LIMIT_GROUPS`. Names must be among `groups` (a typo
/// would otherwise silently leave a group at the default).
pub fn parse_group_limits<S: AsRef<str>>(
    items: &[S],
    groups: &[&str],
) -> Result<BTreeMap<String, Limit>, ConfigError> {
    let mut limits = BTreeMap::new();
    for item in items.iter().map(AsRef::as_ref).map(str::trim).filter(|i| !i.is_empty()) {
        let (name, limit) = item.split_once('=').ok_or_else(|| ConfigError::Group(item.to_string()))?;
        let name = name.trim();
        if !groups.contains(&name) {
            return Err(ConfigError::UnknownGroup { name: name.to_string(), known: groups.join(", ") });
        }
        if limits.insert(name.to_string(), limit.parse()?).is_some() {
            return Err(ConfigError::DuplicateGroup(name.to_string()));
        }
    }
    Ok(limits)
}

/// Parses per-method costs (`StartRuns=10`): how many tokens one call of a method takes
/// (1 unless given). `methods` are the names the service has; a repeat replaces.
pub fn parse_method_costs<S: AsRef<str>>(
    items: &[S],
    methods: &[&str],
) -> Result<BTreeMap<String, u32>, ConfigError> {
    let mut costs = BTreeMap::new();
    for item in items.iter().map(AsRef::as_ref).map(str::trim).filter(|i| !i.is_empty()) {
        let (name, cost) = item.split_once('=').ok_or_else(|| ConfigError::Cost(item.to_string()))?;
        let name = name.trim();
        if !methods.contains(&name) {
            return Err(ConfigError::UnknownMethod { name: name.to_string(), known: methods.join(", ") });
        }
        let cost: u32 = cost.trim().parse().map_err(|_| ConfigError::Cost(item.to_string()))?;
        if !(1..=1000).contains(&cost) {
            return Err(ConfigError::Cost(item.to_string()));
        }
        costs.insert(name.to_string(), cost);
    }
    Ok(costs)
}

/// What the limiter applies to one bucket: `requests` per `per`, at most `burst` at once.
/// GCRA spends one "emission interval" (`per / requests`) per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Requests per `per` (> 0).
    pub requests: u32,
    /// The unit of time.
    pub per: Duration,
    /// Bucket capacity (> 0).
    pub burst: u32,
}

impl Quota {
    /// `requests` per `per`, and a bucket of the same size (Envoy's descriptor limits: a
    /// full unit's worth may come at once).
    pub fn per_unit(requests: u32, per: Duration) -> Quota {
        Quota { requests, per, burst: requests }
    }

    /// Time one token stands for.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.max(1)
    }
}

impl From<Limit> for Quota {
    fn from(limit: Limit) -> Quota {
        Quota { requests: limit.rps, per: Duration::from_secs(1), burst: limit.burst }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_override("10, 20"), Some(Limit { rps: 10, burst: 20 }));
        assert_eq!(parse_override("0,1"), None);
        assert_eq!(parse_override("x"), None);
        assert_eq!("5/10".parse::<Limit>().unwrap(), Limit { rps: 5, burst: 10 });
        assert!("5".parse::<Limit>().is_err());
        assert!("0/10".parse::<Limit>().is_err());
    }

    #[test]
    fn group_limits_parse_and_reject_typos() {
        let groups = ["default", "tasks"];
        let limits = parse_group_limits(&["tasks=5000/10000", " default=1/2 ", ""], &groups).unwrap();
        assert_eq!(limits["tasks"], Limit { rps: 5000, burst: 10000 });
        assert_eq!(limits["default"], Limit { rps: 1, burst: 2 });
        assert!(matches!(parse_group_limits(&["task=1/1"], &groups), Err(ConfigError::UnknownGroup { .. })));
        assert!(matches!(parse_group_limits(&["tasks"], &groups), Err(ConfigError::Group(_))));
        assert!(matches!(
            parse_group_limits(&["tasks=1/1", "tasks=2/2"], &groups),
            Err(ConfigError::DuplicateGroup(_))
        ));
    }

    #[test]
    fn quotas_spend_one_interval_per_token() {
        assert_eq!(Quota::from(Limit { rps: 4, burst: 5 }).interval(), Duration::from_millis(250));
        assert_eq!(Quota::per_unit(10, Duration::from_secs(60)).interval(), Duration::from_secs(6));
    }
}
