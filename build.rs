//! Link the `pailot` binary with packed relative relocations (DT_RELR) where the toolchain supports it.
//!
//! A position-independent Rust binary of this size carries ~30,000 relative relocations: 745 KiB of
//! `.rela.dyn` that the dynamic loader reads at every start and that then stays resident in the
//! daemon (`BENCHMARKS.md`, daemon section). Packed, they take about 9 KiB. Needs GNU ld >= 2.38 or
//! lld >= 15 and glibc >= 2.36 at run time (the linker records the GLIBC_ABI_DT_RELR dependency only
//! when the C library provides it). Without support, or with PAILOT_NO_RELR=1, the flag is left out.

use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PAILOT_NO_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("linux-gnu") || std::env::var_os("PAILOT_NO_RELR").is_some() {
        return;
    }
    if linker_supports_relr() {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    } else {
        println!(
            "cargo:warning=linker does not support {FLAG}; pailot is linked without packed relocations"
        );
    }
}

/// Link a trivial C program with the flag, the way rustc drives the linker (through `cc`).
fn linker_supports_relr() -> bool {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| ".".into()));
    let src = out.join("relr-probe.c");
    let bin = out.join("relr-probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    Command::new(cc)
        .arg("-pie")
        .arg("-fPIE")
        .arg(FLAG)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .is_ok_and(|o| o.status.success())
}
