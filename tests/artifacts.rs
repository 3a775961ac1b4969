//! The offline installer: artifacts specs, bundles that carry artifacts, and pushing them to the
//! testbed's nodes.

use std::path::{Path, PathBuf};

use hapki::artifacts::{self, After, Role};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_specs() -> Vec<PathBuf> {
    walkdir::WalkDir::new(repo().join("bundles"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn every_example_spec_under_bundles_parses() {
    let specs = example_specs();
    assert!(!specs.is_empty(), "bundles/ has no example spec");
    for spec in specs {
        let text = std::fs::read_to_string(&spec).unwrap();
        let n = artifacts::check_text(&text)
            .unwrap_or_else(|e| panic!("{} stopped parsing: {e}", spec.display()));
        assert!(n >= 8, "{}: only {n} entries", spec.display());
    }
}

/// Writes `files` (relative path, bytes) under `dir` and the spec text as `dir/artifacts.toml`.
fn spec_dir(dir: &Path, spec: &str, files: &[(&str, &[u8])]) -> PathBuf {
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let p = dir.join("artifacts.toml");
    std::fs::write(&p, spec).unwrap();
    p
}

fn load_err(spec: &str, files: &[(&str, &[u8])]) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = spec_dir(d.path(), spec, files);
    let e = artifacts::load(&p).expect_err("a hostile spec was accepted");
    use hapki::error::Categorized;
    assert_eq!(e.category(), hapki::error::Category::Usage);
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

#[test]
fn spec_flattens_directories_in_name_order_with_defaults() {
    let d = tempfile::tempdir().unwrap();
    let spec = r#"
[[artifacts]]
source = "bin/kubelet"
dest = "/usr/local/bin/kubelet"
mode = "0755"
after = "restart-kubelet"

[[artifacts]]
source = "images"
dest = "/var/cache/images"
roles = ["worker"]
after = "import-images"
"#;
    let p = spec_dir(
        d.path(),
        spec,
        &[
            ("bin/kubelet", b"k"),
            ("images/b.tar", b"b"),
            ("images/a.tar", b"a"),
            ("images/sub/c.tar", b"c"),
        ],
    );
    let a = artifacts::load(&p).unwrap();
    let dests: Vec<&str> = a.iter().map(|x| x.dest.as_str()).collect();
    assert_eq!(
        dests,
        [
            "/usr/local/bin/kubelet",
            "/var/cache/images/a.tar",
            "/var/cache/images/b.tar",
            "/var/cache/images/sub/c.tar"
        ]
    );
    assert_eq!(a[0].mode, 0o755);
    assert_eq!(a[0].roles, [Role::ControlPlane, Role::Worker]);
    assert_eq!(a[0].after, Some(After::RestartKubelet));
    assert_eq!(a[1].mode, 0o644);
    assert_eq!(a[1].owner, "0:0");
    assert_eq!(a[1].roles, [Role::Worker]);
    assert_eq!(a[1].source, d.path().join("images/a.tar"));
}

#[test]
fn hostile_specs_are_refused_naming_the_problem() {
    let one = |dest: &str, extra: &str| {
        format!("[[artifacts]]\nsource = \"f\"\ndest = \"{dest}\"\n{extra}\n")
    };
    let f: &[(&str, &[u8])] = &[("f", b"x")];
    let m = load_err(&one("usr/bin/x", ""), f);
    assert!(m.contains("not an absolute path"), "{m}");
    let m = load_err(&one("/usr/../etc/shadow", ""), f);
    assert!(m.contains("not normalized"), "{m}");
    let m = load_err(&one("/etc/kubernetes/pki/ca.key", ""), f);
    assert!(m.contains("/etc/kubernetes/pki"), "{m}");
    let m = load_err(&one("/usr/bin/x", "after = \"rm -rf /\""), f);
    assert!(m.contains("fixed set"), "{m}");
    let m = load_err(&one("/usr/bin/x", "roles = [\"master\"]"), f);
    assert!(m.contains("master"), "{m}");
    let m = load_err(&one("/usr/bin/x", "command = \"id\""), f);
    assert!(m.contains("command"), "{m}");
    let m = load_err("[[artifacts]]\nsource = \"../f\"\ndest = \"/x\"\n", f);
    assert!(m.contains("'..'"), "{m}");
    let m = load_err(&one("/usr/bin/x", ""), &[]);
    assert!(m.contains("source"), "{m}");
    // The same dest twice, and a file that would have to be a directory.
    let two = format!("{}{}", one("/opt/x", ""), one("/opt/x", ""));
    assert!(load_err(&two, f).contains("two artifacts"));
    let nested =
        format!("{}[[artifacts]]\nsource = \"d\"\ndest = \"/opt/x\"\n", one("/opt/x/y", ""));
    assert!(load_err(&nested, &[("f", b"x"), ("d/y", b"y")]).contains("/opt/x"));

    // Links and special files inside a directory source, and a linked source itself.
    let d = tempfile::tempdir().unwrap();
    let p = spec_dir(
        d.path(),
        "[[artifacts]]\nsource = \"dir\"\ndest = \"/opt/d\"\n",
        &[("dir/a", b"a")],
    );
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("dir/evil")).unwrap();
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("dir/evil") && m.contains("symbolic link"), "{m}");
    std::fs::remove_file(d.path().join("dir/evil")).unwrap();
    let fifo = d.path().join("dir/fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("dir/fifo") && m.contains("not a regular file"), "{m}");
    std::fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink(d.path().join("dir/a"), d.path().join("link")).unwrap();
    std::fs::write(&p, "[[artifacts]]\nsource = \"link\"\ndest = \"/opt/l\"\n").unwrap();
    let m = artifacts::load(&p).unwrap_err().to_string();
    assert!(m.contains("symbolic link"), "{m}");
}
