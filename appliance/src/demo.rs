//! `serve --demo`: on first start, a demo catalogue that every user may
//! open, made through the real lifecycle and jobs, on the local backend or
//! (`[demo] backend = "docker"`) on Docker from `[backends.docker]
//! demo_image`.

use std::time::Duration;

use tracing::{info, warn};

use crate::lifecycle::{Lifecycle, NewObject};
use crate::model::*;

/// The demo apps: name, command. Those whose program is missing are skipped.
const APPS: &[(&str, &[&str])] = &[
    (
        "XTerm",
        &[
            "xterm",
            "-maximized",
            "-fa",
            "DejaVu Sans Mono",
            "-fs",
            "12",
        ],
    ),
    ("X Clock", &["xclock", "-update", "1"]),
    ("X Eyes", &["xeyes"]),
];

/// Whether the catalogue is already there (any Baseimage counts: the demo
/// is seeded on first start only).
pub fn seeded(lc: &Lifecycle) -> bool {
    lc.store()
        .objects(&crate::store::ObjectFilter {
            phase: Some(Phase::Baseimage),
            ..Default::default()
        })
        .map(|v| !v.is_empty())
        .unwrap_or(true)
}

/// Seeds the catalogue as `admin`, waiting for each job.
pub async fn seed(lc: &Lifecycle, admin: &User, cfg: &crate::config::Config) -> Result<(), String> {
    let backend = cfg.demo.backend;
    let source = match backend {
        BackendKind::Docker => cfg.backends.docker.demo_image.clone(),
        _ => None,
    };
    let new = |name: &str, spec: Spec, shared: bool| NewObject {
        name: name.into(),
        kind: None,
        platform: None,
        protocol: None,
        backend: None,
        shared,
        spec,
    };
    let b = lc
        .create_baseimage(
            admin,
            NewObject {
                backend: Some(backend),
                ..new(
                    "Debian desktop",
                    Spec {
                        source,
                        ..Spec::default()
                    },
                    false,
                )
            },
        )
        .map_err(|e| e.to_string())?;
    wait(lc, &b.job.id).await?;
    let e = lc
        .derive(
            admin,
            Phase::Baseimage,
            &b.item.id,
            new("Demo environment", Spec::default(), false),
        )
        .map_err(|e| e.to_string())?;
    wait(lc, &e.job.id).await?;
    let d = lc
        .derive(
            admin,
            Phase::Environment,
            &e.item.id,
            new(
                "Demo deployment",
                Spec {
                    config_auto: vec![Script {
                        name: "xterm settings".into(),
                        run: "printf 'XTerm*background: #1d2330\\nXTerm*foreground: #e6e6e6\\nXTerm*faceName: DejaVu Sans Mono\\n' > \"$HOME/.Xresources\" && echo wrote .Xresources".into(),
                        timeout_secs: 60,
                    }],
                    ..Spec::default()
                },
                false,
            ),
        )
        .map_err(|e| e.to_string())?;
    wait(lc, &d.job.id).await?;
    for (name, cmd) in APPS {
        // On the local backend the programs are this machine's; in an
        // image, the App's own creation checks (and fails without them).
        let found = backend != BackendKind::Local
            || ["/usr/bin", "/usr/local/bin", "/bin"]
                .iter()
                .any(|dir| std::path::Path::new(dir).join(cmd[0]).exists());
        if !found {
            warn!(
                app = name,
                program = cmd[0],
                "demo app skipped: program not installed"
            );
            continue;
        }
        let spec = Spec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            ..Spec::default()
        };
        let a = lc
            .derive(admin, Phase::Deployment, &d.item.id, new(name, spec, true))
            .map_err(|e| e.to_string())?;
        if let Err(e) = wait(lc, &a.job.id).await {
            warn!(app = name, error = %e, "demo app skipped");
            if let Ok(del) = lc.delete(admin, &a.item.id) {
                let _ = wait(lc, &del.job.id).await;
            }
        }
    }
    info!("demo catalogue ready");
    Ok(())
}

async fn wait(lc: &Lifecycle, job_id: &str) -> Result<(), String> {
    for _ in 0..1200 {
        let j = lc.store().job(job_id).map_err(|e| e.to_string())?;
        match j.state {
            JobState::Succeeded => return Ok(()),
            JobState::Failed | JobState::Cancelled => {
                return Err(format!(
                    "demo job {job_id} {}: {}",
                    j.state,
                    j.error.unwrap_or_default()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Err(format!("demo job {job_id} did not finish"))
}
