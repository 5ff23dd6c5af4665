//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`), decided by
//! the same Redis GCRA limiter as the Gateway's own layer, so an Envoy or Istio ingress in
//! front of AURA spends from AURA's buckets (served with `--envoy-rls`).
//!
//! Each descriptor is one bucket, keyed by the domain and its entries. Its quota is the
//! descriptor's own `limit` (`requests_per_unit` per `unit`, a bucket of the same size) when
//! given, else the gateway's default per-tenant limit. Domain [`TENANT_DOMAIN`] is reserved
//! for the gateway's own buckets: `[tenant=<t>]` or `[tenant=<t>, method_group=<g>]` spends
//! from exactly the bucket the Gateway's layer charges tenant `t`'s calls of group `g`
//! (`default` when absent) to, with that bucket's limit (override, group, default).
//! `hits_addend` (0 means 1) is the cost, spent from every descriptor (as Envoy's reference
//! service does); the overall code is OVER_LIMIT when any descriptor is.

use std::{sync::Arc, time::Duration};

use aura_common::status;
use aura_proto::envoy::{
    extensions::common::ratelimit::v3::RateLimitDescriptor,
    service::ratelimit::v3::{
        RateLimitRequest, RateLimitResponse, rate_limit_response as resp,
        rate_limit_service_server::RateLimitService,
    },
    r#type::v3::RateLimitUnit,
};
use aura_ratelimit::{Bucket, Decision, Quota, RateLimiter};
use tonic::{Request, Response, Status};

use crate::METHOD_GROUPS;

/// The domain whose descriptors name the Gateway's own tenant buckets.
pub const TENANT_DOMAIN: &str = "aura";

/// Most descriptors in one request: each is a Redis round trip.
const MAX_DESCRIPTORS: usize = 64;

/// While Redis is away and the limiter fails closed, how long Envoy is told to wait.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// The service (see the module docs).
pub struct EnvoyRateLimit {
    limiter: Arc<RateLimiter>,
    /// Whether the gateway has a default limit (`--rate-limit-rps` > 0). Without one, a
    /// descriptor without its own limit is under no limit (OK), as in Envoy's reference
    /// service for a descriptor that matches no configured limit.
    default_limited: bool,
}

impl EnvoyRateLimit {
    /// Decides with `limiter`; `default_limited` says whether descriptors without a limit of
    /// their own get the default one.
    pub fn new(limiter: Arc<RateLimiter>, default_limited: bool) -> Self {
        EnvoyRateLimit { limiter, default_limited }
    }
}

