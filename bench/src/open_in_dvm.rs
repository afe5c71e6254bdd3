//! `bulkhead-bench open-in-dvm`: `bulkhead-open-in-dvm FILE` run in an app domain, timed
//! from the request to run the command to the moment the disposable's default application
//! has started (it prints a marker on stderr, which reaches us through the service's and
//! the command's stderr), and to the command's end (edited copy written back; domaind
//! removes the disposable once the call has ended). Printed with the cold disposable start (`RunDisposable true`, request to
//! removal) and a plain `Run true` in the running app domain, measured in the same run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use domaind::api::Domaind1Proxy;
use zbus::zvariant::Fd;

use crate::{measure, median, ms};

const DVM: &str = "bench-open-dvm";
const SRC: &str = "bench-open-src";
const MARKER: &str = "BENCH-APP-STARTED";

/// Makes the disposable template's default application for text/plain a script that prints
/// the marker and edits the file (run as the user in the disposable template).
pub const EDITOR_SETUP: &str = r#"set -e
mkdir -p "$HOME/.config" "$HOME/.local/share/applications" "$HOME/bin"
printf '#!/bin/sh\necho BENCH-APP-STARTED >&2\necho "edited in $(uname -n)" >> "$1"\n' > "$HOME/bin/bench-editor"
chmod 755 "$HOME/bin/bench-editor"
printf '[Default Applications]\ntext/plain=bench-editor.desktop\n' > "$HOME/.config/mimeapps.list"
printf '[Desktop Entry]\nType=Application\nName=Bench editor\nExec=%s/bin/bench-editor %%f\n' "$HOME" > "$HOME/.local/share/applications/bench-editor.desktop"
"#;

fn null() -> Result<std::fs::File> {
    Ok(std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?)
}

async fn run_in(proxy: &Domaind1Proxy<'_>, name: &str, argv: &[&str], user: &str) -> Result<i32> {
    let n = null()?;
    proxy
        .run(name, argv, user, Fd::from(&n), Fd::from(&n), Fd::from(&n))
        .await
        .map_err(|e| anyhow::anyhow!("Run in {name}: {}", e.message()))
}

pub async fn bench(
    runs: usize,
    cache: PathBuf,
    template: String,
    bus_address: Option<String>,
) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (connection, _private) = crate::domaind_for_bench(
        bus_address,
        &cache,
        "bulkhead.OpenInVM  *  @anyvm  @dispvm  allow\n",
    )
    .await?;
    let proxy = Domaind1Proxy::new(&connection).await?;
    let n = null()?;
    proxy
        .build_template(&template, Fd::from(&n))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;

    // The disposable template with the test application, then the caller.
    let no_props = std::collections::HashMap::new();
    proxy
        .create(
            DVM,
            "disposable-template",
            &template,
            "red",
            no_props.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Create {DVM}: {}", e.message()))?;
    let status = run_in(&proxy, DVM, &["sh", "-c", EDITOR_SETUP], "").await?;
    if status != 0 {
        bail!("setting up the application in {DVM} failed ({status})");
    }
    proxy
        .shutdown(DVM, 10)
        .await
        .map_err(|e| anyhow::anyhow!("Shutdown {DVM}: {}", e.message()))?;
    let mut props = std::collections::HashMap::new();
    props.insert("default_dispvm", DVM);
    proxy
        .create(SRC, "app", &template, "blue", props)
        .await
        .map_err(|e| anyhow::anyhow!("Create {SRC}: {}", e.message()))?;
    proxy
        .start(SRC)
        .await
        .map_err(|e| anyhow::anyhow!("Start {SRC}: {}", e.message()))?;

    let result = measure_all(&proxy, runs).await;

    // Leave nothing behind on an installed domaind.
    let _ = proxy.shutdown(SRC, 10).await;
    let _ = proxy.remove(SRC).await;
    let _ = proxy.remove(DVM).await;
    let (started, done, cold, plain) = result?;
    println!(
        "open-in-dvm, command to application started ({runs} runs): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(median(&started)),
        ms(started[0]),
        ms(started[started.len() - 1])
    );
    println!(
        "open-in-dvm, whole command (edit written back; domaind removes the disposable after the call): median {:.1} ms",
        ms(median(&done))
    );
    println!(
        "cold disposable `true`, request to removal ({runs} runs): median {:.1} ms",
        ms(median(&cold))
    );
    println!(
        "plain Run `true` in the running caller: median {:.1} ms",
        ms(median(&plain))
    );
    println!(
        "ratio open-to-app-started / cold disposable: {:.2} (Qubes: qvm-open-in-dvm takes seconds)",
        median(&started).as_secs_f64() / median(&cold).as_secs_f64()
    );
    Ok(())
}

type Figures = (Vec<Duration>, Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn measure_all(proxy: &Domaind1Proxy<'_>, runs: usize) -> Result<Figures> {
    let mut started = Vec::new();
    let mut done = Vec::new();
    for i in 0..=runs {
        let (s, d) = open_once(proxy).await?;
        if i > 0 {
            started.push(s);
            done.push(d);
        }
    }
    started.sort();
    done.sort();
    let cold = measure(runs, || async {
        let n = null()?;
        let (_, status) = proxy
            .run_disposable(DVM, &["true"], "", Fd::from(&n), Fd::from(&n), Fd::from(&n))
            .await
            .map_err(|e| anyhow::anyhow!("RunDisposable: {}", e.message()))?;
        if status != 0 {
            bail!("`true` in a disposable exited {status}");
        }
        Ok(())
    })
    .await?;
    let plain = measure(runs, || async {
        let status = run_in(proxy, SRC, &["true"], "").await?;
        if status != 0 {
            bail!("`true` exited {status}");
        }
        Ok(())
    })
    .await?;
    Ok((started, done, cold, plain))
}

/// One `bulkhead-open-in-dvm` in the caller: (to the marker, to the end).
async fn open_once(proxy: &Domaind1Proxy<'_>) -> Result<(Duration, Duration)> {
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let n = null()?;
    let script = "printf 'bench\\n' > /tmp/bench-doc.txt && \
                  /usr/lib/bulkhead/bulkhead-open-in-dvm /tmp/bench-doc.txt && \
                  grep -q 'edited in' /tmp/bench-doc.txt";
    let t0 = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watcher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut at = None;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if at.is_none() && line.contains(MARKER) {
                at = Some(t0.elapsed());
            } else {
                seen.push(line);
            }
        }
        let _ = tx.send((at, seen));
    });
    let status = proxy
        .run(
            SRC,
            &["sh", "-c", script],
            "",
            Fd::from(&n),
            Fd::from(&n),
            Fd::from(&writer),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Run in {SRC}: {}", e.message()))?;
    let total = t0.elapsed();
    drop(writer);
    let (at, other) = rx.await.context("stderr watcher")?;
    let _ = watcher.join();
    if status != 0 {
        bail!(
            "bulkhead-open-in-dvm in {SRC} exited {status}: {}",
            other.join("\n")
        );
    }
    let at = at.with_context(|| format!("the application never started: {}", other.join("\n")))?;
    Ok((at, total))
}
