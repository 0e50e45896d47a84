//! Query strings, path segments and paging: text in, typed values or an [`ApiError`] out.

use std::time::Duration;

use super::error::ApiError;
use crate::{ClientKind, Filter, SessionId};

/// Items per page when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub(crate) const MAX_LIMIT: usize = 1000;
/// The longest kick reason accepted, in bytes.
pub(crate) const MAX_REASON: usize = 256;
/// The path-segment prefix that forces a session id to be read as a name.
pub(crate) const NAME_PREFIX: &str = "name:";

/// A decoded query string that hands out each parameter once and then rejects the
/// ones nobody asked for, so that a typo (`kinds=device`) is an error, not a
/// silently ignored filter.
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|raw| {
                form_urlencoded::parse(raw.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// Every value of a repeatable parameter.
    pub(crate) fn all(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        let mut values = Vec::new();
        self.pairs.retain(|(k, v)| {
            if k == name {
                values.push(v.clone());
                false
            } else {
                true
            }
        });
        if values.iter().any(String::is_empty) {
            return Err(ApiError::invalid_parameter(format!("{name} is empty")));
        }
        Ok(values)
    }

    /// The value of a parameter that may be given at most once.
    pub(crate) fn one(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.all(name)?;
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(ApiError::invalid_parameter(format!(
                "{name} may be given once"
            ))),
        }
    }

    /// Fails on the first parameter no one took.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        match self.pairs.first() {
            Some((name, _)) => Err(ApiError::unknown_parameter(name)),
            None => Ok(()),
        }
    }
}

/// `limit` and `cursor`.
pub(crate) struct Page {
    pub(crate) limit: usize,
    pub(crate) cursor: Option<String>,
}

impl Page {
    pub(crate) fn take(query: &mut Query) -> Result<Self, ApiError> {
        let limit = match query.one("limit")? {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n @ 1..=MAX_LIMIT) => n,
                _ => {
                    return Err(ApiError::invalid_parameter(format!(
                        "limit must be an integer from 1 to {MAX_LIMIT}, not {text:?}"
                    )))
                }
            },
        };
        let cursor = query.one("cursor")?;
        Ok(Self { limit, cursor })
    }

    /// One page of `items`, which must be sorted by `key`: the items after the
    /// cursor's key, and the cursor of the next page if any remain.
    ///
    /// Keys are stable (client ids, session ids), so a client that joins or leaves
    /// between two pages never shifts the others: nothing is listed twice, and
    /// only clients that came or went meanwhile may be missed.
    pub(crate) fn apply<T, K: Ord>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> K,
        after: Option<K>,
    ) -> (Vec<T>, Option<K>) {
        let start = match &after {
            Some(after) => items.partition_point(|item| key(item) <= *after),
            None => 0,
        };
        let rest = items.len() - start;
        let page: Vec<T> = items.into_iter().skip(start).take(self.limit).collect();
        let next = if rest > page.len() {
            page.last().map(&key)
        } else {
            None
        };
        (page, next)
    }
}

/// The filter of `GET /clients`.
pub(crate) fn client_filter(query: &mut Query) -> Result<Filter, ApiError> {
    let mut filter = Filter::new();
    if let Some(kind) = query.one("kind")? {
        let kind: ClientKind = kind
            .parse()
            .map_err(|e: crate::UnknownKind| ApiError::invalid_filter(e.to_string()))?;
        filter = filter.kind(kind);
    }
    if let Some(platform) = query.one("platform")? {
        filter = filter.platform(platform);
    }
    for capability in query.all("capability")? {
        filter = filter.capability(capability);
    }
    if let Some(tag) = query.one("tag")? {
        filter = filter.tag(tag);
    }
    if let Some(window) = query.one("connected_within")? {
        let window = parse_duration(&window)
            .map_err(|e| ApiError::invalid_filter(format!("connected_within {window:?}: {e}")))?;
        filter = filter.connected_within(window);
    }
    Ok(filter)
}

