//! The waker token is sent as `X-API-Key` and never appears in logs. In a
//! test binary of its own: tracing caches per-callsite interest process-wide,
//! so a thread-scoped subscriber in a binary running other tests in parallel
//! could miss events.
use std::io::Write;
use std::sync::{Arc, Mutex};

use automc_proto::v1::WakeRequest;
use automc_tests::stack::{migrated_pg, start_syncd};
use automc_tests::waker::{Behaviour, FakeWaker};

/// Everything logged by this test's runtime thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_waker_token_is_sent_and_never_logged() {
    const TOKEN: &str = "tok-5b8e1f-do-not-log";
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded, so syncd's tasks log here too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let waker = FakeWaker::start().await;
    waker.set("creative", Behaviour::StartFails(500));
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES
           ('survival', 'survival.example.com', '10.0.0.2:25565'),
           ('creative', 'creative.example.com', '10.0.0.3:25565')",
    )
    .await;
    let url = waker.url();
    let syncd = start_syncd(&pg.dsn(), |c| {
        c.waker.url = Some(url);
        c.waker.token = Some(TOKEN.into());
    })
    .await;
    let mut client = syncd.client().await;
    let wake = |server: &str| WakeRequest {
        server: server.into(),
        caller: "test".into(),
    };
    client.wake(wake("survival")).await.expect("wake");
    client.wake(wake("creative")).await.expect_err("fails");
    syncd.stop().await;

    let keys = waker.api_keys();
    assert!(keys.len() >= 3);
    assert!(keys.iter().all(|k| k.as_deref() == Some(TOKEN)), "{keys:?}");
    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        text.contains("wake succeeded") && text.contains("wake failed"),
        "logs captured:\n{text}"
    );
    assert!(!text.contains(TOKEN), "token leaked into logs");
}
