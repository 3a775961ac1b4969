//! `hapki config check`: what makes a kubeadm config unfit for an air-gapped HA cluster is a
//! problem (exit 6), what is merely risky a warning (exit 0), and broken YAML a one-line error.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/images.rs"]
mod images;
#[path = "support/real_kube.rs"]
mod real_kube;
#[path = "support/testbed.rs"]
mod testbed;

use cli::hapki;
use serde_json::Value;

/// The configuration from the field report this project started from.
const SEED: &str = r#"
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: stable
controlPlaneEndpoint: "kubeapi.test.huatai.me:6443"
networking:
  podSubnet: "10.244.0.0/16"
"#;

/// Everything an air-gapped HA init needs, v1beta4, with a kubelet document alongside.
const GOOD_V1BETA4: &str = r#"---
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.168.122.11
  bindPort: 6443
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.31.2
controlPlaneEndpoint: kubeapi.test.huatai.me:6443
imageRepository: registry.local:5000/k8s
encryptionAlgorithm: ECDSA-P256
networking:
  podSubnet: 10.244.0.0/16,fd00:10:244::/56
  serviceSubnet: 10.96.0.0/12,fd00:10:96::/112
etcd:
  local:
    dataDir: /var/lib/etcd
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
"#;

fn check(yaml: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeadm.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = hapki().args(["config", "check", "--output", "json"]).arg(&path).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), json)
}

fn fields(report: &Value, level: &str) -> Vec<String> {
    report[level]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect()
}

fn message<'a>(report: &'a Value, level: &str, field: &str) -> &'a str {
    report[level]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == field)
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no {level} for {field} in {report:#}"))
}

#[test]
fn seed_config_unpinned_version_is_a_problem() {
    let (code, r) = check(SEED);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(r["ok"], false);
    assert_eq!(fields(&r, "problems"), ["ClusterConfiguration.kubernetesVersion"], "{r:#}");
    assert!(message(&r, "problems", "ClusterConfiguration.kubernetesVersion").contains("stable"));
    // The endpoint is a DNS name with a port and the pod subnet is fine: no finding for them.
    let all = [fields(&r, "problems"), fields(&r, "warnings")].concat();
    assert!(
        !all.iter().any(|f| f.contains("controlPlaneEndpoint") || f.contains("podSubnet")),
        "{r:#}"
    );
    assert_eq!(fields(&r, "warnings"), ["ClusterConfiguration.imageRepository"], "{r:#}");
    assert!(r["notes"][0].as_str().unwrap().contains("--pod-network-cidr"));
}

