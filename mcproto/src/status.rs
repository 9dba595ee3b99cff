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

/// [`status_json`] with a server icon: `png` (raw PNG bytes) as the `favicon` data URL the
/// client shows; no `favicon` field when `png` is empty.
pub fn status_json_with_favicon(info: &StatusInfo, png: &[u8]) -> String {
    let mut v = json!({
        "version": { "name": info.version_name, "protocol": info.protocol },
        "players": { "max": info.max, "online": info.online },
        "description": { "text": info.motd },
    });
    if !png.is_empty() {
        v["favicon"] = Value::String(format!("data:image/png;base64,{}", base64(png)));
    }
    v.to_string()
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A backend's status JSON with `players.online` and `players.max` set to
/// the router's own (a server limited across the fleet: the limit and the
/// fleet's count); the sample list and everything else stay as they are.
/// `None` when `json` is not a JSON object.
pub fn with_player_counts(json: &str, online: i64, max: i64) -> Option<String> {
    let mut value: Value = serde_json::from_str(json).ok()?;
    let obj = value.as_object_mut()?;
    let players = obj.entry("players").or_insert_with(|| json!({}));
    if !players.is_object() {
        *players = json!({});
    }
    if let Some(p) = players.as_object_mut() {
        p.insert("online".to_owned(), json!(online));
        p.insert("max".to_owned(), json!(max));
    }
    Some(value.to_string())
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
