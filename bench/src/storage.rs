//! `bulkhead-bench storage`: what per-domain storage (issue 13) costs, next to what it
//! replaced, measured in the same run on the same disk:
//! - a domain's first start: its private volume made as a sparse ext4 image of the default
//!   size (`mkfs.ext4 -d` of the new home), vs the private directory it used to be;
//! - every start: the private volume attached to a loop device and mounted (and released
//!   again when the domain's mount namespace goes), vs a bind mount of the directory;
//! - a disposable's seeding: a sparse copy of its template's image vs a copy of a directory.
//!
//! The mounts are made in a private mount namespace of one thread, as the launcher makes
//! them in the domain's; nothing reaches the host's mount table.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_domain::volume::PrivateVolume;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{median, ms};

fn timed(runs: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Vec<Duration>> {
    f(usize::MAX)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        f(i)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

fn report(what: &str, before: &[Duration], after: &[Duration]) {
    let (b, a) = (median(before), median(after));
    println!(
        "{what}: before {:.2} ms, now {:.2} ms (medians; min {:.2}/{:.2}, max {:.2}/{:.2}): +{:.2} ms, ratio {:.2}",
        ms(b),
        ms(a),
        ms(before[0]),
        ms(after[0]),
        ms(before[before.len() - 1]),
        ms(after[after.len() - 1]),
        ms(a) - ms(b),
        a.as_secs_f64() / b.as_secs_f64()
    );
}

/// The old private volume: `<dir>/user` owned by the domain user.
fn make_dir_volume(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("user"))?;
    std::os::unix::fs::chown(dir.join("user"), Some(1000), Some(1000))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(from)
        .arg(to)
        .status()?;
    if !status.success() {
        bail!("cp -a {} {}: {status}", from.display(), to.display());
    }
    Ok(())
}

pub fn run(runs: usize, size_mib: u64) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the bench mounts file systems (in its own mount namespace)");
    }
    let work = tempfile::Builder::new()
        .prefix("bulkhead-bench-storage-")
        .tempdir_in("/var/tmp")
        .context("a scratch dir in /var/tmp (the disk domain state lives on)")?;
    let w = work.path().to_owned();
    std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .context("unshare a mount namespace")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;

        // First start.
        let dirs = timed(runs, |i| {
            let d = w.join(format!("dir-{i}"));
            make_dir_volume(&d)
        })?;
        let images = timed(runs, |i| {
            let v = PrivateVolume {
                image: w.join(format!("img-{i}/private.img")),
                legacy_dir: w.join(format!("img-{i}/private")),
            };
            v.ensure(size_mib).map(drop).map_err(anyhow::Error::from)
        })?;
        report(
            &format!("first start: private volume made ({size_mib} MiB image vs directory)"),
            &dirs,
            &images,
        );

        // Every start.
        let at = w.join("mnt");
        std::fs::create_dir(&at)?;
        let dir = w.join("dir-0");
        let binds = timed(runs, |_| {
            mount(
                Some(&dir),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            umount2(&at, MntFlags::MNT_DETACH)?;
            Ok(())
        })?;
        let image = w.join("img-0/private.img");
        // Timed: what a start waits for (lock, loop device, ext4 mount). The release, when
        // the domain's mount namespace goes, is nobody's wait: it is measured apart.
        let mut releases = Vec::with_capacity(runs + 1);
        let loops = timed(runs, |_| {
            bulkhead_sandbox::loopdev::mount_ext4(
                &image,
                &at,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("errors=remount-ro"),
            )?;
            let t = Instant::now();
            umount2(&at, MntFlags::MNT_DETACH)?;
            drop(bulkhead_sandbox::loopdev::open_locked(&image)?);
            releases.push(t.elapsed());
            Ok(())
        })?;
        releases.sort();
        report(
            "every start: private volume mounted (lock + loop + ext4 vs bind)",
            &binds,
            &loops,
        );
        println!(
            "  released after the domain (unmount to lock free, not waited for by a start): median {:.2} ms, max {:.2} ms",
            ms(median(&releases)),
            ms(releases[releases.len() - 1])
        );

        // Disposable seeding.
        let dir_copies = timed(runs, |i| copy_tree(&dir, &w.join(format!("dcopy-{i}"))))?;
        let from = PrivateVolume {
            image,
            legacy_dir: w.join("img-0/private"),
        };
        let image_copies = timed(runs, |i| {
            let to = PrivateVolume {
                image: w.join(format!("icopy-{i}/private.img")),
                legacy_dir: w.join(format!("icopy-{i}/private")),
            };
            from.copy_to(&to, size_mib).map_err(anyhow::Error::from)
        })?;
        report(
            "disposable: private volume seeded from its template (sparse image copy vs cp -a)",
            &dir_copies,
            &image_copies,
        );
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bench thread panicked"))?
}
