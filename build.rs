//! Release builds on x86_64 Linux (rustc's default linker there, rust-lld since 1.90) are
//! linked so that appserver's processes keep less of the binary resident (docs/performance.md,
//! "Memory"); elsewhere the binary is linked as usual. Linux maps a file-backed page fault 64
//! KiB at a time (fault-around), so whatever a process touches drags its neighbours in.
//!
//! **The hot code layout.** A worker running functions spread over the whole `.text` has most
//! of it resident. `hot-code.txt` lists the functions processes ran under callgrind
//! (`scripts/hot-code` writes it); they are linked first, in one output section `.text.hot`,
//! then those only masters and a threaded server ran, and the rest of `.text` stays
//! untouched. Two mechanisms:
//!
//! - the list itself as lld's `--symbol-ordering-file`: exact symbol names, so exactly the
//!   functions a worker runs, but the names carry a hash that changes with the toolchain, the
//!   dependencies' versions and the feature set;
//! - a linker script generated from the list with the hashes wildcarded: it keeps working when
//!   the names drift, and also takes in the other instantiations of a generic function (a
//!   larger section), which the ordering file then sorts after the listed ones.
//!
//! `APPSERVER_HOT_CODE=0` turns it off, to measure the difference, and for valgrind, which
//! names no function outside `.text` (perf does). `scripts/hot-code --check` (run by CI)
//! checks the effect on a worker.
//!
//! **Packed relative relocations** (`-z pack-relative-relocs`, glibc's `DT_RELR`): the
//! position-independent binary's relocations take 5 KiB instead of 108 KiB of `.rela.dyn`,
//! which the dynamic loader reads in every master and which sits next to `.rodata`, so
//! fault-around kept it resident in every worker too. The binary then needs glibc 2.36 or
//! later to start (the symbol version `GLIBC_ABI_DT_RELR`), so it is packed only where the
//! building machine's glibc is that recent; `APPSERVER_RELR=0` turns it off for a binary
//! meant for an older one.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=hot-code.txt");
    println!("cargo:rerun-if-env-changed=APPSERVER_HOT_CODE");
    println!("cargo:rerun-if-env-changed=APPSERVER_RELR");
    if !release_with_rust_lld() {
        return;
    }
    if env::var("APPSERVER_HOT_CODE").as_deref() != Ok("0") {
        lay_out_hot_code();
    }
    if env::var("APPSERVER_RELR").as_deref() != Ok("0") && glibc_has_relr() {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}

fn lay_out_hot_code() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let list = manifest.join("hot-code.txt");
    let Ok(names) = fs::read_to_string(&list) else {
        return;
    };
    let script = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("hot-code.ld");
    fs::write(&script, linker_script(&names)).expect("cannot write the hot-code linker script");
    println!("cargo:rustc-link-arg=-Wl,-T,{}", script.display());
    println!(
        "cargo:rustc-link-arg=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Names from another toolchain or feature set are expected: the script covers them.
    println!("cargo:rustc-link-arg=-Wl,--no-warn-symbol-ordering");
}

/// Whether this is a release build for x86_64 Linux linked by rust-lld, with no linker or
/// link arguments of the builder's own.
fn release_with_rust_lld() -> bool {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("link")
    {
        return false;
    }
    // rust-lld became the default linker of this target in 1.90.
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}

/// Whether this machine's glibc loads `DT_RELR` relocations (2.36 or later): `getconf
/// GNU_LIBC_VERSION` says "glibc 2.36".
fn glibc_has_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text
        .trim()
        .strip_prefix("glibc ")
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse::<u32>().ok());
    matches!(
        (version.next().flatten(), version.next().flatten()),
        (Some(major), Some(minor)) if (major, minor) >= (2, 36)
    )
}

/// `.text.hot`, before `.text`, holding every function whose name matches a listed one with
/// the hash left out: `17h<16 hex digits>E` in legacy names, the crate disambiguator
/// `Cs<base62>_` in v0 names. Cold functions (`#[cold]`) sit in `.text.unlikely.<name>`.
fn linker_script(names: &str) -> String {
    let mut patterns: Vec<String> = names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("_ZN") || n.starts_with("_R"))
        .map(wildcard_hash)
        .collect();
    patterns.sort();
    patterns.dedup();
    let mut script = String::from(
        "/* Generated by build.rs from hot-code.txt: the functions appserver's processes run. */\n\
         SECTIONS {\n  .text.hot : {\n    *(\n",
    );
    for p in &patterns {
        script.push_str(&format!("      .text.{p} .text.unlikely.{p}\n"));
    }
    script.push_str("    )\n  }\n}\nINSERT BEFORE .text;\n");
    script
}

fn wildcard_hash(name: &str) -> String {
    if name.starts_with("_ZN") {
        // ...17h0123456789abcdefE, the last path segment, then at most a suffix such as
        // `.514` on a local copy ('h' is no hex digit: the last "17h" starts the hash).
        let Some(at) = name.rfind("17h") else {
            return name.to_owned();
        };
        let hash = &name[at + 3..];
        let hashed = hash.len() > 16
            && hash.as_bytes()[16] == b'E'
            && hash[..16].bytes().all(|b| b.is_ascii_hexdigit());
        return if hashed {
            format!("{}17h*E{}", &name[..at], &hash[17..])
        } else {
            name.to_owned()
        };
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("Cs") {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let digits = tail[2..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        if tail[2 + digits..].starts_with('_') && digits > 0 {
            out.push_str("Cs*_");
            rest = &tail[2 + digits + 1..];
        } else {
            out.push_str("Cs");
            rest = &tail[2..];
        }
    }
    out.push_str(rest);
    out
}
