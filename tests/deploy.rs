//! The files in `deploy/` stay true to the binary: the Kubernetes ConfigMap's configuration
//! passes `timgate check`, and the probes and ports name the admin listener.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const MANIFEST: &str = include_str!("../deploy/kubernetes/timgate-sidecar.yaml");

/// The indented block under `timgate.toml: |` in the ConfigMap.
fn configmap_toml() -> String {
    let mut lines = MANIFEST
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("timgate.toml: |"));
    let header = lines.next().expect("the ConfigMap holds timgate.toml");
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_config_passes_check() {
    let path = std::env::temp_dir().join(format!("timgate-deploy-{}.toml", std::process::id()));
    std::fs::write(&path, configmap_toml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_timgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env("TIMGATE_SECRET_KEY", "from-the-secret")
        .env("TIMGATE_REDIS_PASSWORD", "from-the-redis-secret")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("9464")
            && !printed.contains("from-the-secret")
            && !printed.contains("from-the-redis-secret"),
        "{printed}"
    );
}

#[test]
fn the_manifest_runs_a_native_sidecar_probed_on_the_admin_port() {
    assert!(MANIFEST.contains("restartPolicy: Always"));
    assert!(MANIFEST.contains("path: /readyz") && MANIFEST.contains("path: /healthz"));
    assert!(MANIFEST.contains("containerPort: 9464"));
    assert!(MANIFEST.contains("secretKeyRef"));
    assert!(configmap_toml().contains("secret_key_env = \"TIMGATE_SECRET_KEY\""));
}
