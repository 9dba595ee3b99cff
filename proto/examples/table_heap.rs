//! Builds a route table the size of the fleet benchmark's and exits without
//! freeing it, so a heap profiler's "leaked" total is the table's live heap:
//! `cargo build --release -p automc-proto --features fake --example table_heap &&
//! heaptrack target/release/examples/table_heap 100000`.
use automc_proto::fake::{fleet_route, routes_arg};
use automc_proto::RouteTable;

fn main() {
    let table = RouteTable::from_routes((1..=routes_arg()).map(fleet_route));
    println!("{} routes", table.len());
    std::mem::forget(table);
}