/// One checked descriptor.
struct Wanted {
    entries: Vec<(String, String)>,
    quota: Option<Quota>,
    /// `Some((tenant, group))` for a tenant bucket.
    tenant: Option<(String, &'static str)>,
}

fn unit_duration(unit: i32) -> Option<Duration> {
    match RateLimitUnit::try_from(unit).ok()? {
        RateLimitUnit::Second => Some(Duration::from_secs(1)),
        RateLimitUnit::Minute => Some(Duration::from_secs(60)),
        RateLimitUnit::Hour => Some(Duration::from_secs(3600)),
        RateLimitUnit::Day => Some(Duration::from_secs(86_400)),
        RateLimitUnit::Unknown => None,
    }
}

fn unit_of(per: Duration) -> resp::rate_limit::Unit {
    match per.as_secs() {
        1 => resp::rate_limit::Unit::Second,
        60 => resp::rate_limit::Unit::Minute,
        3600 => resp::rate_limit::Unit::Hour,
        86_400 => resp::rate_limit::Unit::Day,
        _ => resp::rate_limit::Unit::Unknown,
    }
}

/// Checks one descriptor; INVALID_ARGUMENT names the field.
fn check_descriptor(domain: &str, i: usize, d: RateLimitDescriptor) -> Result<Wanted, Status> {
    let field = format!("descriptors[{i}]");
    if d.entries.is_empty() {
        return Err(status::invalid_field(
            format!("{field}.entries"),
            "a descriptor needs at least one entry",
        ));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    for (j, e) in d.entries.into_iter().enumerate() {
        if e.key.is_empty() || e.value.is_empty() {
            return Err(status::invalid_field(
                format!("{field}.entries[{j}]"),
                "key and value must both be non-empty",
            ));
        }
        entries.push((e.key, e.value));
    }
    let quota = match d.limit {
        None => None,
        Some(limit) => {
            let per = unit_duration(limit.unit).ok_or_else(|| {
                status::invalid_field(format!("{field}.limit.unit"), "must be SECOND, MINUTE, HOUR or DAY")
            })?;
            if limit.requests_per_unit == 0 {
                return Err(status::invalid_field(
                    format!("{field}.limit.requests_per_unit"),
                    "must be at least 1",
                ));
            }
            Some(Quota::per_unit(limit.requests_per_unit, per))
        }
    };
    let tenant = if domain == TENANT_DOMAIN { Some(tenant_bucket(&field, &entries)?) } else { None };
    Ok(Wanted { entries, quota, tenant })
}

/// The tenant bucket a descriptor of [`TENANT_DOMAIN`] names.
fn tenant_bucket(field: &str, entries: &[(String, String)]) -> Result<(String, &'static str), Status> {
    let shape = || {
        status::invalid_field(
            format!("{field}.entries"),
            format!(
                "domain {TENANT_DOMAIN:?} names AURA's tenant buckets: [tenant=<tenant>] or \
                 [tenant=<tenant>, method_group=<{}>]",
                METHOD_GROUPS.join("|")
            ),
        )
    };
    let (tenant, group) = match entries {
        [(k, t)] if k == "tenant" => (t, "default"),
        [(k, t), (g, group)] if k == "tenant" && g == "method_group" => (t, group.as_str()),
        _ => return Err(shape()),
    };
    aura_auth::validate_tenant(tenant)
        .map_err(|e| status::invalid_field(format!("{field}.entries[0].value"), e.to_string()))?;
    let group = METHOD_GROUPS.iter().find(|g| **g == group).ok_or_else(shape)?;
    Ok((tenant.clone(), group))
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRateLimit {
    async fn should_rate_limit(
        &self,
        req: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = req.into_inner();
        if req.domain.is_empty() {
            return Err(status::invalid_field(
                "domain",
                "is required (e.g. the domain of Envoy's rate limit filter)",
            ));
        }
        if req.descriptors.is_empty() {
            return Err(status::invalid_field("descriptors", "send at least one descriptor"));
        }
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(status::invalid_field(
                "descriptors",
                format!("at most {MAX_DESCRIPTORS} per request"),
            ));
        }
        // Every descriptor is checked before any is spent from.
        let wanted = req
            .descriptors
            .into_iter()
            .enumerate()
            .map(|(i, d)| check_descriptor(&req.domain, i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let cost = req.hits_addend.max(1);
        let decisions =
            futures::future::join_all(wanted.iter().map(|w| self.decide(&req.domain, w, cost))).await;
        let over = i32::from(resp::Code::OverLimit);
        let overall =
            if decisions.iter().any(|s| s.code == over) { resp::Code::OverLimit } else { resp::Code::Ok };
        Ok(Response::new(RateLimitResponse { overall_code: overall.into(), statuses: decisions }))
    }
}

impl EnvoyRateLimit {
    async fn decide(&self, domain: &str, w: &Wanted, cost: u32) -> resp::DescriptorStatus {
        if w.quota.is_none() && !self.default_limited {
            return resp::DescriptorStatus { code: resp::Code::Ok.into(), ..Default::default() };
        }
        let (bucket, name) = match &w.tenant {
            Some((tenant, group)) => {
                (Bucket::Tenant { tenant, group }, format!("tenant {tenant:?}, method group {group:?}"))
            }
            None => {
                let entries: Vec<String> = w.entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (
                    Bucket::Descriptor { domain, entries: &w.entries },
                    format!("{domain}: {}", entries.join(", ")),
                )
            }
        };
        let (quota, decision) = self.limiter.check_bucket(bucket, w.quota, cost).await;
        let current_limit = Some(resp::RateLimit {
            name,
            requests_per_unit: quota.requests,
            unit: unit_of(quota.per).into(),
        });
        let (code, remaining, until) = match decision {
            Decision::Allow { remaining, reset_after, .. } => (resp::Code::Ok, remaining, reset_after),
            Decision::Deny { retry_after, .. } => (resp::Code::OverLimit, 0, retry_after),
            // Fail-closed is the operator's choice: refuse here too. An error would hand the
            // decision to Envoy's `failure_mode_deny`, which defaults to letting traffic in.
            Decision::Unavailable => (resp::Code::OverLimit, 0, UNAVAILABLE_RETRY),
        };
        resp::DescriptorStatus {
            code: code.into(),
            current_limit,
            limit_remaining: remaining,
            duration_until_reset: Some(prost_types::Duration {
                seconds: until.as_secs() as i64,
                nanos: until.subsec_nanos() as i32,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aura_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    fn descriptor(entries: &[(&str, &str)], limit: Option<(u32, RateLimitUnit)>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() })
                .collect(),
            limit: limit.map(|(n, unit)| RateLimitOverride { requests_per_unit: n, unit: unit.into() }),
        }
    }

    #[test]
    fn descriptors_map_to_buckets_and_quotas() {
        let w = check_descriptor("edge", 0, descriptor(&[("path", "/x")], Some((10, RateLimitUnit::Minute))))
            .unwrap();
        assert_eq!(w.quota, Some(Quota::per_unit(10, Duration::from_secs(60))));
        assert!(w.tenant.is_none());
        let w = check_descriptor(TENANT_DOMAIN, 0, descriptor(&[("tenant", "acme")], None)).unwrap();
        assert_eq!(w.tenant, Some(("acme".to_string(), "default")));
        let w = check_descriptor(
            TENANT_DOMAIN,
            0,
            descriptor(&[("tenant", "acme"), ("method_group", "tasks")], None),
        )
        .unwrap();
        assert_eq!(w.tenant, Some(("acme".to_string(), "tasks")));
    }

    #[test]
    fn bad_descriptors_name_the_field() {
        let field = |r: Result<Wanted, Status>| {
            let err = r.err().expect("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            err.message().split(':').next().unwrap_or_default().to_string()
        };
        assert_eq!(field(check_descriptor("edge", 1, descriptor(&[], None))), "descriptors[1].entries");
        assert_eq!(
            field(check_descriptor("edge", 0, descriptor(&[("k", "")], None))),
            "descriptors[0].entries[0]"
        );
        assert_eq!(
            field(check_descriptor("edge", 0, descriptor(&[("k", "v")], Some((0, RateLimitUnit::Second))))),
            "descriptors[0].limit.requests_per_unit"
        );
        assert_eq!(
            field(check_descriptor("edge", 0, descriptor(&[("k", "v")], Some((1, RateLimitUnit::Unknown))))),
            "descriptors[0].limit.unit"
        );
        assert_eq!(
            field(check_descriptor(TENANT_DOMAIN, 0, descriptor(&[("user", "x")], None))),
            "descriptors[0].entries"
        );
        assert_eq!(
            field(check_descriptor(TENANT_DOMAIN, 0, descriptor(&[("tenant", "Not Valid")], None))),
            "descriptors[0].entries[0].value"
        );
    }
}
