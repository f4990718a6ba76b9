//! The layering of the library, checked: lower modules never import higher ones, so no
//! import cycle can come back between the configuration, its compiled model, the routing
//! tables and the runtimes (`config` ← `routing` ← `model` ← `l7`/`dataplane` ← `agent`).

/// (module folder, modules it must not import).
const RULES: &[(&str, &[&str])] = &[
    (
        "config",
        &[
            "routing",
            "model",
            "l7",
            "agent",
            "dataplane",
            "admin",
            "health",
            "metrics",
        ],
    ),
    (
        "routing",
        &[
            "model",
            "l7",
            "agent",
            "dataplane",
            "admin",
            "health",
            "metrics",
        ],
    ),
    ("model", &["l7", "agent", "admin", "health", "metrics"]),
    ("l7", &["agent", "admin"]),
];

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn lower_modules_never_import_higher_ones() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (module, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(module), &mut files);
        assert!(!files.is_empty(), "no sources under {module}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for higher in *forbidden {
                if text.contains(&format!("crate::{higher}::"))
                    || text.contains(&format!("crate::{higher}}}"))
                    || text.contains(&format!("crate::{{{higher}"))
                    || text.contains(&format!("crate::{higher};"))
                {
                    bad.push(format!("{} imports {higher}", f.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}
