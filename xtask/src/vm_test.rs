//! `cargo xtask vm-test`: the libxdp dispatcher tests (scan-lab's
//! `scan-lab-vm-dispatcher`) in a Debian Linux guest under QEMU.
//!
//! Why a guest: this project's test kernel (6.18, lockdown=integrity) refuses every
//! freplace (BPF_PROG_TYPE_EXT) load, so neither libxdp's dispatcher nor the agent's
//! can run on it. Debian's own kernel (`linux-image-amd64`, no lockdown without
//! secure boot) allows them. The kernel package is downloaded and unpacked into
//! target/vm (never installed); the guest boots from a small initramfs (busybox and
//! the few modules it needs, `scan-lab/vm/init`) and mounts the host's root
//! read-only over 9p, so it runs the host's xdp-tools, bpftool and the binaries just
//! built. It has no network device: its veth pairs exist only inside it.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, run, setup};

/// What the guest needs on the host: QEMU, and a static busybox for the initramfs.
const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils"];
/// Debian's kernel metapackage; its dependency names the kernel image package.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Modules the initramfs loads (their dependencies are added from `.modinfo`).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth"];
const CACHE: &str = "target/vm";
/// The whole guest run is bounded (boot, five scenarios, the cost measurement).
const TIMEOUT: Duration = Duration::from_secs(600);
const SCENARIOS: usize = 5;

pub fn vm_test() -> Result<()> {
    let started = Instant::now();
    setup::install_packages(&PACKAGES.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    let cache = Path::new(CACHE);
    fs::create_dir_all(cache).with_context(|| format!("creating {CACHE}"))?;
    let kernel = kernel(cache)?;
    let initramfs = initramfs(cache, &kernel)?;
    run(cmd("cargo").args([
        "build",
        "-p",
        "scan-agent",
        "--bin",
        "scan-agent",
        "-p",
        "scan-lab",
        "--bin",
        "scan-lab-vm-dispatcher",
    ]))?;
    let out = cache.join("out");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let foreign = out.join("xdp_pass.o");
    let clang = std::env::var("SCAN_BENCH_CLANG").unwrap_or_else(|_| "clang-22".into());
    run(cmd(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-c",
            "bench/xdp_pass.c",
            "-o",
        ])
        .arg(&foreign))
    .with_context(|| format!("building the foreign XDP program ({clang}; `cargo xtask setup`)"))?;
    // The dispatcher's own cost with this host's real JIT (no freplace needed), beside
    // the guest's emulated figures.
    let host_cost = output(
        cmd("target/debug/scan-lab-vm-dispatcher")
            .args([
                "--agent",
                "target/debug/scan-agent",
                "--host-cost",
                "--foreign",
            ])
            .arg(&foreign),
    )
    .context("measuring the dispatcher's cost on this host")?;
    print!("{host_cost}");
    let root = std::env::current_dir()?;
    // The guest's /tmp is `out`; everything else is the host's own path.
    fs::write(
        out.join("vm-run"),
        format!(
            "cd /tmp\nexec {root}/target/debug/scan-lab-vm-dispatcher --agent \
             {root}/target/debug/scan-agent --foreign /tmp/xdp_pass.o\n",
            root = root.display()
        ),
    )?;
    println!(
        "vm-test: ready in {:.1}s; booting Linux {} (no network device)",
        started.elapsed().as_secs_f64(),
        kernel.version
    );
    let booted = Instant::now();
    let lines = boot(&kernel, &initramfs, &out)?;
    let ok = lines.iter().filter(|l| l.starts_with("VM-TEST ok")).count();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("VM-TEST FAILED"))
        .collect();
    let exit = lines.iter().find_map(|l| l.strip_prefix("VM-RESULT: "));
    let guest_cost = lines
        .iter()
        .find_map(|l| l.strip_prefix("VM-BENCH "))
        .unwrap_or("none (the guest did not get there)");
    fs::write(
        cache.join("dispatcher-cost.txt"),
        format!(
            "host: {}\nguest (Linux {}, emulated when not KVM): {guest_cost}\n",
            host_cost.trim().trim_start_matches("VM-HOST-COST "),
            kernel.version
        ),
    )?;
    println!(
        "vm-test: guest ran {:.1}s; {:.1}s in all",
        booted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if exit != Some("exit 0") || !failed.is_empty() || ok != SCENARIOS {
        bail!(
            "vm-test failed: {ok} of {SCENARIOS} scenarios ok, guest result {:?}{}; the console \
             log is {CACHE}/console.log, the agents' logs are under {CACHE}/out",
            exit.unwrap_or("none (it did not finish)"),
            failed
                .iter()
                .map(|l| format!("\n  {l}"))
                .collect::<String>()
        );
    }
    // In the form `cargo xtask test` counts.
    println!("vm-test: {ok} passed, 0 failed (scenarios in the guest)");
    Ok(())
}

struct Kernel {
    version: String,
    /// The uncompressed ELF image when it could be extracted: QEMU boots it through its
    /// PVH entry, which saves the ~20 s the kernel takes to decompress itself under
    /// emulation. Otherwise the bzImage itself, and the run says so (same scenarios).
    image: PathBuf,
    modules: PathBuf,
}

