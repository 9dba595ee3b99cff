//! Times the fold of a table's overlay into a new base (`RouteTable::compact`),
//! the O(n) step a writer runs once per half a table of changed servers and
//! which syncd and the edge run on a blocking thread, off their locks:
//! `cargo run --release -p automc-proto --features fake --example table_fold -- 1000000`.
use std::time::Instant;

use automc_proto::fake::{fleet_route, routes_arg};
use automc_proto::RouteTable;

/// The edge's allocator, as in the other examples.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let n = routes_arg();
    let mut table = RouteTable::from_routes((1..=n).map(fleet_route));
    let t0 = Instant::now();
    let mut changed = 0;
    for i in 1..=n {
        if table.wants_compaction() {
            break;
        }
        let mut r = fleet_route(i);
        r.address = format!("10.9.{}.{}:25565", i % 250, i % 200);
        table.apply_changes([r], &[]);
        changed += 1;
    }
    let applied = t0.elapsed();
    println!(
        "{n} routes, {changed} changed until a fold is due: {:.2} µs a change",
        applied.as_secs_f64() * 1e6 / changed.max(1) as f64
    );
    for round in 0..3 {
        let mut copy = table.clone();
        let t1 = Instant::now();
        copy.compact();
        println!("fold {round}: {:.1} ms", t1.elapsed().as_secs_f64() * 1e3);
    }
    // What the last holder of the unfolded table pays to free it.
    let t2 = Instant::now();
    drop(table);
    println!(
        "freeing the unfolded table: {:.1} ms",
        t2.elapsed().as_secs_f64() * 1e3
    );
}
