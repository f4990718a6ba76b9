//! The README's configuration examples stay valid: every ```toml block in it must pass the
//! same parsing and validation as `lb validate`.

#[test]
fn every_toml_example_in_the_readme_validates() {
    let readme = include_str!("../../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty(), "no ```toml block found in the README");
    for (i, b) in blocks.iter().enumerate() {
        if let Err(e) = lb_userspace::model::parse(b) {
            panic!("README toml block {i} does not validate:\n{e}\n---\n{b}");
        }
    }
}
