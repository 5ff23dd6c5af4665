//! Compiles the protobuf contracts with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) and writes the file descriptor sets that server reflection serves:
//! `proto/aura/v1` (AURA's own API, served by every role) and `proto/envoy` (Envoy's rate
//! limit service, served only by a gateway with `--envoy-rls`, so it is a set of its own).

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Every `.proto` file under `dir`, sorted.
fn protos(dir: &PathBuf) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(protos(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // protox prints no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");
    for (dir, descriptor) in [("aura/v1", "aura_descriptor.bin"), ("envoy", "envoy_descriptor.bin")] {
        let files = protos(&proto_root.join(dir))?;
        for file in &files {
            println!("cargo:rerun-if-changed={}", file.display());
        }
        let fds = protox::compile(&files, [&proto_root])?;
        fs::write(out_dir.join(descriptor), fds.encode_to_vec())?;
        tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    }
    Ok(())
}
