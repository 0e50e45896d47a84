//! [`AdminConfig`]: who may call the admin API, and how much it accepts, and how
//! slowly.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the admin API, validated once by
/// [`router_with`](super::router_with).
///
/// The default suits a router served on a loopback address: no token, and request
/// bodies of at most [`DEFAULT_BODY_LIMIT`](Self::DEFAULT_BODY_LIMIT) bytes that
/// arrive within [`DEFAULT_BODY_TIMEOUT`](Self::DEFAULT_BODY_TIMEOUT).
///
/// # Examples
///
/// ```
/// use switchboard::http::{AdminConfig, AdminConfigError};
///
/// let public: std::net::SocketAddr = "0.0.0.0:9090".parse()?;
/// // Served beyond loopback, the API must have a bearer token.
/// let config = AdminConfig::for_addr(public);
/// let registry = switchboard::Registry::<serde_json::Value>::new();
/// assert_eq!(
///     switchboard::http::router_with(registry.clone(), config.clone()).err(),
///     Some(AdminConfigError::TokenRequired)
/// );
/// let router = switchboard::http::router_with(registry, config.token("s3cret").body_limit(1 << 20))?;
/// # let _ = router;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use = "a config does nothing until passed to `router_with`"]
pub struct AdminConfig {
    pub(super) token: Option<String>,
    pub(super) body_limit: usize,
    pub(super) body_timeout: Duration,
    pub(super) bind_is_loopback: bool,
}

impl AdminConfig {
    /// The largest request body accepted by default: 64 KiB.
    pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

    /// The longest a request body may take to arrive by default: 10 seconds.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

    /// Loopback, no token, the default body limit and body timeout.
    pub fn new() -> Self {
        Self {
            token: None,
            body_limit: Self::DEFAULT_BODY_LIMIT,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            bind_is_loopback: true,
        }
    }

    /// The default settings for a router served on `addr`: a token is required
    /// unless `addr` is a loopback address (`127.0.0.0/8` or `::1`).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::http::{router_with, AdminConfig};
    ///
    /// let registry = switchboard::Registry::<serde_json::Value>::new();
    /// let addr = "127.0.0.1:9090".parse()?;
    /// assert!(router_with(registry, AdminConfig::for_addr(addr)).is_ok());
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn for_addr(addr: SocketAddr) -> Self {
        Self::new().bind_is_loopback(addr.ip().is_loopback())
    }

    /// Requires `Authorization: Bearer <token>` on every endpoint but `/healthz`.
    /// Optional on loopback, required elsewhere.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The largest request body, in bytes; a larger one gets `413 body_too_large`.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The longest a request body may take to arrive, counted from when the router
    /// gets the request (its head has arrived) to the body's last byte; default
    /// [`DEFAULT_BODY_TIMEOUT`](Self::DEFAULT_BODY_TIMEOUT).
    ///
    /// A whole deadline, not a wait between chunks, so a peer that trickles a byte
    /// at a time is cut off too. At the bound the read stops, the request gets
    /// `408 body_timeout` with `Connection: close`, and the connection is closed
    /// once the answer is written, so the rest of the body is never read. The
    /// router bounds only the body: the time to the end of the head is the
    /// server's (see [the module docs](super)). A timeout too long for the clock to
    /// count (`Duration::MAX`) means none.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::http::{router_with, AdminConfig, AdminConfigError};
    ///
    /// let registry = switchboard::Registry::<serde_json::Value>::new();
    /// let config = AdminConfig::new().body_timeout(Duration::from_secs(2));
    /// assert!(router_with(registry.clone(), config).is_ok());
    /// assert_eq!(
    ///     router_with(registry, AdminConfig::new().body_timeout(Duration::ZERO)).err(),
    ///     Some(AdminConfigError::BodyTimeout)
    /// );
    /// ```
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Whether the router will only be reachable on a loopback address. When false,
    /// building the router without a token fails.
    pub fn bind_is_loopback(mut self, loopback: bool) -> Self {
        self.bind_is_loopback = loopback;
        self
    }

    pub(super) fn validate(&self) -> Result<(), AdminConfigError> {
        match &self.token {
            Some(token) if token.is_empty() => return Err(AdminConfigError::EmptyToken),
            None if !self.bind_is_loopback => return Err(AdminConfigError::TokenRequired),
            _ => {}
        }
        if self.body_limit == 0 {
            return Err(AdminConfigError::BodyLimit);
        }
        if self.body_timeout.is_zero() {
            return Err(AdminConfigError::BodyTimeout);
        }
        Ok(())
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AdminConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("body_timeout", &self.body_timeout)
            .field("bind_is_loopback", &self.bind_is_loopback)
            .finish()
    }
}

/// Why [`router_with`](super::router_with) refused an [`AdminConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminConfigError {
    /// The router would be reachable beyond loopback without a bearer token.
    #[error("an admin API bound beyond loopback needs a bearer token")]
    TokenRequired,
    /// The token is the empty string, which any client could send.
    #[error("the admin token is empty")]
    EmptyToken,
    /// A body limit of zero would refuse every broadcast.
    #[error("the body limit must be at least one byte")]
    BodyLimit,
    /// A body timeout of zero would refuse every broadcast.
    #[error("the body timeout must be longer than zero")]
    BodyTimeout,
}
