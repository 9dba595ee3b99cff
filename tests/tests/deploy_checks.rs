//! The deployment material validates offline: Dockerfile (hadolint), every
//! shell script (shellcheck), Kubernetes manifests (kustomize + kubernetes-
//! validate), alert rules (promtool), systemd units, compose and HAProxy
//! configs. `deploy/check.sh` does the work; this test makes it part of the
//! suite so a broken manifest fails CI like a broken function.
use std::path::Path;
use std::process::Command;

#[test]
fn deployment_material_validates_offline() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("deploy/check.sh"))
        .current_dir(&repo)
        .output()
        .expect("run bash deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy/check.sh failed ({}); install its tools with \
         `pip install -r deploy/requirements-check.txt` and `apt-get install prometheus haproxy`\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