#[test]
fn good_v1beta4_config_is_clean() {
    let (code, r) = check(GOOD_V1BETA4);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["problems"], Value::Array(vec![]), "{r:#}");
    assert_eq!(r["warnings"], Value::Array(vec![]), "{r:#}");
    assert_eq!(r["api_version"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(r["kinds"], serde_json::json!(["InitConfiguration", "ClusterConfiguration"]));
}

#[test]
fn ip_endpoint_is_a_warning_only() {
    let yaml = GOOD_V1BETA4.replace("kubeapi.test.huatai.me:6443", "192.168.122.10:6443");
    let (code, r) = check(&yaml);
    assert_eq!(code, 0, "warnings alone pass: {r:#}");
    assert_eq!(fields(&r, "warnings"), ["ClusterConfiguration.controlPlaneEndpoint"]);
    assert!(message(&r, "warnings", "ClusterConfiguration.controlPlaneEndpoint").contains("IP"));
}

#[test]
fn endpoint_missing_or_without_port() {
    let (code, r) =
        check(&GOOD_V1BETA4.replace("controlPlaneEndpoint: kubeapi.test.huatai.me:6443\n", ""));
    assert_eq!(code, 6);
    assert_eq!(fields(&r, "problems"), ["ClusterConfiguration.controlPlaneEndpoint"]);
    let (code, r) = check(&GOOD_V1BETA4.replace(":6443\n", "\n"));
    assert_eq!(code, 0);
    assert!(
        message(&r, "warnings", "ClusterConfiguration.controlPlaneEndpoint").contains("no port")
    );
}

#[test]
fn invalid_or_overlapping_pod_subnet_is_a_problem() {
    let (code, r) = check(&SEED.replace("10.244.0.0/16", "10.244.0.0/33"));
    assert_eq!(code, 6);
    assert!(message(&r, "problems", "ClusterConfiguration.networking.podSubnet")
        .contains("10.244.0.0/33"));
    // 10.100.0.0/16 lies inside the default service subnet 10.96.0.0/12.
    let (code, r) = check(&SEED.replace("10.244.0.0/16", "10.100.0.0/16"));
    assert_eq!(code, 6);
    assert!(message(&r, "problems", "ClusterConfiguration.networking.podSubnet")
        .contains("10.96.0.0/12"));
}

#[test]
fn missing_version_external_etcd_and_unknown_api_version_are_problems() {
    let (_, r) = check(&GOOD_V1BETA4.replace("kubernetesVersion: v1.31.2\n", ""));
    assert_eq!(fields(&r, "problems"), ["ClusterConfiguration.kubernetesVersion"]);
    let external = GOOD_V1BETA4.replace(
        "  local:\n    dataDir: /var/lib/etcd\n",
        "  external:\n    endpoints: [https://10.0.0.5:2379]\n",
    );
    let (code, r) = check(&external);
    assert_eq!(code, 6);
    assert_eq!(fields(&r, "problems"), ["ClusterConfiguration.etcd.external"]);
    let (code, r) = check(&SEED.replace("v1beta3", "v1beta1"));
    assert_eq!(code, 6);
    assert!(
        fields(&r, "problems").contains(&"ClusterConfiguration.apiVersion".to_owned()),
        "{r:#}"
    );
}

#[test]
fn join_configuration_must_pin_the_ca_and_carry_no_certificate_key() {
    let yaml = r#"
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: kubeapi.test.huatai.me:6443
    token: abcdef.0123456789abcdef
    unsafeSkipCAVerification: true
controlPlane:
  certificateKey: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"#;
    let (code, r) = check(yaml);
    assert_eq!(code, 6);
    let mut got = fields(&r, "problems");
    got.sort();
    assert_eq!(
        got,
        [
            "JoinConfiguration.controlPlane.certificateKey",
            "JoinConfiguration.discovery.bootstrapToken.caCertHashes",
            "JoinConfiguration.discovery.bootstrapToken.unsafeSkipCAVerification",
        ]
    );
    // The token's secret half never appears in the report.
    let bad = yaml.replace("abcdef.0123456789abcdef", "abcdef.SECRETSECRETSECRE");
    let (_, r) = check(&bad);
    assert!(!r.to_string().contains("SECRETSECRETSECRE"));
    assert!(fields(&r, "problems")
        .contains(&"JoinConfiguration.discovery.bootstrapToken.token".to_owned()));
}

#[test]
fn malformed_yaml_is_a_one_line_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "apiVersion: kubeadm.k8s.io/v1beta4\nkind: [ClusterConfiguration\n")
        .unwrap();
    let out = hapki().args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("broken.yaml") && err.contains("not valid YAML") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn table_output_names_problem_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.yaml");
    std::fs::write(&path, SEED).unwrap();
    let out = hapki().args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("problem") && l.contains("kubernetesVersion")),
        "{text}"
    );
    assert!(text.contains("1 problem, 1 warning"), "{text}");
}

