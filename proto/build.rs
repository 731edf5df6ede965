//! Generates the helper API from `erlbridge/helper/v1/helper.proto` with a vendored protoc,
//! so a fresh machine needs no protobuf compiler of its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["erlbridge/helper/v1/helper.proto"],
        &["."],
    )?;
    Ok(())
}
