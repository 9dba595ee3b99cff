//! Builds a route table the size of the fleet benchmark's and exits without
//! freeing it, so a heap profiler's "leaked" total is the table's live heap:
//! `cargo build --release -p automc-proto --example table_heap &&
//! heaptrack target/release/examples/table_heap 100000`.
use automc_proto::fake::route;
use automc_proto::RouteTable;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let table = RouteTable::from_routes((1..=n).map(|i| {
        route(
            &format!("s{i}"),
            &format!("s{i}.example.com"),
            &format!("10.0.{}.{}:25565", i / 250 % 250, i % 250),
        )
    }));
    println!("{} routes", table.len());
    std::mem::forget(table);
}
