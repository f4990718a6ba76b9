//! Builds `lb-ebpf` for the BPF target with aya-build (nightly, `-Z build-std=core`,
//! bpf-linker) and leaves the object in OUT_DIR, where `dataplane::object` embeds it.
//! `scripts/bootstrap.sh` installs what this needs.

fn main() -> anyhow::Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("lb-userspace has no parent folder"))?;
    // aya-build watches lb-ebpf only; the program also compiles lb-common (map types, the
    // flow and young-table hashes), and a change there must rebuild the object too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lb-common").display()
    );
    let root = workspace.join("lb-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
