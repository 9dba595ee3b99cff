//! STUB of the pure Minecraft protocol module (being written in parallel);
//! replaced wholesale by the real module on merge. Signatures only.
#![allow(unused_variables, dead_code, clippy::all)]
use std::net::SocketAddr;

pub const MAX_HANDSHAKE_BYTES: usize = 1024;
pub const MAX_ADDRESS_CHARS: usize = 255;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Status,
    Login,
    Transfer,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol_version: i32,
    pub server_address: String,
    pub server_port: u16,
    pub next_state: NextState,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyForm {
    Bare,
    V1_4,
    V1_6,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPing {
    pub form: LegacyForm,
    pub protocol_version: Option<u8>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Modern { handshake: Handshake, len: usize },
    Legacy { ping: LegacyPing, len: usize },
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    Bad,
}
impl ProtocolError {
    pub fn reason(&self) -> &'static str {
        "bad"
    }
}
pub fn parse_first_packet(buf: &[u8]) -> Result<Option<FirstPacket>, ProtocolError> {
    Ok(None)
}
pub fn parse_legacy_bare_timeout(buf: &[u8]) -> Option<LegacyPing> {
    None
}
pub enum StatusPacket {
    Request,
    Ping(i64),
}
pub fn parse_status_packet(buf: &[u8]) -> Result<Option<(StatusPacket, usize)>, ProtocolError> {
    Ok(None)
}
pub fn parse_login_start(buf: &[u8]) -> Result<Option<(String, usize)>, ProtocolError> {
    Ok(None)
}
pub fn parse_status_response(
    buf: &[u8],
    max: usize,
) -> Result<Option<(String, usize)>, ProtocolError> {
    Ok(None)
}
pub fn parse_pong(buf: &[u8]) -> Result<Option<(i64, usize)>, ProtocolError> {
    Ok(None)
}
pub fn encode_handshake(h: &Handshake) -> Vec<u8> {
    vec![]
}
pub fn encode_status_request() -> Vec<u8> {
    vec![]
}
pub fn encode_ping(p: i64) -> Vec<u8> {
    vec![]
}
pub fn encode_status_response(json: &str) -> Vec<u8> {
    vec![]
}
pub fn encode_pong(p: i64) -> Vec<u8> {
    vec![]
}
pub fn encode_login_disconnect(message: &str) -> Vec<u8> {
    vec![]
}
pub struct StatusInfo<'a> {
    pub motd: &'a str,
    pub version_name: &'a str,
    pub protocol: i32,
    pub online: i64,
    pub max: i64,
}
pub fn status_json(info: &StatusInfo) -> String {
    String::new()
}
pub fn mark_status_stale(json: &str, note: &str) -> Option<String> {
    None
}
pub fn encode_legacy_response(ping: &LegacyPing, info: &StatusInfo) -> Vec<u8> {
    vec![]
}
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}
#[derive(Debug)]
pub struct ProxyHeaderError;
pub fn detect_proxy_header(buf: &[u8]) -> Option<bool> {
    None
}
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    Ok(None)
}
pub fn encode_proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    vec![]
}
