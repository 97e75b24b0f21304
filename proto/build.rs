use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of a system package; PROTOC still wins if set.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("iot_descriptor.bin"))
        .compile_protos(
            &["iot/storage/v1/storage.proto", "iot/session/v1/session.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=iot");
    Ok(())
}
