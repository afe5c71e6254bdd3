//! Does this host have hardware virtualization, or only PVM (or nothing)?

use std::path::Path;

/// Result of [`probe_hardware_virtualization`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// VT-x or AMD-V is present and its KVM module is loaded: a stock Linux guest can boot.
    pub hardware: bool,
    /// One line for a user: what was found and, if not hardware, why VM domains cannot boot Linux.
    pub reason: String,
}

/// Looks at /proc/cpuinfo flags (vmx/svm), the loaded KVM vendor modules (kvm_intel, kvm_amd,
/// kvm_pvm) and /dev/kvm.
pub fn probe_hardware_virtualization() -> Probe {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    probe_from(&cpuinfo, Path::new("/sys/module"), Path::new("/dev/kvm"))
}

fn probe_from(cpuinfo: &str, sys_module: &Path, dev_kvm: &Path) -> Probe {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let vmx = flags.contains(&"vmx");
    let svm = flags.contains(&"svm");
    let loaded = |m: &str| sys_module.join(m).exists();
    let kvm_dev = dev_kvm.exists();
    let (hardware, reason) = if vmx && loaded("kvm_intel") && kvm_dev {
        (
            true,
            "hardware virtualization: VT-x with kvm_intel".to_string(),
        )
    } else if svm && loaded("kvm_amd") && kvm_dev {
        (
            true,
            "hardware virtualization: AMD-V with kvm_amd".to_string(),
        )
    } else if loaded("kvm_pvm") && kvm_dev {
        (
            false,
            "no hardware virtualization: /dev/kvm is PVM (kvm_pvm), which emulates a stock Linux \
             guest instruction by instruction; VM domains need VT-x or AMD-V"
                .to_string(),
        )
    } else if vmx || svm {
        (
            false,
            format!(
                "no usable hardware virtualization: the CPU has {} but {} is not loaded or \
                 /dev/kvm is missing (modprobe {})",
                if vmx { "VT-x" } else { "AMD-V" },
                if vmx { "kvm_intel" } else { "kvm_amd" },
                if vmx { "kvm_intel" } else { "kvm_amd" },
            ),
        )
    } else {
        (
            false,
            "no hardware virtualization: the CPU shows neither vmx nor svm (enable VT-x/AMD-V \
             in the firmware, or nested virtualization on the host)"
                .to_string(),
        )
    };
    Probe { hardware, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(mods: &[&str], kvm: bool) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        for m in mods {
            std::fs::create_dir_all(d.path().join("module").join(m)).unwrap();
        }
        let dev = d.path().join("kvm");
        if kvm {
            std::fs::write(&dev, "").unwrap();
        }
        (d, dev)
    }

    #[test]
    fn vmx_with_module_is_hardware() {
        let (d, dev) = dirs(&["kvm_intel"], true);
        let p = probe_from("flags\t: fpu vmx sse\n", &d.path().join("module"), &dev);
        assert!(p.hardware, "{}", p.reason);
    }

    #[test]
    fn pvm_is_not_hardware() {
        let (d, dev) = dirs(&["kvm_pvm"], true);
        let p = probe_from("flags\t: fpu sse\n", &d.path().join("module"), &dev);
        assert!(!p.hardware);
        assert!(p.reason.contains("PVM"), "{}", p.reason);
    }

    #[test]
    fn flag_without_module_is_not_hardware() {
        let (d, dev) = dirs(&[], false);
        let p = probe_from("flags\t: svm\n", &d.path().join("module"), &dev);
        assert!(!p.hardware);
        assert!(p.reason.contains("kvm_amd"), "{}", p.reason);
    }

    #[test]
    fn this_host() {
        // Whatever this machine is, the probe answers with a reason and does not fail.
        let p = probe_hardware_virtualization();
        assert!(!p.reason.is_empty());
    }
}
