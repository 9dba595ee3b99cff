//! Bulk transfers through a splice: pseudo-random bytes from a seed, written one way and
//! hashed on the other, so a test compares SHA-256 sums instead of holding megabytes.

use anyhow::Result;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a bulk connection sent and received (see [`super::LoginMode::Bulk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkReport {
    pub sent: u64,
    pub sent_sha256: String,
    pub received: u64,
    pub received_sha256: String,
}

const CHUNK: usize = 256 * 1024;

/// The `len` pseudo-random bytes of `seed`, a chunk at a time, with their running hash.
struct RandomBytes {
    rng: rand::rngs::StdRng,
    hasher: Sha256,
    buf: Vec<u8>,
    left: u64,
}

impl RandomBytes {
    fn new(len: u64, seed: u64) -> Self {
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            hasher: Sha256::new(),
            buf: vec![0u8; CHUNK],
            left: len,
        }
    }

    /// The next chunk (already hashed), or `None` when all `len` bytes were given.
    fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(self.buf.len() as u64) as usize;
        self.rng.fill_bytes(&mut self.buf[..n]);
        self.hasher.update(&self.buf[..n]);
        self.left -= n as u64;
        Some(&self.buf[..n])
    }

    /// SHA-256 (hex) of every byte given.
    fn sha256(self) -> String {
        hex(&self.hasher.finalize())
    }
}

/// Writes `len` pseudo-random bytes from `seed`; returns their SHA-256 (hex).
pub async fn write_random<W: AsyncWrite + Unpin>(w: &mut W, len: u64, seed: u64) -> Result<String> {
    let mut bytes = RandomBytes::new(len, seed);
    while let Some(chunk) = bytes.next_chunk() {
        w.write_all(chunk).await?;
    }
    Ok(bytes.sha256())
}

/// SHA-256 (hex) of the `len` bytes `write_random(…, len, seed)` produces.
pub fn random_sha256(len: u64, seed: u64) -> String {
    let mut bytes = RandomBytes::new(len, seed);
    while bytes.next_chunk().is_some() {}
    bytes.sha256()
}

/// Reads until EOF, counting and hashing `already` (bytes read before) and the rest:
/// (bytes, SHA-256 hex).
pub async fn read_to_end_hashed<R: AsyncRead + Unpin>(
    r: &mut R,
    already: &[u8],
) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    hasher.update(already);
    let mut total = already.len() as u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Both directions at once, as each end of a bulk connection runs them: sends `send` random
/// bytes from `seed` and half-closes, while reading (after `already`) until EOF.
pub async fn exchange<R, W>(
    read: &mut R,
    write: &mut W,
    already: &[u8],
    send: u64,
    seed: u64,
) -> Result<BulkReport>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sender = async {
        let sha = write_random(write, send, seed).await?;
        write.shutdown().await?;
        anyhow::Ok(sha)
    };
    let receiver = read_to_end_hashed(read, already);
    let (sent_sha256, (received, received_sha256)) = tokio::try_join!(sender, receiver)?;
    Ok(BulkReport {
        sent: send,
        sent_sha256,
        received,
        received_sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
