//! The authentication layer: every `aura.v1.Gateway` call must carry
//! `authorization: Bearer <api key>`; health and reflection stay open (probes and grpcurl
//! `list` need no key). The key's tenant is put in the request's extensions for the layers
//! and handlers behind.
//!
//! Lookups are cached for a second, positive and negative alike: a revoked key stops
//! working within a second on every gateway replica, and a flood of bad keys costs Redis
//! one lookup per key per second.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aura_auth::{KeyStore, hash_key};
use tonic::{Status, body::Body, codegen::http};

/// The tenant a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

const CACHE_TTL: Duration = Duration::from_secs(1);

/// Key hash → (its tenant when valid, when it was looked up).
type LookupCache = Mutex<HashMap<String, (Option<String>, Instant)>>;

/// Decides who a request is.
#[derive(Clone)]
pub struct Authenticator {
    store: KeyStore,
    /// Keys from `--api-keys-file`: hash → tenant.
    static_keys: Arc<HashMap<String, String>>,
    /// hash → (tenant if valid, when looked up).
    cache: Arc<LookupCache>,
}

impl Authenticator {
    /// Keys from Redis and from a key file.
    pub fn new(store: KeyStore, static_keys: HashMap<String, String>) -> Self {
        Authenticator { store, static_keys: Arc::new(static_keys), cache: Arc::default() }
    }

    /// The tenant of an `authorization` header value, or UNAUTHENTICATED saying why.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Tenant, Status> {
        let Some(header) = header else {
            return Err(Status::unauthenticated("missing API key: send `authorization: Bearer <key>`"));
        };
        let key = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.contains(' '))
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization header: expected `Bearer <key>`")
            })?;
        let hash = hash_key(key);
        if let Some(tenant) = self.static_keys.get(&hash) {
            return Ok(Tenant(tenant.clone()));
        }
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash).cloned();
        let tenant = match cached {
            Some((tenant, at)) if at.elapsed() < CACHE_TTL => tenant,
            _ => {
                let record = self.store.lookup(key).await.map_err(|e| match e {
                    aura_auth::AuthError::Redis(err) => aura_common::status::redis_unavailable(&err),
                    other => Status::internal(other.to_string()),
                })?;
                let tenant = record.filter(|r| !r.revoked).map(|r| r.tenant);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(hash, (tenant.clone(), Instant::now()));
                tenant
            }
        };
        tenant.map(Tenant).ok_or_else(|| Status::unauthenticated("unknown or revoked API key"))
    }
}

/// Tower layer applying an [`Authenticator`] to `aura.v1.Gateway` calls.
#[derive(Clone)]
pub struct AuthLayer {
    /// `None`: auth disabled (`--insecure-no-auth`).
    auth: Option<Authenticator>,
}

impl AuthLayer {
    /// Checks keys with `auth`, or lets everything through when `None`.
    pub fn new(auth: Option<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(auth) = self.auth.clone() else { return Box::pin(self.inner.call(req)) };
        if !req.uri().path().starts_with("/aura.v1.Gateway/") {
            return Box::pin(self.inner.call(req));
        }
        // The readied inner service serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
            match auth.authenticate(header.as_deref()).await {
                Ok(tenant) => {
                    // Every log line of this call names the tenant (the call's span has it).
                    tracing::Span::current().record("tenant", tenant.0.as_str());
                    req.extensions_mut().insert(tenant);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
