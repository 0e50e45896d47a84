//! Administrative device configuration, merged into profiles at registration.
//!
//! A config file maps client keys to administrative fields:
//!
//! ```yaml
//! device_windows_001:
//!   tags: [office, fast]
//!   tier: gold
//!   additional_features: [excel]
//!   max_concurrent_tasks: 2
//! ```
//!
//! For a client whose key has an entry, registration merges it into the reported
//! [`SystemInfo`]: `additional_features` join `capabilities` without duplicates,
//! `tags` replace the tags, and every field of the entry is also kept in
//! `custom_metadata` (so `tier` and `max_concurrent_tasks` are there too).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::profile::SystemInfo;

/// Parsed device configuration: key → administrative fields.
///
/// # Examples
///
/// ```
/// use switchboard::DeviceConfig;
///
/// let config = DeviceConfig::from_yaml_str("d1:\n  tags: [gpu]\n  additional_features: [cad]\n")?;
/// assert!(config.get("d1").is_some());
/// assert!(DeviceConfig::from_yaml_str("d1: [unclosed").is_err());
/// # Ok::<(), switchboard::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceConfig {
    entries: HashMap<String, Map<String, Value>>,
}

impl DeviceConfig {
    /// An empty configuration.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a YAML (`.yaml`, `.yml`), JSON (`.json`) or TOML (`.toml`) file, chosen
    /// by extension.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Io`] if the file cannot be read, [`ConfigError::Format`] for
    /// another extension, [`ConfigError::Parse`] (with line and column) for a
    /// malformed file, and [`ConfigError::Shape`] if it is not a map of maps.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        match ext.as_str() {
            "yaml" | "yml" => Self::from_yaml_str(&text),
            "json" => Self::from_json_str(&text),
            "toml" => Self::from_toml_str(&text),
            _ => Err(ConfigError::Format(path.display().to_string())),
        }
    }

    /// Parses YAML text.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), without the file errors.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Parse {
                line,
                column,
                message: e.to_string(),
            }
        })?;
        Self::from_value(value)
    }

    /// Parses JSON text.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), without the file errors.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Self::from_value(value)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), without the file errors.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_and_column(text, span.start));
            ConfigError::Parse {
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        Self::from_value(value)
    }

    fn from_value(value: Value) -> Result<Self, ConfigError> {
        let Value::Object(top) = value else {
            if value.is_null() {
                return Ok(Self::default());
            }
            return Err(ConfigError::Shape(
                "the top level must map keys to entries".into(),
            ));
        };
        let mut entries = HashMap::with_capacity(top.len());
        for (key, entry) in top {
            match entry {
                Value::Object(fields) => {
                    for list in ["tags", "additional_features"] {
                        if let Some(v) = fields.get(list) {
                            if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                                return Err(ConfigError::Shape(format!(
                                    "`{key}.{list}` must be a list of strings"
                                )));
                            }
                        }
                    }
                    if let Some(v) = fields.get("max_concurrent_tasks") {
                        if v.as_u64().is_none() {
                            return Err(ConfigError::Shape(format!(
                                "`{key}.max_concurrent_tasks` must be a whole number"
                            )));
                        }
                    }
                    entries.insert(key, fields);
                }
                Value::Null => {
                    entries.insert(key, Map::new());
                }
                _ => {
                    return Err(ConfigError::Shape(format!("entry `{key}` must be a map")));
                }
            }
        }
        Ok(Self { entries })
    }

    /// The administrative fields for `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Map<String, Value>> {
        self.entries.get(key)
    }

    /// Number of configured keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The reported system info with `key`'s entry merged in.
    pub(crate) fn merge(&self, key: Option<&str>, reported: &SystemInfo) -> Option<SystemInfo> {
        let entry = self.entries.get(key?)?;
        let mut merged = reported.clone();
        for feature in strings(entry.get("additional_features")) {
            if !merged.capabilities.iter().any(|c| c == feature) {
                merged.capabilities.push(feature.to_owned());
            }
        }
        if entry.contains_key("tags") {
            merged.tags = strings(entry.get("tags")).map(str::to_owned).collect();
        }
        for (field, value) in entry {
            merged.custom_metadata.insert(field.clone(), value.clone());
        }
        Some(merged)
    }
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
device_windows_001:
  tags: [office, fast]
  tier: gold
  additional_features: [excel, word]
  max_concurrent_tasks: 2
