//! What a client is: [`ClientInfo`], its [`ClientKind`] and [`SystemInfo`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The role a fleet client plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Executes tasks (a desktop agent, a phone, a sensor).
    Device,
    /// Dispatches tasks to devices (a planner, a controller).
    Orchestrator,
}

impl ClientKind {
    /// The lowercase name used in JSON and filters: `"device"` or `"orchestrator"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Orchestrator => "orchestrator",
        }
    }
}

impl std::str::FromStr for ClientKind {
    type Err = crate::error::UnknownKind;

    /// Parses `device` or `orchestrator`, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("device") {
            Ok(Self::Device)
        } else if s.eq_ignore_ascii_case("orchestrator") {
            Ok(Self::Orchestrator)
        } else {
            Err(crate::error::UnknownKind(s.to_owned()))
        }
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device reports about itself, plus what the device config adds.
///
/// On input, `capabilities` is also accepted as `supported_features`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SystemInfo {
    /// Operating system, e.g. `"Windows"`.
    pub os: Option<String>,
    /// Operating system version.
    pub os_version: Option<String>,
    /// Processor description.
    pub processor: Option<String>,
    /// Total memory in bytes.
    pub memory_total: Option<u64>,
    /// Available memory in bytes; refresh it with
    /// [`Registry::update_system_info`](crate::Registry::update_system_info).
    pub memory_available: Option<u64>,
    /// Screen resolution, e.g. `"1920x1080"`.
    pub screen_resolution: Option<String>,
    /// Installed applications.
    pub installed_applications: Vec<String>,
    /// What the client can do; device selection and filters match on these.
    #[serde(alias = "supported_features")]
    pub capabilities: Vec<String>,
    /// Free-form labels; device selection prefers shared tags.
    pub tags: Vec<String>,
    /// Anything else, including every field of the client's device-config entry.
    pub custom_metadata: Map<String, Value>,
}

impl SystemInfo {
    /// Whether every capability in `wanted` is present.
    #[must_use]
    pub fn has_capabilities<S: AsRef<str>>(&self, wanted: &[S]) -> bool {
        wanted
            .iter()
            .all(|w| self.capabilities.iter().any(|c| c == w.as_ref()))
    }
}

/// What the application knows about a client, given at registration.
///
/// One struct, so new fields never change [`Registry::register`]'s signature. Build
/// it with [`ClientInfo::new`] and the `with_*` methods, or deserialise it (it is the
/// shape of a `hello` frame). `connected_at` is set by the registry.
///
/// [`Registry::register`]: crate::Registry::register
///
/// # Examples
///
/// ```
/// use switchboard::{ClientInfo, ClientKind};
///
/// let info = ClientInfo::new()
///     .with_key("device_windows_001")
///     .with_kind(ClientKind::Device)
///     .with_platform("Windows");
/// assert_eq!(info.key.as_deref(), Some("device_windows_001"));
///
/// let parsed: ClientInfo = serde_json::from_str(
///     r#"{"key":"d1","kind":"device","system_info":{"supported_features":["excel"]}}"#,
/// )?;
/// assert_eq!(parsed.system_info.capabilities, ["excel"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The application's stable name for the client, such as `device_windows_001`.
    /// A second registration with the same key takes over from the first.
    pub key: Option<String>,
    /// Device or orchestrator; `None` for a plain client (a chat user).
    pub kind: Option<ClientKind>,
    /// Platform, matched without regard to case.
    pub platform: Option<String>,
    /// When the registry accepted the client, as milliseconds since the Unix epoch
    /// in JSON. Set by the registry; any value given at registration is replaced.
    ///
    /// On Linux it is read from the kernel's coarse real-time clock
    /// (`CLOCK_REALTIME_COARSE`), which costs a few nanoseconds where the precise
    /// clock costs tens: it may be up to one kernel tick (1–10 ms) earlier than
    /// `SystemTime::now()` read at the same moment, and clients registered within
    /// one tick share a stamp. [`Filter::connected_within`](crate::Filter::connected_within)
    /// reads the same clock.
    #[serde(with = "epoch_millis")]
    pub connected_at: SystemTime,
    /// Free-form JSON, limited in size by
    /// [`Builder::max_metadata_bytes`](crate::Builder::max_metadata_bytes).
    pub metadata: Value,
    /// What the client reports about its system.
    pub system_info: SystemInfo,
}

impl Default for ClientInfo {
    fn default() -> Self {
        Self {
            key: None,
            kind: None,
            platform: None,
            connected_at: UNIX_EPOCH,
            metadata: Value::Null,
            system_info: SystemInfo::default(),
        }
    }
}

