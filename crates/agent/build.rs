//! Compiles the tc BPF programs (`bpf/*.c`) with clang into `OUT_DIR`, where the agent
//! embeds them. Needs Debian's `clang` and `libbpf-dev` (`./test.sh` installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = "bpf/trunk.c";
    println!("cargo:rerun-if-changed={source}");
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(out.join("trunk.o"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed on {source} ({s}); is libbpf-dev installed?"),
        Err(e) => panic!("cannot run clang for {source} ({e}): apt-get install clang libbpf-dev"),
    }
}
