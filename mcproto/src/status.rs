//! Status JSON for locally answered server-list pings, and the stale marker for cached
//! backend answers.

use serde_json::{json, Value};

/// What a locally answered status shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusInfo<'a> {
    pub motd: &'a str,
    pub version_name: &'a str,
    /// Echo the client's protocol here so its list shows the MOTD instead of "outdated".
    pub protocol: i32,
    pub online: i64,
    pub max: i64,
}

/// `{"version":{"name","protocol"},"players":{"max","online"},"description":{"text"}}`.
pub fn status_json(info: &StatusInfo) -> String {
    json!({
        "version": { "name": info.version_name, "protocol": info.protocol },
        "players": { "max": info.max, "online": info.online },
        "description": { "text": info.motd },
    })
    .to_string()
}

/// Appends a visible `note` to the description of a cached backend status, keeping its own
/// formatting. `None` when `json` is not a JSON object.
pub fn mark_status_stale(json: &str, note: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(json).ok()?;
    let obj = value.as_object_mut()?;
    let marker = json!({ "text": format!(" {note}"), "color": "gray", "italic": true });
    let description = match obj.remove("description") {
        None | Some(Value::Null) => json!({ "text": note, "color": "gray", "italic": true }),
        Some(Value::String(s)) => json!({ "text": s, "extra": [marker] }),
        // A text component (object or array) keeps its own style; the marker comes after it.
        Some(original) => json!({ "text": "", "extra": [original, marker] }),
    };
    obj.insert("description".to_owned(), description);
    Some(value.to_string())
}