impl ClientInfo {
    /// An empty profile: a plain, anonymous client.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the application's stable name for the client.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the client's kind.
    #[must_use]
    pub fn with_kind(mut self, kind: ClientKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Sets the client's platform.
    #[must_use]
    pub fn with_platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// Sets the free-form metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the system information.
    #[must_use]
    pub fn with_system_info(mut self, system_info: SystemInfo) -> Self {
        self.system_info = system_info;
        self
    }

    /// Whether every field is empty, so the registry need not store a profile.
    pub(crate) fn is_blank(&self) -> bool {
        let s = &self.system_info;
        !self.is_profiled()
            && self.metadata.is_null()
            && s.os.is_none()
            && s.os_version.is_none()
            && s.processor.is_none()
            && s.memory_total.is_none()
            && s.memory_available.is_none()
            && s.screen_resolution.is_none()
            && s.installed_applications.is_empty()
            && s.capabilities.is_empty()
            && s.tags.is_empty()
            && s.custom_metadata.is_empty()
    }

    /// Whether the client takes part in fleet indexes and presence events: it has a
    /// key, a kind or a platform. Anonymous clients pay for none of that.
    pub(crate) fn is_profiled(&self) -> bool {
        self.key.is_some() || self.kind.is_some() || self.platform.is_some()
    }

    /// Whether the platform matches `platform`, ignoring case by Unicode
    /// lower-casing: the same rule the platform index and every filter use, so
    /// `"ÉCLAIR"` matches `"éclair"` whichever query asks.
    #[must_use]
    pub fn platform_is(&self, platform: &str) -> bool {
        self.platform
            .as_deref()
            .is_some_and(|p| fold_platform(p) == fold_platform(platform))
    }

    /// How long ago the client connected (zero if the clock went backwards).
    #[must_use]
    pub fn connected_for(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.connected_at)
            .unwrap_or_default()
    }

    /// The device's task limit, from its device-config entry, if any.
    pub(crate) fn max_concurrent_tasks(&self) -> Option<u64> {
        self.system_info
            .custom_metadata
            .get("max_concurrent_tasks")
            .and_then(Value::as_u64)
    }
}

/// Bytes `value` takes as compact JSON, counted without building the string.
pub(crate) fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising a JSON value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The one case-folding rule for platforms, in the index and in every match:
/// Unicode lower-casing ([`str::to_lowercase`]).
pub(crate) fn fold_platform(platform: &str) -> String {
    platform.to_lowercase()
}

/// `SystemTime` as whole milliseconds since the Unix epoch.
mod epoch_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let millis = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        s.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let millis = u64::deserialize(d)?;
        Ok(UNIX_EPOCH
            .checked_add(Duration::from_millis(millis))
            .unwrap_or(UNIX_EPOCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_features_is_accepted_as_capabilities() {
        let info: SystemInfo =
            serde_json::from_str(r#"{"supported_features":["excel","word"],"os":"Windows"}"#)
                .unwrap_or_default();
        assert_eq!(info.capabilities, ["excel", "word"]);
        assert!(info.has_capabilities(&["word"]));
        assert!(!info.has_capabilities(&["word", "cad"]));
        let out = serde_json::to_value(&info).unwrap_or_default();
        assert!(
            out.get("capabilities").is_some(),
            "written back as capabilities"
        );
    }

    #[test]
    fn profile_round_trips_through_json() {
        let info = ClientInfo::new()
            .with_key("d1")
            .with_kind(ClientKind::Device)
            .with_platform("Windows")
            .with_metadata(serde_json::json!({"rack": 4}));
        let text = serde_json::to_string(&info).unwrap_or_default();
        assert!(text.contains(r#""kind":"device""#), "{text}");
        let back: ClientInfo = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, info);
    }

    #[test]
    fn platform_matches_without_case_and_kind_parses() {
        let info = ClientInfo::new().with_platform("Windows");
        assert!(info.platform_is("WINDOWS"));
        assert!(!info.platform_is("linux"));
        assert_eq!(
            "Device".parse::<ClientKind>().ok(),
            Some(ClientKind::Device)
        );
        assert!("robot".parse::<ClientKind>().is_err());
    }

    #[test]
    fn blank_means_every_field_is_default() {
        assert!(ClientInfo::new().is_blank());
        assert!(!ClientInfo::new()
            .with_metadata(serde_json::json!(1))
            .is_blank());
        let mut info = ClientInfo::new();
        info.system_info.tags.push("x".into());
        assert!(!info.is_blank());
        // connected_at is the registry's, not the client's, so it does not count.
        info = ClientInfo::new();
        info.connected_at = SystemTime::now();
        assert!(info.is_blank());
    }

    #[test]
    fn only_named_or_typed_clients_are_profiled() {
        assert!(!ClientInfo::new().is_profiled());
        assert!(ClientInfo::new().with_key("k").is_profiled());
        assert!(ClientInfo::new()
            .with_kind(ClientKind::Orchestrator)
            .is_profiled());
    }
}
