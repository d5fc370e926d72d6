//! Compiles the erl_driver glue in `c_src/` against the emulator's own
//! `erl_driver.h`, found through `TUBE_ERTS_INCLUDE` or by asking `erl`.

use std::path::PathBuf;
use std::process::Command;

fn erts_include() -> PathBuf {
    if let Ok(dir) = std::env::var("TUBE_ERTS_INCLUDE") {
        return PathBuf::from(dir);
    }
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-eval",
            "io:format(\"~s\", [filename:join([code:root_dir(), \"usr\", \"include\"])]), halt().",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => PathBuf::from("/usr/lib/erlang/usr/include"),
    }
}

fn main() {
    let include = erts_include();
    let c_src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../c_src");
    println!("cargo:rerun-if-env-changed=TUBE_ERTS_INCLUDE");
    println!("cargo:rerun-if-changed={}", c_src.join("tube_drv.c").display());
    cc::Build::new()
        .file(c_src.join("tube_drv.c"))
        .include(&include)
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("tube_drv");
}