/// The `reason` of a kick.
pub(crate) fn kick_reason(query: &mut Query) -> Result<String, ApiError> {
    let reason = query
        .one("reason")?
        .unwrap_or_else(|| "kicked by an operator".to_owned());
    if reason.len() > MAX_REASON {
        return Err(ApiError::invalid_parameter(format!(
            "reason is longer than {MAX_REASON} bytes"
        )));
    }
    Ok(reason)
}

/// Parses a duration such as `30s`, `5m`, `1h30m` or `250ms`: one or more
/// `<integer><unit>` parts, with units `ms`, `s`, `m`, `h` and `d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    const FORMAT: &str = "expected <integer><unit>..., units ms, s, m, h, d (e.g. 30s, 1h30m)";
    if text.is_empty() {
        return Err(FORMAT);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(FORMAT);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        let millis_per_unit: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(FORMAT),
        };
        let part = n.checked_mul(millis_per_unit).ok_or("duration too large")?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or("duration too large")?;
        rest = &rest[digits + units..];
    }
    Ok(total)
}

/// The session a path segment names: `name:<text>` is always the name `<text>`;
/// otherwise a decimal `u64` is a numeric id and anything else is a name.
pub(crate) fn session_id(segment: &str) -> SessionId {
    if let Some(name) = segment.strip_prefix(NAME_PREFIX) {
        return SessionId::from(name);
    }
    match segment.parse::<u64>() {
        Ok(n) if !segment.starts_with('+') => SessionId::Num(n),
        _ => SessionId::from(segment),
    }
}

/// The path segment that names `session`, the inverse of [`session_id`].
pub(crate) fn session_segment(session: &SessionId) -> String {
    match session {
        SessionId::Num(n) => n.to_string(),
        SessionId::Name(name) => {
            if session_id(name) == *session {
                name.to_string()
            } else {
                format!("{NAME_PREFIX}{name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_reject_the_rest() {
        let ok = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
        ];
        for (text, millis) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for bad in [
            "",
            "30",
            "s",
            "5 m",
            "-5m",
            "1.5h",
            "5w",
            "5mm",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration(&format!("{}d", u64::MAX / 1000)).is_err());
    }

    #[test]
    fn session_segments_round_trip_even_for_names_that_look_numeric() {
        for id in [
            SessionId::Num(7),
            SessionId::from("lobby"),
            SessionId::from("7"),
            SessionId::from("name:x"),
            SessionId::from("+7"),
            SessionId::from(""),
        ] {
            assert_eq!(session_id(&session_segment(&id)), id, "{id:?}");
        }
        assert_eq!(session_id("42"), SessionId::Num(42));
        assert_eq!(session_id("name:42"), SessionId::from("42"));
        assert_eq!(session_segment(&SessionId::from("42")), "name:42");
    }

    #[test]
    fn pages_resume_after_the_cursor_key() {
        let page = Page {
            limit: 2,
            cursor: None,
        };
        let items = vec![1, 3, 5, 7, 9];
        assert_eq!(
            page.apply(items.clone(), |x| *x, None),
            (vec![1, 3], Some(3))
        );
        assert_eq!(
            page.apply(items.clone(), |x| *x, Some(3)),
            (vec![5, 7], Some(7))
        );
        assert_eq!(page.apply(items.clone(), |x| *x, Some(7)), (vec![9], None));
        // The cursor's own item left meanwhile: resume after where it was.
        assert_eq!(
            page.apply(items.clone(), |x| *x, Some(4)),
            (vec![5, 7], Some(7))
        );
        assert_eq!(page.apply(items, |x| *x, Some(9)), (vec![], None));
    }

    #[test]
    fn queries_reject_unknown_repeated_and_empty_parameters() {
        let mut q = Query::parse(Some("kind=device&kinds=x"));
        assert!(q.one("kind").is_ok());
        assert!(q.finish().is_err());
        let mut q = Query::parse(Some("tag=a&tag=b"));
        assert!(q.one("tag").is_err());
        let mut q = Query::parse(Some("capability=a&capability=b"));
        assert_eq!(q.all("capability").ok(), Some(vec!["a".into(), "b".into()]));
        let mut q = Query::parse(Some("tag="));
        assert!(q.one("tag").is_err());
        assert!(Query::parse(None).finish().is_ok());
    }
}
