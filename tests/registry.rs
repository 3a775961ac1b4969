//! Fleets: a registry, not N copies from one laptop (issue 16, item 6). Debian's
//! `docker-registry` (Distribution 2.8) runs on loopback with TLS from a CA this test makes with
//! openssl; `hapki bundle --registry` signs the registry's hosts.toml and CA into the bundle;
//! `hapki push --registry` copies the images there once, and 3 control planes and 1 worker, each
//! with its own real containerd, pull them by digest.
//!
//! Expected digests come from each archive's own index.json (tar and serde_json), what each node
//! holds from `ctr` on the node, and the operator's bytes from the kernel: an iptables counter
//! on the sockets of hapki's own cgroup (hapki and every process it starts: ssh, skopeo).

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/images.rs"]
mod images;
#[path = "support/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use fixture::{hapki, report, statuses, text, Fixture};
use images::{index_digests, oci_archive_sized, parse_ctr_ls, pulled_digests, KUBEADM_1_20_2};
use testbed::Testbed;

const IMAGES_DIR: &str = "/etc/kubernetes/images";
/// Random bytes in each image: big enough that the images, not SSH's chatter, are what counts.
const PER_IMAGE: usize = 3 << 20;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's docker-registry on 127.0.0.1, TLS with a certificate of a CA made here by openssl.
struct Registry {
    dir: PathBuf,
    host: String,
    child: Child,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let d = dir.display();
        sh(&format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout ca.key -out ca.crt -days 2 -subj /CN=hapki-test-registry-ca \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key \
               -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext && \
             openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
               -extfile ext -out srv.crt 2>/dev/null && mkdir certs && cp ca.crt certs/"
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {host}\n  tls:\n    certificate: {d}/srv.crt\n    key: {d}/srv.key\n"
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let r = Registry { dir: dir.to_path_buf(), host, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&r.host).is_ok() {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {}", r.host);
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A skopeo --cert-dir holding only the CA.
    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// A blob's data file in the registry's own storage.
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts what the processes of one cgroup (v2) send: an iptables OUTPUT rule matching their
/// sockets (`-m cgroup --path`), one for everything and one for the registry's port.
struct Meter {
    name: String,
    cgroup: PathBuf,
}

impl Meter {
    fn new(registry_port: &str) -> Meter {
        let name = format!("hapki-reg-{}", std::process::id());
        let cgroup = Path::new("/sys/fs/cgroup/unified").join(&name);
        std::fs::create_dir_all(&cgroup).expect("a cgroup v2 hierarchy at /sys/fs/cgroup/unified");
        let chain = Self::chain(&name);
        sh(&format!(
            "iptables -w -N {chain} && iptables -w -A {chain} -m cgroup --path {name} -p tcp --dport {registry_port} && \
             iptables -w -A {chain} -m cgroup --path {name} && iptables -w -I OUTPUT -j {chain}"
        ));
        Meter { name, cgroup }
    }

    fn chain(name: &str) -> String {
        format!("HREG{}", name.rsplit('-').next().unwrap())
    }

    /// `cmd`'s program run inside the metered cgroup.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec \"$@\"", self.cgroup.display()))
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// (bytes to the registry's port, bytes in all), then zeroed.
    fn take(&self) -> (u64, u64) {
        let chain = Self::chain(&self.name);
        let out = sh(&format!("iptables -w -L {chain} -v -n -x -Z"));
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.contains("cgroup"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect();
        (counts[0], counts[1])
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let chain = Self::chain(&self.name);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "iptables -w -D OUTPUT -j {chain}; iptables -w -F {chain}; iptables -w -X {chain}"
            ))
            .status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn node_images(tb: &Testbed, node: &str) -> BTreeMap<String, (String, bool)> {
    parse_ctr_ls(&tb.ok(node, "ctr -n k8s.io images ls"))
}

/// Every image of each archive is on the node under its name, with the archive's digest, pinned.
fn assert_pulled(tb: &Testbed, node: &str, archives: &[&Path]) {
    let have = node_images(tb, node);
    for a in archives {
        for (name, digest) in pulled_digests(a) {
            let (d, pinned) =
                have.get(&name).unwrap_or_else(|| panic!("{node}: no {name}: {have:?}"));
            assert_eq!(d, &digest, "{node}: {name} has another digest");
            assert!(pinned, "{node}: {name} is not pinned");
        }
    }
}

/// `hapki push` of `b` to the testbed's inventory (plus `extra`), inside the meter's cgroup.
fn push(fx: &Fixture, tb: &Testbed, meter: &Meter, b: &Path, extra: &[&str]) -> Output {
    let mut c = fixture::hapki_process();
    c.arg("push").arg(b).arg("--trust").arg(fx.allowed());
    c.arg("--inventory").arg(tb.inventory()).args(["--output", "json"]).args(extra);
    meter.wrap(&c).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_registry_feeds_the_fleet_by_digest_for_one_upload() {
    let Some(tb) = Testbed::up_with(3, 1, &["--containerd"]) else { return };
    let fx = Fixture::new();
    // A cluster already set up (this bundle carries images only): the shared PKI on every
    // control plane, ca.crt on the worker (from kubeadm join's discovery).
    for n in &tb.nodes {
        let pki = n.etc_kubernetes().join("pki");
        let files: &[&str] = if n.control_plane { &fixture::SHARED } else { &["ca.crt"] };
        for f in files {
            std::fs::create_dir_all(pki.join(f).parent().unwrap()).unwrap();
            std::fs::copy(fx.pki().join(f), pki.join(f)).unwrap();
        }
    }
    let reg = Registry::start(&fx.path("registry"));
    let meter = Meter::new(reg.host.rsplit(':').next().unwrap());
    let work = fx.path("images");
    let cp_names = [KUBEADM_1_20_2[0], KUBEADM_1_20_2[1], KUBEADM_1_20_2[2], KUBEADM_1_20_2[5]];
    let node_names = [KUBEADM_1_20_2[3], KUBEADM_1_20_2[4]];
    // kube-apiserver as `ctr images export` writes an image pulled for one platform: a
    // multi-platform index whose archive holds only this machine's platform; the registry gets,
    // and the nodes pull, that platform's manifest.
    let cp = oci_archive_sized(&work, &work.join("control-plane.tar"), &cp_names, PER_IMAGE, true);
    let nd = oci_archive_sized(&work, &work.join("node.tar"), &node_names, PER_IMAGE, false);
    assert_ne!(
        pulled_digests(&cp)[0],
        index_digests(&cp)[0],
        "kube-apiserver is not a partial index"
    );
    let archives = std::fs::metadata(&cp).unwrap().len() + std::fs::metadata(&nd).unwrap().len();
    let spec = work.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "[[artifacts]]\nsource = \"{}\"\ndest = \"{IMAGES_DIR}/control-plane.tar\"\nroles = [\"control-plane\"]\nafter = \"import-images\"\n\n\
             [[artifacts]]\nsource = \"{}\"\ndest = \"{IMAGES_DIR}/node.tar\"\nafter = \"import-images\"\n",
            cp.display(),
            nd.display()
        ),
    )
    .unwrap();
    let b = fx.path("registry.bundle");
    let out = hapki()
        .args(["bundle", "--artifacts"])
        .arg(&spec)
        .args(["--registry", &reg.host, "--registry-ca"])
        .arg(reg.ca())
        .arg("--sign-key")
        .arg(fx.signer())
        .arg("--out")
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "bundle: {}", text(&out));

    // Without the registry's name, or with another: refused before any byte moves.
    let other = push(&fx, &tb, &meter, &b, &["--registry", "127.0.0.1:1"]);
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    assert!(text(&other).contains(&format!("made for registry {}", reg.host)), "{}", text(&other));

    meter.take();
    let out = push(&fx, &tb, &meter, &b, &["--registry", &reg.host]);
    let (to_registry, total) = meter.take();
    assert!(out.status.success(), "push: {}", text(&out));
    for n in &tb.nodes {
        assert_eq!(statuses(&out)[&n.name].0, "installed", "{}: {}", n.name, text(&out));
        let want: Vec<&Path> = if n.control_plane { vec![&cp, &nd] } else { vec![&nd] };
        assert_pulled(&tb, &n.name, &want);
        // The node got the signed registry config and the pull index, never the archive bytes.
        let etc = tb.ok(&n.name, &format!("ls /etc/containerd/certs.d/{}", reg.host));
        assert_eq!(etc.split_whitespace().collect::<Vec<_>>(), ["ca.crt", "hosts.toml"]);
        tb.ok(
            &n.name,
            &format!("test -f {IMAGES_DIR}/node.tar.pull.tar && ! test -e {IMAGES_DIR}/node.tar"),
        );
    }
    assert!(
        !node_images(&tb, "kubenode-1").contains_key(cp_names[0]),
        "a worker got a control-plane image"
    );
    // The operator sent the images once: to the registry ≈ the archives' size (TLS and HTTP on
    // top), to the four nodes only the small artifacts and the protocol.
    let to_nodes = total - to_registry;
    eprintln!("archives {archives} B; operator sent {to_registry} B to the registry, {to_nodes} B to 4 nodes");
    assert!(
        to_registry >= archives * 9 / 10 && to_registry <= archives * 11 / 10 + (256 << 10),
        "{to_registry} vs {archives}"
    );
    assert!(to_nodes < 4 * (512 << 10), "{to_nodes} B to the nodes: the images went there too");

    let out = fx.audit(&tb.inventory(), &b, "json");
    assert_eq!(out.status.code(), Some(0), "audit of a registry-fed fleet: {}", text(&out));
    for n in report(&out)["nodes"].as_array().unwrap() {
        let imgs = n["images"].as_object().unwrap();
        assert!(!imgs.is_empty() && imgs.values().all(|v| v == "present"), "{n}");
    }

    // The tag moves to another image (anyone who can push to the registry): a node that pulls
    // again still gets the signed digest.
    let pause = KUBEADM_1_20_2[4];
    let (_, pause_digest) = index_digests(&nd).into_iter().find(|(n, _)| n == pause).unwrap();
    let (_, proxy_digest) = index_digests(&nd).into_iter().find(|(n, _)| n != pause).unwrap();
    sh(&format!(
        "skopeo copy --quiet --src-cert-dir {d} --dest-cert-dir {d} docker://{h}/kube-proxy@{proxy_digest} docker://{h}/pause:3.2",
        d = reg.certs().display(),
        h = reg.host
    ));
    let forget =
        format!("ctr -n k8s.io images rm --sync {pause} {}/pause@{pause_digest}", reg.host);
    tb.ok("kubenode-1", &forget);
    let out = fx.audit(&tb.inventory(), &b, "json");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let out = push(&fx, &tb, &meter, &b, &[]);
    assert!(out.status.success(), "push: {}", text(&out));
    let st = statuses(&out);
    assert_eq!(st["kubenode-1"].0, "installed", "{st:?}");
    assert_eq!(st["kubemaster-1"].0, "unchanged", "{st:?}");
    assert_pulled(&tb, "kubenode-1", &[&nd]);

    // Negative control: the registry serves other bytes for the signed digest (its storage
    // rewritten). The node's pull by digest refuses them and fails, naming the image.
    tb.ok("kubenode-1", &forget);
    std::fs::copy(reg.blob(&proxy_digest), reg.blob(&pause_digest)).unwrap();
    let out = push(&fx, &tb, &meter, &b, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let (status, msg) = &statuses(&out)["kubenode-1"];
    assert_eq!(status, "failed", "{msg}");
    eprintln!("negative control, kubenode-1: {msg}");
    // containerd's own digest check ("unexpected commit digest"), not a 404.
    assert!(
        msg.contains(pause)
            && msg.contains("other bytes than the signed digest")
            && !msg.contains('\n'),
        "{msg}"
    );
    assert!(!node_images(&tb, "kubenode-1").contains_key(pause), "a wrong pause was tagged");
    let h = std::fs::read_to_string(tb.node("kubenode-1").state().join("history")).unwrap();
    assert!(h.lines().any(|l| l.contains("pull-images FAILED") && l.contains(pause)), "{h}");
}

/// `push --registry` uploads nothing unless the whole bundle verified: one byte of an archive
/// changed after signing → exit 3, and the registry holds no blob (the same bundle unchanged
/// fills it: the negative control).
#[test]
fn an_unverified_byte_never_reaches_the_registry() {
    let fx = Fixture::new();
    let reg = Registry::start(&fx.path("registry"));
    let work = fx.path("images");
    let nd = oci_archive_sized(&work, &work.join("node.tar"), &[KUBEADM_1_20_2[4]], 1 << 20, false);
    let spec = work.join("spec.toml");
    let entry = format!("source = \"{}\"\ndest = \"{IMAGES_DIR}/node.tar\"", nd.display());
    std::fs::write(&spec, format!("[[artifacts]]\n{entry}\nafter = \"import-images\"\n")).unwrap();
    let b = fx.path("registry.bundle");
    let mut c = hapki();
    c.args(["bundle", "--artifacts"]).arg(&spec).args(["--registry", &reg.host]);
    c.arg("--registry-ca").arg(reg.ca()).arg("--sign-key").arg(fx.signer()).arg("--out").arg(&b);
    c.assert().success();
    let mut bytes = std::fs::read(&b).unwrap();
    let flipped = fx.path("flipped.bundle");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    // Any upload (even one skopeo would abort on a digest mismatch) creates the registry's
    // storage tree; the unverified push must not even start one.
    let storage = reg.dir.join("data/docker");
    let blobs = storage.join("registry/v2/blobs");
    let push = |b: &Path| {
        let mut c = fixture::hapki_process();
        c.arg("push").arg(b).arg("--trust").arg(fx.allowed()).arg("--decrypt-key").arg(fx.signer());
        c.args(["--nodes", "127.0.0.1:1", "--registry", &reg.host]).output().unwrap()
    };
    let out = push(&flipped);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!storage.exists(), "the registry received bytes of an unverified bundle");
    let out = push(&b);
    assert!(text(&out).contains("1 image(s) copied and served by digest"), "{}", text(&out));
    assert!(blobs.exists(), "the verified bundle did not reach the registry: {}", text(&out));
    // The same with the PKI, age-encrypted: the archives are read through the decryption.
    let enc = fx.path("pki-registry.bundle");
    let recipient = std::fs::read_to_string(fx.signer().with_extension("pub")).unwrap();
    let mut c = hapki();
    c.args(["bundle", "--artifacts"]).arg(&spec).args(["--registry", &reg.host]);
    c.arg("--registry-ca").arg(reg.ca()).arg("--pki-dir").arg(fx.pki());
    c.args(["--recipient", recipient.trim(), "--sign-key"]).arg(fx.signer()).arg("--out").arg(&enc);
    c.assert().success();
    let out = push(&enc);
    assert!(text(&out).contains("1 image(s) copied and served by digest"), "{}", text(&out));
}
