//! Possible CPU ids (`/sys/devices/system/cpu/possible`), which size the per-CPU slices
//! of the port map.
//!
//! The XDP program indexes its slice by CPU id (`bpf_get_smp_processor_id`), so the map
//! needs a slice for every id up to the highest possible one, not one per possible CPU:
//! on a sparse mask such as `0-3,8-11` (8 CPUs, highest id 11) the map has 12 slices.

pub const POSSIBLE: &str = "/sys/devices/system/cpu/possible";

/// Parses a CPU list (`0-3,8-11`, `0`, `0,2`) into the highest id + 1.
pub fn slices_for(list: &str) -> Result<usize, String> {
    let list = list.trim();
    if list.is_empty() {
        return Err("an empty CPU list".into());
    }
    let mut highest = 0u32;
    for range in list.split(',') {
        let id = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} in {list:?} is not a CPU id"))
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (id(a)?, id(b)?),
            None => (id(range)?, id(range)?),
        };
        if first > last {
            return Err(format!("range {range:?} in {list:?} goes backwards"));
        }
        highest = highest.max(last);
    }
    // The kernel's NR_CPUS is at most 8192; anything above is not a CPU list.
    if highest >= 8192 {
        return Err(format!(
            "CPU id {highest} in {list:?} is beyond any kernel's limit"
        ));
    }
    Ok(highest as usize + 1)
}

/// Slices the port map needs on this machine: highest possible CPU id + 1.
pub fn port_map_slices() -> Result<usize, String> {
    let text = std::fs::read_to_string(POSSIBLE).map_err(|e| format!("{POSSIBLE}: {e}"))?;
    slices_for(&text).map_err(|e| format!("{POSSIBLE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(slices_for("0\n"), Ok(1));
        assert_eq!(slices_for("0-3"), Ok(4));
        assert_eq!(slices_for("0,2"), Ok(3));
        assert_eq!(slices_for("0-3,8-11\n"), Ok(12));
        assert_eq!(slices_for("8-11,0-3"), Ok(12));
        assert_eq!(slices_for("0-127"), Ok(128));
        for bad in [
            "", "\n", "a", "0-", "-3", "3-1", "0,,2", "0-3,x", "1-2-3", "99999",
        ] {
            assert!(slices_for(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn this_machine() {
        let slices = port_map_slices().expect("possible CPUs readable");
        assert!(slices >= std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
}
