//! Compiles `proto/automc/v1/automc.proto` with protox (pure Rust, no system
//! `protoc`) and feeds the same descriptor set to tonic's code generator and
//! to server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/automc/v1/automc.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("automc_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A route carries its options inline otherwise: 264 of its 384 bytes,
        // in every copy of a 100k-route table, for the few servers that have any.
        .boxed(".automc.v1.Route.options")
        // Its routes are the `Arc`s a table keeps (src/chunk.rs).
        .extern_path(".automc.v1.SnapshotChunk", "crate::chunk::SnapshotChunk")
        .compile_fds(descriptors)?;
    Ok(())
}
