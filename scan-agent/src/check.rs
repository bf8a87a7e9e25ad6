//! `scan-agent check`: what an operator needs to know before `run`.
use std::{fmt::Write as _, path::Path};

use crate::{
    config::CheckArgs,
    daemon::default_route_interface,
    sensor::{
        AttachRequest, HookChoice, LinkKind, ModeChoice, MultiprogChoice, Sensor, link_kind,
        link_type_name, on_bpffs,
    },
};

/// One line of the report.
struct Finding {
    ok: bool,
    what: String,
    detail: String,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Runs every check; returns the report and whether all passed.
pub fn check(args: &CheckArgs) -> (String, bool) {
    let mut findings = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    let new_enough = version.as_slice() >= [5, 9].as_slice();
    let multi_buffer = version.as_slice() >= [5, 18].as_slice();
    findings.push(Finding {
        ok: new_enough,
        what: "kernel".into(),
        detail: format!(
            "{release}{}",
            if !new_enough {
                ": need >= 5.9 (bpf_link for XDP, mmapable arrays, CAP_BPF)"
            } else if !multi_buffer {
                ": no multi-buffer XDP before 5.18 (unless backported), so native XDP is \
                 refused on interfaces with jumbo frames or header/data split (SKB mode \
                 still works there)"
            } else {
                ""
            }
        ),
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    findings.push(Finding {
        ok: btf,
        what: "BTF".into(),
        detail: if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): program logs may not work".into()
        },
    });
    match effective_capabilities() {
        Some(caps) => {
            let has = |cap: u32| caps & (1 << cap) != 0;
            let sys_admin = has(CAP_SYS_ADMIN);
            for (cap, name, why) in [
                (CAP_BPF, "CAP_BPF", "create maps and load the program"),
                (CAP_NET_ADMIN, "CAP_NET_ADMIN", "attach XDP to interfaces"),
                (
                    CAP_PERFMON,
                    "CAP_PERFMON",
                    "let the verifier accept the program's pointer arithmetic",
                ),
            ] {
                let ok = has(cap) || sys_admin;
                findings.push(Finding {
                    ok,
                    what: name.into(),
                    detail: if ok {
                        format!("present (needed to {why})")
                    } else {
                        format!(
                            "missing: needed to {why}; run as root or grant it (see deploy/systemd)"
                        )
                    },
                });
            }
        }
        None => findings.push(Finding {
            ok: false,
            what: "capabilities".into(),
            detail: "cannot read CapEff from /proc/self/status".into(),
        }),
    }
    let pin_parent = args.pin_path.parent().unwrap_or(&args.pin_path);
    let bpffs = on_bpffs(pin_parent);
    findings.push(Finding {
        ok: bpffs,
        what: "bpffs".into(),
        detail: if bpffs {
            format!(
                "{} is on bpffs: pinned counts survive restarts",
                pin_parent.display()
            )
        } else {
            format!(
                "{} is not on bpffs: `mount -t bpf bpf {}`",
                pin_parent.display(),
                pin_parent.display()
            )
        },
    });
    let interfaces = if args.iface.is_empty() {
        default_route_interface().into_iter().collect()
    } else {
        args.iface.clone()
    };
    if interfaces.is_empty() {
        findings.push(Finding {
            ok: false,
            what: "interface".into(),
            detail: "no --iface given and no default route".into(),
        });
    }
    for interface in &interfaces {
        findings.push(check_interface(interface, args.try_attach));
    }
    let mut report = String::new();
    let all_ok = findings.iter().all(|f| f.ok);
    for f in &findings {
        let _ = writeln!(
            report,
            "[{}] {:<14} {}",
            if f.ok { " ok " } else { "FAIL" },
            f.what,
            f.detail
        );
    }
    (report, all_ok)
}

fn check_interface(interface: &str, try_attach: Option<ModeChoice>) -> Finding {
    let what = format!("iface {interface}");
    let sys = Path::new("/sys/class/net").join(interface);
    if !sys.exists() {
        return Finding {
            ok: false,
            what,
            detail: "no such interface (see `ip link`)".into(),
        };
    }
    let driver = std::fs::read_link(sys.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            // Virtual devices (veth, bridge) have no device/driver link.
            std::fs::read_to_string(sys.join("uevent"))
                .ok()
                .and_then(|u| {
                    u.lines()
                        .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_string))
                })
        })
        .unwrap_or_else(|| "unknown driver".into());
    let state = std::fs::read_to_string(sys.join("operstate")).unwrap_or_default();
    let link = match link_kind(interface) {
        Ok((arphrd, kind)) => format!(
            "link type {} ({arphrd}), parsed from the {}",
            link_type_name(arphrd),
            match kind {
                LinkKind::Ethernet => "Ethernet header (VLAN tags, PPPoE sessions)",
                LinkKind::RawIp => "IP header (no link-layer header)",
            }
        ),
        Err(e) => {
            return Finding {
                ok: false,
                what,
                detail: format!("{driver}: {e}"),
            };
        }
    };
    let Some(mode) = try_attach else {
        return Finding {
            ok: true,
            what,
            detail: format!(
                "{driver}, {}, {link}; SKB mode works on any interface, native needs driver \
                 support (test it with --try-attach native)",
                state.trim()
            ),
        };
    };
    let request = AttachRequest {
        hook: HookChoice::Xdp,
        xdp_mode: mode,
        // The driver's XDP support alone, not a dispatcher left on the interface.
        multiprog: MultiprogChoice::Off,
    };
    let result = Sensor::load(None)
        .map_err(|e| e.to_string())
        .and_then(|mut sensor| {
            sensor
                .attach(interface, request, false)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(a) => Finding {
            ok: true,
            what,
            detail: format!(
                "{driver}, {}, {link}; takes XDP in {} mode (attached, then detached)",
                state.trim(),
                a.mode
            ),
        },
        Err(e) => Finding {
            ok: false,
            what,
            detail: format!("{driver}: {e}"),
        },
    }
}