/// The real kubeadm v1.20.2 (scripts/kubernetes) as the independent judge: a v1beta2 config
/// hapki finds clean, kubeadm loads and validates offline (`kubeadm config images list
/// --config`, which lists the images from the pinned repository and version); one kubeadm
/// itself rejects, hapki flags too. (kubeadm 1.20 reads only v1beta2: the v1beta3/v1beta4
/// cases above have no real binary to ask here.)
#[test]
fn real_kubeadm_1_20_agrees_with_config_check() {
    let Some(cache) = real_kube::cache() else { return };
    let good = GOOD_V1BETA2;
    let (code, r) = check(good);
    assert_eq!(code, 0, "{r:#}");
    let (ok, out) = real_kubeadm_images(&cache, good);
    assert!(ok, "kubeadm refused a config hapki passed: {out}");
    assert!(out.contains("registry.local:5000/k8s/kube-apiserver:v1.20.2"), "{out}");

    let bad = good.replace("10.244.0.0/16", "10.244.0.0/33");
    let (code, r) = check(&bad);
    assert_eq!(code, 6, "{r:#}");
    assert!(fields(&r, "problems").contains(&"ClusterConfiguration.networking.podSubnet".into()));
    let (ok, out) = real_kubeadm_images(&cache, &bad);
    assert!(!ok && out.contains("podSubnet"), "kubeadm accepted a /33 pod subnet: {out}");
}

const GOOD_V1BETA2: &str = r#"---
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.168.122.11
  bindPort: 6443
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
controlPlaneEndpoint: kubeapi.test.huatai.me:6443
imageRepository: registry.local:5000/k8s
networking:
  podSubnet: 10.244.0.0/16
etcd:
  local:
    dataDir: /var/lib/etcd
"#;

