//! `bulkhead-bench vm`: VM domains against their peers, measured in the same run. Needs
//! hardware virtualization (run it inside `scripts/nested-kvm.sh` on a host without):
//!
//! - the monitor alone: `bulkhead-vmm run` from spawn to the initramfs's hand-over line on
//!   the console (`bulkhead-initramfs: switching to the domain root`: kernel booted, virtio
//!   disks found, overlay root built), next to `qemu-system-x86_64 -accel kvm -M microvm`
//!   booting the same kernel, initramfs, command line and disks to the same line;
//! - the product path: a VM domain from `Start` to its agent answering over vsock, next to a
//!   sandbox domain of the same template from `Start` to its agent;
//! - a disposable VM running `true`, from the request to its removal (`RunDisposable`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_api::Domaind1Proxy;
use bulkhead_templates::vm::{VmArtifacts, INITRAMFS_READY_LINE};
use bulkhead_templates::TemplateStore;
use bulkhead_vmm::{DiskSpec, VmSpec};
use zbus::zvariant::Fd;

use crate::{median, ms};

/// Guest memory of every VM measured, MiB.
const MEMORY_MIB: u64 = 512;
/// Longest a boot to the hand-over line may take before the run counts as failed.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

pub async fn bench(runs: usize, cache: PathBuf, template: String, qemu: PathBuf) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let name = bulkhead_domain::DomainName::new(&template)
        .with_context(|| format!("'{template}' is not a template name"))?;
    let store = TemplateStore::new(cache.clone());
    let root = store
        .root_path(&name)
        .with_context(|| format!("template '{template}' in {}", cache.display()))?;
    let vm_files = store.vm_artifacts_for_root(&root).with_context(|| {
        format!("the VM files of '{template}' are not built (bulkhead-template build --vm --store {} RECIPE)", cache.display())
    })?;
    let vmm = bulkhead_testkit::vmm_bin().map_err(anyhow::Error::msg)?;
    let work = tempfile::tempdir()?;
    let disks = Disks::make(work.path())?;

    // The monitor alone vs qemu, alternating, same files.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..=runs {
        let a = boot_to_handover(
            &mut vmm_command(&vmm, &vm_files, &disks, work.path())?,
            work.path(),
            true,
        )
        .context("bulkhead-vmm to the initramfs hand-over")?;
        let b = boot_to_handover(
            &mut qemu_command(&qemu, &vm_files, &disks),
            work.path(),
            false,
        )
        .context("qemu to the initramfs hand-over")?;
        if round > 0 {
            ours.push(a);
            theirs.push(b);
        }
    }
    ours.sort();
    theirs.sort();
    report("bulkhead-vmm, spawn to the initramfs hand-over", &ours);
    report(
        "qemu -accel kvm -M microvm, same kernel/initramfs/disks, same point",
        &theirs,
    );
    println!(
        "ratio bulkhead-vmm/qemu: {:.2} (goal: below 1)",
        median(&ours).as_secs_f64() / median(&theirs).as_secs_f64()
    );

    // The product path, through a private domaind.
    let (connection, _private) = crate::domaind_for_bench(None, &cache, "").await?;
    let p = Domaind1Proxy::new(&connection).await?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    p.build_template(&template, Fd::from(&null))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;
    let vm_props = HashMap::from([("isolation", "vm"), ("memory", "512"), ("vcpus", "1")]);
    create(&p, "bench-vm", "app", &template, vm_props.clone()).await?;
    create(
        &p,
        "bench-vm-dvm",
        "disposable-template",
        &template,
        vm_props,
    )
    .await?;
    create(
        &p,
        "bench-sandbox",
        "app",
        &template,
        HashMap::from([("memory", "512")]),
    )
    .await?;
    let vm_start = start_to_agent(&p, "bench-vm", runs).await?;
    let sandbox_start = start_to_agent(&p, "bench-sandbox", runs).await;
    report("VM domain, Start to the agent answering", &vm_start);
    match &sandbox_start {
        Ok(s) => {
            report("sandbox domain, Start to the agent answering", s);
            println!(
                "ratio VM/sandbox: {:.1}",
                median(&vm_start).as_secs_f64() / median(s).as_secs_f64()
            );
        }
        Err(e) => println!("sandbox domain: not measured here: {e:#}"),
    }
    let dvm = crate::measure(runs, || async {
        crate::disposable_true(&p, "bench-vm-dvm").await.map(drop)
    })
    .await?;
    report("disposable VM `true`, request to removal", &dvm);
    Ok(())
}