/// Downloads (once) the kernel package `linux-image-amd64` depends on and unpacks it.
fn kernel(cache: &Path) -> Result<Kernel> {
    let depends = output(cmd("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "apt-cache does not know {KERNEL_METAPACKAGE} (run `apt-get update`):\n{depends}"
            )
        })?
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let unpacked = cache.join(format!("kernel-{version}"));
    let modules = unpacked.join("lib/modules").join(&version);
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() || !modules.exists() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs)?;
        println!("vm-test: downloading {package} (once; cached in {CACHE})");
        run(cmd("apt-get")
            .args(["download", &package])
            .current_dir(&debs))
        .with_context(|| format!("downloading {package}"))?;
        let deb = fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        let _ = fs::remove_dir_all(&unpacked);
        run(cmd("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::remove_file(&deb)?;
    }
    let vmlinux = unpacked.join("vmlinux");
    if !vmlinux.exists() {
        extract_vmlinux(&vmlinuz, &vmlinux)?;
    }
    let image = if vmlinux.exists() { vmlinux } else { vmlinuz };
    Ok(Kernel {
        version,
        image,
        modules,
    })
}

/// The ELF kernel inside a bzImage compressed with xz (Debian's choice); nothing
/// when it is compressed otherwise (the bzImage then boots as it is, more slowly).
fn extract_vmlinux(vmlinuz: &Path, vmlinux: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let magic = b"\xfd7zXZ\x00";
    let Some(at) = image.windows(magic.len()).position(|w| w == magic) else {
        println!("vm-test: the kernel is not xz-compressed: booting the bzImage as it is (slower)");
        return Ok(());
    };
    let mut xz = cmd("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running xz (package xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = image[at..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let out = xz.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        println!(
            "vm-test: no ELF kernel inside the bzImage: booting the bzImage as it is (slower)"
        );
        return Ok(());
    }
    let partial = vmlinux.with_extension("partial");
    fs::write(&partial, &out.stdout)?;
    fs::rename(&partial, vmlinux)?;
    Ok(())
}

/// The initramfs: busybox, `scan-lab/vm/init`, the modules in load order.
fn initramfs(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache.join("initramfs");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["bin", "modules", "proc", "sys", "dev", "host"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("no busybox (package busybox-static)")?;
    fs::copy(busybox, dir.join("bin/busybox"))?;
    fs::copy("scan-lab/vm/init", dir.join("init"))?;
    let mut order = Vec::new();
    for module in MODULES {
        add_module(&kernel.modules, module, &dir.join("modules"), &mut order)?;
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    let image = cache.join("initramfs.cpio");
    let list = output(cmd("find").arg(".").current_dir(&dir))?;
    let mut cpio = cmd("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&image)?)
        .stderr(Stdio::null())
        .spawn()
        .context("running busybox cpio")?;
    cpio.stdin
        .take()
        .context("cpio stdin")?
        .write_all(list.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("busybox cpio failed building {}", image.display());
    }
    Ok(image)
}

/// Copies `name`'s module after its dependencies (read from its `.modinfo`).
fn add_module(modules: &Path, name: &str, to: &Path, order: &mut Vec<String>) -> Result<()> {
    let file = format!("{name}.ko");
    if order.contains(&file) {
        return Ok(());
    }
    let path = find_file(&modules.join("kernel"), &file)?
        .with_context(|| format!("module {name} is not in {}", modules.display()))?;
    let bytes = fs::read(&path)?;
    let depends = bytes
        .windows(8)
        .position(|w| w == b"depends=")
        .map(|at| {
            let rest = &bytes[at + 8..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_default();
    for dependency in depends.split(',').filter(|d| !d.is_empty()) {
        add_module(modules, dependency, to, order)?;
    }
    fs::write(to.join(&file), bytes)?;
    order.push(file);
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if let Some(found) = find_file(&path, name)? {
                return Ok(Some(found));
            }
        } else if entry.file_name().to_string_lossy() == name {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Boots the guest, echoes its console and returns the console lines.
fn boot(kernel: &Kernel, initramfs: &Path, out: &Path) -> Result<Vec<String>> {
    let accel = accelerator();
    println!("vm-test: {}", accel.1);
    let mut qemu = cmd("qemu-system-x86_64");
    qemu.args(accel.0)
        .args(["-m", "1G", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-serial", "stdio", "-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            // no_timer_check: an emulated, loaded host fails the IO-APIC timer check.
            "console=ttyS0 panic=-1 quiet no_timer_check",
        ])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none",
            out.canonicalize()?.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let console = fs::File::create(Path::new(CACHE).join("console.log"))?;
    let reader = std::thread::spawn(move || {
        let mut console = console;
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim_end_matches('\r').to_string();
            let _ = writeln!(console, "{line}");
            println!("{line}");
            lines.push(line);
        }
        lines
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest did not finish within {}s (console: {CACHE}/console.log)",
                TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("console reader"))?;
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        bail!("qemu-system-x86_64 failed ({status}): {stderr}");
    }
    Ok(lines)
}

/// KVM when the host has a hardware one (kvm_intel or kvm_amd); else QEMU's TCG
/// emulation, which is slower but boots any kernel. A KVM module of another kind
/// (this project's machines have kvm_pvm, which runs only PVM-enabled guest kernels:
/// Debian's hangs after its decompressor) is not used.
fn accelerator() -> (&'static [&'static str], String) {
    let hardware = ["kvm_intel", "kvm_amd"]
        .iter()
        .find(|m| Path::new("/sys/module").join(m).exists());
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match hardware {
        Some(module) if usable => (
            &["-accel", "kvm", "-cpu", "host"],
            format!("KVM ({module})"),
        ),
        _ => (
            &["-accel", "tcg"],
            format!(
                "no hardware KVM ({}): QEMU's TCG emulation, slower",
                if usable {
                    "/dev/kvm is there, but not kvm_intel or kvm_amd"
                } else {
                    "no usable /dev/kvm"
                }
            ),
        ),
    }
}

fn output(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
