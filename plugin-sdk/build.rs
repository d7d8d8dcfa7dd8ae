//! Encodes each step-kind world of `wit/` as a component-type section, so the
//! `export!` macro can embed exactly the worlds a plugin implements.

use std::path::PathBuf;

const KIND_WORLDS: &[&str] = &[
    "build",
    "deploy",
    "smoke-test",
    "health-check",
    "rollback",
    "notify",
];

fn main() {
    let wit = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(&wit)
        .unwrap_or_else(|e| panic!("parsing {}: {e:#}", wit.display()));
    for name in KIND_WORLDS {
        let world = resolve
            .select_world(&[pkg], Some(name))
            .unwrap_or_else(|e| panic!("world {name}: {e:#}"));
        let bytes = wit_component::metadata::encode(
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            None,
            false,
        )
        .unwrap_or_else(|e| panic!("encoding world {name}: {e:#}"));
        std::fs::write(out.join(format!("{name}.wit.bin")), bytes).unwrap();
    }
}