fn report(what: &str, sorted: &[Duration]) {
    println!(
        "{what} ({} runs): median {:.0} ms, min {:.0} ms, max {:.0} ms",
        sorted.len(),
        ms(median(sorted)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    );
}

async fn create(
    p: &Domaind1Proxy<'_>,
    name: &str,
    class: &str,
    template: &str,
    props: HashMap<&str, &str>,
) -> Result<()> {
    p.create(name, class, template, "gray", props)
        .await
        .map_err(|e| anyhow::anyhow!("Create {name}: {}", e.message()))
}

/// One warm-up, then `runs` timed starts of `name`, each followed by an untimed kill.
async fn start_to_agent(p: &Domaind1Proxy<'_>, name: &str, runs: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(runs);
    for round in 0..=runs {
        let t0 = Instant::now();
        p.start(name)
            .await
            .map_err(|e| anyhow::anyhow!("Start {name}: {}", e.message()))?;
        let took = t0.elapsed();
        p.kill(name)
            .await
            .map_err(|e| anyhow::anyhow!("Kill {name}: {}", e.message()))?;
        if round > 0 {
            times.push(took);
        }
    }
    times.sort();
    Ok(times)
}

/// The three disks of a VM domain: the template's root image (read-only), a private volume
/// and a tools image (both made here, the way domaind makes them).
struct Disks {
    private: PathBuf,
    tools: PathBuf,
}

impl Disks {
    fn make(dir: &Path) -> Result<Self> {
        let private_src = dir.join("private-src/user");
        std::fs::create_dir_all(&private_src)?;
        let tools_src = dir.join("guest");
        let built = bulkhead_testkit::guest_tools_source().map_err(anyhow::Error::msg)?;
        bulkhead_testkit::assemble_guest_tools(&built, &tools_src).map_err(anyhow::Error::msg)?;
        let private = dir.join("private.img");
        let tools = dir.join("tools.img");
        let mut log = Vec::new();
        bulkhead_templates::vm::make_ext4_image(
            &dir.join("private-src"),
            &private,
            bulkhead_templates::vm::PRIVATE_LABEL,
            256,
            true,
            &mut log,
        )?;
        let size = bulkhead_templates::vm::image_size_mib(&tools_src, 8)?;
        bulkhead_templates::vm::make_ext4_image(
            &tools_src,
            &tools,
            bulkhead_templates::vm::TOOLS_LABEL,
            size,
            false,
            &mut log,
        )?;
        Ok(Disks { private, tools })
    }
}

fn cmdline() -> String {
    format!(
        "{} bulkhead.name=bench",
        bulkhead_templates::vm::GUEST_CMDLINE
    )
}

fn vmm_command(vmm: &Path, vm: &VmArtifacts, disks: &Disks, dir: &Path) -> Result<Command> {
    let console = dir.join("vmm-console.log");
    let _ = std::fs::remove_file(&console);
    let spec = VmSpec {
        name: "bench".into(),
        kernel: vm.kernel.clone(),
        initramfs: Some(vm.initramfs.clone()),
        cmdline: cmdline(),
        memory_mib: MEMORY_MIB,
        vcpus: 1,
        serial_log: console,
        serial_log_max: 1 << 20,
        serial_input: None,
        disks: vec![
            DiskSpec {
                path: vm.root_image.clone(),
                read_only: true,
            },
            DiskSpec {
                path: disks.private.clone(),
                read_only: false,
            },
            DiskSpec {
                path: disks.tools.clone(),
                read_only: true,
            },
        ],
        vsock: None,
        nets: Vec::new(),
        rng: true,
        confine: None,
    };
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec)?)?;
    let mut c = Command::new(vmm);
    c.arg("run").arg("--spec").arg(spec_file);
    Ok(c)
}

fn qemu_command(qemu: &Path, vm: &VmArtifacts, disks: &Disks) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
    ])
    .args(["-m", &MEMORY_MIB.to_string(), "-smp", "1"])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&vm.kernel)
    .arg("-initrd")
    .arg(&vm.initramfs)
    .args([
        "-append",
        &format!("console=ttyS0 reboot=k panic=-1 {}", cmdline()),
    ]);
    for (i, (path, ro)) in [
        (&vm.root_image, true),
        (&disks.private, false),
        (&disks.tools, true),
    ]
    .into_iter()
    .enumerate()
    {
        c.arg("-drive").arg(format!(
            "id=d{i},file={},format=raw,if=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        ));
        c.args(["-device", &format!("virtio-blk-device,drive=d{i}")]);
    }
    c.args(["-device", "virtio-rng-device"]);
    c
}

/// Spawns `cmd` and times it until the console shows the initramfs's hand-over line; then
/// kills it. The console is the file `vmm-console.log` in `dir` (ours) or stdout (qemu's).
fn boot_to_handover(cmd: &mut Command, dir: &Path, console_file: bool) -> Result<Duration> {
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    cmd.stdout(if console_file {
        Stdio::null()
    } else {
        Stdio::piped()
    });
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let seen = if console_file {
        let path = dir.join("vmm-console.log");
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|s| s.contains(INITRAMFS_READY_LINE)) {
                break Ok(t0.elapsed());
            }
            if let Ok(Some(st)) = child.try_wait() {
                break Err(anyhow::anyhow!("exited ({st}) before the line"));
            }
            if t0.elapsed() > BOOT_LIMIT {
                break Err(anyhow::anyhow!("no hand-over line within {BOOT_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        let out = child.stdout.take().context("qemu's stdout")?;
        let mut found = Err(anyhow::anyhow!("qemu's console ended before the line"));
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            if String::from_utf8_lossy(&line).contains(INITRAMFS_READY_LINE) {
                found = Ok(t0.elapsed());
                break;
            }
            if t0.elapsed() > BOOT_LIMIT {
                break;
            }
        }
        found
    };
    let _ = child.kill();
    let _ = child.wait();
    seen
}
