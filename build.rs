//! Compiles `proto/aura/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) and writes the file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = fs::read_dir(proto_root.join("aura/v1"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    files.sort();

    // protox prints no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("aura_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
