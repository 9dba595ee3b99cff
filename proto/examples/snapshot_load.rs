//! Times both ends of one snapshot of a fleet-benchmark-sized table, in one
//! process and on one core: syncd cutting it into pieces and encoding them
//! (what it does per watcher), and an edge decoding those bytes and
//! assembling the table (what every new edge does before it is ready):
//! `cargo run --release -p automc-proto --features fake --example snapshot_load -- 100000`.
use std::time::Instant;

use automc_proto::fake::{fleet_route, routes_arg};
use automc_proto::sync::{snapshot_chunk, Assembler, Event};
use automc_proto::v1::WatchResponse;
use automc_proto::RouteTable;
use prost::Message;

/// The edge's allocator: allocation is a large share of loading a table.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let n = routes_arg();
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let table = RouteTable::from_routes((1..=n).map(fleet_route));
    for round in 0..rounds {
        let t0 = Instant::now();
        let mut pieces = Vec::new();
        let mut after = String::new();
        loop {
            let (msg, next) = snapshot_chunk(&table, &after, ("epoch", 1), &[], None);
            pieces.push(WatchResponse { msg: Some(msg) }.encode_to_vec());
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        let encoded = t0.elapsed();
        let bytes: usize = pieces.iter().map(Vec::len).sum();

        let t1 = Instant::now();
        let msgs: Vec<_> = pieces
            .iter()
            .map(|p| {
                WatchResponse::decode(p.as_slice())
                    .ok()
                    .and_then(|m| m.msg)
                    .expect("a piece decodes")
            })
            .collect();
        let decoded = t1.elapsed();
        let mut asm = Assembler::new();
        let mut built = None;
        for msg in msgs {
            if let Some(Event::Snapshot { table, .. }) = asm.push(msg).expect("framing") {
                built = Some(table);
            }
        }
        let assembled = t1.elapsed();
        let built = built.expect("a whole snapshot");
        println!(
            "round {round}: {n} routes, {} pieces, {:.1} MiB: syncd cut+encode {:.1} ms; edge decode+assemble {:.1} ms (decode {:.1} ms; {} routes)",
            pieces.len(),
            bytes as f64 / 1048576.0,
            encoded.as_secs_f64() * 1e3,
            assembled.as_secs_f64() * 1e3,
            decoded.as_secs_f64() * 1e3,
            built.len()
        );
    }
}
