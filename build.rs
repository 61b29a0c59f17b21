//! Link the `pailot` binary with packed relative relocations (DT_RELR) where the toolchain supports it.
//!
//! A position-independent Rust binary of this size carries ~30,000 relative relocations: 745 KiB of
//! `.rela.dyn` that the dynamic loader reads at every start and that then stays resident in the
//! daemon (`BENCHMARKS.md`, daemon section). Packed, they take about 9 KiB. Needs GNU ld >= 2.38 or
//! lld >= 15 and glibc >= 2.36 at run time (the linker records the GLIBC_ABI_DT_RELR dependency only
//! when the C library provides it). Without support, or with PAILOT_NO_RELR=1, the flag is left out.
//!
//! Release builds also pass `build/daemon-symbol-order.txt` to the linker (`--symbol-ordering-file`):
//! the functions the daemon runs, recorded by `scripts/profile-daemon`, are placed together at the
//! start of `.text`, so the idle daemon's resident code is those functions rather than every large
//! page-cache folio they are scattered over (idle RSS 21.9–22.2 → 13.9 MiB, `BENCHMARKS.md`).
//! Names the binary does not define (the list is from another toolchain or `Cargo.lock`) are ignored;
//! `scripts/profile-daemon --check` says how much of the list still matches. Only rustc's default
//! linker on x86_64 Linux (rust-lld, since Rust 1.90) is given the flag: a linker chosen with
//! `CARGO_TARGET_<TRIPLE>_LINKER` or `-C link…` in RUSTFLAGS, or PAILOT_NO_SYMBOL_ORDER=1, leaves it
//! out (set the latter when the linker comes from a cargo configuration file).

use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";
const SYMBOL_ORDER: &str = "build/daemon-symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SYMBOL_ORDER}");
    println!("cargo:rerun-if-env-changed=PAILOT_NO_RELR");
    println!("cargo:rerun-if-env-changed=PAILOT_NO_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    if uses_default_lld(&target) {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let order = manifest.join(SYMBOL_ORDER);
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
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

/// Whether the binary is a release build linked by rustc's default linker for x86_64 Linux (rust-lld),
/// which reads a symbol ordering file; another linker would reject the flag.
fn uses_default_lld(target: &str) -> bool {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    println!("cargo:rerun-if-env-changed={linker_var}");
    target == "x86_64-unknown-linux-gnu"
        && env("PROFILE") == "release"
        && std::env::var_os("PAILOT_NO_SYMBOL_ORDER").is_none()
        && std::env::var_os(&linker_var).is_none()
        && !env("CARGO_ENCODED_RUSTFLAGS").contains("link")
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