";

    #[test]
    fn merge_joins_features_sets_tags_and_keeps_every_field() {
        let config = DeviceConfig::from_yaml_str(YAML).unwrap_or_default();
        let reported = SystemInfo {
            capabilities: vec!["word".into(), "browser".into()],
            tags: vec!["old".into()],
            ..SystemInfo::default()
        };
        let merged = config
            .merge(Some("device_windows_001"), &reported)
            .unwrap_or_default();
        assert_eq!(merged.capabilities, ["word", "browser", "excel"]);
        assert_eq!(merged.tags, ["office", "fast"]);
        assert_eq!(
            merged.custom_metadata.get("tier"),
            Some(&Value::from("gold"))
        );
        assert_eq!(
            merged.custom_metadata.get("max_concurrent_tasks"),
            Some(&Value::from(2))
        );
        assert!(config.merge(Some("other"), &reported).is_none());
        assert!(config.merge(None, &reported).is_none());
    }

    #[test]
    fn the_three_formats_agree() {
        let yaml = DeviceConfig::from_yaml_str(YAML).unwrap_or_default();
        let json = DeviceConfig::from_json_str(
            r#"{"device_windows_001":{"tags":["office","fast"],"tier":"gold",
                "additional_features":["excel","word"],"max_concurrent_tasks":2}}"#,
        )
        .unwrap_or_default();
        let toml = DeviceConfig::from_toml_str(
            "[device_windows_001]\ntags = [\"office\", \"fast\"]\ntier = \"gold\"\n\
             additional_features = [\"excel\", \"word\"]\nmax_concurrent_tasks = 2\n",
        )
        .unwrap_or_default();
        assert_eq!(yaml.len(), 1);
        assert_eq!(yaml, json);
        assert_eq!(yaml, toml);
    }

    #[test]
    fn malformed_files_name_line_and_column() {
        let yaml = DeviceConfig::from_yaml_str("a:\n  tags: [x\n  tier: 1\n");
        assert!(
            matches!(yaml, Err(ConfigError::Parse { line, .. }) if line >= 2),
            "{yaml:?}"
        );
        let json = DeviceConfig::from_json_str("{\n  \"a\": {,}\n}");
        assert!(
            matches!(json, Err(ConfigError::Parse { line: 2, column, .. }) if column > 0),
            "{json:?}"
        );
        let toml = DeviceConfig::from_toml_str("[a]\ntags = [\"x\"\n");
        assert!(
            matches!(toml, Err(ConfigError::Parse { line, .. }) if line >= 2),
            "{toml:?}"
        );
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        assert!(matches!(
            DeviceConfig::from_yaml_str("- a\n- b\n"),
            Err(ConfigError::Shape(_))
        ));
        assert!(matches!(
            DeviceConfig::from_yaml_str("a:\n  tags: gold\n"),
            Err(ConfigError::Shape(_))
        ));
        assert!(matches!(
            DeviceConfig::from_yaml_str("a:\n  max_concurrent_tasks: -1\n"),
            Err(ConfigError::Shape(_))
        ));
        assert_eq!(DeviceConfig::from_yaml_str("").map(|c| c.len()), Ok(0));
    }

    #[test]
    fn load_picks_the_format_by_extension() {
        let dir = std::env::temp_dir().join(format!("switchboard-cfg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let yml = dir.join("fleet.yml");
        let _ = std::fs::write(&yml, YAML);
        assert_eq!(DeviceConfig::load(&yml).map(|c| c.len()), Ok(1));
        let ini = dir.join("fleet.ini");
        let _ = std::fs::write(&ini, "x");
        assert!(matches!(
            DeviceConfig::load(&ini),
            Err(ConfigError::Format(_))
        ));
        assert!(matches!(
            DeviceConfig::load(dir.join("missing.yaml")),
            Err(ConfigError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
    }
}