/// `kubeadm config images list --config FILE` with the real kubeadm: (success, output).
fn real_kubeadm_images(cache: &std::path::Path, yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeadm.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(cache.join("kubeadm"))
        .args(["config", "images", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// ---- `config check --bundle`: kubeadm's images against the bundle's control-plane archives ----

/// What the real kubeadm v1.20.2 prints for `config images list --config` of [`IMAGES_CONFIG`]:
/// the same list as for `--kubernetes-version v1.20.2` (written out in the images support file).
const KUBEADM_1_20_2_LISTED: [&str; 7] = images::KUBEADM_1_20_2;

/// A v1beta2 config the real kubeadm 1.20.2 reads offline, with kubeadm's default registry (so
/// the names are the ones above; hapki warns about the registry, which is not a problem).
const IMAGES_CONFIG: &str = r#"---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
controlPlaneEndpoint: kubeapi.test.huatai.me:6443
networking:
  podSubnet: 10.244.0.0/16
"#;

const CONTAINERD_OK: &str = r#"version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "k8s.gcr.io/pause:3.2"
"#;

/// A signing key, its allowed_signers, the kubeadm config and containerd config, in one dir.
struct ImageFixture {
    dir: tempfile::TempDir,
}

impl ImageFixture {
    fn new() -> ImageFixture {
        let fx = ImageFixture { dir: tempfile::tempdir().unwrap() };
        hapki()
            .args(["keygen", "--principal", "ops", "--out"])
            .arg(fx.p("signer"))
            .assert()
            .success();
        let pubkey = std::fs::read_to_string(fx.p("signer.pub")).unwrap();
        let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
        let line = format!("ops namespaces=\"hapki-bundle\" {}\n", key.join(" "));
        std::fs::write(fx.p("allowed_signers"), line).unwrap();
        std::fs::write(fx.p("kubeadm.yaml"), IMAGES_CONFIG).unwrap();
        std::fs::write(fx.p("containerd.toml"), CONTAINERD_OK).unwrap();
        fx
    }

    fn p(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// An encrypted artifacts bundle: one OCI archive per (file, images, roles).
    fn bundle(&self, archives: &[(&str, &[&str], &str)]) -> std::path::PathBuf {
        let work = self.p("images");
        let mut spec = String::new();
        for (file, names, roles) in archives {
            let tar = images::oci_archive(&work, &work.join(file), names, false);
            spec += &format!(
                "[[artifacts]]\nsource = \"{}\"\ndest = \"/etc/kubernetes/images/{file}\"\n\
                 roles = {roles}\nafter = \"import-images\"\n\n",
                tar.display()
            );
        }
        std::fs::write(self.p("spec.toml"), spec).unwrap();
        let recipient = std::fs::read_to_string(self.p("signer.pub")).unwrap();
        let out = self.p("images.bundle");
        hapki()
            .args(["bundle", "--artifacts"])
            .arg(self.p("spec.toml"))
            .args(["--recipient", recipient.trim(), "--sign-key"])
            .arg(self.p("signer"))
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        out
    }

    /// `hapki config check kubeadm.yaml --bundle B …` with the real kubeadm; (exit, stdout, stderr).
    fn check(&self, bundle: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
        let kubeadm = real_kube::cache_dir().join("kubeadm");
        let out = hapki()
            .args(["config", "check"])
            .arg(self.p("kubeadm.yaml"))
            .arg("--bundle")
            .arg(bundle)
            .arg("--trust")
            .arg(self.p("allowed_signers"))
            .arg("--decrypt-key")
            .arg(self.p("signer"))
            .args(if extra.contains(&"--kubeadm") {
                vec![]
            } else {
                vec!["--kubeadm".into(), kubeadm]
            })
            .arg("--containerd-config")
            .arg(self.p("containerd.toml"))
            .args(extra)
            .output()
            .unwrap();
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap(), s(&out.stdout), s(&out.stderr))
    }

    fn check_json(&self, bundle: &std::path::Path) -> (i32, Value) {
        let (code, out, err) = self.check(bundle, &["--output", "json"]);
        let json =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"));
        (code, json)
    }
}

/// kubeadm's control-plane images (all but kube-proxy and pause) and the every-node ones.
const CP: [&str; 5] = [
    KUBEADM_1_20_2_LISTED[0],
    KUBEADM_1_20_2_LISTED[1],
    KUBEADM_1_20_2_LISTED[2],
    KUBEADM_1_20_2_LISTED[5],
    KUBEADM_1_20_2_LISTED[6],
];
const NODE: [&str; 2] = [KUBEADM_1_20_2_LISTED[3], KUBEADM_1_20_2_LISTED[4]];

#[test]
fn bundle_with_every_image_kubeadm_lists_is_clean() {
    if real_kube::cache().is_none() {
        return;
    }
    let fx = ImageFixture::new();
    let b =
        fx.bundle(&[("cp.tar", &CP, r#"["control-plane"]"#), ("node.tar", &NODE, r#"["all"]"#)]);
    let (code, r) = fx.check_json(&b);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["problems"], Value::Array(vec![]), "{r:#}");
    // Only the lint's own warnings (v1beta2, the public registry): none about images.
    let warned = fields(&r, "warnings");
    assert!(warned.iter().all(|f| f.starts_with("ClusterConfiguration.")), "{r:#}");
    assert_eq!(r["images"]["expected"], serde_json::json!(KUBEADM_1_20_2_LISTED), "{r:#}");
    assert_eq!(r["images"]["sandbox_image"], "k8s.gcr.io/pause:3.2");
    let (code, table, _) = fx.check(&b, &[]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("images: 7 listed by"), "{table}");
}

#[test]
fn an_image_missing_for_the_control_plane_is_named_with_the_fix() {
    if real_kube::cache().is_none() {
        return;
    }
    let fx = ImageFixture::new();
    // coredns dropped from the control-plane archive; and etcd only in an archive for workers,
    // which a control plane never receives (the role matters, not just presence in the bundle).
    let b = fx.bundle(&[
        ("cp.tar", &CP[..3], r#"["control-plane"]"#),
        ("node.tar", &NODE, r#"["all"]"#),
        ("worker.tar", &[CP[3]], r#"["worker"]"#),
    ]);
    let (code, r) = fx.check_json(&b);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(fields(&r, "problems"), ["images", "images"], "{r:#}");
    let msgs: Vec<&str> =
        r["problems"].as_array().unwrap().iter().map(|f| f["message"].as_str().unwrap()).collect();
    assert!(msgs[0].starts_with("k8s.gcr.io/etcd:3.4.13-0 "), "{msgs:?}");
    assert!(msgs[1].starts_with("k8s.gcr.io/coredns:1.7.0 "), "{msgs:?}");
    assert!(msgs.iter().all(|m| m.contains("\"control-plane\"") && m.contains("import-images")));
    let (code, table, _) = fx.check(&b, &[]);
    assert_eq!(code, 6);
    assert!(table.contains("k8s.gcr.io/coredns:1.7.0"), "{table}");
}

#[test]
fn sandbox_image_other_than_kubeadms_pause_is_named() {
    if real_kube::cache().is_none() {
        return;
    }
    let fx = ImageFixture::new();
    let b =
        fx.bundle(&[("cp.tar", &CP, r#"["control-plane"]"#), ("node.tar", &NODE, r#"["all"]"#)]);
    std::fs::write(
        fx.p("containerd.toml"),
        CONTAINERD_OK.replace("k8s.gcr.io/pause:3.2", "registry.k8s.io/pause:3.6"),
    )
    .unwrap();
    let (code, r) = fx.check_json(&b);
    assert_eq!(code, 6, "{r:#}");
    assert_eq!(fields(&r, "problems"), ["containerd.sandbox_image"], "{r:#}");
    let m = message(&r, "problems", "containerd.sandbox_image");
    assert!(m.contains("registry.k8s.io/pause:3.6") && m.contains("k8s.gcr.io/pause:3.2"), "{m}");
    // Not set at all: containerd's built-in default applies; a warning that says so.
    std::fs::write(fx.p("containerd.toml"), "version = 2\n").unwrap();
    let (code, r) = fx.check_json(&b);
    assert_eq!(code, 0, "{r:#}");
    assert!(message(&r, "warnings", "containerd.sandbox_image").contains("not set"), "{r:#}");
}

#[test]
fn image_check_inputs_that_cannot_be_used_are_one_line_errors() {
    if real_kube::cache().is_none() {
        return;
    }
    let fx = ImageFixture::new();
    let b =
        fx.bundle(&[("cp.tar", &CP, r#"["control-plane"]"#), ("node.tar", &NODE, r#"["all"]"#)]);
    // No kubeadm there: usage, naming the flag.
    let (code, _, err) = fx.check(&b, &["--kubeadm", "/nonexistent/kubeadm"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.trim().lines().count() == 1 && err.contains("--kubeadm"), "{err}");
    // A bundle signed by someone not trusted: verification, as for every bundle.
    hapki().args(["keygen", "--principal", "ops", "--out"]).arg(fx.p("other")).assert().success();
    let other = std::fs::read_to_string(fx.p("other.pub")).unwrap();
    let key: Vec<&str> = other.split_whitespace().take(2).collect();
    let line = format!("ops namespaces=\"hapki-bundle\" {}\n", key.join(" "));
    std::fs::write(fx.p("allowed_signers"), line).unwrap();
    let (code, _, err) = fx.check(&b, &[]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // --trust without --bundle, or --bundle without --trust: usage.
    let out = hapki()
        .args(["config", "check"])
        .arg(fx.p("kubeadm.yaml"))
        .arg("--bundle")
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_config_kubeadm_refuses_is_a_problem_not_a_crash() {
    if real_kube::cache().is_none() {
        return;
    }
    let fx = ImageFixture::new();
    let b =
        fx.bundle(&[("cp.tar", &CP, r#"["control-plane"]"#), ("node.tar", &NODE, r#"["all"]"#)]);
    // kubeadm 1.20 reads only v1beta2.
    std::fs::write(fx.p("kubeadm.yaml"), IMAGES_CONFIG.replace("v1beta2", "v1beta4")).unwrap();
    let (code, r) = fx.check_json(&b);
    assert_eq!(code, 6, "{r:#}");
    assert!(message(&r, "problems", "images").contains("refused the config"), "{r:#}");
}
