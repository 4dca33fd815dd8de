//! `wasmtime serve` running a wasi:http component.

use std::path::Path;
use std::process::Command;

use super::{free_port, LocalServer};

impl LocalServer {
    /// `wasmtime serve` running a wasi:http component, configured through `--env`.
    /// `one_instance_per_request` adds `--max-instance-reuse-count 1`; otherwise wasmtime reuses
    /// instances (its default), which the component must not rely on either way.
    pub fn wasmtime(
        dir: &Path,
        component: &Path,
        env: &[(&str, &str)],
        one_instance_per_request: bool,
    ) -> Self {
        assert!(
            component.exists(),
            "{} is missing: run scripts/build-components.sh",
            component.display()
        );
        let port = free_port();
        let mut cmd = Command::new("wasmtime");
        cmd.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")]);
        if one_instance_per_request {
            cmd.args(["--max-instance-reuse-count", "1"]);
        }
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(component);
        let mode = if one_instance_per_request {
            "one"
        } else {
            "reuse"
        };
        Self::serve(
            cmd,
            dir.join(format!("wasmtime-{mode}.log")),
            port,
            "wasmtime serve to answer /healthz",
        )
    }
}
